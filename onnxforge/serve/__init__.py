"""The HTTP server's room. `from onnxforge.serve import Predictor` (the in-process predictor's home until the
layout change) keeps working: it now lives in onnxforge.score."""

from __future__ import annotations


def __getattr__(name: str):
    if name in ("Predictor", "BoundCall"):
        from onnxforge.score import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
