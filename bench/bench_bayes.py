"""PyMC posterior → ONNX: latency of the artifact in onnxruntime against warm `pm.sample_posterior_predictive` and
the best pure-Python alternatives built from the same transform (numpy over the float32 posterior; a compiled
PyTensor function), at 1 and 1000 rows, all measured in this run and interleaved round by round.

Three artifacts per model, because their costs differ: mean+std; mean+std+quantiles (exact order statistics:
two onnxruntime TopKs per quantile on its smaller side); mean+std+500 predictive draws. Every alternative computes the same outputs and is checked
against the artifact before it is timed.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = (("linear", "normal"), ("logistic", "bernoulli"))
ARTIFACTS = (("mean+std", {"quantiles": [], "draws": 0}), ("mean+std+quantiles", {"draws": 0}),
             ("mean+std+draws", {"quantiles": [], "draws": 500}))
ROWS = (1, 1000)
ROUNDS = 3


def _predictive(name: str, outputs: dict):
    from onnxforge.config import parse_config, read_yaml
    from onnxforge.registry import frontend

    path = ROOT / "configs" / f"pymc_{name}.yaml"
    raw, lines = read_yaml(path)
    raw["source"]["outputs"] = {"mean": True, "std": True, **outputs}
    cfg = parse_config(raw, path, lines)
    fe = frontend("pymc")
    native = fe.load(cfg)
    return cfg, fe, native


class NumpyAlt:
    """Vectorized numpy over the float32 posterior: the transform with a fast numpy xp, np.sort quantiles."""

    def __init__(self, pred):
        from scipy.special import expit

        from onnxforge.bayes.shim import numpy_xp

        self.pred, self.xp = pred, numpy_xp()
        self.xp.sigmoid = expit  # the fastest numpy-world sigmoid
        self.params = {k: pred.values[k].astype(np.float32) for k in pred.used}
        s = pred.posterior.samples
        pos = np.asarray(pred.quantiles or [0.5]) * (s - 1)
        self.lo = np.floor(pos).astype(np.int64)
        self.hi, self.w = np.minimum(self.lo + 1, s - 1), (pos - self.lo).astype(np.float32)
        self.normal = pred.family.name == "normal"
        if self.normal:
            self.sigma = self.params["sigma"]
            self.within = np.float32(pred.within_variance())
        self.rng = np.random.default_rng(0)

    def __call__(self, X):
        p = self.pred
        mu = p.transform(self.xp, self.params, X=X)
        mean = mu.mean(-1)
        d = mu - mean[:, None]
        within = self.within if self.normal else (mu * (1 - mu)).mean(-1)
        out = [mean, np.sqrt(within + np.einsum("ij,ij->i", d, d) / mu.shape[1])]
        if p.quantiles:
            srt = np.sort(mu, axis=-1)
            lo = srt[:, self.lo]
            out.append(lo + (srt[:, self.hi] - lo) * self.w)
        if p.n_draws:
            if self.normal:
                out.append(mu + self.sigma * self.rng.standard_normal(mu.shape, dtype=np.float32))
            else:
                out.append((self.rng.random(mu.shape, dtype=np.float32) < mu).astype(np.float32))
        return out


def pytensor_alt(pred):
    """The same transform with the PyTensor xp over constant posterior tensors, compiled once (C backend)."""
    import pytensor
    import pytensor.tensor as pt
    from pytensor.tensor.random.utils import RandomStream

    from onnxforge.bayes.shim import pytensor_xp

    xp = pytensor_xp()
    params = {k: pt.constant(pred.values[k].astype(np.float32)) for k in pred.used}
    X = pt.matrix("X", dtype="float32")
    mu = pred.transform(xp, params, X=X)
    s = pred.posterior.samples
    mean = mu.mean(-1)
    normal = pred.family.name == "normal"
    within = np.float32(pred.within_variance()) if normal else (mu * (1 - mu)).mean(-1)
    outs = [mean, pt.sqrt(within + pt.sqr(mu - mean[:, None]).mean(-1))]
    if pred.quantiles:
        pos = np.asarray(pred.quantiles) * (s - 1)
        lo = np.floor(pos).astype(np.int64)
        hi, w = np.minimum(lo + 1, s - 1), (pos - lo).astype(np.float32)
        srt = pt.sort(mu, axis=-1)
        outs.append(srt[:, lo] + (srt[:, hi] - srt[:, lo]) * w)
    if pred.n_draws:
        rs = RandomStream(0)
        if normal:
            outs.append(mu + params["sigma"] * rs.normal(0.0, 1.0, size=mu.shape, dtype="float32"))
        else:
            outs.append(pt.cast(rs.uniform(0.0, 1.0, size=mu.shape, dtype="float32") < mu, "float32"))
    fn = pytensor.function([X], outs)
    fn.trust_input = True
    return fn


def _psp(pred, X):
    """A warm pm.sample_posterior_predictive on this data (the model is built once; every call recompiles)."""
    import pymc as pm

    model = pred.builder(X=X.astype(np.float64), coords={d: list(c) for d, c in pred.posterior.coords.items()})
    ds = pred.posterior.dataset()
    seed = iter(range(10**6))

    def call():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pm.sample_posterior_predictive(ds, model=model, var_names=[pred.observed], progressbar=False,
                                                  random_seed=next(seed))
    t0 = time.perf_counter()
    call()
    return call, time.perf_counter() - t0


def _check(name, got, want):
    for g, w in zip(got, want, strict=True):  # deterministic outputs must agree before timing
        if np.shape(w)[-1:] == (500,) and np.ndim(w) == 2:
            continue  # draws: random
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5, err_msg=name)


def _session(model, threads: int | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _timed(fns: dict, rows: int) -> dict[str, float]:
    """p50 ms of each callable, measured in ROUNDS interleaved rounds; the best round counts (the machine is
    shared; the best round is the least disturbed one for every candidate alike)."""
    from onnxforge.timing import measure

    best: dict[str, float] = {}
    for _ in range(ROUNDS):
        for key, (fn, runs) in fns.items():
            r = measure(fn, runs=runs, warmup=max(1, min(runs // 10, 20)), max_seconds=1.0, rows=rows)
            best[key] = min(best.get(key, float("inf")), r["p50_ms"])
    return best


def _call_floors() -> dict[str, float]:
    """What one call costs from Python with (almost) no work: an Identity graph vs an identity PyTensor function."""
    import pytensor
    import pytensor.tensor as pt
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], "floor",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 3])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 3])])
    sess = _session(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), 1)
    X = pt.matrix("X", dtype="float32")
    fn = pytensor.function([X], [X + 0])
    fn.trust_input = True
    x = np.zeros((1, 3), np.float32)
    raw = sess._sess
    t = _timed({"ort": (lambda: sess.run(["Y"], {"X": x}), 2000),
                "ort_raw": (lambda: raw.run(["Y"], {"X": x}, None), 2000), "pt": (lambda: fn(x), 2000)}, 1)
    return {"ort": t["ort"], "ort_c_binding": t["ort_raw"], "pytensor": t["pt"]}


def run() -> list[dict]:
    from onnxforge.bayes.module import export_onnx

    logging.getLogger("pymc").setLevel(logging.ERROR)
    rng = np.random.default_rng(0)
    rows_out, setup_rows, data = [], [], []
    for name, family in MODELS:
        t0 = time.perf_counter()
        preds = {a: _predictive(name, o)[2] for a, o in ARTIFACTS}
        full = preds["mean+std+draws"]
        k = full.posterior.values["beta"].shape[0]
        Xs = {n: rng.normal(size=(n, k)).astype(np.float32) for n in ROWS}
        sessions, exports = {}, {}
        for a, pred in preds.items():
            t1 = time.perf_counter()
            model = export_onnx(pred, 18, seed=0)
            exports[a] = time.perf_counter() - t1
            sessions[a] = (_session(model, 1), _session(model, None))
        t1 = time.perf_counter()
        pts = {a: pytensor_alt(pred) for a, pred in preds.items()}
        pt_compile = time.perf_counter() - t1
        nps = {a: NumpyAlt(pred) for a, pred in preds.items()}
        psp, psp_first = {}, {}
        for n in ROWS:
            psp[n], psp_first[n] = _psp(full, Xs[n])
        for n in ROWS:
            X = Xs[n]
            heavy = n > 1
            fns = {("psp", None): (psp[n], 3)}
            for a in preds:
                s1, sall = sessions[a]
                feed = {"X": X}
                names = [o.name for o in s1.get_outputs()]  # pre-resolved, as a server would
                want = s1.run(names, feed)
                _check(f"{name} {a} numpy", nps[a](X), want)
                _check(f"{name} {a} pytensor", pts[a](X), want)
                fns[("ort", a)] = (lambda s=s1, f=feed, o=names: s.run(o, f), 15 if heavy else 1000)
                # the C binding sess.run wraps (skips the Python-side feed checks): the floor a Python server
                # can reach; C/C++/C#/Java callers use the C API directly
                fns[("ort_raw", a)] = (lambda s=s1._sess, f=feed, o=names: s.run(o, f, None),
                                       15 if heavy else 1000)
                fns[("ort_all", a)] = (lambda s=sall, f=feed, o=names: s.run(o, f), 15 if heavy else 1000)
                fns[("numpy", a)] = (lambda f=nps[a], x=X: f(x), 15 if heavy else 1000)
                fns[("pytensor", a)] = (lambda f=pts[a], x=X: f(x), 15 if heavy else 1000)
            t = _timed(fns, n)
            for a in preds:
                best_py = min(t[("numpy", a)], t[("pytensor", a)])
                which = "numpy" if t[("numpy", a)] <= t[("pytensor", a)] else "pytensor"
                rows_out.append([f"{name} ({family})", n, a, t[("ort", a)], t[("ort_raw", a)], t[("ort_all", a)],
                                 t[("numpy", a)], t[("pytensor", a)], t[("psp", None)],
                                 t[("psp", None)] / t[("ort", a)], best_py / t[("ort", a)],
                                 best_py / t[("ort_raw", a)], which])
                data.append({"model": name, "family": family, "rows": n, "artifact": a,
                             "ort_1thread_ms": t[("ort", a)], "ort_1thread_c_binding_ms": t[("ort_raw", a)],
                             "ort_all_cores_ms": t[("ort_all", a)],
                             "numpy_ms": t[("numpy", a)], "pytensor_ms": t[("pytensor", a)],
                             "psp_ms": t[("psp", None)], "speedup_vs_psp": t[("psp", None)] / t[("ort", a)],
                             "speedup_vs_best_python": best_py / t[("ort", a)],
                             "speedup_vs_best_python_c_binding": best_py / t[("ort_raw", a)], "best_python": which})
        setup_rows.append([f"{name} ({family})", full.posterior.samples, exports["mean+std+draws"] * 1e3,
                           pt_compile * 1e3, psp_first[1] * 1e3, (time.perf_counter() - t0)])
    floors = _call_floors()
    cpus = __import__("os").cpu_count()
    return [
        {"title": "PyMC posterior → ONNX predictive: p50 latency (ms), same run, interleaved",
         "columns": ["model", "rows", "artifact outputs", "onnxruntime 1 thread",
                     "onnxruntime 1 thread, C binding", f"onnxruntime {cpus} threads",
                     "numpy", "pytensor (compiled)", "pm.sample_posterior_predictive (warm)",
                     "× faster than PSP", "× vs best Python (>1: ORT faster)", "× vs best Python, C binding",
                     "best Python"],
         "rows": rows_out,
         "notes": ("Artifacts: mean+std; mean+std+quantiles [0.05, 0.5, 0.95] of E[y|x, θ] (exact: per quantile, "
                   "a TopK of the samples on its smaller side, then a TopK of 2 from those); mean+std+draws (500 predictive draws per row). PSP always "
                   "returns 500 draws per row (its cost does not depend on the summary asked for). numpy / pytensor "
                   "run the same transform over the same float32 posterior and are checked against the artifact's "
                   "outputs before timing. onnxruntime: `sess.run(output_names, feed)` with the names "
                   "resolved once; 'C binding': `sess._sess.run(...)`, the call sess.run wraps, without its "
                   "Python-side feed checks. numpy / pytensor: pre-built, float32 inputs, pytensor with "
                   "trust_input=True. Ratios use onnxruntime at 1 thread."),
         "data": data},
        {"title": "PyMC predictive: one-off costs (ms)",
         "columns": ["model", "posterior samples", "ONNX export (+draws)", "pytensor compile (3 fns)",
                     "PSP first call (1 row)", "bench wall s"],
         "rows": setup_rows,
         "notes": (f"Call floor from Python (1 row, no work): onnxruntime Identity graph {floors['ort'] * 1e3:.1f} µs "
                   f"({floors['ort_c_binding'] * 1e3:.1f} µs through the C binding), "
                   f"PyTensor identity function {floors['pytensor'] * 1e3:.1f} µs — at 1 row most of the artifact's "
                   "latency is this fixed cost."),
         "data": {"call_floor_ms": floors}},
    ]
