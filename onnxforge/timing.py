"""Latency measurement shared by `bench`, `report`, quantize/optimize decisions and `make bench`."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def measure(fn: Callable[[], object], *, runs: int = 100, warmup: int = 10, max_seconds: float = 10.0,
            rows: int = 1) -> dict[str, float]:
    """Call fn() `warmup` times, then up to `runs` timed times (stopping early after max_seconds, keeping at
    least 5). Returns milliseconds p50/p90/p99/mean/min and rows/s at the median."""
    for _ in range(warmup):
        fn()
    times = []
    deadline = time.perf_counter() + max_seconds
    for i in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if i >= 4 and time.perf_counter() > deadline:
            break
    ms = np.asarray(times) * 1e3
    p50 = float(np.percentile(ms, 50))
    return {"p50_ms": p50, "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "runs": int(ms.size),
            "rows_per_s": rows / (p50 / 1e3) if p50 > 0 else float("inf")}
