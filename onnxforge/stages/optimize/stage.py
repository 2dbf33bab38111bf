"""optimize: onnxslim simplification, transformer fusion and onnxruntime's offline graph optimization, each pass
checked numerically against its own input — a pass that changes results is rejected and the stage goes on
without it. `portable: true` keeps the output to standard ONNX ops."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from onnxforge.config import StrictModel
from onnxforge.registry import register_stage


class OptimizeOptions(StrictModel):
    timed_decisions: ClassVar[bool] = True  # passes kept for speed, and the speed verdict: in the config's lock

    level: Literal["none", "basic", "extended", "all"] = Field(
        "extended", description="onnxruntime offline optimization level (extended/all add com.microsoft ops)")
    portable: bool = Field(False, description="standard ONNX ops only (no com.microsoft): ORT level capped at "
                                              "basic, no transformer fusion")
    simplify: bool = Field(True, description="onnxslim: constant folding, dead nodes, common subexpressions")
    fusion: str = Field("auto", description="transformer fusion: auto (detect) | off | an onnxruntime.transformers "
                                            "model type (bert, gpt2, vit, ...)")
    num_heads: int = Field(0, ge=0, description="fusion: attention heads (0 = detect)")
    hidden_size: int = Field(0, ge=0, description="fusion: hidden size (0 = detect)")
    rtol: float = Field(1e-3, ge=0, description="a pass is rejected when |after - before| > atol + rtol·|before|")
    atol: float = Field(1e-4, ge=0, description="absolute tolerance of each pass's check, in the outputs' units: "
                                                 "|after − before| ≤ atol + rtol·|before|")
    quantum_steps: float = Field(2.0, ge=0, description="quantized outputs: also allow this many steps of the "
                                                        "output's quantization scale (integer kernels round)")
    rows: int = Field(256, gt=0, description="evaluation rows for the comparisons")
    allow_synthetic: bool = Field(False, description="compare passes on random inputs when no data is configured")
    min_pass_speedup: float = Field(0, ge=0, description="0 (default): passes are judged by checker, load, "
                                    "numerics, size and node count only. > 0: also reject a pass whose output is "
                                    "measurably slower than this many times its input's speed at some batch size "
                                    "(paired rounds, 95 % interval outside a ±5 % band; ORT default level, as "
                                    "written when portable) — recorded in the config's lock, so reruns reuse it")
    require_faster: bool = Field(False, description="fail the stage (exit 1) when the optimized model is measurably "
                                 "slower than its input (paired rounds at ORT's default level, as written when "
                                 "portable; the ±5 % band is the same speed). It judges the recorded figures: "
                                 "toggling it keeps the lock")
    pass_timing_rounds: int = Field(9, gt=0, description="paired timing rounds per pass (repeated once when "
                                                         "the pass looks slower)")
    upgrade_opset: bool = Field(True, description="a pass whose fused op exists only from a later opset "
                                "(onnxruntime's LayerNormalization: 17) may run on the model converted to that opset "
                                "by onnx's version converter; false keeps the input's opset and rejects such a pass")
    allow_more_nodes: bool = Field(False, description="keep a pass even when it leaves more nodes than it got")
    max_size_growth: float | None = Field(0.05, ge=0, description="reject a pass that grows the stored tensors (weights, "
                                   "constants) by more than this fraction and 4 KiB (e.g. folding quantized weights "
                                   "back to float, or materializing ConstantOfShape/Tile/Expand of a constant); "
                                   "null = no limit")
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 64], description="latency batch sizes")
    threads: int = Field(1, gt=0, description="intra-op threads for latency")
    latency_rounds: int = Field(3, gt=0, description="paired timing rounds (input and output back to back): the "
                                "ratio is their geometric mean, with a 95 % interval")
    timing_budget_s: float = Field(10.0, gt=0, description="seconds the latency figures may spend before they stop "
                                   "adding rounds (slow models get fewer calls per round and no repeated warm-up)")
    max_eval_mb: float = Field(16.0, gt=0, description="evaluation rows are capped so their inputs hold at most "
                                "this many MiB (large audio/image rows)")


def _feeds(ctx, src: Path, opts: OptimizeOptions) -> tuple[dict, str]:
    from onnxforge import data
    from onnxforge.errors import UserError

    d = ctx.cfg.data
    if d.path is not None or d.synthetic:
        feeds, prov = ctx.feeds("eval", src)
    elif opts.allow_synthetic:
        feeds, prov = data.synthesize(ctx.input_specs(src), min(opts.rows, 64), d.seed), "synthetic"
    else:
        raise UserError("optimize compares every pass numerically: give data (data.path or --data FILE), or "
                        "--set allow_synthetic=true to compare on random inputs")
    from onnxforge.stages.optimize import perf

    rows = opts.rows
    per_row = perf.row_bytes(feeds)
    if per_row:
        rows = max(1, min(rows, int(opts.max_eval_mb * (1 << 20)) // per_row))
    return data.take(feeds, rows), prov


def _quantum_atol(path: Path) -> dict[str, float]:
    """Per-output scale of a DequantizeLinear that produces a graph output (a quantized model's output step)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path), load_external_data=False)
    inits = {t.name: t for t in m.graph.initializer}
    outs = {o.name for o in m.graph.output}
    res = {}
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear" and n.output[0] in outs and n.input[1] in inits:
            res[n.output[0]] = float(numpy_helper.to_array(inits[n.input[1]]).max())
    return res


def _max_abs(got, ref) -> float:
    """Largest |got - ref| over the elements finite in both (0.0 for an empty output: a zero-width one is legal);
    nan/inf agreement is compare()'s business."""
    g, r = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    finite = np.isfinite(g) & np.isfinite(r)
    return float(np.abs(g[finite] - r[finite]).max(initial=0.0))


def _check(before: dict, after: dict, opts: OptimizeOptions, quantum: dict[str, float]) -> tuple[bool, dict]:
    from onnxforge.compare import compare

    out = {}
    ok = True
    for name, ref in before.items():
        if name not in after:
            return False, {name: {"pass": False, "reason": "output missing"}}
        atol = opts.atol + opts.quantum_steps * quantum.get(name, 0.0)
        c = compare(name, ref, after[name], opts.rtol, atol)
        out[name] = {k: c.get(k) for k in ("pass", "kind", "max_abs", "max_rel", "min_atol", "min_rtol", "flips",
                                           "reason") if c.get(k) is not None}
        ok &= bool(c["pass"])
    return ok, out


@register_stage("optimize", OptimizeOptions, produces_model=True,
                help="graph optimization (onnxslim, transformer fusion, ORT levels); every pass checked")
def run_optimize(ctx, opts: OptimizeOptions):
    from onnxforge.admission import admit
    from onnxforge.stages.optimize.inputs import input_model

    if not opts.batch_sizes or any(b <= 0 for b in opts.batch_sizes):
        from onnxforge.errors import UserError

        raise UserError("optimize.batch_sizes: give positive batch sizes, e.g. [1, 64]")
    # the admission gate's session (optimizations off) is the reference the first pass is compared with
    from onnxforge.lock import Decisions

    dec = ctx.decisions or Decisions()
    locked = dec.recorded()  # --locked without a matching entry fails here, before any work
    adm = admit(input_model(ctx), session={"level": "disable"})
    # absolute: each pass runs with its cwd inside it (a relative run_dir broke every pass: the input path was
    # resolved against the work folder)
    work = (ctx.stage_dir / ".optimize-work").resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        return _run(ctx, opts, adm, work, locked, dec)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _plan(src: Path, opts: OptimizeOptions, warnings: list[str]) -> list[tuple[str, Any]]:
    from onnxforge.errors import UserError
    from onnxforge.stages.optimize import passes

    plan: list[tuple[str, Any]] = []
    if opts.simplify:
        plan.append(("onnxslim", passes.simplify))
    fusion = opts.fusion.strip().lower()
    if fusion not in ("auto", "off", "none", "false"):
        from onnxruntime.transformers.optimizer import MODEL_TYPES

        if fusion not in MODEL_TYPES:
            raise UserError(f"optimize.fusion: unknown model type '{opts.fusion}' — use auto, off or one of "
                            f"{', '.join(sorted(MODEL_TYPES))}")
    if fusion == "auto":
        fusion = passes.detect_transformer(src) or "off"
    if fusion not in ("off", "none", "false"):
        if opts.portable:
            warnings.append(f"transformer fusion ({fusion}) skipped: it emits com.microsoft ops (portable: true)")
        else:
            plan.append((f"fusion-{fusion}", lambda s, d: passes.fuse_transformer(s, d, fusion, opts.num_heads,
                                                                                  opts.hidden_size)))
    level = opts.level
    if opts.portable and level in ("extended", "all"):
        warnings.append(f"ORT level {level} lowered to basic: higher levels emit com.microsoft ops (portable: true)")
        level = "basic"
    if level == "all":
        warnings.append("ORT level all writes hardware-specific layouts (NCHWc): run the result on this CPU type")
    if level != "none":
        plan.append((f"ort-{level}", lambda s, d: passes.ort_level(s, d, level)))
    return plan


# the size gate weighs stored tensors (initializers, Constant values), not the file: value_info a pass adds is no
# growth. Growth under this many bytes is a folded shape or scalar, not a materialized weight
_SIZE_SLACK = 4096


def _call(fn, src: Path, dst: Path, work: Path) -> dict:
    """One pass, run inside the work folder: whatever a library leaves in the current directory
    (sym_shape_infer_temp.onnx, …) is removed with it. A pass that raises is rejected, not fatal."""
    import contextlib

    from onnxforge.errors import one_line
    from onnxforge.stages.optimize import gate

    src, dst = Path(src).resolve(), Path(dst).resolve()  # before the chdir: relative paths would move
    try:
        with contextlib.chdir(work):
            return fn(src, dst) or {}
    except Exception as e:
        raise gate.Rejected(f"the pass failed: {type(e).__name__}: {one_line(e)[:200]}") from None


def _attempt(fn, current: Path, work: Path, stem: str, feeds: dict, rec: dict, warnings: list[str],
             upgrade: bool = True):
    """Run one pass on `current` and gate its output: unused opset domains dropped, the full onnx.checker,
    onnxruntime loads it and runs it on the feeds its input ran on. An output that fails the checker only because
    a fused op exists from a later opset (onnxruntime's LayerNormalization under opset 13) gets one retry: the
    pass input converted to that opset by onnx's version converter. Returns (output, its outputs) or raises
    gate.Rejected."""
    from onnxforge import runtime
    from onnxforge.artifact import load_model
    from onnxforge.errors import one_line
    from onnxforge.normalize import default_opset
    from onnxforge.stages.optimize import gate

    dst = work / f"{stem}.onnx"
    rec["info"] = _call(fn, current, dst, work)
    if not dst.is_file():
        raise gate.Rejected("the pass wrote no model")
    gate.tidy(dst)
    err = gate.checker_error(dst)
    if err and upgrade and (version := gate.needed_opset(err, dst)):
        old = default_opset(load_model(current, load_external=False))
        try:
            up = gate.upgrade(current, work / f"{stem}-opset{version}-input.onnx", version)
        except gate.Rejected as e:
            raise gate.Rejected(f"fails onnx.checker: {err} (retry at opset {version}: {e})") from None
        dst = work / f"{stem}-opset{version}.onnx"
        rec["info"] = _call(fn, up, dst, work) | {"opset": [old, version]}
        gate.tidy(dst)
        err2 = gate.checker_error(dst)
        if err2:
            raise gate.Rejected(f"fails onnx.checker: {err} (and at opset {version}: {err2})")
        warnings.append(f"pass {rec['pass']}: its output is valid ONNX only at opset {version} ({err.split(' with ')[0]}"
                        f" at {old}), so it ran on the model converted from opset {old} to {version}")
    elif err:
        raise gate.Rejected(f"fails onnx.checker: {err}")
    sess = gate.loads(dst)
    try:
        got = runtime.run(sess, feeds, user_inputs=False)
    except Exception as e:
        raise gate.Rejected(f"onnxruntime cannot run it on the inputs its input ran on: "
                            f"{one_line(e)[:200] or type(e).__name__}") from None
    return dst, got


def _judge(rec: dict, dst: Path, current: Path, ref: dict, got: dict, original: dict, feeds: dict, batches: list[int],
           opts: OptimizeOptions, timed: dict) -> None:
    """Numerics against the pass's input, then portability, file size, node count and (only when asked:
    min_pass_speedup > 0) speed — from `timed` (the lock's record of this pass) when it holds one, else measured
    and recorded there. Fills rec; raises gate.Rejected."""
    from onnxforge.stages.optimize import gate, passes, perf

    ok, cmp = _check(ref, got, opts, _quantum_atol(current))
    rec["max_abs_vs_original"] = max((_max_abs(got[k], v) for k, v in original.items()
                                      if np.asarray(v).dtype.kind == "f" and k in got
                                      and np.shape(got[k]) == np.shape(v)), default=0.0)
    stats, before = perf.model_stats(dst), perf.model_stats(current)
    rec.update(nodes_after=stats["nodes"], ops_after=stats["ops"], file_bytes=stats["file_bytes"], comparison=cmp)
    if not ok:
        bad = {k: v for k, v in cmp.items() if not v.get("pass")}
        raise gate.Rejected("changes results beyond tolerance: " + "; ".join(
            f"{k} max_abs {v.get('max_abs', float('nan')):.3g} (needs atol ≥ {v.get('min_atol', 0):.3g})"
            if "max_abs" in v else f"{k} {v.get('reason', 'differs')}" for k, v in bad.items()))
    if opts.portable and (bad := passes.contrib_ops(dst)):
        raise gate.Rejected(f"emits non-standard ops {sorted(bad)} (portable: true)")
    w0, w1 = perf.tensor_bytes(current), perf.tensor_bytes(dst)
    rec["tensor_bytes"] = w1
    if opts.max_size_growth is not None and w1 - w0 > w0 * opts.max_size_growth and w1 - w0 > _SIZE_SLACK:
        grown = perf.grown_tensors(current, dst)
        raise gate.Rejected(f"grows the stored tensors {w0:,} → {w1:,} B (file {before['file_bytes']:,} → "
                            f"{stats['file_bytes']:,} B" + (f"; {grown})" if grown else ")")
                            + " — max_size_growth: null accepts it")
    if stats["nodes"] > rec["nodes_before"] and not opts.allow_more_nodes:
        raise gate.Rejected(f"adds nodes ({rec['nodes_before']} → {stats['nodes']})")
    if opts.min_pass_speedup > 0:
        if rec["pass"] not in timed:
            # how the model will run: ORT at its default level, or as written for other runtimes (portable)
            spd = perf.pass_speedup(current, dst, feeds, batches, threshold=opts.min_pass_speedup,
                                    threads=opts.threads, rounds=opts.pass_timing_rounds,
                                    level="disable" if opts.portable else "all")
            slow = any(p.verdict(opts.min_pass_speedup) == "slower" for p in spd.values())
            timed[rec["pass"]] = {"kept": not slow, "speed": {b: p.as_dict() | {"verdict": p.verdict(
                opts.min_pass_speedup)} for b, p in spd.items()}}
        speed = timed[rec["pass"]]["speed"]
        rec["speed"], rec["speedup"] = speed, {b: v["ratio"] for b, v in speed.items()}
        if not timed[rec["pass"]]["kept"]:
            raise gate.Rejected("slower than its input (" + ", ".join(
                f"{v['ratio']:.2f}× ({v['interval'][0]:.2f}–{v['interval'][1]:.2f}) at {k}" for k, v in speed.items())
                + f"; bar {opts.min_pass_speedup:g}× ± 5 %)")


def _runnable_batches(sess, feeds: dict, batches: list[int]) -> tuple[list[int], str | None]:
    """The timing batch sizes the input model runs at (a model whose shapes pin a dim the batch plan cannot see —
    a [1] state beside scalar inputs — refuses 64 rows); none left: the evaluation feeds as they are."""
    from onnxforge import data
    from onnxforge.errors import one_line

    ok, why = [], []
    for b in batches:
        try:
            sess.run(None, data.tile_rows(feeds, b))  # as perf.latency calls it: one run, no row splitting
            ok.append(b)
        except Exception as e:
            why.append(f"batch {b} not timed: the model does not run on it ({one_line(e)[:120]})")
    if not ok:
        ok = [data.n_rows(feeds)]
    return ok, "; ".join(why) or None


def _run(ctx, opts: OptimizeOptions, adm, work: Path, locked: dict | None, dec):
    from onnxforge import data, runtime, timing
    from onnxforge.admission import check_feeds
    from onnxforge.artifact import atomic_write_json, load_model, metadata, save_model, stamp
    from onnxforge.data import fixed_batch
    from onnxforge.errors import CheckFailed, UserError
    from onnxforge.pipeline import StageResult
    from onnxforge.stages.optimize import gate, passes, perf
    from onnxforge.stages.optimize.ui import progress_bar

    src = adm.path
    warnings: list[str] = []
    if opts.portable and (bad := passes.contrib_ops(src)):
        raise UserError(f"portable: the input already uses non-standard ops {sorted(bad)} — optimize the model "
                        "before any ORT-specific pass (or quantize with QDQ), or set portable: false")
    before = perf.model_stats(src)
    if adm.external or adm.rewritten:
        # the admitted model differs from the file (normalized IR<4 inputs, merged opsets) or keeps its weights
        # in external files: every pass reads a copy in the work folder, and nothing is written beside the input
        src = save_model(adm.model, work / "input.onnx", run_check=False)
    feeds, prov = _feeds(ctx, src, opts)
    check_feeds(feeds, adm.model, what=f"the data ({prov})", model_name=adm.path.name)
    plan = _plan(src, opts, warnings)
    current = src
    original = ref = runtime.run(adm.session, feeds)  # ref: the current pass's input
    records: list[dict[str, Any]] = []
    accepted: dict[str, Path] = {"input": src}
    batches = perf.batch_plan([src], opts.batch_sizes)
    timing_note = None
    if fixed_batch(adm.model) is None:  # a pinned batch is the only one the model runs
        batches, timing_note = perf.timing_batches(feeds, batches)
    batches, dropped = _runnable_batches(adm.session, feeds, batches)
    if dropped:
        timing_note = ((timing_note + "; ") if timing_note else "") + dropped
    timed: dict[str, dict] = {}
    if locked is not None:
        try:
            timed = dict(locked["passes"])
            assert all(isinstance(v, dict) and isinstance(v.get("speed"), dict) for v in timed.values())
            assert isinstance(locked["speed"], dict) and isinstance(locked["p50_ms"], dict)
        except (AssertionError, KeyError, TypeError) as e:
            raise dec.invalid(str(e) or type(e).__name__) from None
    with progress_bar(ctx.console, "optimize", len(plan)) as bar:
        for i, (name, fn) in enumerate(plan):
            bar.describe(f"optimize: {name}")
            rec: dict[str, Any] = {"pass": name, "nodes_before": perf.model_stats(current)["nodes"]}
            t0 = time.perf_counter()
            try:
                dst, got = _attempt(fn, current, work, f"{i}-{name}", feeds, rec, warnings,
                                    opts.upgrade_opset)
                _judge(rec, dst, current, ref, got, original, feeds, batches, opts, timed)
            except gate.Rejected as e:
                rec.update(status="rejected", reason=str(e))
                warnings.append(f"pass {name} rejected: {e}")
            else:
                rec["status"] = "applied"
                accepted[name] = dst
                current, ref = dst, got
            rec["wall_s"] = round(time.perf_counter() - t0, 3)
            records.append(rec)
            bar()

    # timing: every accepted intermediate as written (ORT optimizations off: what the pass itself changed), and
    # the input vs the result as they will run (ORT's default level; as written when portable) — the speed
    # verdict require_faster judges. Measured once and recorded in the lock; reruns reuse the figures. Bounded:
    # capped batch bytes, one call per round for slow models, rounds cut past the time budget.
    reused = locked is not None and set(locked["p50_ms"].get("raw") or {}) == set(accepted)
    if locked is not None and not reused:  # the passes applied differ from when the lock was written
        if dec.lock.mode == "locked":
            raise CheckFailed(f"optimize: the passes applied ({', '.join(accepted)}) differ from the lock's "
                              f"({', '.join(locked['p50_ms'].get('raw') or {})}) — rerun with --remeasure and "
                              "commit the lock")
    if reused:
        decision = locked
    else:
        n_meas = opts.latency_rounds * len(batches) * (len(accepted) + 2)
        kw = {"threads": opts.threads, "rounds": opts.latency_rounds, "budget_s": opts.timing_budget_s / 2}
        with progress_bar(ctx.console, "optimize: timing", n_meas) as bar:
            raw = perf.latency(accepted, feeds, batches, level="disable", progress=bar, **kw)
            full = perf.latency({"input": src, "output": current}, feeds, batches, level="all", progress=bar, **kw)
        last = list(accepted)[-1]
        spd = raw.paired("input", last) if opts.portable else full.paired("input", "output")
        decision = {"passes": timed, "rule": RULE,
                    "speed": {b: p.as_dict() | {"verdict": p.verdict()} for b, p in spd.items()},
                    "p50_ms": {"raw": {k: _ms(v) for k, v in raw.items()},
                               "input": _ms(full["input"]), "output": _ms(full["output"])},
                    "measured": {"rounds": {"raw": raw.rounds, "ort_all": full.rounds},
                                 "runs": {"raw": raw.runs, "ort_all": full.runs}}}
        dec.record(decision)
    p50 = decision["p50_ms"]
    for rec in records:
        if rec["status"] == "applied":
            rec["p50_ms_raw"] = p50["raw"][rec["pass"]]
    before |= {"p50_ms": p50["input"], "p50_ms_raw": p50["raw"]["input"]}
    latency_info = {"threads": opts.threads, "batch_sizes": batches, "rounds": opts.latency_rounds,
                    "rounds_measured": decision["measured"]["rounds"], "runs": decision["measured"]["runs"],
                    "p50_ms": "onnxruntime default level (all)",
                    "p50_ms_raw": "graph as written (optimizations disabled)",
                    "speed": "output vs input, " + ("as written (portable)" if opts.portable else "ORT default level")}
    if timing_note:
        latency_info["note"] = timing_note
    applied = [r["pass"] for r in records if r["status"] == "applied"]
    rejected = [r["pass"] for r in records if r["status"] == "rejected"]
    speed = decision["speed"]
    summary = {"before": before, "passes": records, "applied": applied, "rejected": rejected,
               "portable": opts.portable, "contrib_ops": passes.contrib_ops(current), "data": prov,
               "rows": data.n_rows(feeds), "tolerance": {"rtol": opts.rtol, "atol": opts.atol},
               "latency": latency_info, "speed": speed, "speedup": {b: v["ratio"] for b, v in speed.items()},
               "decision": dec.source(reused) | {"rule": decision["rule"], "speed": timing.overall(speed, 1.0)},
               "warnings": warnings}
    if not opts.require_faster and (slow := slower_warning(speed, opts, applied, reused)):
        warnings.append(slow)  # exit 0 still: a noisy timing must not flip a CI job unless require_faster asks
    model = load_model(current)
    stamp(model, **metadata(load_model(src, load_external=False)))
    stamp(model, optimize={"applied": applied, "rejected": rejected, "portable": opts.portable})
    gate.prune_opsets(model)  # also when no pass applied: the artifact declares the domains its nodes use
    if opts.require_faster and timing.overall(speed, 1.0) == "slower":
        summary["verdict"] = "fail"
        raise CheckFailed("optimize: the optimized model is measurably slower than its input (" + ", ".join(
            f"{v['ratio']:.2f}× ({v['interval'][0]:.2f}–{v['interval'][1]:.2f}) at {k}" for k, v in speed.items())
            + f"; {'from the lock' if reused else 'measured'}) and require_faster is set — try another level, "
              "portable: false, or drop --require-faster", summary)
    out = save_model(model, ctx.stage_dir / "model.onnx")
    # sizes are the files as written (metadata stamped, unused opsets pruned), not the pass's last output
    after = perf.model_stats(out) | {"p50_ms": p50["output"], "p50_ms_raw": p50["raw"][list(accepted)[-1]]}
    summary = {"before": before, "after": after} | summary
    side = atomic_write_json(ctx.stage_dir / "optimize.json", summary)
    if ctx.console:
        _render(summary, ctx.console)
    return StageResult(model=out, summary=summary, files=[side],
                       message=f"nodes {before['nodes']} → {after['nodes']}; applied {', '.join(applied) or 'none'}"
                               + (f"; rejected {', '.join(rejected)}" if rejected else ""))


RULE = ("paired rounds (input and output back to back, same feeds); faster or slower only when the 95 % interval of "
        "the per-round ratios clears a ±5 % band, else the same speed")


def _turn_off(name: str) -> str:
    """The option that leaves pass `name` out."""
    if name == "onnxslim":
        return "simplify: false"
    if name.startswith("fusion-"):
        return "fusion: off"
    return "level: none" if name == "ort-basic" else "level: basic"


def slower_warning(speed: dict, opts: OptimizeOptions, applied: list[str], reused: bool) -> str | None:
    """The warning for shipping an optimized model measurably slower than its input at some batch size (judged on
    the recorded figures, so a rerun from the lock says the same), or None. The README promises that optimize does
    not slow a model unasked; with min_pass_speedup 0 (the default) timing rejects no pass, so this is said aloud."""
    from onnxforge import timing

    if timing.overall(speed, 1.0) != "slower":
        return None
    figures = ", ".join(f"{v['ratio']:.2f}× ({v['interval'][0]:.2f}–{v['interval'][1]:.2f}) at {k}"
                        for k, v in speed.items())
    off = [f"{_turn_off(p)} for {p}" for p in applied]
    why = ("min_pass_speedup is 0, so no pass was rejected for speed — set min_pass_speedup: 0.95 to reject "
           "passes measured slower" if opts.min_pass_speedup == 0 else
           f"no single pass was measured slower than {opts.min_pass_speedup:g}× its input")
    return (f"shipping an optimized model slower than its input ({figures}; "
            f"{'from the lock' if reused else 'measured'}): {why}"
            + (f", or leave a pass out ({'; '.join(off)})" if off else "")
            + (", or use portable: true" if not opts.portable else "")
            + "; require_faster: true fails the stage instead")


def _ms(p50: dict) -> dict:
    return {b: float(f"{v:.4g}") for b, v in p50.items()}


def _render(s: dict, console) -> None:
    from rich.table import Table

    t = Table(title="optimize: passes (each checked against its input)")
    for col in ("pass", "status", "nodes", "p50 ms raw", "max abs diff", "why"):
        t.add_column(col)
    for r in s["passes"]:
        diff = max((c.get("max_abs") or 0.0 for c in (r.get("comparison") or {}).values()), default=0.0)
        lat = ", ".join(f"{v:.4f}" for v in (r.get("p50_ms_raw") or {}).values())
        t.add_row(r["pass"], r["status"], f"{r['nodes_before']} → {r.get('nodes_after', '?')}", lat,
                  f"{diff:.3g}" if r.get("comparison") else "", (r.get("reason") or "")[:80])
    console.print(t)
    b, a = s["before"], s["after"]
    console.print(f"nodes {b['nodes']} → {a['nodes']}; size {b['file_bytes']:,} → {a['file_bytes']:,} B; p50 ms "
                  f"(ORT all) {', '.join(f'{k} {v:.4f}' for k, v in b['p50_ms'].items())} → "
                  f"{', '.join(f'{k} {v:.4f}' for k, v in a['p50_ms'].items())}")
    if s["contrib_ops"]:
        console.print(f"contrib ops (onnxruntime only): {s['contrib_ops']}")
    for w in s["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}")
