"""The report: collect figures for every artifact of a run (or loose .onnx files), then render them as terminal
tables, report.json (schema in onnxforge/schemas/report.schema.json), report.md and a self-contained report.html.
options.py holds ReportOptions, build.py the entry point (`build_report`, `load_schema`, re-exported here lazily),
stage.py the pipeline stage; collect.py gathers the figures, terminal/markdown/html/plots render them."""

from onnxforge.lazy import exports

_EXPORTS = {"build_report": "build", "load_schema": "build", "FORMATS": "build", "ReportOptions": "options"}
__all__ = sorted(_EXPORTS)
__getattr__ = exports(__name__, _EXPORTS)
