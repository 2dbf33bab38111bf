"""onnxruntime sessions: providers with fallback, thread count, optimization level."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
          "all": "ORT_ENABLE_ALL"}


def providers(requested: list[str] | None = None) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    chosen = []
    for p in requested or ["CPUExecutionProvider"]:
        if p in available:
            chosen.append(p)
        else:
            warnings.warn(f"execution provider {p} is not available here; falling back", stacklevel=2)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def session(model: str | Path | bytes | Any, *, provider_list: list[str] | None = None, threads: int | None = None,
            level: str = "all", optimized_path: str | Path | None = None):
    """Build an InferenceSession from a path, bytes or ModelProto."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4  # fatal only: ORT's error log repeats the exception (a second stderr line)
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    src = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model) if isinstance(
        model, Path) else model
    return ort.InferenceSession(src, sess_options=so, providers=providers(provider_list))


def run(sess, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    names = outputs or [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))
