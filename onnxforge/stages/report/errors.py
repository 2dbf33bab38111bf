"""Per-output error figures of a candidate against its reference, with a log10 histogram of |error|."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

BINS_PER_DECADE = 4
LOG_FLOOR, LOG_CEIL = -12, 6


def finite_or_none(v: Any) -> Any:
    """JSON has no NaN/inf: report them as null (documented in the schema)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def clean(obj: Any) -> Any:
    """A JSON-safe copy: numpy scalars to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    return finite_or_none(obj)


def log_histogram(d: np.ndarray) -> dict:
    """Counts of the non-zero |errors| per log10 bin (BINS_PER_DECADE per decade), edges in log10 units."""
    nz = d[d > 0]
    if nz.size == 0:
        return {"log10_edges": [], "counts": []}
    lg = np.log10(nz)
    lo = max(math.floor(lg.min()), LOG_FLOOR)
    hi = min(max(math.ceil(lg.max()), lo + 1), LOG_CEIL)
    edges = np.linspace(lo, hi, (hi - lo) * BINS_PER_DECADE + 1)
    counts, _ = np.histogram(np.clip(lg, lo, hi), bins=edges)  # numpy's last bin includes its right edge
    return {"log10_edges": [round(float(e), 4) for e in edges], "counts": [int(c) for c in counts]}


def error_figures(output: str, ref: np.ndarray, got: np.ndarray) -> dict | None:
    """Figures for one output, or None when the two cannot be compared element-wise."""
    if isinstance(ref, list) or isinstance(got, list):
        return None  # sequence/map outputs (e.g. ZipMap probabilities) have no element-wise error
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.shape != got.shape:
        if ref.size != got.size:
            return None
        ref = ref.reshape(got.shape)  # (N,) vs (N, 1): the same prediction
    if ref.dtype.kind in "iubUSO" or got.dtype.kind in "iubUSO":
        if ref.dtype.kind in "biuf" and got.dtype.kind in "biuf":  # int64 1 vs float 1.0: the same class
            flips = int((ref != got).sum())
        else:
            flips = int((ref.astype(str) != got.astype(str)).sum())
        return {"output": output, "kind": "label", "elements": int(ref.size), "flips": flips,
                "flip_rate": flips / max(ref.size, 1)}
    r, g = ref.astype(np.float64), got.astype(np.float64)
    finite = np.isfinite(r) & np.isfinite(g)
    nonfinite_mismatch = int((~finite & ~((r == g) | (np.isnan(r) & np.isnan(g)))).sum())
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(g - r)[finite]
    # exact: equal finite values, and NaN/inf where the reference has the same (not a padding zero, below)
    zeros = int((d == 0).sum()) + int((~finite).sum()) - nonfinite_mismatch
    if d.size == 0:
        d = np.zeros(1)
    return {"output": output, "kind": "float", "elements": int(r.size), "zeros": zeros,
            "nonfinite_mismatch": nonfinite_mismatch, "max_abs": float(d.max()), "mean_abs": float(d.mean()),
            "p50_abs": float(np.percentile(d, 50)), "p99_abs": float(np.percentile(d, 99)),
            "hist": log_histogram(d)}


def compare_outputs(label: str, reference: str, ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> list:
    out = []
    for name, g in got.items():
        if name not in ref:
            continue
        f = error_figures(name, ref[name], g)
        if f is not None:
            out.append({"label": label, "reference": reference} | f)
    return out
