"""The report: collect figures for every artifact of a run (or loose .onnx files), then render them as terminal
tables, report.json (schema in onnxforge/schemas/report.schema.json), report.md and a self-contained report.html.
The entry point is onnxforge.report.build_report; the pipeline stage is onnxforge.stages.report."""
