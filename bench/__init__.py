"""The benchmark suite: every bench/bench_*.py contributes tables; `python -m bench` writes results.

Shared by the frontend benches: `interleaved` (paired timing rounds built on onnxforge.timing.measure, ratios from
onnxforge.timing.paired), `check_outputs` (validate's own comparison, at the config's or the frontend's tolerance)
and the cells that print a figure only where it was measured fairly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def interleaved(fns: dict[str, Callable[[], object]], *, rounds: int, seconds: float, rows: int = 1,
                warmup: int = 3, runs: int = 400) -> dict[str, list[float]]:
    """Per-round p50 ms of every callable. Each round times every callable once with onnxforge.timing.measure
    (`seconds` at most, `warmup` untimed calls first), back to back, in reversed order on odd rounds — so a
    shared machine's slow spell hits both sides of a ratio alike. Feed two lists to onnxforge.timing.paired."""
    from onnxforge import timing

    names = list(fns)
    out: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            out[k].append(timing.measure(fns[k], runs=runs, warmup=warmup, max_seconds=seconds, rows=rows)["p50_ms"])
    return out


def check_outputs(fe, native, cfg, ref: dict[str, Any], got: dict[str, Any], rows: int) -> dict[str, Any]:
    """ORT outputs against the native reference with validate's rules: onnxforge.compare.compare per output at the
    config's validate: tolerances (per output, then rtol/atol) where it sets them, else the frontend's own
    (Frontend.tolerance(native, cfg, output) where the frontend has it, else its rtol/atol); labels may flip up to
    the output's max_flip_rate. Passes only if every reference output was compared and held."""
    from onnxforge.compare import compare
    from onnxforge.stages.validate import OutputTolerance, ValidateOptions

    opts = getattr(getattr(cfg, "stages", None), "validate", None) or ValidateOptions()
    by_output = getattr(fe, "tolerance", None)
    compared, missing = [], []
    for name, r in ref.items():
        tol = opts.outputs.get(name, OutputTolerance())
        if tol.skip:
            continue
        if name not in got:
            missing.append(name)
            continue
        rtol, atol = by_output(native, cfg, name) if callable(by_output) else (fe.rtol, fe.atol)
        rtol = tol.rtol if tol.rtol is not None else opts.rtol if opts.rtol is not None else rtol
        atol = tol.atol if tol.atol is not None else opts.atol if opts.atol is not None else atol
        c = compare(name, np.asarray(r), np.asarray(got[name]), rtol, atol)
        if c.get("kind") == "label" and not c["pass"] and c["flip_rate"] <= tol.max_flip_rate:
            c["pass"] = True
        compared.append(c)
    bad = [c for c in compared if not c["pass"]]
    reasons = [_why(c) for c in bad] + [f"{n}: not among the ONNX outputs" for n in missing]
    return {"pass": bool(compared) and not reasons, "rows": rows,
            "outputs": {c["output"]: _summary(c) for c in compared},
            "reason": "; ".join(reasons) or (None if compared else "nothing compared")}


def _summary(c: dict) -> dict:
    keep = ("kind", "pass", "rtol", "atol", "max_abs", "mismatches", "flips", "flip_rate", "total", "reason")
    return {k: c[k] for k in keep if k in c}


def _why(c: dict) -> str:
    if c.get("kind") == "float":
        return (f"{c['output']}: {c['mismatches']}/{c['total']} values beyond rtol {c['rtol']:g}, atol "
                f"{c['atol']:g} (max abs diff {c['max_abs']:.3g})")
    if c.get("kind") == "label":
        return f"{c['output']}: {c['flips']}/{c['total']} labels differ"
    return f"{c['output']}: {c.get('reason', c.get('kind'))}"


def num(x: float) -> str:
    """Three significant digits, whole numbers from 100 on."""
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def speed_cell(p: dict | None) -> str:
    """'7.7× (7.1–8.3)': a timing.Paired.as_dict() ratio with its 95 % interval; '—' where there is none."""
    if not p or p.get("ratio") is None or p["ratio"] != p["ratio"]:
        return "—"
    lo, hi = p["interval"]
    return f"{num(p['ratio'])}× ({num(lo)}–{num(hi)})"


def ort_threads(sess, n: int = 1) -> tuple[bool, str]:
    """Whether an onnxruntime session runs on n intra-op threads (and 1 inter-op), read back from the session."""
    so = sess.get_session_options()
    intra, inter = so.intra_op_num_threads, so.inter_op_num_threads
    return intra == n and inter in (0, 1), f"onnxruntime intra-op {intra}, inter-op {inter} (read back)"
