"""Figures shared by quantize and optimize: size/nodes/op histogram of a model file, and latency measured
*interleaved* across models, so a noisy (shared, 2-core) machine slows every candidate alike."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np


def model_stats(path: str | Path) -> dict[str, Any]:
    """file_bytes, nodes and the op histogram of an .onnx file (external data included in the size)."""
    from onnxforge.artifact import load_model
    from onnxforge.summary import summarize

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

    def paired(self, base: str, cand: str) -> dict[str, Any]:
        """Per batch size, `cand` against `base` from the same rounds (timing.Paired: base time / cand time, its
        interval and verdict). Each round times the models back to back, so a shared machine's slow spells hit
        both sides of a ratio alike."""
        from onnxforge.timing import paired

        return {b: paired(xs, self.samples[cand][b]) for b, xs in self.samples[base].items()}

    def paired_over(self, base: str, cand: str):
        """One timing.Paired over every batch size (per round, the geometric mean of the batch sizes' ratios)."""
        from onnxforge.timing import paired_over

        return paired_over(self.samples[base], self.samples[cand])

    def speedup(self, base: str, cand: str) -> dict[str, float]:
        """base/cand per batch size: the geometric mean of the per-round ratios (see paired)."""
        return {b: p.ratio for b, p in self.paired(base, cand).items()}


# Timing stays bounded on big inputs (an audio model's row is 43,844 samples; a detector's 1.2 MB): a timed batch
# holds at most this many bytes of input, and one latency() call spends about `budget_s` before it cuts rounds.
TIMING_BATCH_BYTES = 4 << 20


def row_bytes(feeds: dict[str, np.ndarray]) -> int:
    """Input bytes per row; inputs fed whole (no batch axis: data.Feeds.whole) do not grow with the batch."""
    whole = getattr(feeds, "whole", frozenset())
    return sum(np.asarray(v).nbytes // max(len(v), 1) for k, v in feeds.items() if k not in whole and np.ndim(v))


def timing_batches(feeds: dict[str, np.ndarray], batch_sizes: list[int], *,
                   max_bytes: int = TIMING_BATCH_BYTES) -> tuple[list[int], str | None]:
    """The batch sizes to time, each capped so one batch holds at most `max_bytes` of input (deterministic: it
    depends on the shapes only). Returns them and a note when a cap applied."""
    per_row = row_bytes(feeds)
    cap = max(1, max_bytes // per_row) if per_row else None
    out = list(dict.fromkeys(min(b, cap) if cap else b for b in batch_sizes))
    if out == list(dict.fromkeys(batch_sizes)):
        return out, None
    return out, (f"latency timed at batch sizes {out} instead of {batch_sizes}: a row holds {per_row:,} B of input "
                 f"and a timed batch at most {max_bytes >> 20} MiB")


def latency(models: dict[str, str | Path], feeds: dict[str, np.ndarray], batch_sizes: list[int], *,
            threads: int = 1, level: str = "all", rounds: int = 3, seconds: float = 0.25,
            progress=None, budget_s: float | None = None) -> Timings:
    """p50 latency in ms per model per batch size. Every round times every model once per batch size, models
    back to back (alternating order between rounds); the median over rounds is reported.

    With `budget_s` (optimize's figures; quantize's timing decisions keep every round), bounded for slow models:
    the first call of each (model, batch) is a warm-up that also gauges it — a call slower than `seconds`/20 is
    then timed for `seconds` per round (at least once, no further warm-up) — and rounds after the first stop
    once the call has spent `budget_s`. `.rounds` says how many rounds ran, `.runs` the timed calls per sample."""
    from onnxforge import runtime
    from onnxforge.data import tile_rows
    from onnxforge.timing import measure

    sessions = {k: runtime.session(Path(p), threads=threads, level=level) for k, p in models.items()}
    # a model whose state pins one row per run (data.Feeds.rows_per_run) is timed at that batch only
    pin = getattr(feeds, "rows_per_run", None)
    plan = [pin] if pin else batch_plan(list(models.values()), batch_sizes)
    inputs = {b: tile_rows(feeds, b) for b in plan}
    samples: dict[str, dict[str, list[float]]] = {k: {f"batch{b}": [] for b in plan} for k in models}
    slow: dict[tuple[str, int], bool] = {}
    runs: dict[str, dict[str, int]] = {k: {f"batch{b}": 0 for b in plan} for k in models}
    names = list(sessions)
    start = time.perf_counter()
    done = 0
    for r in range(rounds):
        if budget_s is not None and r and time.perf_counter() - start > budget_s * r / (r + 1):
            break  # another round would overrun the budget (rounds so far took their share of it)
        for b in plan:
            for k in names if r % 2 == 0 else names[::-1]:
                s, f = sessions[k], inputs[b]
                call = lambda s=s, f=f: s.run(None, f)  # noqa: E731
                if budget_s is not None and (k, b) not in slow:
                    t0 = time.perf_counter()
                    call()  # warm-up that gauges the call
                    slow[(k, b)] = time.perf_counter() - t0 > seconds / 20
                if slow.get((k, b)):  # no further warm-up: calls for `seconds` (at least one), their median
                    times, t_end = [], time.perf_counter() + seconds
                    while not times or (time.perf_counter() < t_end and len(times) < 400):
                        t0 = time.perf_counter()
                        call()
                        times.append(time.perf_counter() - t0)
                    ms, n = float(np.median(times)) * 1e3, len(times)
                else:
                    res = measure(call, runs=400, warmup=4, max_seconds=seconds, rows=b)
                    ms, n = res["p50_ms"], res["runs"]
                samples[k][f"batch{b}"].append(ms)
                runs[k][f"batch{b}"] += n
                if progress is not None:
                    progress()
        done = r + 1
    if progress is not None and done < rounds:
        progress.advance((rounds - done) * len(plan) * len(names))
    out = Timings({k: {b: float(np.median(v)) for b, v in per.items()} for k, per in samples.items()})
    out.samples = samples
    out.rounds = done
    out.runs = runs
    return out


def pass_speedup(before: str | Path, after: str | Path, feeds: dict[str, np.ndarray], batch_sizes: list[int], *,
                 threshold: float, threads: int = 1, level: str = "all", rounds: int = 9) -> dict[str, Any]:
    """Paired comparison of `after` against `before` per batch size (timing.Paired). A result that looks slower
    than `threshold` (its verdict is "slower") is measured again and the rounds pooled before it counts: on a busy
    machine single rounds swing by 2× either way."""
    kw = {"threads": threads, "level": level, "rounds": rounds, "seconds": 0.08}
    t = latency({"a": before, "b": after}, feeds, batch_sizes, **kw)
    spd = t.paired("a", "b")
    if any(p.verdict(threshold) == "slower" for p in spd.values()):
        t2 = latency({"a": before, "b": after}, feeds, batch_sizes, **kw)
        for k in t.samples:
            for b in t.samples[k]:
                t.samples[k][b] = t.samples[k][b] + t2.samples[k][b]
        spd = t.paired("a", "b")
    return spd


def geomean(values) -> float:
    v = [x for x in values if x and x == x and x > 0]
    return float(np.exp(np.mean(np.log(v)))) if v else float("nan")


def _tensor_bytes(t) -> int:
    import onnx

    if t.data_location == onnx.TensorProto.EXTERNAL:
        return int(next((e.value for e in t.external_data if e.key == "length"), 0) or 0)
    return len(t.raw_data) or sum(len(x) for x in (t.float_data, t.int32_data, t.int64_data, t.double_data,
                                                   t.uint64_data)) * 4 or sum(len(x) for x in t.string_data)


def _constants(model) -> dict[str, Any]:
    """Every stored tensor: initializers and Constant nodes' values, subgraphs included, by name."""
    from onnxforge.summary import all_nodes

    out = {t.name: t for t in model.graph.initializer}
    for n in all_nodes(model.graph):
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.HasField("t"):
                    out[n.output[0]] = a.t
        for a in n.attribute:
            if a.HasField("g"):
                out |= {t.name: t for t in a.g.initializer}
    return out


def tensor_bytes(path: str | Path) -> int:
    """Bytes of the stored tensors (initializers, Constant values; external data included) — the weights, without
    the value_info/shape annotations a pass may add (onnxslim annotates every tensor: +56 KB on basic-pitch)."""
    import onnx

    return sum(_tensor_bytes(t) for t in _constants(onnx.load(str(path), load_external_data=False)).values())


def grown_tensors(before: str | Path, after: str | Path, top: int = 2) -> str:
    """What made `after`'s tensors bigger than `before`'s: its largest stored tensors that `before` does not hold (a
    constant folded into a materialized tensor, e.g. ConstantOfShape of a weight's shape, Tile/Expand of a small
    constant, DequantizeLinear of INT8 weights)."""
    import onnx

    def sizes(p):
        m = onnx.load(str(p), load_external_data=False)
        return {k: (_tensor_bytes(t), list(t.dims)) for k, t in _constants(m).items()}

    old, new = sizes(before), sizes(after)
    fresh = sorted(((n, k, dims) for k, (n, dims) in new.items() if k not in old), reverse=True)[:top]
    return ", ".join(f"new constant {k} {dims} {n:,} B" for n, k, dims in fresh if n)
