"""Reduced precision: INT8 via onnxruntime.quantization, FP16, and the accuracy-budget fallback."""
