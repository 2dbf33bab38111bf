"""Latency measurement shared by `bench`, `report`, quantize/optimize decisions and `make bench`, and the
noise-aware comparison (paired rounds, an interval, a ±5 % band) that quantize and optimize decide with."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def measure(fn: Callable[[], object], *, runs: int = 100, warmup: int = 10, max_seconds: float = 10.0,
            rows: int = 1) -> dict[str, float]:
    """Call fn() `warmup` times, then up to `runs` timed times (stopping early after max_seconds, keeping at
    least 5). Returns `stats`: milliseconds p50/p90/p99 (None from too few calls)/mean/min, rows/s at the median."""
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
    return stats(times, rows)


# the fewest timed calls a tail percentile is read from: below, p90 of 8 calls or p99 of 50 is the slowest call
# under another name (an interpolation towards the max), so it is not given (None, null in JSON)
TAIL_RUNS = {90: 10, 99: 100}


def stats(times_s, rows: int = 1) -> dict[str, float | None]:
    """Milliseconds p50/p90/p99/mean/min, the runs and rows/s at the median, from per-call seconds; p90/p99 None
    with fewer than TAIL_RUNS calls."""
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    p50 = float(np.percentile(ms, 50))
    tail = {f"p{q}_ms": float(np.percentile(ms, q)) if ms.size >= n else None for q, n in TAIL_RUNS.items()}
    return {"p50_ms": p50, **tail, "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "runs": int(ms.size),
            "rows_per_s": rows / (p50 / 1e3) if p50 > 0 else float("inf")}


# ------------------------------------------------------------------ noise-aware comparisons
#
# A shared 2-core machine moves ±15 % from run to run, so one p50 against another decides by chance. Decisions
# compare *paired rounds* instead: every round times the baseline and the candidate back to back on the same
# feeds (optim.perf.latency alternates their order between rounds), each round gives one ratio, and the ratios give
# an interval. Only an interval wholly outside a ±BAND band around the bar says "faster" or "slower"; inside it the
# two run at the same speed and a fixed preference order decides, so noise cannot flip the choice.

BAND = 0.05  # ±5 % around the bar (1.0, or min_speedup) is "the same speed"
# with one round there is no spread to estimate: the interval is the ratio ±15 %, the run-to-run noise measured on
# a shared 2-core VM (DESIGN.md)
ONE_ROUND_NOISE = 0.15
# two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (1.96 beyond)
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t95(df: int) -> float:
    return _T95[df - 1] if 1 <= df <= len(_T95) else 1.96


@dataclass(frozen=True)
class Paired:
    """How many times as fast a candidate is as its baseline, from paired rounds: `ratio` is the geometric mean of
    the per-round ratios baseline time / candidate time (> 1: the candidate is faster), [`low`, `high`] a 95 %
    t-interval on the mean of their logarithms (ratio ×÷ 1.15 with a single round)."""

    ratio: float
    low: float
    high: float
    rounds: int

    def verdict(self, bar: float = 1.0, band: float = BAND) -> str:
        """"faster" / "slower" when the interval lies wholly above / below bar·(1 ± band), else "same"."""
        if self.low > bar * (1 + band):
            return "faster"
        if self.high < bar * (1 - band):
            return "slower"
        return "same"

    def as_dict(self) -> dict:
        return {"ratio": _r(self.ratio), "interval": [_r(self.low), _r(self.high)], "rounds": self.rounds}


def _r(x: float) -> float:
    """Four significant digits: figures meant for a file people read and commit."""
    return float(f"{x:.4g}") if math.isfinite(x) else x


def paired_logs(log_ratios: Sequence[float]) -> Paired:
    """A Paired from per-round log(baseline time / candidate time)."""
    x = np.asarray([v for v in log_ratios if math.isfinite(v)], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return Paired(float("nan"), float("nan"), float("nan"), 0)
    m = float(x.mean())
    half = t95(n - 1) * float(x.std(ddof=1)) / math.sqrt(n) if n >= 2 else math.log1p(ONE_ROUND_NOISE)
    return Paired(math.exp(m), math.exp(m - half), math.exp(m + half), n)


def paired(base: Sequence[float], cand: Sequence[float]) -> Paired:
    """Paired comparison of two equally long lists of per-round times (same rounds, same feeds)."""
    return paired_logs([math.log(b / c) for b, c in zip(base, cand, strict=True) if b > 0 and c > 0])


def paired_over(base: Mapping[str, Sequence[float]], cand: Mapping[str, Sequence[float]]) -> Paired:
    """One comparison over several batch sizes: per round, the mean log ratio over the batch sizes (a geometric
    mean), then the interval over rounds. Log ratios add up, so 'measurably faster' built on this never runs in a
    circle (a > b > c > a is impossible), which keeps rank() well defined."""
    per_round = [[math.log(b / c) for b, c in zip(base[k], cand[k], strict=True) if b > 0 and c > 0] for k in base]
    n = min((len(v) for v in per_round), default=0)
    return paired_logs([float(np.mean([v[i] for v in per_round])) for i in range(n)])


def rank(names: Sequence[str], faster: Callable[[str, str], bool], preference: Callable[[str], Any]) -> list[str]:
    """Order candidates best first, deterministically: repeatedly take — among those left that no other one left is
    measurably faster than — the first by `preference` (e.g. standard ops, fewer nodes, smaller file, list order).
    `faster(a, b)` says a is measurably faster than b (an interval outside the band)."""
    left, out = list(names), []
    while left:
        free = [a for a in left if not any(faster(b, a) for b in left if b != a)] or left
        best = min(free, key=preference)
        out.append(best)
        left.remove(best)
    return out


def overall(speed: Mapping[str, Mapping[str, Any]], bar: float = 1.0) -> str:
    """One verdict from recorded per-batch-size figures ({"ratio", "interval", "rounds"}, as in a lock): "slower"
    if slower at some batch size (a model is not slower at one of them unasked), "faster" if faster at every one,
    else "same"."""
    v = [Paired(s["ratio"], *s["interval"], s["rounds"]).verdict(bar) for s in speed.values()]
    return "slower" if "slower" in v else "faster" if v and all(x == "faster" for x in v) else "same"


def threads_label(row: dict) -> str:
    """The threads a latency row ran on: '1', or 'default (not applied)' when the limit asked did not hold."""
    if row.get("threads_applied") is False:
        return "default (not applied)"
    return "default" if row.get("threads") is None else str(row["threads"])


def speed_text(r: dict | None) -> str:
    """A ratio as printed: '1.31×', or '1.03× (within noise: 0.91–1.16×)' when its paired 95 % interval over the
    interleaved rounds reaches into 1 ± 5 % (BAND): not measurably faster or slower; '' for none."""
    if not r or r.get("speedup") is None:
        return ""
    lo, hi = r.get("interval") or (None, None)
    same = f" (within noise: {lo:.2f}–{hi:.2f}×)" if r.get("verdict") == "same" and lo is not None else ""
    return f"{r['speedup']:.2f}×{same}"
