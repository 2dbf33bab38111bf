"""onnxforge on the third-party corpus (corpus/manifest.toml, `make corpus`): node counts of the original,
onnxslim, onnxruntime's extended level, onnxforge optimize and optimize --portable; the size of quantize --mode
dynamic; onnx.checker (full) on every onnxforge output; and each variant's speed against the original.

Before anything is timed, every variant runs on the model's inputs in the very session that is then timed, and its
outputs are compared with the original's: onnxslim, ORT extended, onnxforge and portable must match (rtol 1e-3,
atol 1e-4, labels exactly — the corpus tests' tolerance); the quantized model is held to finite outputs of the
original's names and shapes and its fidelity is reported (max relative error), not equality. A variant that was not
produced, does not run or differs is a failed cell with its reason and is not timed. The original and every
variant that passed are then timed in interleaved rounds (bench.interleaved: each once per round, order reversed on
odd rounds), and each speed is timing.paired's geometric mean of the per-round original/variant ratios with its
95 % interval. onnxruntime runs on 1 intra-op thread, read back from every session (no ratio where it did not hold).

`python -m bench corpus` runs every model; `python -m bench.bench_corpus --models a,b [--rounds N --seconds S]`
a subset (printed, nothing written); run(quick=True) one small model with two short rounds."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench import interleaved, num, ort_threads, speed_cell

ROOT = Path(__file__).resolve().parents[1]
ROUNDS, SECONDS = 6, 0.2  # interleaved paired rounds × at most seconds per variant per round
RTOL, ATOL = 1e-3, 1e-4  # tests/test_corpus.py's tolerance for optimized outputs against the original's
QUICK = {"models": ("lstm_frozen",), "rounds": 2, "seconds": 0.02}
VARIANTS = ("onnxslim", "ort_extended", "onnxforge", "portable", "quantized")
LABEL = {"onnxslim": "onnxslim", "ort_extended": "ORT extended", "onnxforge": "onnxforge", "portable": "portable",
         "quantized": "quantized"}


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _session(path: Path):
    """Default graph optimizations (what a user gets), one intra-op and one inter-op thread, no spinning. Returns
    the session and whether 1 thread held: read back from the session's options, and no pool thread started."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    before = _os_threads()
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ok, how = ort_threads(s, 1)
    started = _os_threads() - before  # a pool of n intra-op threads starts n-1 OS threads
    return s, ok and started == 0, {"read_back": how, "os_threads_started": started}


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


def _short(text: str, n: int = 70) -> str:
    text = str(text).replace("check failed: ", "").replace("internal error: ", "").replace("error: ", "")
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _as_array(v) -> np.ndarray:
    """ZipMap's sequence of maps as a (rows, classes) array ordered by class."""
    if isinstance(v, list) and v and isinstance(v[0], dict):
        return np.array([[row[k] for k in sorted(row)] for row in v])
    return np.asarray(v)


def _equal(ref: dict, got: dict) -> tuple[bool, str | None, float]:
    """Every output of the original present in `got` and within rtol/atol (labels exactly). (pass, why not, the
    largest absolute difference of a float output)."""
    from onnxforge.compare import compare

    why, worst = [], 0.0
    for k, r in ref.items():
        if k not in got:
            why.append(f"{k}: missing")
            continue
        c = compare(k, _as_array(r), _as_array(got[k]), RTOL, ATOL)
        worst = max(worst, c.get("max_abs", 0.0))
        if not c["pass"]:
            why.append(f"{k}: " + (c.get("reason") or (
                f"{c['mismatches']}/{c['total']} values beyond rtol {RTOL:g}, atol {ATOL:g} (max abs diff "
                f"{c['max_abs']:.3g})" if c["kind"] == "float" else f"{c.get('flips')}/{c.get('total')} labels differ")))
    return not why, "; ".join(why) or None, worst


def _fidelity(ref: dict, got: dict) -> tuple[bool, str | None, dict]:
    """The quantized model: the original's outputs, same shapes, finite. Its fidelity per output: relative error
    ||q - o|| / ||o|| for float outputs, the share of equal values for the others."""
    why, fid = [], {}
    for k, r in ref.items():
        if k not in got:
            why.append(f"{k}: missing")
            continue
        a, b = _as_array(r), _as_array(got[k])
        if a.shape != b.shape:
            why.append(f"{k}: shape {list(b.shape)} vs the original's {list(a.shape)}")
        elif a.dtype.kind in "fc":
            if not np.isfinite(b.astype(np.float64)).all():
                why.append(f"{k}: non-finite values")
                continue
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            den = float(np.linalg.norm(a64))
            fid[k] = {"rel_error": float(np.linalg.norm(b64 - a64) / den) if den else float(np.linalg.norm(b64)),
                      "max_abs": float(np.abs(b64 - a64).max(initial=0.0))}
        else:
            fid[k] = {"equal_share": float((a == b).mean()) if a.size else 1.0}
    return not why, "; ".join(why) or None, fid


