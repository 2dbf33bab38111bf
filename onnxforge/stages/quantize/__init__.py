"""The quantize stage (stage.py: options and run) and its helpers: INT8 via onnxruntime.quantization (int8,
weight_only, graph_order, opset, sandbox), FP16 (fp16), calibration feeds (feeds), the accuracy-budget fallback
(budget) and the output-fidelity search with smoothing (fidelity, smooth)."""
