"""Figures shared by quantize and optimize: size/nodes/op histogram of a model file, and latency measured
*interleaved* across models, so a noisy (shared, 2-core) machine slows every candidate alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def model_stats(path: str | Path) -> dict[str, Any]:
    """file_bytes, nodes and the op histogram of an .onnx file (external data included in the size)."""
    from onnxforge.artifact import load_model
    from onnxforge.inspect import summarize

    s = summarize(load_model(path, load_external=False), path)
    return {"file_bytes": s["file_bytes"], "nodes": s["nodes"], "ops": s["ops"]}


def batch_plan(paths: list[str | Path], batch_sizes: list[int]) -> list[int]:
    """The batch sizes all models can run: a model with a fixed batch dim only runs that one."""
    from onnxforge.artifact import load_model
    from onnxforge.data import fixed_batch

    fixed = {b for b in (fixed_batch(load_model(p, load_external=False)) for p in paths) if b}
    if len(fixed) == 1:
        return [fixed.pop()]
    return list(dict.fromkeys(batch_sizes))


class Timings(dict):
    """{model: {"batch1": p50 ms, ...}} (median over rounds), with the per-round samples kept for paired ratios."""

    samples: dict[str, dict[str, list[float]]]

    def speedup(self, base: str, cand: str) -> dict[str, float]:
        """base/cand per batch size: the median of per-round ratios. Each round times the models back to back,
        so a shared machine's slow spells hit both sides of a ratio alike."""
        out = {}
        for b, xs in self.samples[base].items():
            ys = self.samples[cand][b]
            out[b] = float(np.median([x / y for x, y in zip(xs, ys, strict=True) if y > 0]))
        return out


def latency(models: dict[str, str | Path], feeds: dict[str, np.ndarray], batch_sizes: list[int], *,
            threads: int = 1, level: str = "all", rounds: int = 3, seconds: float = 0.25,
            progress=None) -> Timings:
    """p50 latency in ms per model per batch size. Every round times every model once per batch size, models
    back to back (alternating order between rounds); the median over rounds is reported."""
    from onnxforge import runtime
    from onnxforge.data import tile_rows
    from onnxforge.timing import measure

    sessions = {k: runtime.session(Path(p), threads=threads, level=level) for k, p in models.items()}
    plan = batch_plan(list(models.values()), batch_sizes)
    inputs = {b: tile_rows(feeds, b) for b in plan}
    samples: dict[str, dict[str, list[float]]] = {k: {f"batch{b}": [] for b in plan} for k in models}
    names = list(sessions)
    for r in range(rounds):
        for b in plan:
            for k in names if r % 2 == 0 else names[::-1]:
                s, f = sessions[k], inputs[b]
                res = measure(lambda s=s, f=f: s.run(None, f), runs=400, warmup=5, max_seconds=seconds, rows=b)
                samples[k][f"batch{b}"].append(res["p50_ms"])
                if progress is not None:
                    progress()
    out = Timings({k: {b: float(np.median(v)) for b, v in per.items()} for k, per in samples.items()})
    out.samples = samples
    return out


def pass_speedup(before: str | Path, after: str | Path, feeds: dict[str, np.ndarray], batch_sizes: list[int], *,
                 threshold: float, threads: int = 1, level: str = "all", rounds: int = 9) -> dict[str, float]:
    """Paired speedup of `after` over `before`. A result under `threshold` is measured again and the rounds
    pooled before it counts: on a busy machine single rounds swing by 2× either way."""
    kw = {"threads": threads, "level": level, "rounds": rounds, "seconds": 0.08}
    t = latency({"a": before, "b": after}, feeds, batch_sizes, **kw)
    spd = t.speedup("a", "b")
    if any(v < threshold for v in spd.values()):
        t2 = latency({"a": before, "b": after}, feeds, batch_sizes, **kw)
        for k in t.samples:
            for b in t.samples[k]:
                t.samples[k][b] = t.samples[k][b] + t2.samples[k][b]
        spd = t.speedup("a", "b")
    return spd


def geomean(values) -> float:
    v = [x for x in values if x and x == x and x > 0]
    return float(np.exp(np.mean(np.log(v)))) if v else float("nan")
