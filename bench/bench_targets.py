"""Issue #15: hardware targets, measured in one run.

- the digits CNN pruned 30 % and 50 % by the prune stage (torch-pruning, fine-tuned 15 epochs on the train split
  by `finetune` below): accuracy on the held-out split, size and ORT latency ratios (paired rounds inside the stage);
- OpenVINO vs onnxruntime on the CNN and on the BERT-like encoder (all-MiniLM-L6-v2, the corpus source
  minilm_l6_v2, dynamo export: OpenVINO reads standard ONNX ops, not ORT's fused contrib ops): outputs checked
  before timing (targets/check.py), then paired rounds, 1 thread each (read back);
- INT4 (MatMulNBits, GatherBlockQuantized) vs INT8 vs FP32 on the encoder after optimize's passes — the quantize
  stage's own INT8 and INT4 results (budget search on the search sentences) and unsearched variants: size,
  latency (interleaved rounds), min/mean cosine of the sentence embedding on the held-out sentences;
- the ORT mobile .ort file of the CNN: size, and the load check (outputs equal the ONNX model's).

`python -m bench targets` writes bench/out/targets.{json,md}. Needs `make corpus` and onnxforge[openvino,prune].
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"
SEQ_BATCHES = (1, 8)


def finetune(model, data):
    """The prune stage's fine-tune hook for the digits CNN: Adam, 15 epochs, batch 64, seeded."""
    import torch

    x = torch.from_numpy(np.asarray(data["x"]["input"], np.float32))
    y = torch.from_numpy(np.asarray(data["labels"]).astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(15):
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def _prune_run(work: Path, ratio: float) -> dict:
    cfg = {"name": f"prune{int(ratio * 100)}", "run_dir": str(work / "runs"),
           "source": {"framework": "torch", "factory": str(FIX / "torch_models.py") + ":digits_cnn",
                      "trust_code": True, "path": str(FIX / "torch/digits_cnn.pt")},
           "inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", 1, 8, 8]}], "outputs": ["logits"],
           "data": {"path": str(FIX / "data/digits_test.npz"), "labels": "label",
                    "calibration": str(FIX / "data/digits_train.npz")},
           "stages": {"convert": {"opset": 18}, "prune": {"ratio": ratio, "finetune": "bench.bench_targets:finetune",
                                                          "max_accuracy_drop": 0.02, "rounds": 6}}}
    path = work / f"prune{int(ratio * 100)}.yaml"
    path.write_text(json.dumps(cfg))
    p = subprocess.run([sys.executable, "-m", "onnxforge", "run", str(path), "--json"], cwd=ROOT, capture_output=True,
                       text=True, timeout=900)
    if p.returncode:
        raise RuntimeError(p.stderr[-2000:])
    run = work / "runs" / cfg["name"]
    man = json.loads((run / "manifest.json").read_text())
    (st,) = [s for s in man["stages"] if s["name"] == "prune"]
    return st["summary"] | {"onnx": str(run / "01-convert/model.onnx")}


def _prune_table(work: Path) -> tuple[dict, Path]:
    from bench import speed_cell

    rows, data = [], {}
    for ratio in (0.3, 0.5):
        s = _prune_run(work, ratio)
        data[str(ratio)] = s
        rows.append([f"{int(ratio * 100)} %", ", ".join(f"{k} {v['before']}→{v['after']}" for k, v in s["removed"].items()),
                     f"{s['accuracy_before']:.4f}", f"{s['accuracy_after']:.4f}", f"{s['size_ratio']:.2f}×",
                     speed_cell(s["latency"]["batch1"]["speedup"]), speed_cell(s["latency"]["batch64"]["speedup"])])
    return {"title": "Structured pruning of the digits CNN (prune stage, fine-tuned; ORT 1 thread)",
            "columns": ["pruned", "channels", "accuracy before", "accuracy after (fine-tuned)", "size ÷",
                        "ORT speed b1", "ORT speed b64"], "rows": rows, "data": data,
            "notes": "Accuracy on the 450 held-out digits; speed = unpruned p50 / pruned p50 from 6 paired rounds "
                     "in the stage (95 % interval). The last Linear keeps its 10 outputs."}, Path(s["onnx"])