def _fidelity_text(fid: dict) -> str:
    parts = [f"rel err {num(v['rel_error'])}" if "rel_error" in v else f"{num(v['equal_share'] * 100)} % equal"
             for v in fid.values()]
    return ", ".join(parts) if len(set(parts)) > 1 else (parts[0] if parts else "—")


def _inputs_text(e: dict, feeds: dict) -> str:
    shapes = ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in feeds.items())
    if e.get("testdata"):
        return f"shipped test_data_set_0: {shapes}"
    rng = {k: v for k, v in (e.get("value") or {}).items()}
    how = "; ".join(f"{k} {'= ' + str(v) if isinstance(v, int | float) else 'uniform ' + str(v).replace('..', '…')}"
                    for k, v in rng.items())
    return f"synthetic (seeded{', ' + how if how else ''}): {shapes}"


def _runner(name: str, sess, feeds: dict):
    """The timed call of one variant, named after it (the tests read the order of calls by that name)."""
    def call():
        return sess.run(None, feeds)

    call.__qualname__ = call.__name__ = f"run {name}"
    return call


def bench_one(e: dict, tmp: Path, *, rounds: int = ROUNDS, seconds: float = SECONDS) -> dict:
    src = Path(e["file"])
    feeds = dict(np.load(e["inputs"]))
    out: dict = {"model": e["name"], "package": f"{e['source']['package']} {e['source']['version']}",
                 "inputs": _inputs_text(e, feeds), "input_source": "test_data_set_0" if e.get("testdata") else
                 "synthetic", "nodes": {"original": _nodes(src)}, "failed": {}, "checker": {}, "exit": {},
                 "rounds": rounds, "seconds_per_round": seconds}
    paths = {"original": src}
    for k, fn in (("onnxslim", _slim), ("ort_extended", _ort_extended)):
        try:
            paths[k] = fn(src, tmp / f"{k}.onnx")
            out["nodes"][k] = _nodes(paths[k])
        except Exception as ex:  # noqa: BLE001 — shown in the table
            out["nodes"][k] = "error"
            out["failed"][k] = f"error: {type(ex).__name__}: {_short(str(ex).splitlines()[0] if str(ex) else '', 80)}"
    cmds = {"onnxforge": ["optimize", src, "-o", tmp / "opt.onnx", "--data", e["inputs"]],
            "portable": ["optimize", src, "--portable", "-o", tmp / "portable.onnx", "--data", e["inputs"]],
            "quantized": ["quantize", src, "--mode", "dynamic", "-o", tmp / "quant.onnx", "--data", e["inputs"],
                          "--set", "max_accuracy_drop=null"]}  # no labels here: fidelity is measured below
    for k, cmd in cmds.items():
        code, last = _cli(*cmd)
        out["exit"][k] = code if code == 0 else f"{code}: {last[:160]}"
        p = cmd[cmd.index("-o") + 1]
        if k == "quantized" and e.get("no_weights") and code == 2 and "stores no weights" in last:
            out["quant_size_ratio"] = "no weights"  # the refusal the manifest expects: no model, not a failure
            continue
        if code != 0 or not p.is_file():
            out["failed"][k] = f"exit {code}: {_short(last, 120)}" if code else "exit 0 but no output file"
            continue
        out["checker"][k] = _checker(p)
        paths[k] = p
        if k == "quantized":
            out["quant_size_ratio"] = _size(p) / _size(src)
        else:
            out["nodes"][k] = _nodes(p)
    # outputs checked before timing, through the sessions that are then timed
    sessions, threads = {}, {}
    for k, p in paths.items():
        try:
            s, ok, how = _session(p)
            ins = {i.name: feeds[i.name] for i in s.get_inputs()}
            names = [o.name for o in s.get_outputs()]
            got = dict(zip(names, s.run(None, ins), strict=True))
        except Exception as ex:  # noqa: BLE001 — a variant that does not run is failed, untimed
            if k == "original":
                out["status"] = f"failed: the original does not run: {type(ex).__name__}: {_short(str(ex), 120)}"
                return out
            out["failed"][k] = f"does not run: {type(ex).__name__}: {_short(str(ex), 100)}"
            continue
        sessions[k], threads[k] = (s, ins, got), {"applied": ok, **how}
    ref = sessions["original"][2]
    checks = {}
    for k in [v for v in VARIANTS if v in sessions]:
        got = sessions[k][2]
        if k == "quantized":
            ok, why, fid = _fidelity(ref, got)
            checks[k] = {"pass": ok, "reason": why, "fidelity": fid}
            out["quant_fidelity"] = fid
        else:
            ok, why, worst = _equal(ref, got)
            checks[k] = {"pass": ok, "reason": why, "max_abs": worst, "rtol": RTOL, "atol": ATOL}
        if not ok:
            out["failed"][k] = ("outputs differ from the original's: " if k != "quantized" else
                                "outputs unusable: ") + _short(why, 140)
            del sessions[k]
    out["checks"], out["threads"] = checks, threads
    out["status"] = "ok"
    fns = {k: _runner(k, s, ins) for k, (s, ins, _) in sessions.items()}
    samples = interleaved(fns, rounds=rounds, seconds=seconds, warmup=1)
    out["samples_ms"] = samples
    out["p50_ms"] = {k: float(np.median(v)) for k, v in samples.items()}
    out["speed"] = {k: _paired(samples["original"], samples[k]) if threads[k]["applied"] and
                    threads["original"]["applied"] else None for k in samples if k != "original"}
    return out


