"""onnxforge: turn trained models into fast, portable, verified ONNX artifacts."""

__version__ = "0.1.0"