def _targets_table(work: Path, cnn: Path, encoder: Path | None, held: dict | None) -> dict:
    from bench import speed_cell
    from onnxforge.targets.check import compile_to
    from onnxforge.targets.openvino import OpenVINOOptions
    from onnxforge.targets.ort_mobile import OrtMobileOptions

    with np.load(FIX / "data/digits_test.npz") as z:
        x = (z["input"] if "input" in z.files else z["x"]).reshape(-1, 1, 8, 8).astype(np.float32)
    rows, data = [], {}
    cases = [("digits CNN", cnn, {"input": x}, "openvino", OpenVINOOptions(), None, (1, 64)),
             ("digits CNN", cnn, {"input": x}, "openvino", OpenVINOOptions(weights="fp16"), None, (1, 64)),
             ("digits CNN", cnn, {"input": x}, "ort-mobile", OrtMobileOptions(), None, (1, 64))]
    if encoder is not None:
        cases.append(("MiniLM-L6 encoder (dynamo export)", encoder, held, "openvino", OpenVINOOptions(),
                      (1e-3, 1e-4), SEQ_BATCHES))
    for label, model, feeds, target, opts, tol, batches in cases:
        key = f"{label} → {target} {getattr(opts, 'weights', '')}".strip()
        from onnxforge.errors import CheckFailed

        try:
            s = compile_to(model, work / key.replace(" ", "_").replace("→", "to"), target, opts, feeds,
                           rtol=tol[0] if tol else None, atol=tol[1] if tol else None, threads=1, batches=batches,
                           rounds=6, seconds=0.6)
        except CheckFailed as e:  # a target that misses the tolerance is a row that says so, never a timing
            data[key] = {"verdict": "fail", "message": str(e)}
            rows.append([label, f"{target} {getattr(opts, 'weights', '')}", "", "", f"fail: {str(e)[:120]}", "", ""])
            continue
        data[key] = s
        worst = max(v.get("max_abs", 0.0) for v in s["outputs"].values())
        lat = list(s["latency"].values())
        rows.append([label, f"{target} {getattr(opts, 'weights', s.get('optimization_style', ''))}",
                     f"{s['onnx_bytes'] / 1e3:,.0f} kB", f"{sum(s['bytes'].values()) / 1e3:,.0f} kB",
                     f"pass (max abs {worst:.2g})" if s["verdict"] == "pass" else "fail",
                     *[f"{v['onnxruntime_p50_ms']:.3f} / {v[f'{target}_p50_ms']:.3f} ms, {speed_cell(v['speedup'])}"
                       for v in lat[:2]], *([""] * (2 - len(lat)))])
    return {"title": "Targets vs onnxruntime on the same ONNX model (1 thread each, same run)",
            "columns": ["model", "target", "ONNX size", "target files", "outputs vs ORT", "p50 ORT / target, "
                        "speed (small batch)", "p50 ORT / target, speed (large batch)"],
            "rows": rows, "data": data,
            "notes": "CNN batches 1 and 64 (held-out digits), encoder batches 1 and 8 of held-out sentences padded "
                     "to the longest; speed = ORT p50 / target p50 over 6 paired rounds (>1: the target is faster). "
                     "Tolerances: fp32 rtol 1e-4 atol 1e-5 (encoder 1e-3/1e-4, optimize's pass tolerance), fp16 "
                     "weights 1e-2/1e-2. The .ort row's check is the .ort file loaded by onnxruntime as ORT format."}


