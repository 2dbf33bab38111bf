"""INT8 vs FP32 on digits (latency at batch 1 and 64 with 1 thread, size, accuracy), and onnxforge optimize vs
onnxslim, onnxsim and onnxruntime's extended level (node count, latency) on an MLP, the CNN and a transformer
block. Every cell comes from this run: the quantize stage's exit code, message and shipped mode, tool versions from
importlib.metadata, a failed variant as a row with its reason. Outputs are checked before timing (accuracy on the
held-out rows; optimize variants against their input), and every ratio compares timings taken in the same
interleaved rounds of this run — the quantize stage's shipped model included, calibrated on the same sample as the
candidates beside it. `run(quick=True)`: the MLP only, two candidates, two rounds."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"
ROUNDS, SECONDS = 5, 0.25  # interleaved timing rounds and seconds per (model, batch) measurement


def _strip_debug(path: Path) -> Path:
    """Drop the exporter's per-node debug metadata (stack traces, FX names), as a shipped artifact would: file
    sizes then reflect the model, not the exporter's notes."""
    import onnx

    from onnxforge.artifact import save_model

    m = onnx.load(str(path))
    for n in m.graph.node:
        del n.metadata_props[:]
        n.doc_string = ""
    return save_model(m, path)


def _export(module, shape: tuple, name: str, path: Path, dynamo: bool = True) -> Path:
    import torch

    module.eval()
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    if dynamo:
        torch.onnx.export(module, (x,), str(path), dynamo=True, external_data=False, input_names=[name],
                          output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    else:  # TorchScript graph shape: what onnxruntime.transformers' fusion patterns expect
        torch.onnx.export(module, (x,), str(path), dynamo=False, input_names=[name], output_names=["logits"],
                          dynamic_axes={name: {0: "batch"}, "logits": {0: "batch"}}, opset_version=17)
    return _strip_debug(path)


def _fixture(factory: str, weights: str):
    import torch

    from fixtures import torch_models

    m = getattr(torch_models, factory)()
    m.load_state_dict(torch.load(FIX / "torch" / weights, weights_only=True))
    return m


def _wide_mlp(train: dict, width: int = 512, epochs: int = 8):
    """A wider digits MLP trained here (deterministic): big enough layers for INT8 kernels to pay off."""
    import torch
    from torch import nn

    from fixtures.torch_models import DigitsMLP

    torch.manual_seed(0)
    m = DigitsMLP(width)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    X, y = torch.from_numpy(train["x"]), torch.from_numpy(train["label"])
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=gen)
        for i in range(0, len(X), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(m(X[idx]), y[idx]).backward()
            opt.step()
    return m


def _accuracy(path: Path, feeds: dict, labels: np.ndarray) -> float:
    from onnxforge import runtime

    out = runtime.run(runtime.session(path), feeds)["logits"]
    return float((out.argmax(1) == labels).mean())


def _stage(stage: str, model: Path, out: Path, opts: dict, data: dict | None) -> dict:
    """Run an onnxforge stage in-process, exactly as `onnxforge quantize|optimize MODEL -o OUT` does, and keep
    what happened: its exit code (errors.py's contract: 1 a failed check, 2 bad input, 3 a bug), its message, its
    summary and whether the output file exists."""
    from onnxforge.errors import OnnxforgeError, one_line
    from onnxforge.standalone import build_config, run_alone

    try:
        cfg = build_config(stage, model, None, opts, data=data)
        res, _ = run_alone(stage, cfg, model, out)
        got = {"exit": 0, "summary": res.summary, "message": None}
    except OnnxforgeError as e:
        got = {"exit": e.exit_code, "summary": getattr(e, "result", None) or {}, "message": one_line(str(e))}
    except Exception as e:  # noqa: BLE001 — what the CLI reports as exit 3, kept as the result here
        got = {"exit": 3, "summary": {}, "message": f"{type(e).__name__}: {one_line(str(e))}"}
    got["output"] = str(out) if got["exit"] == 0 and out.is_file() else None
    return got


def _short(text: str | None, n: int = 140) -> str:
    text = text or ""
    return text if len(text) <= n else text[: n - 1] + "…"


def _ort_threads_note(path: Path) -> tuple[bool, str]:
    """Read back from a session built as perf.latency builds its own (runtime.session(threads=1))."""
    from bench import ort_threads
    from onnxforge import runtime

    return ort_threads(runtime.session(path, threads=1), 1)


def _goal(speed: dict, ratio: float, drop: float) -> str:
    """≥2× at batch 1 and 64 (the whole 95 % interval), ≥3.8× smaller, ≤0.5 pt accuracy drop."""
    bad = []
    for b in ("batch1", "batch64"):
        lo, hi = speed[b]["interval"]
        if hi < 2:
            bad.append(f"<2× {b.replace('batch', 'b')}")
        elif lo < 2:
            bad.append(f"2× {b.replace('batch', 'b')} unclear")
    bad += [x for x, b in (("<3.8× size", ratio < 3.8), (">0.5 pt", drop > 0.5)) if b]
    return "yes" if not bad else "no: " + ", ".join(bad)


def _quantize_table(work: Path, test: dict, train: dict, quick: bool = False) -> dict:
    from bench import num, speed_cell
    from onnxforge.stages.optimize import perf
    from onnxforge.stages.quantize import int8

    cal_rows = 256
    models = [("digits MLP 256 (fixture)", lambda: _export(_fixture("digits_mlp", "digits_mlp.pt"), (2, 64), "x",
                                                           work / "mlp.onnx"), "x")]
    if not quick:
        models = [("digits CNN (fixture)", lambda: _export(_fixture("digits_cnn", "digits_cnn.pt"), (2, 1, 8, 8),
                                                           "input", work / "cnn.onnx"), "input"),
                  *models,
                  ("digits MLP 512 (trained here)", lambda: _export(_wide_mlp(train), (2, 64), "x",
                                                                    work / "mlp512.onnx"), "x")]
    configs = [int8.Int8Config("static"), int8.Int8Config("dynamic")] if quick else [
        int8.Int8Config("static"), int8.Int8Config("static", per_channel=True),
        int8.Int8Config("static", quant_format="QOperator"), int8.Int8Config("dynamic")]
    rounds, seconds = (2, 0.02) if quick else (ROUNDS, SECONDS)
    stage_opts = {"mode": "auto", "max_accuracy_drop": 0.005, "latency_rounds": 2 if quick else 5,
                  "calibration_rows": cal_rows}
    if quick:
        stage_opts["candidates"] = [{"mode": "static"}, {"mode": "dynamic"}]
    rows, data, threads_notes, measured = [], [], set(), {}
    for label, make, key in models:
        fp32 = make()
        feeds = {key: test[key]}
        # one calibration sample for every candidate, the stage's included: the first 256 train rows, in a file the
        # stage reads as data.calibration with calibration_rows 256 (it takes them all; MinMax ranges do not
        # depend on their order)
        calib_file = work / f"{fp32.stem}.calibration.npz"
        np.savez(calib_file, **{key: train[key][:cal_rows], "label": train["label"][:cal_rows]})
        pre = work / f"{fp32.stem}.pre.onnx"
        int8.preprocess(fp32, pre)
        calib = int8.CalibrationFeeds({key: train[key][:cal_rows]})
        cands, failed = {"FP32": fp32}, {}
        for i, c in enumerate(configs):
            try:
                cands[c.label] = int8.Int8Builder(pre, work, c, calib, tag=f"{fp32.stem}{i}").build([])
            except Exception as e:  # noqa: BLE001 — a candidate that does not build is a row that says so
                failed[c.label] = f"build failed: {type(e).__name__}: {_short(str(e), 100)}"
        auto = _stage("quantize", fp32, work / f"{fp32.stem}.auto.onnx", stage_opts,
                      {"path": str(FIX / "data/digits_test.npz"), "labels": "label", "calibration": str(calib_file)})
        s = auto["summary"]
        auto_key = None
        if auto["output"]:
            auto_key = f"onnxforge quantize auto → {s.get('chosen')}"
            cands[auto_key] = Path(auto["output"])
        # outputs checked before timing: every model runs on the held-out rows and its accuracy is measured
        acc = {}
        for k, p in list(cands.items()):
            try:
                acc[k] = _accuracy(p, feeds, test["label"])
            except Exception as e:  # noqa: BLE001
                failed[k] = f"does not run: {type(e).__name__}: {_short(str(e), 100)}"
                del cands[k]
        ok, how = _ort_threads_note(fp32)
        threads_notes.add(how)
        lat = perf.latency(cands, feeds, [1, 64], threads=1, rounds=rounds, seconds=seconds)
        measured = {"rounds": lat.rounds, "batches": list(next(iter(lat.samples.values())))}
        size = {k: p.stat().st_size for k, p in cands.items()}
        speeds = {k: {b: p.as_dict() for b, p in lat.paired("FP32", k).items()} for k in cands}
        for k in cands:
            spd = speeds[k] if ok else None  # no ratio on threads that did not hold
            ratio = size["FP32"] / size[k]
            drop = (acc["FP32"] - acc[k]) * 100
            goal = "—" if k == "FP32" or not spd else _goal(spd, ratio, drop)
            if k == auto_key:
                verdicts = ", ".join(f"{b} {v.get('verdict')}" for b, v in (s.get("speed") or {}).items())
                goal = (f"{goal}; exit 0, shipped (stage's own timing: {verdicts or 'none'}"
                        f"{'; warns: ' + _short('; '.join(s['warnings']), 120) if s.get('warnings') else ''})")
            rows.append([label, k, size[k], num(ratio), num(lat[k]["batch1"]),
                         speed_cell(spd["batch1"]) if spd and k != "FP32" else "—", num(lat[k]["batch64"]),
                         speed_cell(spd["batch64"]) if spd and k != "FP32" else "—", num(acc[k] * 100),
                         num(drop), goal])
            data.append({"model": label, "config": k, "bytes": size[k], "p50_ms": lat[k], "accuracy": acc[k],
                         "speed_vs_fp32": speeds[k], "samples_ms": lat.samples[k]})
        for k, why in failed.items():
            rows.append([label, k, "—", "—", "—", "—", "—", "—", "—", "—", f"failed: {why}"])
            data.append({"model": label, "config": k, "failed": why})
        if not auto["output"]:
            rows.append([label, "onnxforge quantize auto", "—", "—", "—", "—", "—", "—", "—", "—",
                         f"exit {auto['exit']}, no model: {_short(auto['message'])}"])
        data.append({"model": label, "stage": "quantize auto", "options": stage_opts, "exit": auto["exit"],
                     "message": auto["message"], "summary": s, "calibration": s.get("calibration")})
    cal = next((d["calibration"] for d in data if d.get("calibration")), None)
    cal_text = (f"calibration: the first {cal_rows} train rows for every candidate, the stage's included (its "
                f"summary: {cal['rows']} rows of {Path(cal['data']).name if cal.get('data') else '?'})"
                if cal else f"calibration: the first {cal_rows} train rows (the stage calibrated nothing)")
    return {"title": "quantize: INT8 vs FP32 on digits (onnxruntime CPU, 1 thread, p50 ms, paired speedup)",
            "columns": ["model", "config", "bytes", "× smaller", "b1 ms", "× faster b1", "b64 ms", "× faster b64",
                        "accuracy %", "drop pt", "goal ≥2× b1&b64, ≥3.8×, ≤0.5 pt"],
            "rows": rows, "data": data,
            "notes": f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs. Inputs: held-out "
                     f"digits ({len(test['label'])} real rows, tiled to batch 1 and 64); {cal_text}. Sizes are "
                     "whole files (graph and metadata included; the exporter's per-node debug notes stripped). "
                     "u8s8 = uint8 activations, int8 weights. Every model of a fixture — the stage's shipped output "
                     f"included — is timed in the same {measured.get('rounds')} interleaved rounds (models back to "
                     "back, order alternating; perf.latency); ms = median of the per-round p50s; × faster = "
                     "geometric mean of the per-round FP32/INT8 ratios with its 95 % interval (timing.paired). "
                     f"Threads: {'; '.join(sorted(threads_notes))}. Goal speed: met only when the whole interval "
                     "is ≥ 2×. 'onnxforge quantize auto' is the stage itself (mode auto, 0.5 pt budget, its default "
                     "candidates, its own speed gate); its row shows the exit code and, when it shipped, the shipped "
                     "file measured with the others."}


def _optimize_variants(work: Path, name: str, src: Path, data: dict | None) -> tuple[dict[str, Path], dict]:
    """The variants that were produced, and for each one that was not: why (a tool's error, a stage's exit code)."""
    import onnx
    import onnxslim

    from onnxforge.artifact import save_model
    from onnxforge.stages.optimize import passes

    out, failed = {"input": src}, {}
    try:
        out["onnxslim"] = save_model(onnxslim.slim(str(src)), work / f"{name}.slim.onnx", run_check=False)
    except Exception as e:  # noqa: BLE001 — shown as the row
        failed["onnxslim"] = f"error: {type(e).__name__}: {_short(str(e), 80)}"
    try:
        import onnxsim

        m, ok = onnxsim.simplify(onnx.load(str(src)))
        if ok:
            out["onnxsim"] = save_model(m, work / f"{name}.sim.onnx", run_check=False)
        else:
            failed["onnxsim"] = "onnxsim's own check failed (simplify returned ok=False)"
    except ImportError:
        failed["onnxsim"] = "not installed"
    except Exception as e:  # noqa: BLE001
        failed["onnxsim"] = f"error: {type(e).__name__}: {_short(str(e), 80)}"
    try:
        passes.ort_level(src, work / f"{name}.ortext.onnx", "extended")
        out["ORT extended"] = work / f"{name}.ortext.onnx"
    except Exception as e:  # noqa: BLE001
        failed["ORT extended"] = f"error: {type(e).__name__}: {_short(str(e), 80)}"
    opts = {"latency_rounds": 1} | ({} if data else {"allow_synthetic": True})
    for label, extra in (("onnxforge optimize", {}), ("onnxforge optimize --portable", {"portable": True})):
        p = work / f"{name}.{'portable' if extra else 'default'}.onnx"
        got = _stage("optimize", src, p, opts | extra, data)
        if got["output"]:
            out[label] = p
        else:
            failed[label] = f"exit {got['exit']}: {_short(got['message'], 100)}"
    return out, failed


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _optimize_table(work: Path, test: dict, quick: bool = False) -> dict:
    from bench import num, speed_cell
    from fixtures.torch_models import transformer_block
    from onnxforge import runtime
    from onnxforge.compare import compare
    from onnxforge.runtime import quiet
    from onnxforge.stages.optimize import passes, perf

    rng = np.random.default_rng(0)
    digits = {"path": str(FIX / "data/digits_test.npz"), "labels": "label"}
    mlp = work / "mlp.onnx"
    if not mlp.is_file():
        _export(_fixture("digits_mlp", "digits_mlp.pt"), (2, 64), "x", mlp)
    cases = [("digits MLP", lambda: mlp, {"x": test["x"]}, digits, "real: held-out digits")]
    if not quick:
        block = {"x": rng.standard_normal((64, 16, 64)).astype(np.float32)}
        cases += [
            ("digits CNN", lambda: work / "cnn.onnx", {"input": test["input"]}, digits, "real: held-out digits"),
            ("transformer block (TorchScript)", lambda: _export(transformer_block(), (2, 16, 64), "x",
                                                                work / "block_ts.onnx", dynamo=False),
             block, None, "synthetic: standard normal"),
            ("transformer block (dynamo)", lambda: _export(transformer_block(), (2, 16, 64), "x",
                                                           work / "block.onnx"), block, None,
             "synthetic: standard normal")]
    rounds, seconds = (2, 0.02) if quick else (7, 0.1)
    rtol, atol = 1e-4, 1e-5  # validate's default against another ONNX model
    rows, data, verdicts, inputs_text, threads_notes = [], [], [], [], set()
    for label, make, feeds, dcfg, kind in cases:
        src = make()
        with quiet():
            variants, failed = _optimize_variants(work, src.stem, src, dcfg)
        # outputs checked before timing: every variant against the input model (graph optimizations off)
        ref = runtime.run(runtime.session(src, level="disable"), feeds)["logits"]
        checks = {}
        for k, p in list(variants.items()):
            try:
                got = runtime.run(runtime.session(p, level="disable"), feeds)["logits"]
                checks[k] = compare("logits", ref, got, rtol, atol)
            except Exception as e:  # noqa: BLE001
                checks[k] = {"pass": False, "reason": f"does not run: {type(e).__name__}"}
            if not checks[k]["pass"]:
                failed[k] = "outputs differ from the input's: " + (
                    checks[k].get("reason") or f"max abs diff {checks[k].get('max_abs', float('nan')):.3g}")
                del variants[k]
        ok, how = _ort_threads_note(src)
        threads_notes.add(how)
        b64 = {k: v[:64] for k, v in feeds.items()}
        inputs_text.append(f"{label}: {kind}, " + ", ".join(f"{k} {v.dtype}{[1, *v.shape[1:]]} / {list(v.shape)}"
                                                            for k, v in b64.items()))
        lat = {lvl: perf.latency(variants, feeds, [1, 64], threads=1, level=lvl, rounds=rounds, seconds=seconds)
               for lvl in ("disable", "all")}
        stats = {k: perf.model_stats(p) for k, p in variants.items()}
        for k in variants:
            cells = []
            for lvl in ("disable", "all"):
                spd = lat[lvl].paired("input", k) if ok and k != "input" else {}
                for b in ("batch1", "batch64"):
                    cells.append(num(lat[lvl][k][b]) + (f" · {speed_cell(spd[b].as_dict())}" if b in spd else ""))
            rows.append([label, k, stats[k]["nodes"], sum(passes.contrib_ops(variants[k]).values()), *cells,
                         f"{checks[k].get('max_abs', 0):.3g}"])
            data.append({"model": label, "variant": k, "nodes": stats[k]["nodes"], "ops": stats[k]["ops"],
                         "p50_ms_raw": lat["disable"][k], "p50_ms_all": lat["all"][k],
                         "samples_ms_raw": lat["disable"].samples[k], "samples_ms_all": lat["all"].samples[k],
                         "check": {x: checks[k].get(x) for x in ("pass", "max_abs", "rtol", "atol")}})
        for k, why in failed.items():
            rows.append([label, k, "—", "—", "—", "—", "—", "—", f"failed: {why}"])
            data.append({"model": label, "variant": k, "failed": why})
        ours = "onnxforge optimize"
        others = [k for k in variants if k not in ("input", ours, "onnxforge optimize --portable")]
        if ours in variants and others and ok:
            best_nodes = min(stats[k]["nodes"] for k in others)
            parts = []
            for lvl, text in (("disable", "as written"), ("all", "ORT all")):
                t = lat[lvl]
                best = min(others, key=lambda k, t=t: sum(np.log(list(t[k].values()))))  # by median over batches
                p = t.paired_over(best, ours)  # > 1: ours faster than that one
                parts.append(f"{text} {num(p.ratio)}× ({num(p.low)}–{num(p.high)}) the speed of the fastest other "
                             f"({best}): {p.verdict()}")
            verdicts.append(f"{label}: nodes {stats[ours]['nodes']} vs best other {best_nodes}; " + ", ".join(parts))
    tools = ", ".join(f"{d} {v}" if (v := _version(d)) else f"{d} not installed" for d in ("onnxslim", "onnxsim"))
    return {"title": "optimize: onnxforge vs onnxslim, onnxsim and ORT extended (nodes, p50 ms · paired × vs input, "
                     "1 thread)",
            "columns": ["model", "variant", "nodes", "contrib ops", "b1 as written", "b64 as written",
                        "b1 ORT all", "b64 ORT all", "max abs diff vs input"],
            "rows": rows, "data": data,
            "notes": (f"Tools: {tools} (read from the installed packages). Before timing, every variant's output is "
                      f"compared with the input model's (graph optimizations off; rtol {rtol:g}, atol {atol:g}): one "
                      "that differs, does not run or was not produced is a 'failed' row with the reason and is not "
                      f"timed. Cells: p50 ms (median of {rounds} interleaved rounds, variants back to back, order "
                      "alternating; perf.latency) · × as fast as the input in those same rounds (geometric mean of "
                      "per-round ratios, 95 % interval; timing.paired). 'as written' = onnxruntime with graph "
                      "optimizations disabled (what the file itself costs); 'ORT all' = onnxruntime's default, which "
                      "re-optimizes every variant at load. onnxforge optimize = onnxslim → transformer fusion "
                      "(detected) → ORT extended, each pass checked; --portable = onnxslim → ORT basic, no contrib "
                      f"ops. Threads: {'; '.join(sorted(threads_notes))}. Inputs: " + "; ".join(inputs_text)
                      + ". Versus the fastest other tool (by median; ratio over both batch sizes, verdict with a ±5 % "
                      "band): " + " | ".join(verdicts))}


def run(quick: bool = False) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    te, tr = np.load(FIX / "data/digits_test.npz"), np.load(FIX / "data/digits_train.npz")
    test, train = {k: te[k] for k in te.files}, {k: tr[k] for k in tr.files}
    with tempfile.TemporaryDirectory(prefix="bench-qo-") as d:
        work = Path(d)
        return [_quantize_table(work, test, train, quick), _optimize_table(work, test, quick)]
