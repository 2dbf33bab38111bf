"""Tabular frontends: per fixture, latency of the converted ONNX model in onnxruntime (1 thread) against the native
library's own predict, single-row and batch-256, in the same interleaved rounds of one run. Native libraries also
run on 1 thread, through the frontend's thread hook (n_jobs=1 / XGBoost nthread / LightGBM num_threads, OpenMP/BLAS
pools at 1), read back from the library: a row whose limit did not hold says so and gets no speedup. Classifiers:
native predict_proba (the probabilities; the label is their argmax); regressors: native predict. Inputs are prepared
outside the timed calls on both sides (a DataFrame for pipelines fitted on one, tensors for onnxruntime).

Before anything is timed, both sides' outputs are compared with validate's comparison at the config's (else the
frontend's) tolerance — every output on every real row through the frontend's predict, and on each timed batch the
timed native call's result against the matching ONNX output. A fixture that fails it is marked failed, not timed."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from bench import check_outputs, interleaved, num, ort_threads, speed_cell

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ("sklearn_pipeline", "sklearn_forest", "xgboost_classifier", "xgboost_regressor", "xgboost_pipeline",
            "lightgbm_classifier", "lightgbm_regressor")
BATCH = 256
GOAL = 5.0  # single-row speedup asked of sklearn and XGBoost models
ROUNDS, SECONDS = 7, 0.3  # paired rounds; seconds per side per round
QUICK = {"fixtures": ("xgboost_classifier",), "batches": (1, 16), "rounds": 3, "seconds": 0.02}


def _native_call(native, X, names: list[str]):
    """(the timed native call, the ONNX output it computes, how its result reads as that output)."""
    from onnxforge.frontends._tabular import task_of
    from onnxforge.frontends.lightgbm import NativeBooster

    if isinstance(native, NativeBooster):
        def as_output(raw):
            raw = np.asarray(raw)
            return np.column_stack([1 - raw, raw]) if native.task == "classifier" and raw.ndim == 1 else raw

        return (lambda: native.booster.predict(X, num_threads=native.num_threads),
                names[1] if native.task == "classifier" else names[0], as_output)
    if task_of(native) == "classifier":
        return lambda: native.predict_proba(X), names[1], np.asarray
    return lambda: native.predict(X), names[0], np.asarray


def _tile(feeds: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    reps = -(-n // len(next(iter(feeds.values()))))
    return {k: np.concatenate([v] * reps)[:n] for k, v in feeds.items()}


def _shapes(feeds: dict[str, np.ndarray]) -> str:
    shapes = {f"{v.dtype}{list(v.shape)}" for v in feeds.values()}
    if len(feeds) > 2 and len(shapes) <= 3:  # one input per column: say how many, not each
        return f"{len(feeds)} inputs ({', '.join(sorted(shapes))})"
    return ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in feeds.items())


def bench_one(name: str, workdir: Path, *, batches=(1, BATCH), rounds: int = ROUNDS,
              seconds: float = SECONDS) -> dict:
    from onnxforge import data, runtime
    from onnxforge.config import load_config
    from onnxforge.frontends._tabular import native_input, output_names, task_of
    from onnxforge.frontends.lightgbm import NativeBooster
    from onnxforge.paths import shown
    from onnxforge.registry import frontend

    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    fe = frontend(cfg.source.framework)
    native = fe.load(cfg)
    model = fe.export(native, cfg, None, workdir)
    sess = runtime.session(model, threads=1)
    specs = fe.specs(native, cfg)
    feeds = data.feeds_from_table(data.load_table(cfg.data.path), specs)
    ort_ok, ort_how = ort_threads(sess, 1)
    names = output_names(native.task if isinstance(native, NativeBooster) else task_of(native), cfg)
    row: dict = {"fixture": name, "framework": fe.name, "model": fe.what(native, cfg).split(" from ")[0],
                 "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
                 "data": f"real data: {shown(cfg.data.path, ROOT)}, {data.n_rows(feeds)} rows (tiled to each batch)",
                 "ort_threads_applied": ort_ok, "ort_threads_note": ort_how, "rounds": rounds,
                 "seconds_per_round": seconds, "batches": list(batches)}
    checks = {"all rows": check_outputs(fe, native, cfg, fe.predict(native, feeds, cfg), runtime.run(sess, feeds),
                                        data.n_rows(feeds))}
    for n in batches:
        f = _tile(feeds, n)
        fn, out, as_output = _native_call(native, native_input(native, f, specs), names)
        checks[f"timed call, batch {n}"] = check_outputs(fe, native, cfg, {out: as_output(fn())}, runtime.run(sess, f), n)
    row["checks"] = checks
    bad = [f"{k}: {c['reason']}" for k, c in checks.items() if not c["pass"]]
    row["status"] = "failed: outputs differ — " + "; ".join(bad) if bad else "ok"
    if bad:
        return row
    with fe.threads(native, 1) as limit:  # the library's own setting, read back; restored after
        row["native_threads_applied"], row["native_threads_note"] = limit.applied, limit.how
        for n in batches:
            f = _tile(feeds, n)
            row[f"inputs_{n}"] = _shapes(f)
            fn, _, _ = _native_call(native, native_input(native, f, specs), names)
            samples = interleaved({"onnxruntime": lambda f=f: sess.run(None, f), "native": fn}, rounds=rounds,
                                  seconds=seconds, rows=n)
            row[f"samples_{n}"] = samples
            row[f"ort_{n}"], row[f"native_{n}"] = (float(np.median(samples[k])) for k in ("onnxruntime", "native"))
            fair = limit.applied and ort_ok  # no ratio on threads that did not hold
            row[f"speed_{n}"] = _paired(samples["native"], samples["onnxruntime"]) if fair else None
    return row


def _paired(native_ms: list[float], ort_ms: list[float]) -> dict:
    """How many times as fast ORT is as native: timing.paired's geometric mean of per-round native/ORT ratios."""
    from onnxforge.timing import paired

    return paired(native_ms, ort_ms).as_dict()