def _quantize_stage(work: Path, fused: Path, search: dict, mode: str, *sets: str) -> tuple[Path, dict, float]:
    """The quantize command on the fused encoder with the search sentences as its (unlabelled) data: the model it
    ships, its summary and its wall time."""
    import time

    data = work / "search.npz"
    if not data.is_file():
        np.savez(data, **search)
    out = work / f"stage-{mode}{'-'.join(sets)}.onnx".replace(" ", "").replace("{", "").replace("}", "").replace(":", "")
    args = [sys.executable, "-m", "onnxforge", "quantize", str(fused), "-o", str(out), "--mode", mode, "--data",
            str(data), "--json"]
    for x in sets:
        args += ["--set", x]
    t0 = time.perf_counter()
    p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"quantize --mode {mode}: exit {p.returncode}: {p.stderr[-2000:]}")
    return out, json.loads(p.stdout)["result"]["summary"], wall


def _demoted(summary: dict) -> dict[str, dict[str, int]]:
    """{op type: {"int8": n, "float": n}} of the targets a quantize --mode int4 summary demoted from 4 bits."""
    out: dict[str, dict[str, int]] = {}
    for f in summary.get("float_nodes") or []:
        d = out.setdefault(f.get("op_type", "?"), {"int8": 0, "float": 0})
        d[f.get("precision", "float")] += 1
    return out


