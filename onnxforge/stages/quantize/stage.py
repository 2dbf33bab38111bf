"""quantize: INT8 (static or dynamic, or the fastest of several measured candidates) or FP16, never over the
accuracy budget and — for INT8 — never slower than the float input unless the config allows it."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from onnxforge.config import StrictModel
from onnxforge.registry import register_stage
from onnxforge.stages.quantize.int4 import Int4Options

QType = Literal["QInt8", "QUInt8"]


class _Int8Fields(StrictModel):
    quant_format: Literal["QDQ", "QOperator"] = Field("QDQ", description="static: QDQ (recommended on CPU) or "
                                                                         "QOperator (QLinearConv, ...)")
    per_channel: bool = Field(False, description="per-channel weight scales")
    reduce_range: bool = Field(False, description="7-bit weights (for CPUs without VNNI saturation-free u8s8)")
    activation_type: QType = Field("QUInt8", description="static: activation type (u8s8 is the CPU default)")
    weight_type: QType = Field("QInt8", description="INT8 weight type: QInt8 (signed; onnxruntime's CPU default, "
                               "u8s8 with QUInt8 activations) or QUInt8")
    op_types: list[str] | None = Field(None, description="op types to quantize (default: all ORT can, "
                                                         "dynamic: MatMul/Gemm/Attention/LSTM — never Conv)")


class CandidateOptions(_Int8Fields):
    mode: Literal["static", "dynamic"] = Field(
        "static", description="static: activation scales from calibration rows; dynamic: activation scales computed "
                              "at run time (Conv gets weight-only INT8)")


class QuantizeOptions(_Int8Fields):
    timed_decisions: ClassVar[bool] = True  # which candidate, and is it slower: recorded in the config's lock

    mode: Literal["auto", "static", "dynamic", "fp16", "int4"] = Field(
        "auto", description="auto: measure INT8 candidates and keep the fastest within budget; int4: MatMul "
                            "weights in 4-bit blocks (MatMulNBits, weight-only) under the same budget")
    int4: Int4Options = Field(default_factory=Int4Options, description="mode int4: block size, symmetric, "
                              "accuracy level (onnxruntime's MatMulNBitsQuantizer)")
    candidates: list[CandidateOptions] | None = Field(None, description="mode auto: the INT8 configurations to "
                                                                         "measure (default: a built-in set)")
    calibrate_method: Literal["MinMax", "Entropy", "Percentile"] = Field(
        "MinMax", description="static: how activation ranges come from the calibration rows — MinMax (observed "
                              "range), Entropy (KL-divergence threshold), Percentile (clipped at `percentile`)")
    percentile: float = Field(99.999, gt=0, le=100, description="calibrate_method Percentile")
    calibration_rows: int = Field(256, gt=0, description="calibration sample count")
    allow_synthetic_calibration: bool = Field(False, description="calibrate on random inputs when no data "
                                                                 "(poor scales: a warning is recorded)")
    preprocess: bool = Field(True, description="run ORT's quantization pre-processing first")
    keep_io_types: bool = Field(True, description="fp16: keep float32 inputs and outputs")
    op_block_list: list[str] = Field(default_factory=list, description="fp16: op types kept in float32")
    max_accuracy_drop: float | None = Field(0.01, ge=0, le=1, description="allowed drop of accuracy (R² for "
                                            "regressors) vs the float model, 0.005 = half a point; null = off")
    max_error: dict[str, float] = Field(default_factory=dict, description="max abs error per output vs the float "
                                                                          "model ('*' = every float output)")
    eval_rows: int | None = Field(1000, gt=0, description="evaluation rows for the budget")
    nodes_to_exclude: list[str] = Field(default_factory=list, description="nodes always kept in float")
    sensitivity: Literal["auto", "probe", "tensor"] = Field(
        "auto", description="fallback ranking: probe = quantize with each node kept float in turn; tensor = "
                            "per-node output error from one run; auto = probe up to max_probes nodes")
    max_probes: int = Field(16, gt=0, description="sensitivity auto: probe up to this many nodes, else tensor")
    min_cosine: float = Field(0.99, gt=0, le=1, description="token models (a padding-mask input) without labels are "
                              "held to output fidelity: every row of an embedding-like output keeps at least this "
                              "cosine to the float output (padding left out)")
    max_rel_error: float = Field(0.05, gt=0, description="output fidelity: other float outputs' per-row "
                                 "||int8 − float|| / ||float||")
    smooth_quant: Literal["auto", "off"] = Field(
        "auto", description="output fidelity, dynamic INT8 over budget: auto = before keeping MatMuls float, try "
                            "SmoothQuant-style smoothing (per input channel s = max|X|^0.5 / max|W|^0.5 from the "
                            "fidelity rows; weights stored × s, activations ÷ s folded into the producing "
                            "LayerNorm or Attention where that is exact and free, else one Mul) and make fused "
                            "Attention quantizable (QAttention) unless op_types leaves it out — exact in float "
                            "(checked), then the keep-float search on that model; the unsmoothed search only if "
                            "it fails. off = the unsmoothed search only")
    allow_slower: bool | None = Field(None, description="the speed gate while choosing: false skips INT8 candidates "
                                      "measurably slower than min_speedup × float (exit 1 if none is left), true "
                                      "ships one anyway (warned); default: false in auto mode or when min_speedup "
                                      "is set, true when you named the mode (static/dynamic: reported and warned "
                                      "about). require_faster is the CI switch on top: it fails the stage whatever "
                                      "allow_slower says")
    require_faster: bool = Field(False, description="fail the stage (exit 1) when the model it would ship is "
                                 "measurably slower than its input (min_speedup × float, at some batch size; the "
                                 "±5 % band is the same speed) — for any mode, fp16 included, and even with "
                                 "allow_slower: true. It judges the recorded figures, so toggling it keeps the lock")
    min_speedup: float = Field(1.0, gt=0, description="the speed bar: INT8 must not be measurably slower than this "
                               "many times the float speed at any batch size")
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 64], description="latency batch sizes")
    threads: int = Field(1, gt=0, description="intra-op threads for latency")
    latency_rounds: int = Field(3, gt=0, description="paired timing rounds (float and candidates back to back): "
                                "the ratio is their geometric mean, with a 95 % interval")


def _default_candidates(has_calibration: bool, has_conv: bool) -> list[dict]:
    out = []
    if has_calibration:
        out += [{"mode": "static"}, {"mode": "static", "per_channel": True},
                {"mode": "static", "reduce_range": True},
                {"mode": "static", "quant_format": "QOperator"}]
        if has_conv:  # small convolutions are often faster in float: try quantizing only the dense layers
            out.append({"mode": "static", "op_types": ["MatMul", "Gemm"]})
    out += [{"mode": "dynamic"}, {"mode": "dynamic", "per_channel": True}]
    return out


def _int8_config(c: _Int8Fields, mode: str):
    from onnxforge.stages.quantize.int8 import Int8Config

    return Int8Config(mode=mode, quant_format=c.quant_format, per_channel=c.per_channel,
                      reduce_range=c.reduce_range, activation_type=c.activation_type, weight_type=c.weight_type,
                      op_types=tuple(c.op_types) if c.op_types else None)


def _check_options(opts: QuantizeOptions) -> None:
    from onnxforge.errors import UserError

    if opts.candidates and opts.mode != "auto":
        raise UserError(f"quantize.candidates is for mode: auto (mode is {opts.mode}) — remove one of them")
    # (Conv in a dynamic op_types is fine: its weights are stored weight-only, never as ConvInteger)
    if not opts.batch_sizes or any(b <= 0 for b in opts.batch_sizes):
        raise UserError("quantize.batch_sizes: give positive batch sizes, e.g. [1, 64]")


def _unloadable(path: Path) -> str | None:
    """Why a candidate is not a valid model (onnx.checker full, then onnxruntime's loader), or None."""
    import onnx

    from onnxforge import runtime
    from onnxforge.errors import one_line

    try:
        onnx.checker.check_model(str(path), full_check=True)
        runtime.session(path, level="disable")
    except Exception as e:
        return f"invalid model ({type(e).__name__}: {one_line(str(e))[:200]})"
    return None


def _grown(src: Path, path: Path) -> str | None:
    """INT8 exists to shrink: a candidate over twice its input's size (and 64 KiB more) materialized weights the
    model generates at load (onnx's light zoo graphs: ConstantOfShape), which ORT's pre-processing folds."""
    a, b = Path(src).stat().st_size, Path(path).stat().st_size
    if b > 2 * a and b - a > 64 << 10:
        return f"grows the file {a:,} → {b:,} B"
    return None


def _allow_slower(opts) -> bool:
    """Timing decides only where onnxforge chooses (auto) or the user set a speed bar: a named mode is what the user
    asked for, and a noisy timing must not turn it into exit 1 on one run and exit 0 on the next."""
    if opts.allow_slower is not None:
        return opts.allow_slower
    return opts.mode in ("static", "dynamic", "int4") and "min_speedup" not in opts.model_fields_set


def _fmt_speed(spd: dict) -> str:
    """'0.86× (0.80–0.93) at batch1, …' from recorded figures (a plain ratio per batch size works too)."""
    def one(v) -> str:
        if isinstance(v, dict):
            lo, hi = v["interval"]
            return f"{v['ratio']:.2f}× ({lo:.2f}–{hi:.2f})"
        return f"{v:.2f}×"

    return ", ".join(f"{one(v)} at {k}" for k, v in spd.items())


@register_stage("quantize", QuantizeOptions, produces_model=True,
                help="INT8 (static/dynamic/auto) or FP16 under an accuracy budget; never slower unless allowed")
def run_quantize(ctx, opts: QuantizeOptions):
    from onnxforge.lock import Decisions

    _check_options(opts)
    dec = ctx.decisions or Decisions()
    locked = dec.recorded()  # --locked without a matching entry fails here, before any work
    # absolute: onnxruntime's tools run with their cwd inside it (stages/quantize/sandbox.py)
    work = (ctx.stage_dir / ".quantize-work").resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        return _run(ctx, opts, work, locked, dec)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _nonfinite_weights(model, mode: str) -> list[str]:
    """Weights INT8 would quantize that hold NaN/inf (onnxruntime's quantizer dies on them with `AssertionError:
    scale issue`). Only those: a Clip's ±inf bounds or a -inf mask stay float and are fine."""
    from onnxforge.stages.quantize.weight_only import QUANTIZED_INPUTS, refusable_weights

    ops = set(QUANTIZED_INPUTS) - ({"Gather"} if mode == "dynamic" else set())  # static QDQ quantizes Gather
    return refusable_weights(model, ops)


def _run(ctx, opts: QuantizeOptions, work: Path, locked: dict | None, dec):
    from onnxforge import data, timing
    from onnxforge.admission import admit, check_feeds
    from onnxforge.artifact import atomic_write_json, save_model
    from onnxforge.data import fixed_batch
    from onnxforge.errors import CheckFailed, UserError
    from onnxforge.normalize import default_opset
    from onnxforge.pipeline import StageResult
    from onnxforge.stages.optimize import perf
    from onnxforge.stages.optimize.inputs import input_model
    from onnxforge.stages.quantize import budget as qb
    from onnxforge.stages.quantize import feeds as qfeeds
    from onnxforge.stages.quantize import fp16, int4, int8, opset

    adm = admit(input_model(ctx))
    src = adm.path
    if opts.mode != "fp16" and (bad := _nonfinite_weights(adm.model, opts.mode)):
        raise UserError(f"{adm.path.name}: weights {', '.join(bad[:4])} hold NaN or ±inf, so INT8 scales cannot be "
                        "computed — fix the model's weights, or use --mode fp16")
    # inputs a mode cannot take: refused before any data is read or model built, naming the mode that works
    refused = (int4.refusal(adm.model, adm.path.name, opts.int4.embeddings, opts.int4.attention)
               if opts.mode == "int4" else
               int8.static_fp16_refusal(adm.model, adm.path.name) if opts.mode == "static" else None)
    if refused:
        raise UserError(refused)
    warnings: list[str] = []
    before = perf.model_stats(src)
    upgraded = opset.upgrade(adm.model, adm.path.name) if opts.mode != "fp16" else None
    if upgraded is not None:  # QDQ needs opset 13: quantize (and compare against) a converted copy
        warnings.append(f"converted from opset {default_opset(adm.model)} to {opset.QDQ_OPSET} for INT8")
        src = save_model(upgraded, work / "input.onnx", run_check=False)
    elif adm.external or adm.rewritten:  # work copies keep the weights beside the input, and the merged opsets
        src = save_model(adm.model, work / "input.onnx", run_check=False)
    eval_feeds, eval_prov, labels = qfeeds.evaluation(ctx, src, opts, warnings)
    fidelity_check = _fidelity_check(ctx, src, opts, eval_feeds, eval_prov, labels, warnings)
    if fidelity_check is not None:
        eval_feeds, eval_prov = fidelity_check.feeds, fidelity_check.provenance
    if eval_feeds is not None:
        check_feeds(eval_feeds, adm.model, what=f"the evaluation data ({eval_prov})", model_name=adm.path.name)
    assess = fidelity_check or (qb.Assessor(src, eval_feeds, labels, qb.Budget(opts.max_accuracy_drop, opts.max_error))
                                if eval_feeds is not None else qb.NoAssess())
    if eval_feeds is not None:
        unknown = sorted(set(opts.max_error) - set(assess.float_outputs) - {"*"})
        if unknown:
            raise UserError(f"quantize.max_error names {unknown}, not float outputs of the model — use "
                            f"{assess.float_outputs} or '*'")
    summary: dict[str, Any] = {"mode": opts.mode, "before": before, "warnings": warnings}
    if eval_feeds is not None:
        summary["budget"] = {"max_accuracy_drop": opts.max_accuracy_drop, "max_error": opts.max_error,
                             "metric": assess.metric, "against": assess.against, "data": eval_prov,
                             "rows": data.n_rows(eval_feeds)}
        summary["before"]["accuracy"] = assess.accuracy_float
        if fidelity_check is not None:
            summary["budget"].update(kind="output fidelity", min_cosine=opts.min_cosine,
                                     max_rel_error=opts.max_rel_error, outputs=fidelity_check.kinds)

    # ---- what to try
    calib_feeds, calib_prov = None, None
    if opts.mode == "fp16":
        named = work / "named.onnx"  # node_block_list addresses nodes by name
        shutil.copyfile(src, named)
        int8.name_nodes(named)
        nodes = int8.graph_nodes(named)
        plans = [("fp16", None, fp16.Fp16Builder(named, work, opts.keep_io_types, opts.op_block_list),
                  fp16.targets(nodes, opts.op_block_list), named)]
    elif opts.mode == "int4":
        named = work / "named.onnx"  # nodes_to_exclude addresses nodes by name
        shutil.copyfile(src, named)
        int8.name_nodes(named)
        nodes = int8.graph_nodes(named)
        c4 = int4.config(opts.int4)
        import onnx

        plans = [(c4.label, c4, int4.Int4Builder(named, work, c4),
                  int4.targets(nodes, onnx.load(str(named), load_external_data=False), c4.embeddings,
                               c4.attention), named)]
    else:
        pre = work / "preprocessed.onnx"
        if opts.preprocess:
            summary["preprocess"] = int8.preprocess(src, pre)
        else:
            shutil.copyfile(src, pre)
            int8.name_nodes(pre)
            summary["preprocess"] = "off"
        nodes = int8.graph_nodes(pre, nested=True)  # If/Loop/Scan body nodes can be kept float too
        if opts.mode == "auto":
            raw = ([c.model_dump() for c in opts.candidates] if opts.candidates else None)
            needs_static = raw is None or any(c["mode"] == "static" for c in raw)
            calib_feeds, calib_prov = qfeeds.calibration(ctx, src, opts, warnings, required=raw is not None and needs_static)
            if raw is None:
                has_conv = any(n.op_type == "Conv" and not n.scope for n in nodes)  # as before: main graph only
                raw = _default_candidates(calib_feeds is not None, has_conv)
                if calib_feeds is None:
                    warnings.append("no calibration data: static candidates skipped")
            cfgs = [_int8_config(CandidateOptions(**c), c["mode"]) for c in raw]
        else:
            if opts.mode == "static":
                calib_feeds, calib_prov = qfeeds.calibration(ctx, src, opts, warnings, required=True)
            cfgs = [_int8_config(opts, opts.mode)]
        if calib_feeds is not None:  # before onnxruntime's calibrator meets them (INVALID_ARGUMENT mid-run)
            check_feeds(calib_feeds, adm.model, what=f"the calibration data ({calib_prov})",
                        model_name=adm.path.name)
        # a model that pins its batch dim is calibrated that many rows at a time, in whole batches
        pinned = fixed_batch(adm.model)
        if calib_feeds is not None and pinned:
            whole = data.n_rows(calib_feeds) // pinned * pinned
            if not whole:
                raise UserError(f"quantize: the model takes batches of {pinned} rows; the calibration data has fewer "
                                "— give more rows")
            calib_feeds = data.take(calib_feeds, whole)
        if calib_feeds is not None:
            qfeeds.probe(adm.session, adm.model, calib_feeds)
        calib = int8.CalibrationFeeds(calib_feeds, batch=pinned or 16) if calib_feeds is not None else None
        bodies = int8.quantizes_bodies(pre)
        plans = [(c.label, c, int8.Int8Builder(pre, work, c, calib, opts.calibrate_method, opts.percentile,
                                               tag=f"c{i}"), int8.targets(nodes, c, bodies), pre)
                 for i, c in enumerate(dict.fromkeys(cfgs))]
        if calib_feeds is not None:
            summary["calibration"] = {"data": calib_prov, "rows": data.n_rows(calib_feeds),
                                      "method": opts.calibrate_method, "synthetic": calib_prov == "synthetic"}
    unknown_nodes = sorted(set(opts.nodes_to_exclude) - {n.name for n in nodes})
    if unknown_nodes:
        raise UserError(f"quantize.nodes_to_exclude: no node named {unknown_nodes[:5]} in the model — see "
                        "`onnxforge inspect` for node names")

    alive = {"fp16": fp16.has_fp16_weights, "int4": int4.has_nbits}.get(opts.mode, int8.has_int8_weights)
    lat_feeds, lat_prov = qfeeds.latency_feeds(ctx, src, eval_feeds, calib_feeds)
    if fidelity_check is not None and eval_prov == "synthetic token inputs":
        lat_prov = f"synthetic token inputs {_shapes(lat_feeds)} (timing only)"
    batches = perf.batch_plan([src], opts.batch_sizes)
    summary["latency"] = {"threads": opts.threads, "data": lat_prov, "rounds": opts.latency_rounds,
                          "band": timing.BAND, "bar": opts.min_speedup}
    env = _Env(ctx, opts, plans, src, assess, alive, lat_feeds, batches)

    decision, chosen = None, None
    if locked is not None:
        decision, chosen = _reuse(env, locked, dec)
    reused = decision is not None
    if decision is None:
        if eval_feeds is None and calib_feeds is None:  # synthesized for timing: never run on the model yet
            qfeeds.probe(adm.session, adm.model, lat_feeds)
        decision, chosen = _measure(env, nodes)
        dec.record(decision)

    summary["decision"] = dec.source(reused) | {"rule": decision.get("rule"), "chosen": decision.get("chosen"),
                                                "ranked": decision.get("ranked")}
    if decision.get("speed"):
        summary["decision"]["speed"] = timing.overall(decision["speed"], 1.0)
    summary["candidates"] = decision["candidates"]
    if (opts.mode == "auto" and chosen is not None and chosen["config"].get("mode") == "static"
            and eval_feeds is not None and qfeeds.calibrates_on_evaluation(ctx.cfg.data)):
        warnings.append(qfeeds.OPTIMISTIC)  # only a static model was calibrated on the budget's own rows
    before["p50_ms"] = decision["p50_ms"]["float"]
    if decision["verdict"] == "fail":
        summary["verdict"] = "fail"
        if ctx.console:
            _render(summary, ctx.console)
        raise CheckFailed(decision["message"], summary)

    # ---- the result
    r = chosen["result"]
    speed = decision["speed"]
    after = perf.model_stats(chosen["path"]) | {"p50_ms": decision["p50_ms"]["chosen"]}
    if eval_feeds is not None:
        if r.get("accuracy") is not None:  # output fidelity measures no accuracy: nothing to print as one
            after["accuracy"] = r["accuracy"]
            summary["accuracy_drop"] = r["accuracy_drop"]
        if r.get("fidelity"):
            summary["fidelity"] = r["fidelity"]
        summary["errors"] = r["errors"]
    float_nodes = [{"node": n, "op_type": next((x.op_type for x in nodes if x.name == n), "?"),
                    "reason": "listed in nodes_to_exclude"} for n in opts.nodes_to_exclude]
    float_nodes += (chosen.get("fallback") or {}).get("float_nodes", [])
    speedup = {b: v["ratio"] for b, v in speed.items()}
    summary.update(after=after, chosen=chosen["label"], config=chosen["config"], float_nodes=float_nodes,
                   fallback=chosen.get("fallback"), speedup=speedup, speed=speed, verdict="pass")
    if opts.require_faster and timing.overall(speed, opts.min_speedup) == "slower":
        summary["verdict"] = "fail"
        if ctx.console:
            _render(summary, ctx.console)
        bar = "its float input" if opts.min_speedup == 1 else f"{opts.min_speedup:g}× its float input"
        raise CheckFailed(f"quantize: {chosen['label']} is measurably slower than {bar} ({_fmt_speed(speed)}; "
                          f"{'from the lock' if reused else 'measured'}) and require_faster is set — try "
                          "another --mode, batch_sizes: [64] if you serve batches, or drop --require-faster",
                          summary)
    slower = timing.overall(speed, 1.0) == "slower"  # measurably slower than the float input (the ±5 % band aside)
    if opts.mode == "fp16" and slower:
        warnings.append(f"fp16 is slower than float32 here ({_fmt_speed(speed)}): onnxruntime's CPU provider has "
                        "few fp16 kernels — fp16 pays off on GPUs")
    if opts.mode == "fp16" and (big := fp16.clipped(src, chosen["path"])):
        warnings.append(f"fp16: weights beyond float16's range (±65504) were clipped to it: {', '.join(big[:4])}"
                        f"{f' and {len(big) - 4} more' if len(big) > 4 else ''} — keep their ops in float32 "
                        "(op_block_list / nodes_to_exclude) or use INT8")
    elif slower and opts.mode != "fp16":
        why = ("allow_slower: true" if opts.allow_slower else
               f"--mode {opts.mode} was asked for (require_faster: true refuses it)")
        kind = "an INT4" if opts.mode == "int4" else "an INT8"
        warnings.append(f"shipping {kind} model slower than float ({_fmt_speed(speed)}) because {why}")
    out = _save(src, chosen, summary, ctx.stage_dir / "model.onnx")
    after.update(perf.model_stats(out))  # the shipped file, metadata included
    summary["size_ratio"] = before["file_bytes"] / max(after["file_bytes"], 1)
    side = atomic_write_json(ctx.stage_dir / "quantize.json", summary)
    if ctx.console:
        _render(summary, ctx.console)
    return StageResult(
        model=out, summary=summary, files=[side],
        message=f"{chosen['label']}: {size_change(before['file_bytes'], after['file_bytes'])}, {_fmt_speed(speed)}")


@dataclass
class _Env:
    """What choosing a candidate needs: the plans, the float model, the budget, and the timing feeds."""

    ctx: Any
    opts: QuantizeOptions
    plans: list
    src: Path
    assess: Any
    alive: Any
    feeds: dict
    batches: list[int]


def _speed(paired: dict) -> dict:
    return {b: p.as_dict() | {"verdict": p.verdict()} for b, p in paired.items()}


def _ms(p50: dict) -> dict:
    return {b: float(f"{v:.4g}") for b, v in p50.items()}


def _fidelity_check(ctx, src: Path, opts, eval_feeds, eval_prov, labels, warnings: list[str]):
    """Token models (a padding-mask input) without labels: INT8 is held to output fidelity against the float
    model (stages/quantize/fidelity.py) — on the data given, else on synthesized token inputs (ids within the vocabulary, a
    spread of lengths, padded masks), never on nothing. None for every other model."""
    from onnxforge.inputspec import is_mask

    if opts.mode == "fp16" or labels is not None:
        return None
    specs = ctx.input_specs(src)
    if not any(is_mask(s) for s in specs):
        return None
    from onnxforge.stages.quantize import fidelity

    if eval_feeds is None:
        eval_feeds, _ = fidelity.token_feeds(specs, rows=32, seed=ctx.cfg.data.seed)
        eval_prov = "synthetic token inputs"
        warnings[:] = [w for w in warnings if not w.startswith("accuracy NOT measured")]
        warnings.append("output fidelity measured on SYNTHETIC token inputs, which under-estimate the error (on "
                        "all-MiniLM-L6-v2: min cosine 0.995 on them, 0.973 on real sentences) — give real inputs "
                        "with --data FILE")
    return fidelity.FidelityCheck(src, eval_feeds, fidelity.FidelityBudget(opts.min_cosine, opts.max_rel_error),
                                  eval_prov)


def _fit(env: _Env, c: dict, bar) -> Any:
    """The candidate within the accuracy budget: as built, or with its most sensitive nodes kept float."""
    from onnxforge.stages.quantize import budget as qb

    builder, tg, ref_model = next((b, t, m) for lab, _, b, t, m in env.plans if lab == c["label"])
    opts = env.opts
    if c["result"]["within"]:
        return qb.Outcome(True, c["path"], c["result"], [], [{"float_nodes": list(opts.nodes_to_exclude),
                                                              **qb.brief(c["result"])}], None)
    from onnxforge.stages.quantize import fidelity

    if c["config"].get("mode") == "int4":  # each weight rounded alone, ranked, the most sensitive demoted
        from onnxforge.stages.quantize import int4_search

        return int4_search.fit(builder, env.assess, ref_model, tg, list(opts.nodes_to_exclude), alive=env.alive,
                               bar=bar)
    if isinstance(env.assess, fidelity.FidelityCheck) and c["config"].get("mode") == "dynamic":
        # keep the most sensitive MatMuls float; the search aims at half the allowed loss (a search that just met
        # 0.99 on its rows left held-out sentences at 0.982), the result is judged by the promised budget
        b = env.assess.budget
        strict = fidelity.FidelityCheck(ref_model, env.assess.feeds,
                                        fidelity.FidelityBudget(1 - (1 - b.min_cosine) / 2, b.max_rel_error / 2),
                                        env.assess.provenance)
        sr, smoothing = None, None
        if opts.smooth_quant == "auto":  # smoothing first (stages/quantize/smooth.py): fewer MatMuls need to stay float
            from onnxforge.stages.quantize import smooth

            sr, info = smooth.keep_float_search_smoothed(ref_model, builder.work, builder.cfg, strict,
                                                         env.assess.feeds, list(opts.nodes_to_exclude),
                                                         alive=env.alive, tag=f"{builder.tag}s")
            smoothing = {k: v for k, v in info.items() if k != "tensors"} | {"used": bool(sr and sr.ok)}
            if sr is not None and not sr.ok:
                smoothing["why_not"] = sr.message
                sr = None
            if sr is not None:  # the shipped model's settings: per-channel weights, smoothed
                c["config"] = info["config"] | {"smooth_quant": info["alpha"]}
        if sr is None:
            mm = [t for t in tg if t.op_type == "MatMul"]
            sr = fidelity.keep_float_search(builder.build, strict, mm, list(opts.nodes_to_exclude),
                                            method="emulate", float_path=ref_model, alive=env.alive)
        if smoothing is not None:
            sr.steps.insert(0, {"smooth_quant": smoothing})
        res = env.assess(sr.path) if sr.path else sr.result
        return qb.Outcome(sr.ok and res["within"], sr.path, res, sr.float_nodes, sr.steps, sr.method, sr.message)
    return qb.fit_budget(builder.build, env.assess, tg, list(opts.nodes_to_exclude), alive=env.alive,
                         method=opts.sensitivity, max_probes=opts.max_probes, float_path=ref_model, bar=bar)


def _preference(c: dict, index: int) -> tuple:
    """Among candidates of the same speed: standard ops over contrib ops, fewer nodes, smaller file, list order."""
    from onnxforge.stages.optimize import passes, perf

    st = perf.model_stats(c["path"])
    return (bool(passes.contrib_ops(c["path"])), st["nodes"], st["file_bytes"], index)


RULE = ("paired rounds (float and candidates back to back, same feeds); a candidate is faster or slower only when the "
        "95 % interval of its per-round ratios clears a ±5 % band, else the same speed; same speed: standard ops, "
        "fewer nodes, smaller file, then candidate order")


def rank_candidates(live: list[dict], faster, preference, slower) -> tuple[list[str], list[str]]:
    """(ranked, slow): the measured candidates not slower than the bar, best first — the ones auto tries in turn
    and `decision.ranked` lists — and, ranked apart, those measurably slower than it at some batch size (`slower`
    judges their recorded `speed`), marked rejected with their figures. Every slower one is screened out before
    the ranking, not only those tried before the choice: auto skips them (README, the speed gate)."""
    from onnxforge import timing

    slow = [c["label"] for c in live if slower(c["speed"])]
    for c in live:
        if c["label"] in slow:
            c.update(status="rejected", reason=f"slower than float ({_fmt_speed(c['speed'])})")
    ok = [c["label"] for c in live if c["label"] not in slow]
    return timing.rank(ok, faster, preference), timing.rank(slow, faster, preference)


def _measure(env: _Env, nodes) -> tuple[dict, dict | None]:
    """Build every candidate, time them against the float model in paired rounds, and choose: ranked by
    timing.rank (measurably faster first, ties by preference), each fitted to the accuracy budget in turn."""
    from onnxforge import timing
    from onnxforge.errors import CheckFailed, UserError
    from onnxforge.stages.optimize import perf
    from onnxforge.stages.optimize.ui import progress_bar

    ctx, opts, src = env.ctx, env.opts, env.src
    candidates: list[dict] = []
    with progress_bar(ctx.console, "quantize: candidates", len(env.plans)) as bar:
        for label, cfg, builder, tg, _ in env.plans:
            bar.describe(f"quantize: {label}")
            path = builder.build(list(opts.nodes_to_exclude))
            entry: dict[str, Any] = {"label": label, "config": cfg.as_dict() if cfg else {"mode": "fp16"},
                                     "path": path, "targets": tg}
            broken = _unloadable(path)
            grown = _grown(src, path)
            if broken:  # onnxruntime's quantizer wrote a model that is not valid: reported, never shipped
                entry.update(status="rejected", reason=broken)
            elif grown:
                entry.update(status="rejected", reason=grown)
            elif not env.alive(path):
                entry.update(status="skipped", reason="quantizes nothing in this model")
            else:
                entry.update(status="measured", result=env.assess(path))
            candidates.append(entry)
            bar()
    live = [c for c in candidates if c["status"] == "measured"]
    if not live:
        grew = [c for c in candidates if (c.get("reason") or "").startswith("grows the file")]
        if grew:
            raise UserError(f"quantize: INT8 {grew[0]['reason']} — the model generates its weights when it loads "
                            "(ConstantOfShape, Tile, …) instead of storing them, so there is nothing stored to make "
                            "smaller; quantize the model that stores its weights")
        broken = [c for c in candidates if c["status"] == "rejected"]
        if broken:
            raise CheckFailed(f"quantize: every INT8 model onnxruntime's quantizer wrote for this model is invalid "
                              f"({broken[0]['label']}: {broken[0]['reason']}) — try --mode fp16, or keep the "
                              "failing nodes in float with nodes_to_exclude")
        if opts.mode == "int4":
            tg = env.plans[0][3]  # int4.refusal already refused a model without any target
            kept = sum(t.name in set(opts.nodes_to_exclude) for t in tg)
            raise UserError(f"quantize: INT4 (MatMulNBits) left none of this model's {len(tg)} target(s) in 4 bits "
                            f"({kept} of them listed in nodes_to_exclude) — list fewer nodes_to_exclude, or use "
                            "--mode dynamic or static for INT8")
        raise UserError("quantize: no configuration quantizes anything in this model — it stores no weights of "
                        "the ops INT8 covers (Conv, ConvTranspose, MatMul, Gemm, LSTM, GRU, RNN, Attention; weights "
                        "that are graph inputs are not stored); if an earlier ORT optimization wrote contrib ops "
                        "(FusedConv, FusedGemm), put quantize before optimize")
    models = {"float": src} | {c["label"]: c["path"] for c in live}
    with progress_bar(ctx.console, "quantize: timing", opts.latency_rounds * len(models) * len(env.batches)) as bar:
        lat = perf.latency(models, env.feeds, env.batches, threads=opts.threads, rounds=opts.latency_rounds,
                           progress=bar)
    pref = {}
    for i, c in enumerate(live):
        c["p50_ms"], c["speed"] = lat[c["label"]], _speed(lat.paired("float", c["label"]))
        pref[c["label"]] = _preference(c, i)
    float_p50 = lat["float"]
    gate_speed = opts.mode != "fp16" and not _allow_slower(opts)

    def slower(speed: dict) -> bool:
        return gate_speed and timing.overall(speed, opts.min_speedup) == "slower"

    # ---- fastest first (noise-aware); fit the budget (keeping sensitive nodes float); re-time after a fallback
    faster = lambda a, b: lat.paired_over(b, a).verdict() == "faster"  # noqa: E731 — a measurably faster than b
    ranked, slow_ranked = rank_candidates(live, faster, pref.__getitem__, slower)
    by_label = {c["label"]: c for c in live}
    chosen = None
    for label in ranked:
        c = by_label[label]
        with progress_bar(ctx.console, f"quantize: budget for {c['label']}", 1) as bar:
            out = _fit(env, c, bar)
            bar()
        c["fallback"] = {"method": out.method, "steps": out.steps, "float_nodes": out.float_nodes}
        if not out.ok:
            c.update(status="rejected", reason=out.message)
            continue
        if out.float_nodes:
            c["path"], c["result"] = out.path, out.result
            with progress_bar(ctx.console, "quantize: re-timing", opts.latency_rounds * 2 * len(env.batches)) as b:
                lat2 = perf.latency({"float": src, "q": out.path}, env.feeds, env.batches, threads=opts.threads,
                                    rounds=opts.latency_rounds, progress=b)
            c["p50_ms"], c["speed"] = lat2["q"], _speed(lat2.paired("float", "q"))
            float_p50 = lat2["float"]  # ratios always compare timings from the same rounds
            if slower(c["speed"]):
                c.update(status="rejected", reason=f"within budget with {len(out.float_nodes)} nodes in float, but "
                                                   f"then slower than float ({_fmt_speed(c['speed'])})")
                continue
        c["status"] = "chosen"
        chosen = c
        break

    rows = [{"label": c["label"], "config": c["config"], "status": c["status"], "reason": c.get("reason"),
             "speedup": {b: v["ratio"] for b, v in c["speed"].items()} if c.get("speed") else None,
             "speed": c.get("speed"), "p50_ms": _ms(c["p50_ms"]) if c.get("p50_ms") else None,
             "file_bytes": c["path"].stat().st_size if c.get("path") and c["path"].is_file() else None,
             "accuracy_drop": c.get("result", {}).get("accuracy_drop"),
             "fidelity": c.get("result", {}).get("fidelity"),
             "within_budget": c.get("result", {}).get("within"), "fallback": c.get("fallback")} for c in candidates]
    decision: dict[str, Any] = {"candidates": rows, "rule": RULE, "ranked": ranked,
                                "p50_ms": {"float": _ms(float_p50)}}
    if chosen is None:
        slow = [c for c in live if "slower" in (c.get("reason") or "")]
        if slow and len(slow) == len(live):
            best = next(c for lab in slow_ranked + ranked for c in slow if c["label"] == lab)
            why = (f"no INT8 model is at least {opts.min_speedup:g}× as fast as the float input at every batch size "
                   f"(best of {len(live)}: {best['label']}, {_fmt_speed(best['speed'])})")
            hint = " — set allow_slower: true to ship it anyway, or batch_sizes: [64] if you serve batches"
        else:
            why = "no model within budget" + (" and not slower" if gate_speed else "") + " (" + "; ".join(
                f"{c['label']}: {c.get('reason')}" for c in candidates[:3]) + (
                f"; {len(candidates) - 3} more" if len(candidates) > 3 else "") + ")"
            hint = (" — loosen max_accuracy_drop/max_error, or try another mode" if not slow else
                    " — loosen the budget, or set allow_slower: true")
        return decision | {"verdict": "fail", "chosen": None, "message": f"quantize: {why}{hint}"}, None
    decision |= {"verdict": "pass", "chosen": chosen["label"], "speed": chosen["speed"],
                 "float_nodes": [n["node"] for n in chosen["fallback"]["float_nodes"]]}
    decision["p50_ms"]["chosen"] = _ms(chosen["p50_ms"])
    return decision, chosen


def _reuse(env: _Env, locked: dict, dec) -> tuple[dict | None, dict | None]:
    """The locked decision, without timing: the chosen candidate is built and fitted to the budget again (both
    deterministic: the same bytes as when it was measured). (None, None) when the entry does not reproduce and may
    be measured again (`use`); `locked` fails instead."""
    from onnxforge.errors import CheckFailed
    from onnxforge.stages.optimize.ui import progress_bar

    try:
        verdict, label, rows = locked["verdict"], locked.get("chosen"), locked["candidates"]
        assert verdict in ("pass", "fail") and isinstance(rows, list) and isinstance(locked["p50_ms"]["float"], dict)
        if verdict == "fail":
            assert isinstance(locked["message"], str)
            return locked, None
        assert isinstance(locked["speed"], dict) and isinstance(locked["float_nodes"], list)
        plan = next((p for p in env.plans if p[0] == label), None)
        assert plan is not None, f"no candidate {label!r} here"
    except (AssertionError, KeyError, TypeError) as e:
        raise dec.invalid(str(e) or type(e).__name__) from None
    _, cfg, builder, _, _ = plan
    path = builder.build(list(env.opts.nodes_to_exclude))
    c = {"label": label, "config": cfg.as_dict() if cfg else {"mode": "fp16"}, "path": path,
         "result": env.assess(path)}
    with progress_bar(env.ctx.console, f"quantize: budget for {label} (locked choice)", 1) as bar:
        out = _fit(env, c, bar)
        bar()
    got = [n["node"] for n in out.float_nodes]
    if not out.ok or got != locked["float_nodes"]:
        why = (f"quantize: the locked choice {label} does not reproduce here (float nodes {got} vs "
               f"{locked['float_nodes']} in the lock)")
        if dec.lock.mode == "locked":
            raise CheckFailed(f"{why} — rerun with --remeasure and commit the lock")
        return None, None
    c["fallback"] = {"method": out.method, "steps": out.steps, "float_nodes": out.float_nodes}
    c["path"], c["result"] = out.path, out.result
    return locked, c


def size_change(before: int, after: int) -> str:
    """'3.49× smaller' / '2.91× larger' / 'same size': a file that grew never reads 'smaller'."""
    if after < before:
        return f"{before / max(after, 1):.2f}× smaller"
    if after > before:
        return f"{after / max(before, 1):.2f}× larger"
    return "same size"


def _save(src: Path, chosen: dict, summary: dict, dest: Path) -> Path:
    from onnxforge.artifact import load_model, metadata, save_model, stamp

    model = load_model(chosen["path"])
    stamp(model, **metadata(load_model(src, load_external=False)))
    stamp(model, **{"quantize": {"mode": summary["mode"], "config": summary["config"],
                                 "float_nodes": [n["node"] for n in summary["float_nodes"]],
                                 "accuracy_drop": summary.get("accuracy_drop")}})
    return save_model(model, dest)


def _shapes(feeds: dict) -> str:
    return ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in feeds.items())