def _goal(r: dict, b1: int) -> str:
    s = r.get(f"speed_{b1}")
    if r["framework"] == "lightgbm" or not s:
        return "—"
    lo = s["interval"][0]
    return "yes" if lo >= GOAL else "NO" if s["interval"][1] < GOAL else f"unclear ({num(lo)}–{num(s['interval'][1])})"


def table(rows: list[dict], batches=(1, BATCH)) -> dict:
    b1, bn = batches
    out = []
    for r in rows:
        if r["status"] != "ok":
            out.append([r["fixture"], r["model"], r["status"], "—", r["data"], *["—"] * 7])
            continue
        thr = (("1" if r["ort_threads_applied"] else "NOT 1") + " ORT / "
               + ("1" if r["native_threads_applied"] else "default (not applied)") + " native")
        out.append([r["fixture"], r["model"], "ok", thr, f"{r['data']}; {r[f'inputs_{b1}']} / {r[f'inputs_{bn}']}",
                    num(r[f"ort_{b1}"]), num(r[f"native_{b1}"]), speed_cell(r[f"speed_{b1}"]), _goal(r, b1),
                    num(r[f"ort_{bn}"]), num(r[f"native_{bn}"]), speed_cell(r[f"speed_{bn}"])])
    r0 = rows[0] if rows else {}
    return {
        "title": "Tabular frontends: onnxruntime vs native predict (1 thread each), p50 ms and paired speedup",
        "columns": ["fixture", "model", "outputs checked", "threads (read back)", "inputs", f"ORT {b1} row",
                    f"native {b1} row", f"ORT × faster, {b1} row", f"≥{GOAL:g}× goal ({b1} row)", f"ORT {bn} rows",
                    f"native {bn} rows", f"ORT × faster, {bn} rows"],
        "rows": out,
        "notes": "Same process, same inputs (real rows, tiled to the batch). Before timing, ONNX and native outputs "
                 "are compared with validate's comparison at the config's (else the frontend's) tolerance: every "
                 "output on every real row, and the timed native call's result on each timed batch; a fixture that "
                 f"fails is marked failed and not timed. Timing: {r0.get('rounds', ROUNDS)} paired rounds (ORT and "
                 f"native back to back, order alternating, ≤ {r0.get('seconds_per_round', SECONDS)} s each per "
                 "round, onnxforge.timing.measure); ms = median of the per-round p50s; × faster = geometric mean of "
                 "the per-round native/ORT ratios (onnxforge.timing.paired) with its 95 % interval. Threads: ORT "
                 "intra_op_num_threads read back from the session; native through the frontend's thread hook "
                 "(n_jobs / XGBoost booster nthread / LightGBM num_threads, OpenMP/BLAS pools at 1 via "
                 "threadpoolctl), read back — a side whose limit did not hold gets no ratio. Native = predict_proba "
                 "for classifiers (predict for regressors; LightGBM Booster.predict for native text models). Goal "
                 f"(sklearn and XGBoost): 'yes' when the whole interval is ≥ {GOAL:g}×, 'NO' when it is wholly below.",
        "data": rows,
    }


def run(quick: bool = False) -> list[dict]:
    from rich.progress import Progress

    fixtures = QUICK["fixtures"] if quick else FIXTURES
    kw = {k: QUICK[k] for k in ("batches", "rounds", "seconds")} if quick else {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp, Progress(transient=True) as progress:
        task = progress.add_task("tabular frontends", total=len(fixtures))
        for name in fixtures:
            progress.update(task, description=f"bench {name}")
            rows.append(bench_one(name, Path(tmp), **kw))
            progress.advance(task)
    return [table(rows, kw.get("batches", (1, BATCH)))]
