"""Scoring an artifact: in-process (`Predictor`, `BoundCall`: predictor.py) and files of any size (`predict_file`,
`reseed`: files.py). The names are resolved on first use so `import onnxforge.score` stays cheap (no numpy, no ORT)."""

from __future__ import annotations

import importlib

_EXPORTS = {"Predictor": "predictor", "BoundCall": "predictor", "predict_file": "files", "reseed": "files"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
