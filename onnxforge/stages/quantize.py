"""quantize: INT8 (static or dynamic, or the fastest of several measured candidates) or FP16, never over the
accuracy budget and — for INT8 — never slower than the float input unless the config allows it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from onnxforge.config import StrictModel
from onnxforge.registry import register_stage

QType = Literal["QInt8", "QUInt8"]


class _Int8Fields(StrictModel):
    quant_format: Literal["QDQ", "QOperator"] = Field("QDQ", description="static: QDQ (recommended on CPU) or "
                                                                         "QOperator (QLinearConv, ...)")
    per_channel: bool = Field(False, description="per-channel weight scales")
    reduce_range: bool = Field(False, description="7-bit weights (for CPUs without VNNI saturation-free u8s8)")
    activation_type: QType = Field("QUInt8", description="static: activation type (u8s8 is the CPU default)")
    weight_type: QType = "QInt8"
    op_types: list[str] | None = Field(None, description="op types to quantize (default: all ORT can, "
                                                         "dynamic: MatMul/Gemm/Attention/LSTM — never Conv)")


class CandidateOptions(_Int8Fields):
    mode: Literal["static", "dynamic"] = "static"


class QuantizeOptions(_Int8Fields):
    mode: Literal["auto", "static", "dynamic", "fp16"] = Field(
        "auto", description="auto: measure INT8 candidates and keep the fastest within budget")
    candidates: list[CandidateOptions] | None = Field(None, description="mode auto: the INT8 configurations to "
                                                                         "measure (default: a built-in set)")
    calibrate_method: Literal["MinMax", "Entropy", "Percentile"] = "MinMax"
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
    allow_slower: bool | None = Field(None, description="ship an INT8 model even when it is slower than the float "
                                      "one; default: yes when you named the mode (static/dynamic: the speed is "
                                      "reported and warned about), no in auto mode or when min_speedup is set")
    min_speedup: float = Field(1.0, gt=0, description="INT8 must be this many times faster at every batch size")
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 64], description="latency batch sizes")
    threads: int = Field(1, gt=0, description="intra-op threads for latency")
    latency_rounds: int = Field(3, gt=0, description="interleaved timing rounds (median reported)")


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
    from onnxforge.quant.int8 import Int8Config

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
    return opts.mode in ("static", "dynamic") and "min_speedup" not in opts.model_fields_set


def _fmt_speed(spd: dict) -> str:
    return ", ".join(f"{v:.2f}× at {k}" for k, v in spd.items())


@register_stage("quantize", QuantizeOptions, produces_model=True,
                help="INT8 (static/dynamic/auto) or FP16 under an accuracy budget; never slower unless allowed")
def run_quantize(ctx, opts: QuantizeOptions):
    _check_options(opts)
    # absolute: onnxruntime's tools run with their cwd inside it (quant/sandbox.py)
    work = (ctx.stage_dir / ".quantize-work").resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        return _run(ctx, opts, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _nonfinite_weights(model, mode: str) -> list[str]:
    """Weights INT8 would quantize that hold NaN/inf (onnxruntime's quantizer dies on them with `AssertionError:
    scale issue`). Only those: a Clip's ±inf bounds or a -inf mask stay float and are fine."""
    from onnxforge.quant.weight_only import QUANTIZED_INPUTS, refusable_weights

    ops = set(QUANTIZED_INPUTS) - ({"Gather"} if mode == "dynamic" else set())  # static QDQ quantizes Gather
    return refusable_weights(model, ops)


def _run(ctx, opts: QuantizeOptions, work: Path):
    from onnxforge import data
    from onnxforge.admission import admit, check_feeds
    from onnxforge.artifact import atomic_write_json, save_model
    from onnxforge.data import fixed_batch
    from onnxforge.errors import CheckFailed, UserError
    from onnxforge.normalize import default_opset
    from onnxforge.optim import perf
    from onnxforge.optim.inputs import input_model
    from onnxforge.optim.ui import progress_bar
    from onnxforge.pipeline import StageResult
    from onnxforge.quant import budget as qb
    from onnxforge.quant import feeds as qfeeds
    from onnxforge.quant import fp16, int8, opset

    adm = admit(input_model(ctx))
    src = adm.path
    if opts.mode != "fp16" and (bad := _nonfinite_weights(adm.model, opts.mode)):
        raise UserError(f"{adm.path.name}: weights {', '.join(bad[:4])} hold NaN or ±inf, so INT8 scales cannot be "
                        "computed — fix the model's weights, or use --mode fp16")
    warnings: list[str] = []
    before = perf.model_stats(src)
    upgraded = opset.upgrade(adm.model, adm.path.name) if opts.mode != "fp16" else None
    if upgraded is not None:  # QDQ needs opset 13: quantize (and compare against) a converted copy
        warnings.append(f"converted from opset {default_opset(adm.model)} to {opset.QDQ_OPSET} for INT8")
        src = save_model(upgraded, work / "input.onnx", run_check=False)
    elif adm.external or adm.rewritten:  # work copies keep the weights beside the input, and the merged opsets
        src = save_model(adm.model, work / "input.onnx", run_check=False)
    eval_feeds, eval_prov, labels = qfeeds.evaluation(ctx, src, opts, warnings)
    if eval_feeds is not None:
        check_feeds(eval_feeds, adm.model, what=f"the evaluation data ({eval_prov})", model_name=adm.path.name)
    assess = (qb.Assessor(src, eval_feeds, labels, qb.Budget(opts.max_accuracy_drop, opts.max_error))
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

    # ---- what to try
    calib_feeds, calib_prov = None, None
    if opts.mode == "fp16":
        named = work / "named.onnx"  # node_block_list addresses nodes by name
        shutil.copyfile(src, named)
        int8.name_nodes(named)
        nodes = int8.graph_nodes(named)
        plans = [("fp16", None, fp16.Fp16Builder(named, work, opts.keep_io_types, opts.op_block_list),
                  fp16.targets(nodes, opts.op_block_list), named)]
    else:
        pre = work / "preprocessed.onnx"
        if opts.preprocess:
            summary["preprocess"] = int8.preprocess(src, pre)
        else:
            shutil.copyfile(src, pre)
            int8.name_nodes(pre)
            summary["preprocess"] = "off"
        nodes = int8.graph_nodes(pre)
        if opts.mode == "auto":
            raw = ([c.model_dump() for c in opts.candidates] if opts.candidates else None)
            needs_static = raw is None or any(c["mode"] == "static" for c in raw)
            calib_feeds, calib_prov = qfeeds.calibration(ctx, src, opts, warnings, required=raw is not None and needs_static)
            if raw is None:
                raw = _default_candidates(calib_feeds is not None, any(n.op_type == "Conv" for n in nodes))
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
        plans = [(c.label, c, int8.Int8Builder(pre, work, c, calib, opts.calibrate_method, opts.percentile,
                                               tag=f"c{i}"), int8.targets(nodes, c), pre)
                 for i, c in enumerate(dict.fromkeys(cfgs))]
        if calib_feeds is not None:
            summary["calibration"] = {"data": calib_prov, "rows": data.n_rows(calib_feeds),
                                      "method": opts.calibrate_method, "synthetic": calib_prov == "synthetic"}
    unknown_nodes = sorted(set(opts.nodes_to_exclude) - {n.name for n in nodes})
    if unknown_nodes:
        raise UserError(f"quantize.nodes_to_exclude: no node named {unknown_nodes[:5]} in the model — see "
                        "`onnxforge inspect` for node names")

    alive = fp16.has_fp16_weights if opts.mode == "fp16" else int8.has_int8_weights

    # ---- phase 1: every candidate as is, scored and timed in the same rounds as the float model
    lat_feeds, lat_prov = qfeeds.latency_feeds(ctx, src, eval_feeds, calib_feeds)
    if eval_feeds is None and calib_feeds is None:  # synthesized for timing: never run on the model yet
        qfeeds.probe(adm.session, adm.model, lat_feeds)
    candidates: list[dict] = []
    with progress_bar(ctx.console, "quantize: candidates", len(plans)) as bar:
        for label, cfg, builder, tg, _ in plans:
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
            elif not alive(path):
                entry.update(status="skipped", reason="quantizes nothing in this model")
            else:
                r = assess(path)
                entry.update(status="measured", result=r)
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
        raise UserError("quantize: no configuration quantizes anything in this model — it stores no weights of "
                        "the ops INT8 covers (Conv, ConvTranspose, MatMul, Gemm, LSTM, GRU, RNN, Attention; weights "
                        "that are graph inputs are not stored); if an earlier ORT optimization wrote contrib ops "
                        "(FusedConv, FusedGemm), put quantize before optimize")
    batches = perf.batch_plan([src], opts.batch_sizes)
    models = {"float": src} | {c["label"]: c["path"] for c in live}
    with progress_bar(ctx.console, "quantize: timing", opts.latency_rounds * len(models) * len(batches)) as bar:
        lat = perf.latency(models, lat_feeds, batches, threads=opts.threads, rounds=opts.latency_rounds,
                           progress=bar)
    for c in live:
        c["p50_ms"], c["speedup"] = lat[c["label"]], lat.speedup("float", c["label"])
    before["p50_ms"] = lat["float"]
    summary["latency"] = {"threads": opts.threads, "data": lat_prov, "rounds": opts.latency_rounds}

    gate_speed = opts.mode != "fp16" and not _allow_slower(opts)

    def fast_enough(spd: dict) -> bool:
        return not gate_speed or all(v >= opts.min_speedup for v in spd.values())

    # ---- phase 2: fastest first; fit the budget (keeping sensitive nodes float); re-time after a fallback
    live.sort(key=lambda c: -perf.geomean(c["speedup"].values()))
    chosen = None
    for c in live:
        if not fast_enough(c["speedup"]):
            c.update(status="rejected", reason=f"slower than float ({_fmt_speed(c['speedup'])})")
            continue
        builder, tg, ref_model = next((b, t, m) for lab, _, b, t, m in plans if lab == c["label"])
        with progress_bar(ctx.console, f"quantize: budget for {c['label']}", 1) as bar:
            if c["result"]["within"]:
                out = qb.Outcome(True, c["path"], c["result"], [], [{"float_nodes": list(opts.nodes_to_exclude),
                                                                    **qb.brief(c["result"])}], None)
            else:
                out = qb.fit_budget(builder.build, assess, tg, list(opts.nodes_to_exclude), alive=alive,
                                    method=opts.sensitivity, max_probes=opts.max_probes, float_path=ref_model,
                                    bar=bar)
            bar()
        c["fallback"] = {"method": out.method, "steps": out.steps, "float_nodes": out.float_nodes}
        if not out.ok:
            c.update(status="rejected", reason=out.message)
            continue
        if out.float_nodes:
            c["path"], c["result"] = out.path, out.result
            with progress_bar(ctx.console, "quantize: re-timing", opts.latency_rounds * 2 * len(batches)) as bar:
                lat2 = perf.latency({"float": src, "q": out.path}, lat_feeds, batches, threads=opts.threads,
                                    rounds=opts.latency_rounds, progress=bar)
            c["p50_ms"], c["speedup"] = lat2["q"], lat2.speedup("float", "q")
            before["p50_ms"] = lat2["float"]  # ratios always compare timings from the same rounds
            if not fast_enough(c["speedup"]):
                c.update(status="rejected", reason=f"within budget with {len(out.float_nodes)} nodes in float, but "
                                                   f"then slower than float ({_fmt_speed(c['speedup'])})")
                continue
        c["status"] = "chosen"
        chosen = c
        break

    summary["candidates"] = [{"label": c["label"], "config": c["config"], "status": c["status"],
                              "reason": c.get("reason"), "speedup": c.get("speedup"), "p50_ms": c.get("p50_ms"),
                              "file_bytes": c["path"].stat().st_size if c.get("path") and c["path"].is_file()
                              else None,
                              "accuracy_drop": c.get("result", {}).get("accuracy_drop"),
                              "within_budget": c.get("result", {}).get("within"),
                              "fallback": c.get("fallback")} for c in candidates]
    if chosen is None:
        slow = [c for c in live if "slower" in (c.get("reason") or "")]
        if slow and len(slow) == len(live):
            best = max(slow, key=lambda c: perf.geomean(c["speedup"].values()))
            why = (f"no INT8 model is at least {opts.min_speedup:g}× as fast as the float input at every batch size "
                   f"(best of {len(live)}: {best['label']}, {_fmt_speed(best['speedup'])})")
            hint = " — set allow_slower: true to ship it anyway, or batch_sizes: [64] if you serve batches"
        else:
            why = "no model within budget" + (" and not slower" if gate_speed else "") + " (" + "; ".join(
                f"{c['label']}: {c.get('reason')}" for c in candidates[:3]) + (
                f"; {len(candidates) - 3} more" if len(candidates) > 3 else "") + ")"
            hint = (" — loosen max_accuracy_drop/max_error, or try another mode" if not slow else
                    " — loosen the budget, or set allow_slower: true")
        summary["verdict"] = "fail"
        if ctx.console:
            _render(summary, ctx.console)
        raise CheckFailed(f"quantize: {why}{hint}", summary)

    # ---- the result
    r = chosen["result"]
    after = perf.model_stats(chosen["path"]) | {"p50_ms": chosen["p50_ms"]}
    if eval_feeds is not None:
        after["accuracy"] = r["accuracy"]
        summary["accuracy_drop"] = r["accuracy_drop"]
        summary["errors"] = r["errors"]
    float_nodes = [{"node": n, "op_type": next((x.op_type for x in nodes if x.name == n), "?"),
                    "reason": "listed in nodes_to_exclude"} for n in opts.nodes_to_exclude]
    float_nodes += (chosen.get("fallback") or {}).get("float_nodes", [])
    summary.update(after=after, chosen=chosen["label"], config=chosen["config"], float_nodes=float_nodes,
                   fallback=chosen.get("fallback"), speedup=chosen["speedup"],
                   size_ratio=before["file_bytes"] / max(after["file_bytes"], 1), verdict="pass")
    if opts.mode == "fp16" and any(v < 1 for v in chosen["speedup"].values()):
        warnings.append(f"fp16 is slower than float32 here ({_fmt_speed(chosen['speedup'])}): onnxruntime's CPU "
                        "provider has few fp16 kernels — fp16 pays off on GPUs")
    if gate_speed is False and opts.mode != "fp16" and any(v < 1 for v in chosen["speedup"].values()):
        why = "allow_slower: true" if opts.allow_slower else f"--mode {opts.mode} was asked for (allow_slower: " \
                                                            "false refuses it)"
        warnings.append(f"shipping an INT8 model slower than float ({_fmt_speed(chosen['speedup'])}) because {why}")
    out = _save(src, chosen, summary, ctx.stage_dir / "model.onnx")
    after.update(perf.model_stats(out))  # the shipped file, metadata included
    summary["size_ratio"] = before["file_bytes"] / max(after["file_bytes"], 1)
    side = atomic_write_json(ctx.stage_dir / "quantize.json", summary)
    if ctx.console:
        _render(summary, ctx.console)
    return StageResult(
        model=out, summary=summary, files=[side],
        message=f"{chosen['label']}: {summary['size_ratio']:.2f}× smaller, {_fmt_speed(chosen['speedup'])}")


def _save(src: Path, chosen: dict, summary: dict, dest: Path) -> Path:
    from onnxforge.artifact import load_model, metadata, save_model, stamp

    model = load_model(chosen["path"])
    stamp(model, **metadata(load_model(src, load_external=False)))
    stamp(model, **{"quantize": {"mode": summary["mode"], "config": summary["config"],
                                 "float_nodes": [n["node"] for n in summary["float_nodes"]],
                                 "accuracy_drop": summary.get("accuracy_drop")}})
    return save_model(model, dest)


def _render(s: dict, console) -> None:
    from rich.table import Table

    t = Table(title=f"quantize ({s['mode']}): candidates")
    for col in ("candidate", "status", "speedup", "acc. drop", "bytes", "why"):
        t.add_column(col)
    for c in s["candidates"]:
        drop = c.get("accuracy_drop")
        t.add_row(c["label"], c["status"], _fmt_speed(c["speedup"]) if c.get("speedup") else "",
                  f"{drop * 100:.2f} pt" if isinstance(drop, float) and drop == drop else "",
                  f"{c['file_bytes']:,}" if c.get("file_bytes") else "", (c.get("reason") or "")[:90])
    console.print(t)
    for w in s["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}")
    if "after" not in s:
        return
    b, a = s["before"], s["after"]
    console.print(f"size {b['file_bytes']:,} → {a['file_bytes']:,} B ({s['size_ratio']:.2f}× smaller); "
                  f"p50 {json.dumps({k: round(v, 4) for k, v in b['p50_ms'].items()})} → "
                  f"{json.dumps({k: round(v, 4) for k, v in a['p50_ms'].items()})} ms")
    if "accuracy" in a:
        console.print(f"{s['budget']['metric']} {b['accuracy']:.4f} → {a['accuracy']:.4f} "
                      f"(vs {s['budget']['against']}; budget {s['budget']['max_accuracy_drop']})")
    for n in s["float_nodes"]:
        console.print(f"  kept float: {n['node']} ({n['op_type']}): {n['reason']}")
