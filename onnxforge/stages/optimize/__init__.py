"""The optimize stage (stage.py: options and run) and its helpers: graph passes (passes: ORT offline levels,
onnxslim, transformer fusion with attention), the acceptance gate (gate), latency measurement (perf), the input
model (inputs) and the progress bar (ui); quantize reuses perf, inputs and ui."""