def _int4_table(work: Path, fused: Path, held: dict, search: dict) -> dict:
    import onnx
    import onnxruntime as ort

    from bench import interleaved, ort_threads, speed_cell
    from onnxforge import timing
    from onnxforge.stages.quantize import int4, int8

    n_mm = sum(1 for n in onnx.load(str(fused), load_external_data=False).graph.node if n.op_type == "MatMul")
    base = "fp32 (optimize's passes)"
    models, info = {base: fused}, {}
    p8, s8, w8 = _quantize_stage(work, fused, search, "dynamic")
    k8 = len(s8.get("float_nodes") or [])
    models[f"int8 quantize stage (dynamic, smoothed, budget search): {k8} of {n_mm} MatMuls float"] = p8
    info["int8_stage"] = {"wall_s": round(w8, 1), "float_nodes": [f["node"] for f in s8.get("float_nodes") or []],
                          "fidelity_search_rows": s8.get("fidelity")}
    models["int8 dynamic per-channel, all MatMuls"] = int8.Int8Builder(
        fused, work, int8.Int8Config(mode="dynamic", per_channel=True, op_types=("MatMul",)), tag="i8").build([])
    p4, s4, w4 = _quantize_stage(work, fused, search, "int4")
    dem = _demoted(s4)
    nodes = onnx.load(str(fused), load_external_data=False).graph.node
    n_att = sum(1 for n in nodes if n.op_type == "Attention")

    def left(op: str, total: int) -> str:
        d = dem.get(op, {"int8": 0, "float": 0})
        return f"{total - d['int8'] - d['float']}/{d['int8']}/{d['float']}"

    emb = dem.get("EmbedLayerNormalization") or dem.get("Gather")
    models[f"int4 quantize stage (defaults: b32 asym acc4, embedding + attention, fallback int8) — 4-bit/8-bit/float: "
           f"MatMuls {left('MatMul', n_mm)}, QKV {left('Attention', n_att)}, embedding "
           f"{'float' if emb else '4-bit'}"] = p4
    info["int4_stage"] = {"wall_s": round(w4, 1), "float_nodes": s4.get("float_nodes"),
                          "fidelity_search_rows": s4.get("fidelity"), "method": (s4.get("fallback") or {}).get("method")}
    for bs, sym, acc, every in ((32, False, 4, True), (32, False, 4, False), (16, False, 4, False),
                                (128, True, 4, False)):
        c = int4.Int4Config(bs, sym, acc, embeddings=every, attention=every)
        what = "MatMuls + QKV + embedding" if every else "MatMuls only"
        models[f"{c.label}, {what} (no search)"] = int4.Int4Builder(fused, work, c, tag=f"b{bs}{sym}{acc}{every}").build([])
    c8 = int4.Int4Config(32, False, 4, embeddings=False, attention=False)
    names = [n.name for n in nodes if n.op_type == "MatMul"]
    models["8-bit MatMulNBits b32 acc4, MatMuls only (no search)"] = int4.Int4Builder(fused, work, c8, tag="nb8").build(
        [], names)
    sessions, threads_ok = {}, {}
    for k, p in models.items():
        onnx.checker.check_model(str(p), full_check=True)  # every row is a model onnxforge would accept
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
        sessions[k] = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
        threads_ok[k] = ort_threads(sessions[k], 1)[0]
    names = [i.name for i in sessions[base].get_inputs()]
    feeds = {n: held[n] for n in names}
    ref = sessions[base].run(["sentence_embedding"], feeds)[0]
    cos = {}
    for k, s in sessions.items():
        got = s.run(["sentence_embedding"], feeds)[0]
        c = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
        cos[k] = (float(c.min()), float(c.mean()))
    rows, data = [], {"cosine": cos, "threads_1": threads_ok, **info}
    p50 = {}
    for b in SEQ_BATCHES:
        f = {n: v[:b] for n, v in feeds.items()}
        fns = {k: (lambda s=s, f=f: s.run(None, f)) for k, s in sessions.items()}
        p50[b] = interleaved(fns, rounds=6, seconds=0.6, rows=b)
    for k, p in models.items():
        row = [k, f"{p.stat().st_size / 1e6:.1f} MB", f"{models[base].stat().st_size / p.stat().st_size:.2f}×",
               f"{cos[k][0]:.4f}", f"{cos[k][1]:.4f}", "yes" if cos[k][0] >= 0.99 else "no"]
        for b in SEQ_BATCHES:
            row.append(f"{np.median(p50[b][k]):.2f} ms" + ("" if k == base else
                       f", {speed_cell(timing.paired(p50[b][base], p50[b][k]).as_dict())}"))
        rows.append(row)
    data["p50_ms"] = {str(b): v for b, v in p50.items()}
    return {"title": "INT4 vs INT8 vs FP32 on the MiniLM-L6 encoder (ORT 1 thread, held-out sentences)",
            "columns": ["model", "size", "size ÷", "min cosine", "mean cosine", "within 0.99",
                        *[f"p50 batch {b}, speed vs fp32" for b in SEQ_BATCHES]],
            "rows": rows, "data": data,
            "notes": f"The two quantize-stage rows ran the quantize command on the 40 search sentences "
                     f"(int8 {w8:.0f} s, int4 {w4:.0f} s wall, timing included) and are judged here on the 50 "
                     "held-out sentences it never saw; the other rows quantize every target with no search. "
                     "'embedding': the word-embedding table of the fused EmbedLayerNormalization in 4-bit blocks "
                     "(GatherBlockQuantized); 'QKV': each fused Attention written back as a MatMulNBits QKV "
                     "projection + MultiHeadAttention; 'MatMuls only' rows keep both fp32. "
                     "Every model passes onnx.checker's full check. Speed = fp32 p50 / model p50 over 6 "
                     "interleaved rounds (95 % interval)."}


def run(quick: bool = False) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="bench-targets-") as d:
        work = Path(d)
        prune_t, cnn = _prune_table(work)
        import corpus

        md = corpus.source("minilm_l6_v2")
        encoder = fused = held = search = None
        if md is not None:
            from bench.bench_transformer import export, optimize_passes
            from fixtures.transformer_models import sentences, tokenize

            held = tokenize(md, sentences("heldout"))
            search = tokenize(md, sentences("search"))
            encoder = export(md, work / "dynamo.onnx", "dynamo")
            fused, _ = optimize_passes(encoder, work)
        tables = [prune_t, _targets_table(work, cnn, encoder, held)]
        if fused is not None:
            tables.append(_int4_table(work, fused, held, search))
        return tables


if __name__ == "__main__":
    from bench.__main__ import to_markdown

    t = run()
    print(json.dumps(t, indent=1, default=str))
    print(to_markdown(t))
