"""Scoring an artifact: the one scorer under predict, serve and the Python API (`Scorer`, `reseed`: scorer.py),
in-process low latency (`Predictor`, `BoundCall`: predictor.py), a file of any size (`predict_file`: files.py) and
a dataset in parts on every core or a Dask cluster (`predict_dataset`: offline.py). The names are resolved on first
use so `import onnxforge.score` stays cheap (no numpy, no ORT)."""

from onnxforge.lazy import exports

_EXPORTS = {"Scorer": "scorer", "Predictor": "predictor", "BoundCall": "predictor", "predict_file": "files",
            "reseed": "scorer", "predict_dataset": "offline"}
__all__ = sorted(_EXPORTS)
__getattr__ = exports(__name__, _EXPORTS)