def _paired(base: list[float], cand: list[float]) -> dict:
    """How many times as fast the variant is as the original: timing.paired's geometric mean of per-round ratios."""
    from onnxforge.timing import paired

    return paired(base, cand).as_dict()


def _speed(r: dict, k: str) -> str:
    if k in r.get("failed", {}):
        reason = r["failed"][k]
        return "failed: " + ("outputs differ" if reason.startswith("outputs differ") else
                             "does not run" if reason.startswith("does not run") else
                             "outputs unusable" if reason.startswith("outputs unusable") else "not produced")
    if k not in r.get("speed", {}):
        return "—"  # not made (quantize: no weights to quantize)
    s = r["speed"][k]
    return speed_cell(s) if s else "threads not 1: not shown"


def _run_entries(entries: list[dict], rounds: int, seconds: float) -> list[dict]:
    results = []
    for e in entries:
        print(f"bench: corpus {e['name']} ...", flush=True)
        with tempfile.TemporaryDirectory() as d:
            results.append(bench_one(e, Path(d), rounds=rounds, seconds=seconds))
    return results


def run(quick: bool = False, models: list[str] | None = None, rounds: int | None = None,
        seconds: float | None = None) -> list[dict]:
    sys.path.insert(0, str(ROOT))
    import corpus

    entries = corpus.entries()
    if not entries:  # `make bench` without the corpus: say so, keep the other suites' tables
        print(f"bench: corpus skipped — no corpus in {corpus.cache_dir()} (run `make corpus`)", flush=True)
        return []
    names = list(models or (QUICK["models"] if quick else []))
    if names:
        unknown = sorted(set(names) - {e["name"] for e in entries})
        if unknown:
            raise SystemExit(f"bench corpus: no such model(s) {unknown}; known: {[e['name'] for e in entries]}")
        entries = [e for e in entries if e["name"] in names]
    rounds = rounds or (QUICK["rounds"] if quick else ROUNDS)
    seconds = seconds or (QUICK["seconds"] if quick else SECONDS)
    return [table(_run_entries(entries, rounds, seconds), every=[e["name"] for e in corpus.entries()])]


