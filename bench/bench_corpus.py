"""onnxforge on the third-party corpus (corpus/manifest.toml, `make corpus`): node counts of the original,
onnxslim, onnxruntime's extended level, onnxforge optimize and optimize --portable; p50 latency of each against the
original in the same interleaved rounds (1 intra-op thread); the size ratio of quantize --mode dynamic; onnx.checker
(full) on every onnxforge output. A failing command is shown as its exit code, never hidden."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ROUNDS, SECONDS = 5, 0.2  # interleaved rounds × seconds per variant per round


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _session(path: Path):
    """Default graph optimizations (what a user gets), one intra-op and one inter-op thread, no spinning."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    before = _threads()
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    # a pool of n intra-op threads starts n-1 OS threads: none here proves the setting took effect
    assert s.get_session_options().intra_op_num_threads == 1 and _threads() == before, "ORT started a thread pool"
    return s


def _nodes(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.parent.glob(path.name + "*") if f.suffix in (".onnx", ".data"))


def _checker(path: Path) -> str:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
        return "ok"
    except Exception as e:  # the verdict is the result here
        return f"FAIL ({str(e).splitlines()[0][:60]})"


def _cli(*args) -> tuple[int, str]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    p = subprocess.run([sys.executable, "-m", "onnxforge", *map(str, args)], capture_output=True, text=True,
                       env=env, cwd=ROOT, stdin=subprocess.DEVNULL, timeout=1200)
    return p.returncode, (p.stderr.strip().splitlines() or [""])[-1]


def _ort_extended(src: Path, dest: Path) -> Path:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(dest)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return dest


def _slim(src: Path, dest: Path) -> Path:
    import onnx
    import onnxslim

    onnx.save(onnxslim.slim(onnx.load(str(src))), str(dest))
    return dest


def _p50s(paths: dict[str, Path], feeds: dict) -> dict[str, float]:
    """p50 seconds per variant; every round times each variant in turn, so drift hits all alike."""
    sessions = {}
    for k, p in paths.items():
        try:
            s = _session(p)
            ins = {i.name: feeds[i.name] for i in s.get_inputs()}
            s.run(None, ins)  # warm-up
            sessions[k] = (s, ins)
        except Exception:  # noqa: BLE001 — a variant that does not run gets no latency
            continue
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(ROUNDS):
        for k, (s, ins) in sessions.items():
            end = time.perf_counter() + SECONDS
            while True:
                t0 = time.perf_counter()
                s.run(None, ins)
                t = time.perf_counter()
                times[k].append(t - t0)
                if t > end:
                    break
    return {k: float(np.median(v)) for k, v in times.items()}


def _inputs_text(feeds: dict) -> str:
    return ", ".join(f"{k}{list(v.shape)} {v.dtype}" for k, v in feeds.items())


def _one(e: dict, tmp: Path) -> dict:
    src = Path(e["file"])
    feeds = dict(np.load(e["inputs"]))
    out = {"model": e["name"], "package": f"{e['source']['package']} {e['source']['version']}",
           "inputs": _inputs_text(feeds), "nodes": {"original": _nodes(src)}}
    paths = {"original": src}
    for k, fn in (("onnxslim", _slim), ("ort_extended", _ort_extended)):
        try:
            paths[k] = fn(src, tmp / f"{k}.onnx")
            out["nodes"][k] = _nodes(paths[k])
        except Exception as ex:  # noqa: BLE001 — shown in the table
            out["nodes"][k] = f"error: {str(ex).splitlines()[0][:60]}"
    cmds = {"onnxforge": ["optimize", src, "-o", tmp / "opt.onnx", "--data", e["inputs"]],
            "portable": ["optimize", src, "--portable", "-o", tmp / "portable.onnx", "--data", e["inputs"]],
            "quantized": ["quantize", src, "--mode", "dynamic", "-o", tmp / "quant.onnx", "--data", e["inputs"],
                          "--set", "max_accuracy_drop=null"]}  # size is the figure; errors stay in quantize.json
    out["exit"], out["checker"] = {}, {}
    for k, cmd in cmds.items():
        code, last = _cli(*cmd)
        if k == "quantized" and e.get("no_weights") and code == 2 and "stores no weights" in last:
            code, out["quant_size_ratio"] = 0, "no weights"  # the refusal the manifest expects: not a failure
        out["exit"][k] = code if code == 0 else f"{code}: {last[:160]}"
        p = cmd[cmd.index("-o") + 1]
        if code == 0 and p.is_file():
            out["checker"][k] = _checker(p)
            if k != "quantized":
                paths[k] = p
                out["nodes"][k] = _nodes(p)
            else:
                out["quant_size_ratio"] = _size(p) / _size(src)
    p50 = _p50s(paths, feeds)
    out["p50_ms"] = {k: v * 1e3 for k, v in p50.items()}
    base = p50.get("original")
    out["latency_ratio"] = {k: v / base for k, v in p50.items() if base and k != "original"}
    return out


