"""Deep-learning frontends: per fixture (torch CNN and MLP, Keras Sequential and Functional), latency of the
converted ONNX model in onnxruntime (1 thread) against the native framework's own forward pass (1 thread), single-row
and batch-256, measured in the same run. Torch: `module(x)` under torch.no_grad(). Keras: the faster of the eager
`model(x, training=False)` and the compiled `predict_on_batch(x)` (both measured). Inputs are prepared outside the
timed calls on both sides (tensors for torch, numpy arrays for Keras and onnxruntime)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ("torch_cnn", "torch_mlp", "keras_sequential", "keras_functional")
BATCH = 256


def _rows(feeds: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    reps = -(-n // len(next(iter(feeds.values()))))
    return {k: np.ascontiguousarray(np.concatenate([v] * reps)[:n]) for k, v in feeds.items()}


def _native_fns(fe, native, cfg, feeds) -> dict[str, callable]:
    """Timed callables for the native framework; the inputs are converted once, outside the timing."""
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


def bench_one(name: str, workdir: Path, runs: int = 300, max_seconds: float = 2.5) -> dict:
    from onnxforge import data, runtime
    from onnxforge.config import load_config
    from onnxforge.registry import frontend
    from onnxforge.reporting.paths import shown
    from onnxforge.timing import measure

    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    fe = frontend(cfg.source.framework)
    native = fe.load(cfg)
    model = fe.export(native, cfg, None, workdir)
    sess = runtime.session(model, threads=1)
    feeds = data.feeds_from_table(data.load_table(cfg.data.path), cfg.inputs)
    ref = fe.predict(native, _rows(feeds, 16), cfg)
    got = runtime.run(sess, _rows(feeds, 16))
    for k in ref:  # the two sides compute the same thing before they are timed
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-3, atol=1e-5)
    row: dict = {"fixture": name, "framework": fe.name, "nodes": len(model.graph.node),
                 "inputs": f"real data: {shown(cfg.data.path, ROOT)}, {data.n_rows(feeds)} rows"}
    with fe.threads(native, 1) as limit:  # read back from torch / tf.config.threading (set in _one_thread)
        row["native_threads_applied"], row["native_threads_note"] = limit.applied, limit.how
        for n in (1, BATCH):
            f = _rows(feeds, n)
            ort_ms = measure(lambda f=f: sess.run(None, f), runs=runs, max_seconds=max_seconds, rows=n)["p50_ms"]
            natives = {label: measure(fn, runs=runs, max_seconds=max_seconds, rows=n)["p50_ms"]
                       for label, fn in _native_fns(fe, native, cfg, f).items()}
            best = min(natives, key=natives.get)
            row[f"ort_{n}"], row[f"native_{n}"], row[f"native_how_{n}"] = ort_ms, natives[best], best
            row[f"all_native_{n}"] = natives
            row[f"speedup_{n}"] = natives[best] / ort_ms if limit.applied else None  # no ratio on unknown threads
    return row


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)
    # TF reads its thread pools once, at its first op: set them before any Keras model is loaded
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from onnxforge.frontends.keras import _keras

    if _keras().backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def run() -> list[dict]:
    from rich.progress import Progress

    _one_thread()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, Progress(transient=True) as progress:
        task = progress.add_task("deep-learning frontends", total=len(FIXTURES))
        for name in FIXTURES:
            progress.update(task, description=f"bench {name}")
            rows.append(bench_one(name, Path(tmp)))
            progress.advance(task)
    how = {r["fixture"]: r["native_how_1"] if r["native_how_1"] == r[f"native_how_{BATCH}"]
           else f"{r['native_how_1']} / {r[f'native_how_{BATCH}']}" for r in rows}
    table = [[r["fixture"], how[r["fixture"]], "1" if r["native_threads_applied"] else "default (not applied)",
              r["ort_1"], r["native_1"], f"{r['speedup_1']:.1f}×" if r["speedup_1"] else "—",
              r["ort_256"], r["native_256"], f"{r['speedup_256']:.1f}×" if r["speedup_256"] else "—"] for r in rows]
    return [{
        "title": "Deep-learning frontends: onnxruntime (1 thread) vs native forward pass, p50 latency in ms",
        "columns": ["fixture", "native call", "native threads", "ORT 1 row", "native 1 row", "speedup 1 row",
                    f"ORT {BATCH} rows", f"native {BATCH} rows", f"speedup {BATCH}"],
        "rows": table,
        "notes": "Same process, same inputs (real data: each fixture's test file, rows tiled to the batch), both "
                 "sides single-threaded (torch.set_num_threads(1); TF intra-op 1 / inter-op 1, set before any model "
                 "loads; ORT intra_op_num_threads=1, default graph optimizations). native threads = what torch / "
                 "tf.config.threading read back; a figure whose limit did not hold would read 'default (not "
                 "applied)' and get no speedup. Speedup = native p50 / ORT p50. Keras: the faster of model(x, training=False) and predict_on_batch is shown (both in data).",
        "data": rows,
    }]
