"""Scoring an artifact: in-process (`Predictor`, `BoundCall`: predictor.py) and files of any size (`predict_file`,
`reseed`: files.py). The names are resolved on first use so `import onnxforge.score` stays cheap (no numpy, no ORT)."""

from onnxforge.lazy import exports

_EXPORTS = {"Predictor": "predictor", "BoundCall": "predictor", "predict_file": "files", "reseed": "files"}
__all__ = sorted(_EXPORTS)
__getattr__ = exports(__name__, _EXPORTS)