def _cell(v) -> str:
    return "—" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)  # "no weights" stays text


def run() -> list[dict]:
    sys.path.insert(0, str(ROOT))
    import corpus

    models = corpus.entries()
    if not models:  # `make bench` without the corpus: say so, keep the other suites' tables
        print(f"bench: corpus skipped — no corpus in {corpus.cache_dir()} (run `make corpus`)", flush=True)
        return []
    results = []
    for e in models:
        print(f"bench: corpus {e['name']} ...", flush=True)
        with tempfile.TemporaryDirectory() as d:
            results.append(_one(e, Path(d)))
    return [table(results)]


def _short(text: str, n: int = 70) -> str:
    text = text.replace("check failed: ", "").replace("internal error: ", "").replace("error: ", "")
    return text if len(text) <= n else text[: n - 1] + "…"


def table(results: list[dict]) -> dict:
    """The README table from `_one` results (also from a saved results.json's `data`)."""
    cols = ["model", "package", "nodes orig", "onnxslim", "ORT ext", "onnxforge", "portable",
            "lat onnxforge", "lat portable", "lat onnxslim", "lat ORT ext", "quant size", "checker", "failures"]
    rows = []
    for r in results:
        n, lat = r["nodes"], r["latency_ratio"]
        fails = "; ".join(f"{k} exit {_short(str(v))}" for k, v in r["exit"].items() if v != 0)
        checks = " ".join(f"{k[0]}:{v}" for k, v in r["checker"].items())
        slim, ext = (v if isinstance(v, int) or v is None else "error" for v in (n.get("onnxslim"), n.get("ort_extended")))
        rows.append([r["model"], r["package"], n["original"], slim, ext,
                     n.get("onnxforge", "✗"), n.get("portable", "✗"), lat.get("onnxforge"), lat.get("portable"),
                     lat.get("onnxslim"), lat.get("ort_extended"), r.get("quant_size_ratio"), checks or "—",
                     fails or "—"])
    rows = [[_cell(c) for c in row] for row in rows]
    notes = ("lat = p50 latency / the original's p50 (< 1 is faster), ORT CPU, default optimization level, "
             f"intra_op_num_threads=1 (checked: no pool thread started), {ROUNDS} interleaved rounds of "
             f"{SECONDS}s each per variant. Inputs: batch 1 at the manifest's shape hints (or the wheel's own "
             "test_data_set_0); per model in results.json. quant size = quantize --mode dynamic file size / "
             "original. checker = onnx.checker full on o(nnxforge), p(ortable), q(uantized). ✗ = the command "
             "failed (see failures); error = that tool failed on the model; — = no figure (no output, or its session "
             "failed to load).")
    return {"title": "Third-party model corpus (make corpus)", "columns": cols, "rows": rows, "notes": notes,
            "data": results}
