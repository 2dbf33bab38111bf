"""Graph optimization passes (ORT offline levels, onnxslim, transformer fusion) and shared measurement helpers."""
