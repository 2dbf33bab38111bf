"""Deep-learning frontends: per fixture (torch CNN and MLP, Keras Sequential and Functional), latency of the
converted ONNX model in onnxruntime (1 thread) against the native framework's own forward pass (1 thread), single-row
and batch-256, in the same interleaved rounds of one run. Torch: `module(x)` under torch.no_grad(). Keras: the eager
`model(x, training=False)` and the compiled `predict_on_batch(x)` (both timed; the faster is the baseline). Inputs are
prepared outside the timed calls on both sides (tensors for torch, numpy arrays for Keras and onnxruntime).

Before anything is timed, both sides' outputs are compared with validate's comparison at the config's (else the
frontend's) tolerance — on every real row through the frontend's predict, and on each timed batch through the very
calls that are timed. A fixture that fails it is marked failed and gets no timing."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from bench import check_outputs, interleaved, num, ort_threads, speed_cell

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ("torch_cnn", "torch_mlp", "keras_sequential", "keras_functional")
BATCH = 256
ROUNDS, SECONDS = 7, 0.3  # paired rounds; seconds per callable per round
QUICK = {"fixtures": ("torch_mlp",), "batches": (1, 16), "rounds": 3, "seconds": 0.02}


def _rows(feeds: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    reps = -(-n // len(next(iter(feeds.values()))))
    return {k: np.ascontiguousarray(np.concatenate([v] * reps)[:n]) for k, v in feeds.items()}


def _native_fns(fe, native, cfg, feeds) -> dict[str, callable]:
    """Timed callables for the native framework, each returning its output as numpy (the conversion is outside
    the timing: the timed lambdas return the framework's own tensors)."""
    if fe.name == "torch":
        import torch

        args = [torch.from_numpy(feeds[s.name]) for s in cfg.inputs]

        def forward():
            with torch.no_grad():
                return native(*args)

        return {"torch no_grad": forward}
    x = [feeds[s.name] for s in cfg.inputs]
    x = x[0] if len(x) == 1 else x
    return {"model(x, training=False)": lambda: native(x, training=False),
            "predict_on_batch": lambda: native.predict_on_batch(x)}


def _numpy(out) -> np.ndarray:
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if isinstance(out, list | tuple):
        out = out[0]
    return np.asarray(out.detach().numpy() if hasattr(out, "detach") else out)


def _shapes(feeds: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in feeds.items())


def bench_one(name: str, workdir: Path, *, batches=(1, BATCH), rounds: int = ROUNDS,
              seconds: float = SECONDS) -> dict:
    from onnxforge import data, runtime
    from onnxforge.config import load_config
    from onnxforge.paths import shown
    from onnxforge.registry import frontend

    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    fe = frontend(cfg.source.framework)
    fe.preset_threads(1)  # TensorFlow fixes its pools when it starts: before the model loads
    native = fe.load(cfg)
    model = fe.export(native, cfg, None, workdir)
    sess = runtime.session(model, threads=1)
    feeds = data.feeds_from_table(data.load_table(cfg.data.path), cfg.inputs)
    ort_ok, ort_how = ort_threads(sess, 1)
    row: dict = {"fixture": name, "framework": fe.name, "nodes": len(model.graph.node),
                 "data": f"real data: {shown(cfg.data.path, ROOT)}, {data.n_rows(feeds)} rows (tiled to each batch)",
                 "ort_threads_applied": ort_ok, "ort_threads_note": ort_how, "rounds": rounds,
                 "seconds_per_round": seconds, "batches": list(batches)}
    # the two sides compute the same thing before they are timed: every real row through the frontend's
    # predict, then each timed batch through the very calls that are timed
    checks = {"all rows": check_outputs(fe, native, cfg, fe.predict(native, feeds, cfg), runtime.run(sess, feeds),
                                        data.n_rows(feeds))}
    out_name = sess.get_outputs()[0].name
    for n in batches:
        f = _rows(feeds, n)
        got = {out_name: sess.run([out_name], f)[0]}
        for label, fn in _native_fns(fe, native, cfg, f).items():
            checks[f"{label}, batch {n}"] = check_outputs(fe, native, cfg, {out_name: _numpy(fn())}, got, n)
    row["checks"] = checks
    bad = [f"{k}: {c['reason']}" for k, c in checks.items() if not c["pass"]]
    row["status"] = "failed: outputs differ — " + "; ".join(bad) if bad else "ok"
    if bad:
        return row
    with fe.threads(native, 1) as limit:  # read back from torch / tf.config.threading
        row["native_threads_applied"], row["native_threads_note"] = limit.applied, limit.how
        for n in batches:
            f = _rows(feeds, n)
            row[f"inputs_{n}"] = _shapes(f)
            fns = {"onnxruntime": lambda f=f: sess.run(None, f), **_native_fns(fe, native, cfg, f)}
            samples = interleaved(fns, rounds=rounds, seconds=seconds, rows=n)
            natives = {k: float(np.median(v)) for k, v in samples.items() if k != "onnxruntime"}
            best = min(natives, key=natives.get)
            row[f"samples_{n}"] = samples
            row[f"ort_{n}"], row[f"native_{n}"], row[f"native_how_{n}"] = (
                float(np.median(samples["onnxruntime"])), natives[best], best)
            row[f"all_native_{n}"] = natives
            fair = limit.applied and ort_ok  # no ratio on threads that did not hold
            row[f"speed_{n}"] = _paired(samples[best], samples["onnxruntime"]) if fair else None
    return row


def _paired(native_ms: list[float], ort_ms: list[float]) -> dict:
    """How many times as fast ORT is as native: timing.paired's geometric mean of per-round native/ORT ratios."""
    from onnxforge.timing import paired

    return paired(native_ms, ort_ms).as_dict()


def _threads_cell(r: dict) -> str:
    if "native_threads_applied" not in r:
        return "—"
    parts = [("1" if r["ort_threads_applied"] else "NOT 1") + " ORT",
             ("1" if r["native_threads_applied"] else "default (not applied)") + " native"]
    return " / ".join(parts)


def table(rows: list[dict], batches=(1, BATCH)) -> dict:
    b1, bn = batches
    out = []
    for r in rows:
        if r["status"] != "ok":
            out.append([r["fixture"], r["status"], "—", r["data"], *["—"] * 6])
            continue
        how = r[f"native_how_{b1}"] if r[f"native_how_{b1}"] == r[f"native_how_{bn}"] else \
            f"{r[f'native_how_{b1}']} / {r[f'native_how_{bn}']}"
        out.append([r["fixture"], f"ok; native: {how}", _threads_cell(r),
                    f"{r['data']}; {r[f'inputs_{b1}']} / {r[f'inputs_{bn}']}",
                    num(r[f"ort_{b1}"]), num(r[f"native_{b1}"]), speed_cell(r[f"speed_{b1}"]),
                    num(r[f"ort_{bn}"]), num(r[f"native_{bn}"]), speed_cell(r[f"speed_{bn}"])])
    r0 = rows[0] if rows else {}
    return {
        "title": "Deep-learning frontends: onnxruntime vs native forward pass (1 thread each), p50 ms and paired "
                 "speedup",
        "columns": ["fixture", "outputs checked; native call", "threads (read back)", "inputs", f"ORT {b1} row",
                    f"native {b1} row", f"ORT × faster, {b1} row", f"ORT {bn} rows", f"native {bn} rows",
                    f"ORT × faster, {bn} rows"],
        "rows": out,
        "notes": f"Same process, same inputs (real rows, tiled to the batch). Before timing, ONNX and native outputs "
                 "are compared with validate's comparison at the config's (else the frontend's) tolerance, on every "
                 "real row and on each timed batch through the timed calls; a fixture that fails is marked failed "
                 f"and not timed. Timing: {r0.get('rounds', ROUNDS)} paired rounds (ORT and native back to back, "
                 f"order alternating, ≤ {r0.get('seconds_per_round', SECONDS)} s each per round, "
                 "onnxforge.timing.measure); ms = median of the per-round p50s; × faster = geometric mean of the "
                 "per-round native/ORT ratios (onnxforge.timing.paired) with its 95 % interval, against the faster "
                 "native call. Threads: ORT intra_op_num_threads read back from the session; native through the "
                 "frontend's thread hook, read back from torch / tf.config.threading — a side whose limit did not "
                 "hold gets no ratio.",
        "data": rows,
    }


def run(quick: bool = False) -> list[dict]:
    from rich.progress import Progress

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    fixtures = QUICK["fixtures"] if quick else FIXTURES
    kw = {k: QUICK[k] for k in ("batches", "rounds", "seconds")} if quick else {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp, Progress(transient=True) as progress:
        task = progress.add_task("deep-learning frontends", total=len(fixtures))
        for name in fixtures:
            progress.update(task, description=f"bench {name}")
            rows.append(bench_one(name, Path(tmp), **kw))
            progress.advance(task)
    return [table(rows, kw.get("batches", (1, BATCH)))]