def _fmt_fidelity(f: dict | None) -> str:
    if not f:
        return ""
    return ", ".join(f"min cos {v['min']:.4f}" if v["kind"] == "cosine" else f"max rel {v['max']:.3g}"
                     for v in f.values() if "min" in v or "max" in v)


def _render(s: dict, console) -> None:
    from rich.table import Table

    t = Table(title=f"quantize ({s['mode']}): candidates")
    fid = any(c.get("fidelity") for c in s["candidates"])
    for col in ("candidate", "status", "speedup", "fidelity" if fid else "acc. drop", "bytes", "why"):
        t.add_column(col)
    for c in s["candidates"]:
        drop = c.get("accuracy_drop")
        t.add_row(c["label"], c["status"], _fmt_speed(c.get("speed") or c["speedup"]) if c.get("speedup") else "",
                  _fmt_fidelity(c.get("fidelity")) if fid else
                  f"{drop * 100:.2f} pt" if isinstance(drop, float) and drop == drop else "",
                  f"{c['file_bytes']:,}" if c.get("file_bytes") else "", (c.get("reason") or "")[:90])
    console.print(t)
    for w in s["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}")
    if "after" not in s:
        return
    b, a = s["before"], s["after"]
    console.print(f"size {b['file_bytes']:,} → {a['file_bytes']:,} B "
                  f"({size_change(b['file_bytes'], a['file_bytes'])}); "
                  f"p50 {json.dumps({k: round(v, 4) for k, v in b['p50_ms'].items()})} → "
                  f"{json.dumps({k: round(v, 4) for k, v in a['p50_ms'].items()})} ms")
    if s.get("fidelity"):
        console.print(f"output fidelity vs float ({s['budget'].get('data')}): {_fmt_fidelity(s['fidelity'])} "
                      f"(budget: min cos {s['budget']['min_cosine']}, max rel {s['budget']['max_rel_error']})")
    if a.get("accuracy") is not None:
        console.print(f"{s['budget']['metric']} {b['accuracy']:.4f} → {a['accuracy']:.4f} "
                      f"(vs {s['budget']['against']}; budget {s['budget']['max_accuracy_drop']})")
    for n in s["float_nodes"]:  # INT4's demoted weights may be 8-bit rather than float (int4 fallback: int8)
        kept = "kept at 8 bits" if n.get("precision") == "int8" else "kept float"
        console.print(f"  {kept}: {n['node']} ({n['op_type']}): {n['reason']}")