def table(results: list[dict], every: list[str] | None = None) -> dict:
    """The README table from `bench_one` results (also from a saved results.json's `data`)."""
    cols = ["model", "package", "inputs", "nodes orig", "onnxslim", "ORT ext", "onnxforge", "portable",
            "orig p50 ms", "× onnxforge", "× portable", "× onnxslim", "× ORT ext", "× quantized", "quant size",
            "quant fidelity", "checker", "failures"]
    rows = []
    for r in results:
        n = r["nodes"]
        if r.get("status", "ok") != "ok":
            rows.append([r["model"], r["package"], r["inputs"], n["original"], *["—"] * 13, r["status"]])
            continue
        fails = "; ".join(f"{LABEL[k]}: {v}" for k, v in r["failed"].items())
        checks = " ".join(f"{k[0]}:{v}" for k, v in r["checker"].items())
        q = r.get("quant_size_ratio")
        fid = _fidelity_text(r["quant_fidelity"]) if r.get("quant_fidelity") and "quantized" not in r["failed"] \
            else "—"
        rows.append([r["model"], r["package"], r["inputs"], n["original"],
                     *(n.get(k, "✗") for k in ("onnxslim", "ort_extended", "onnxforge", "portable")),
                     num(r["p50_ms"]["original"]),
                     *(_speed(r, k) for k in ("onnxforge", "portable", "onnxslim", "ort_extended", "quantized")),
                     num(q) if isinstance(q, float) else (q or "—"), fid, checks or "—", fails or "—"])
    r0 = results[0] if results else {}
    threads = sorted({t["read_back"] for r in results for t in r.get("threads", {}).values()})
    started = sorted({t["os_threads_started"] for r in results for t in r.get("threads", {}).values()})
    left = [n for n in every or [] if n not in {r["model"] for r in results}]
    subset = f" Subset: {len(results)} of {len(every)} corpus models (not run: {', '.join(left)})." if left else ""
    notes = ("× = how many times as fast as the original (> 1 faster): geometric mean of the per-round "
             "original/variant p50 ratios with its 95 % interval (onnxforge.timing.paired), from "
             f"{r0.get('rounds', ROUNDS)} interleaved rounds (original and every variant back to back, order "
             f"reversed on odd rounds, ≤ {r0.get('seconds_per_round', SECONDS)} s each per round, "
             "onnxforge.timing.measure); orig p50 ms = median of the original's per-round p50s. onnxruntime CPU, "
             "default optimization level, 1 intra-op and 1 inter-op thread, read back from every session "
             f"({'; '.join(threads) or 'no session'}; OS threads started by a session: "
             f"{', '.join(map(str, started)) or '—'}) — a ratio whose sessions did not "
             "hold 1 thread is not shown. Before timing, each variant's outputs (in the session then timed) are "
             f"compared with the original's: onnxslim, ORT ext, onnxforge and portable at rtol {RTOL:g}, atol "
             f"{ATOL:g} (labels exactly); quantized (quantize --mode dynamic) must give the original's outputs, same "
             "shapes, finite — its fidelity is reported, not held to equality (rel err = ‖quantized − original‖ / "
             "‖original‖ per output). A variant that was not produced, does not run or differs is 'failed' (reason "
             "in failures) and is not timed. Inputs: per model, the wheel's own test_data_set_0 where it ships one, "
             "else synthetic arrays (seeded, uniform in the manifest's range) at the manifest's shape hints. quant "
             "size = quantized file size / original's ('no weights': quantize exits 2, the model stores none). "
             "checker = onnx.checker full on o(nnxforge), p(ortable), q(uantized). ✗ = the command failed; error = "
             "that tool failed on the model." + subset)
    return {"title": "Third-party model corpus (make corpus)", "columns": cols, "rows": rows, "notes": notes,
            "data": results}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    from bench.__main__ import to_markdown

    ap = argparse.ArgumentParser(prog="python -m bench.bench_corpus")
    ap.add_argument("--models", default="", help="comma-separated corpus model names (default: all)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true", help="also print the per-model data")
    ap.add_argument("--write", action="store_true", help="write bench/out/corpus.{json,md} as `python -m bench "
                    "corpus` does (a subset says so in the notes)")
    a = ap.parse_args(argv)
    tables = run(quick=a.quick, models=[m for m in a.models.split(",") if m] or None, rounds=a.rounds,
                 seconds=a.seconds)
    if not tables:
        return 1
    if a.json:
        print(json.dumps(tables[0]["data"], indent=1, default=str))
    print(to_markdown(tables))
    if a.write:
        _write(tables)
    return 0


def _write(tables: list[dict]) -> None:
    """bench/out/corpus.{json,md} in bench.__main__'s format (meta, the suite's tables, the same header)."""
    import json
    import platform
    from datetime import UTC, datetime

    import onnxruntime

    from bench.__main__ import _header, to_markdown

    date = datetime.now(UTC).isoformat(timespec="seconds")
    meta = {"date": date, "python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "onnxruntime": onnxruntime.__version__, "quick": False, "suite": "corpus",
            "models": [r["model"] for r in tables[0]["data"]]}
    for t in tables:
        t.setdefault("suite", "corpus")
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "corpus.json").write_text(json.dumps({"meta": meta, "tables": tables}, indent=2, default=str) + "\n")
    (out / "corpus.md").write_text(_header(meta, {"corpus": {"date": date}}) + to_markdown(tables))


if __name__ == "__main__":
    sys.exit(main())
