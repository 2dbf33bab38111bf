"""PyMC posterior → ONNX, like for like: each artifact against the alternatives that produce the same thing.

- **draws**: an artifact that returns only the predictive draws (D = the posterior's 500 samples, one draw per
  sample, as `pm.sample_posterior_predictive` gives) against warm `pm.sample_posterior_predictive` on the same rows
  with the same posterior (500 draws per row). Checked distributionally consistent before timing
  (onnxforge.compare.distribution: per-row means within 4 MC s.e., 5/50/95 % quantiles through the ECDF).
- **mean+std**: an artifact that returns the predictive mean and std (observation noise included) against every
  way to get them from PyMC/numpy that this bench knows: (a) numpy, vectorized, straight from the posterior arrays
  (float32, the model's math written out); (b) the same mean/std graph built with PyTensor (the transform with the
  PyTensor `xp` over the posterior as constants) and compiled once, on the C backend (mode FAST_RUN) and on the
  numba backend (mode NUMBA); (c) `pm.sample_posterior_predictive` then `.mean()`/`.std()` of its 500 draws (a
  Monte-Carlo estimate, checked within MC error). (a) and (b) are exact: checked equal to the raw-posterior numpy
  reference (rtol 1e-4) before timing, as is the artifact. The "cheapest" alternative is whichever is fastest in
  this run — named in every row.
- **quantiles**: an artifact that returns only the 5/50/95 % quantiles of E[y | x, θ] over the posterior samples
  (exact order statistics) against `np.quantile` over the same samples (numpy's default 'linear' method) and the
  same sort-and-interpolate compiled with PyTensor (C and numba); all checked equal to np.quantile first.
- **bound call**: each artifact is also timed through `onnxforge.score.Predictor(model, threads=1).bind(example)`
  — per request: rows copied into the bound input array, the call, outputs read in place — the path a server
  uses; plain `sess.run` (output names resolved once) is the other onnxruntime column.
- **call floors**: what one call costs with (almost) no work, 1 row × 3 columns: an Identity ONNX graph through
  `sess.run`, the onnxforge Predictor call (validation + bound buffers + output copy) and a bound call, and an
  identity PyTensor function (C and numba). At 1 row most of every candidate's latency is this fixed cost.

Rounds are interleaved (every candidate once per round, the order reversed every other round), each round gives one
p50 per candidate, and every ratio is the median over rounds of that round's paired ratio. onnxruntime runs with
intra_op_num_threads = inter_op_num_threads = 1 (read back from the session options); numpy, PyTensor and PyMC run
under threadpoolctl at 1 thread, numba with set_num_threads(1) (both read back; a row whose limit did not hold
prints no ratio). Every cell is computed from this run's data. `python -m bench.bench_bayes` writes
bench/out/bayes.json and bench/out/bayes.md.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
MODELS = (("linear", "normal"), ("logistic", "bernoulli"))
ROWS = (1, 1000)
QUANTILES = (0.05, 0.5, 0.95)
ROUNDS = int(os.environ.get("BENCH_BAYES_ROUNDS", "5"))
ORT_SECONDS = 0.25  # per candidate per round
PSP_RUNS = 3  # timed PSP calls per round (each 0.05–0.5 s)
PYTENSOR_MODES = (("pytensor_c", "FAST_RUN"), ("pytensor_numba", "NUMBA"))


# ----------------------------------------------------------------------------- the artifacts


def _artifact(name: str, outputs: dict):
    """configs/pymc_NAME.yaml converted with these outputs only (float32 posterior, opset 18, seed 0)."""
    from onnxforge.bayes.module import export_onnx
    from onnxforge.config import parse_config, read_yaml
    from onnxforge.registry import frontend

    path = ROOT / "configs" / f"pymc_{name}.yaml"
    raw, lines = read_yaml(path)
    raw["source"]["outputs"] = {"mean": False, "std": False, "quantiles": [], "draws": 0, **outputs}
    cfg = parse_config(raw, path, lines)
    pred = frontend("pymc").load(cfg)
    return export_onnx(pred, 18, seed=0), pred


def _session(model):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess, _threads_of(sess)


def _threads_of(sess) -> tuple[str, bool]:
    opts = sess.get_session_options()
    return (f"intra_op {opts.intra_op_num_threads}, inter_op {opts.inter_op_num_threads}",
            opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1)


class ORT:
    """One artifact in onnxruntime, two ways: `sess.run(names, feed)` and a bound call (onnxforge.score)."""

    def __init__(self, model):
        from onnxforge.score import Predictor

        self.sess, (self.threads, ok1) = _session(model)
        self.names = [o.name for o in self.sess.get_outputs()]  # resolved once, as a server would
        self.pred = Predictor(model, threads=1)
        threads2, ok2 = _threads_of(self.pred.session)
        self.ok = ok1 and ok2
        self.threads_note = f"sess.run {self.threads}; Predictor {threads2}"

    def run(self, X):
        return self.sess.run(self.names, {"X": X})

    def bind(self, X):
        """A bound call for X's shape; returns the per-request function (rows in, call, outputs in place)."""
        call = self.pred.bind({"X": X})

        def request(x=X):
            call.inputs["X"][...] = x
            call()
            return [call.outputs[k] for k in self.names]

        return request


# ----------------------------------------------------------------------------- the alternatives


def _raw_posterior(name: str):
    import xarray as xr

    return xr.open_dataset(ROOT / "fixtures" / "pymc" / f"{name}.nc", group="posterior", engine="h5netcdf").load()


class NumpyFromPosterior:
    """mean and std (or quantiles) of the posterior predictive straight from the posterior arrays: float32,
    vectorized — the model's math written out."""

    def __init__(self, post, family: str):
        flat = post.stack(sample=("chain", "draw"))
        self.alpha = flat["alpha"].values.astype(np.float32)  # (S,)
        self.beta = flat["beta"].transpose("feature", "sample").values.astype(np.float32)  # (k, S)
        self.family = family
        if family == "normal":
            self.noise = np.float32((flat["sigma"].values.astype(np.float64) ** 2).mean())  # E_θ[σ²]

    def _eta(self, X):
        eta = X @ self.beta
        eta += self.alpha  # (rows, S)
        return eta

    def mean_std(self, X):
        from scipy.special import expit

        eta = self._eta(X)
        if self.family == "normal":
            mean = eta.mean(1)
            return mean, np.sqrt(self.noise + eta.var(1))
        p = expit(eta)
        mean = p.mean(1)
        return mean, np.sqrt((p * (1 - p)).mean(1) + p.var(1))

    def quantiles(self, X):
        from scipy.special import expit

        m = self._eta(X) if self.family == "normal" else expit(self._eta(X))  # E[y | x, θ] per sample
        return (np.quantile(m, QUANTILES, axis=1).T,)


def pytensor_fn(pred, what: str, mode: str):
    """The transform with the PyTensor xp over the posterior (float32 constants), reduced to mean+std or to the
    quantiles (sort, then numpy's 'linear' interpolation), compiled once with this mode (FAST_RUN: the C backend;
    NUMBA). Called with float32 X, trust_input=True."""
    import pytensor
    import pytensor.tensor as pt

    from onnxforge.bayes.shim import pytensor_xp

    params = {k: pt.constant(pred.values[k].astype(np.float32)) for k in pred.used}
    X = pt.matrix("X", dtype="float32")
    mu = pred.transform(pytensor_xp(), params, X=X)  # (rows, S): the family mean E[y | x, θ] for both models
    if what == "mean_std":
        mean = mu.mean(-1)
        within = np.float32(pred.within_variance()) if pred.family.name == "normal" else (mu * (1 - mu)).mean(-1)
        outs = [mean, pt.sqrt(within + pt.sqr(mu - mean[:, None]).mean(-1))]
    else:
        s = pred.posterior.samples
        pos = np.asarray(QUANTILES) * (s - 1)
        lo = np.floor(pos).astype(np.int64)
        hi, w = np.minimum(lo + 1, s - 1), (pos - lo).astype(np.float32)
        srt = pt.sort(mu, axis=-1)
        outs = [srt[:, lo] + (srt[:, hi] - srt[:, lo]) * w]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn = pytensor.function([X], outs, mode=mode)
    fn.trust_input = True
    return fn


class PSP:
    """pm.sample_posterior_predictive on the raw posterior, model built once for these rows (each call recompiles,
    which is what a warm call costs)."""

    def __init__(self, name: str, post, X):
        import pymc as pm

        from fixtures import pymc_models as pmm

        self.pm, self.post = pm, post
        self.model = getattr(pmm, f"{name}_model")(X.astype(np.float64))
        self.seed = 0

    def draws(self):
        self.seed += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idata = self.pm.sample_posterior_predictive(self.post, model=self.model, var_names=["y"],
                                                        random_seed=self.seed, progressbar=False)
        y = idata.posterior_predictive["y"].transpose("chain", "draw", ...).values
        return y.reshape(-1, y.shape[-1]).T  # (rows, chains·draws)

    def mean_std(self):
        d = self.draws()
        return d.mean(1), d.std(1)


# ----------------------------------------------------------------------------- checks before timing


def _check_draws(what: str, ref: np.ndarray, got: np.ndarray) -> dict:
    from onnxforge.compare import distribution

    assert ref.shape == got.shape, (what, ref.shape, got.shape)
    c = distribution("draws", ref, got, sigmas=4.0)
    if not c["pass"]:
        raise AssertionError(f"{what}: artifact draws are not consistent with PSP's: {c}")
    return {"draws_check": "pass", "rows": int(ref.shape[0]), "draws": int(ref.shape[1]), "max_z": c.get("max_z")}


def _check_exact(what: str, ref, got) -> float:
    """Every output of `got` equal to the reference's (rtol 1e-4, atol 1e-5); the max abs difference."""
    worst = 0.0
    assert len(ref) == len(got), (what, len(ref), len(got))
    for r, g in zip(ref, got, strict=True):
        r, g = np.asarray(r, np.float64), np.asarray(g, np.float64)
        assert r.shape == g.shape, (what, r.shape, g.shape)
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5, err_msg=what)
        worst = max(worst, float(np.abs(g - r).max()))
    return worst


def _check_psp_mean_std(what: str, ort_ms, psp_draws: np.ndarray) -> dict:
    mean, std = (np.asarray(a, np.float64) for a in ort_ms)
    n = psp_draws.shape[1]
    # standard errors from the draws or, where they are all equal (a bernoulli row at p ≈ 0 or 1), from the
    # artifact's std (for 0/1 draws the sd of (y − m)² is about the std itself)
    z_mean = np.abs(psp_draws.mean(1) - mean) / (np.maximum(psp_draws.std(1), std) / np.sqrt(n) + 1e-12)
    sq = (psp_draws - psp_draws.mean(1, keepdims=True)) ** 2
    z_var = np.abs(sq.mean(1) - std**2) / (np.maximum.reduce([sq.std(1), std, np.sqrt(2) * std**2]) / np.sqrt(n)
                                           + 1e-12)
    if z_mean.max() > 5 or z_var.max() > 5:
        raise AssertionError(f"{what}: PSP mean/std off the artifact's by {z_mean.max():.1f} / {z_var.max():.1f} "
                             "MC s.e.")
    return {"psp_mean_max_z": float(z_mean.max()), "psp_var_max_z": float(z_var.max())}


# ----------------------------------------------------------------------------- timing


def _rounds(fns: dict, rows: int) -> dict[str, list[float]]:
    """p50 ms per candidate per round; candidates in order, reversed every other round."""
    from onnxforge.timing import measure

    keys = list(fns)
    out: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(ROUNDS):
        for k in keys if r % 2 == 0 else keys[::-1]:
            fn, psp = fns[k]
            if psp:
                res = measure(fn, runs=PSP_RUNS, warmup=1, max_seconds=60.0, rows=rows)
            else:
                res = measure(fn, runs=5000, warmup=20, max_seconds=ORT_SECONDS, rows=rows)
            out[k].append(res["p50_ms"])
    return out


def _ratio(t: dict, num: str, den: str) -> float:
    return float(np.median(np.asarray(t[num]) / np.asarray(t[den])))


def _numba_threads(n: int) -> tuple[bool, str]:
    import numba

    numba.set_num_threads(n)
    got = numba.get_num_threads()
    return got == n, f"numba set_num_threads({n}); get_num_threads() = {got}"


def _call_floors() -> dict:
    """What one call costs with (almost) no work, 1 row × 3 float32 columns: an Identity graph through sess.run,
    the onnxforge Predictor call and a bound call; an identity PyTensor function (X + 0) on C and numba."""
    import pytensor
    import pytensor.tensor as pt
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], "floor",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 3])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    x = np.arange(3, dtype=np.float32).reshape(1, 3)
    o = ORT(model)
    bound = o.bind(x)
    X = pt.matrix("X", dtype="float32")
    pts = {}
    for key, mode in PYTENSOR_MODES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pts[key] = pytensor.function([X], [X + 0], mode=mode)
        pts[key].trust_input = True
    fns = {"ort_sess_run": (lambda: o.run(x), False), "predictor_call": (lambda: o.pred({"X": x}), False),
           "bound_call": (bound, False)}
    fns.update({k: (lambda f=f: f(x), False) for k, f in pts.items()})
    for k, (fn, _) in fns.items():
        got = fn()
        got = list(got.values()) if isinstance(got, dict) else got
        _check_exact(f"call floor {k}", [x], got)
    t = _rounds(fns, 1)
    return {"rounds_p50_ms": t, "median_p50_ms": {k: float(np.median(v)) for k, v in t.items()},
            "ort_threads": o.threads_note, "ort_threads_applied": o.ok}


_LABEL = {"numpy": "numpy", "pytensor_c": "PyTensor C", "pytensor_numba": "PyTensor numba",
          "psp": "PSP + mean/std", "np_quantile": "np.quantile"}


def run() -> list[dict]:
    import pymc  # imported first: it sets its logger's level on import
    import pytensor

    from onnxforge.frontends.base import pool_threads

    logging.getLogger("pymc").setLevel(logging.ERROR)
    rng = np.random.default_rng(0)
    t_start = time.perf_counter()
    draws_rows, ms_rows, q_rows, setup_rows, data, thread_notes = [], [], [], [], [], set()
    numba_ok, numba_note = _numba_threads(1)
    for name, family in MODELS:
        t0 = time.perf_counter()
        arts = {"draws": _artifact(name, {"draws": 500}), "mean_std": _artifact(name, {"mean": True, "std": True}),
                "quantiles": _artifact(name, {"quantiles": list(QUANTILES)})}
        samples = arts["draws"][1].posterior.samples
        export_s = time.perf_counter() - t0
        ort = {a: ORT(model) for a, (model, _) in arts.items()}
        compile_s, pts = {}, {}
        for key, mode in PYTENSOR_MODES:
            t1 = time.perf_counter()
            pts[key] = {a: pytensor_fn(arts[a][1], a, mode) for a in ("mean_std", "quantiles")}
            compile_s[key] = time.perf_counter() - t1
        post = _raw_posterior(name)
        npp = NumpyFromPosterior(post, family)
        k = post.sizes["feature"]
        for n in ROWS:
            X = rng.normal(size=(n, k)).astype(np.float32)
            psp = PSP(name, post, X)
            bound = {a: o.bind(X) for a, o in ort.items()}
            with pool_threads(1) as limit:
                # checks before any timing: same rows, same posterior; exact outputs equal to the numpy reference
                what = f"{name} rows {n}"
                psp_draws = psp.draws()
                chk = _check_draws(what, psp_draws, ort["draws"].run(X)[0])
                _check_draws(f"{what} (bound call)", psp_draws, bound["draws"]()[0])
                ref_ms, ref_q = npp.mean_std(X), npp.quantiles(X)
                chk["mean_std_max_abs_vs_numpy"] = {
                    "ort_sess_run": _check_exact(f"{what} ORT mean/std", ref_ms, ort["mean_std"].run(X)),
                    "ort_bound_call": _check_exact(f"{what} bound mean/std", ref_ms, bound["mean_std"]()),
                    **{key: _check_exact(f"{what} {key} mean/std", ref_ms, pts[key]["mean_std"](X))
                       for key, _ in PYTENSOR_MODES}}
                chk["quantiles_max_abs_vs_np_quantile"] = {
                    "ort_sess_run": _check_exact(f"{what} ORT quantiles", ref_q, ort["quantiles"].run(X)),
                    "ort_bound_call": _check_exact(f"{what} bound quantiles", ref_q, bound["quantiles"]()),
                    **{key: _check_exact(f"{what} {key} quantiles", ref_q, pts[key]["quantiles"](X))
                       for key, _ in PYTENSOR_MODES}}
                chk.update(_check_psp_mean_std(what, ort["mean_std"].run(X), psp_draws))
                fns = {
                    "ort_draws": (lambda o=ort["draws"], x=X: o.run(x), False),
                    "bound_draws": (bound["draws"], False),
                    "psp_draws": (psp.draws, True),
                    "ort_mean_std": (lambda o=ort["mean_std"], x=X: o.run(x), False),
                    "bound_mean_std": (bound["mean_std"], False),
                    "numpy_mean_std": (lambda f=npp.mean_std, x=X: f(x), False),
                    **{f"{key}_mean_std": (lambda f=pts[key]["mean_std"], x=X: f(x), False)
                       for key, _ in PYTENSOR_MODES},
                    "psp_mean_std": (psp.mean_std, True),
                    "ort_quantiles": (lambda o=ort["quantiles"], x=X: o.run(x), False),
                    "bound_quantiles": (bound["quantiles"], False),
                    "np_quantile_quantiles": (lambda f=npp.quantiles, x=X: f(x), False),
                    **{f"{key}_quantiles": (lambda f=pts[key]["quantiles"], x=X: f(x), False)
                       for key, _ in PYTENSOR_MODES},
                }
                t = _rounds(fns, n)
            thread_notes.add(limit.how)
            ok = limit.applied and numba_ok and all(o.ok for o in ort.values())
            med = {key: float(np.median(v)) for key, v in t.items()}

            def r(num, den, ok=ok, t=t):
                return _ratio(t, num, den) if ok else float("nan")

            ms_alts = ("numpy", "pytensor_c", "pytensor_numba", "psp")
            cheap_ms = min(ms_alts, key=lambda a: med[f"{a}_mean_std"])
            q_alts = ("np_quantile", "pytensor_c", "pytensor_numba")
            cheap_q = min(q_alts, key=lambda a: med[f"{a}_quantiles"])
            ratios = {
                "draws_vs_psp": r("psp_draws", "ort_draws"), "draws_bound_vs_psp": r("psp_draws", "bound_draws"),
                **{f"mean_std_vs_{a}": r(f"{a}_mean_std", "ort_mean_std") for a in ms_alts},
                **{f"mean_std_bound_vs_{a}": r(f"{a}_mean_std", "bound_mean_std") for a in ms_alts},
                **{f"quantiles_vs_{a}": r(f"{a}_quantiles", "ort_quantiles") for a in q_alts},
                **{f"quantiles_bound_vs_{a}": r(f"{a}_quantiles", "bound_quantiles") for a in q_alts},
            }
            label = f"{name} ({family})"
            draws_rows.append([label, n, med["ort_draws"], med["bound_draws"], med["psp_draws"],
                               ratios["draws_vs_psp"], ratios["draws_bound_vs_psp"]])
            ms_rows.append([label, n, med["ort_mean_std"], med["bound_mean_std"], med["numpy_mean_std"],
                            med["pytensor_c_mean_std"], med["pytensor_numba_mean_std"], med["psp_mean_std"],
                            _LABEL[cheap_ms], ratios[f"mean_std_vs_{cheap_ms}"],
                            ratios[f"mean_std_bound_vs_{cheap_ms}"], ratios["mean_std_vs_psp"]])
            q_rows.append([label, n, med["ort_quantiles"], med["bound_quantiles"], med["np_quantile_quantiles"],
                           med["pytensor_c_quantiles"], med["pytensor_numba_quantiles"], _LABEL[cheap_q],
                           ratios[f"quantiles_vs_{cheap_q}"], ratios[f"quantiles_bound_vs_{cheap_q}"],
                           ratios["quantiles_vs_np_quantile"]])
            data.append({"model": name, "family": family, "rows": n, "posterior_samples": samples, "draws": 500,
                         "quantiles": list(QUANTILES), "rounds_p50_ms": t, "median_p50_ms": med,
                         "cheapest_mean_std": _LABEL[cheap_ms], "cheapest_quantiles": _LABEL[cheap_q],
                         "speedups": ratios, "checks": chk, "ort_threads": ort["draws"].threads_note,
                         "python_threads": limit.how, "numba_threads": numba_note, "threads_applied": ok})
        setup_rows.append([f"{name} ({family})", samples, export_s * 1e3, compile_s["pytensor_c"] * 1e3,
                           compile_s["pytensor_numba"] * 1e3, time.perf_counter() - t0])
    with pool_threads(1) as limit:
        floors = _call_floors()
    floors["python_threads"] = limit.how
    wall = time.perf_counter() - t_start
    import onnxruntime

    ort_threads = sorted({d["ort_threads"] for d in data})
    applied = all(d["threads_applied"] for d in data)
    max_z = max(max(d["checks"]["psp_mean_max_z"], d["checks"]["psp_var_max_z"]) for d in data)
    common = (f"{ROUNDS} interleaved rounds (order reversed every other round); each cell is the median over rounds "
              "of that round's p50; each ratio the median of the per-round paired ratios (>1: the artifact is "
              f"faster). Posterior: {data[0]['posterior_samples']} samples (2 chains × 250 draws). onnxruntime "
              f"{onnxruntime.__version__}: sess.run (output names resolved once) and a bound call "
              "(onnxforge.score Predictor.bind: rows copied into the bound input, the call, outputs read in place), "
              f"{'; '.join(ort_threads)} (read back). numpy, PyTensor {pytensor.__version__} and PyMC "
              f"{pymc.__version__}: {'; '.join(sorted(thread_notes))}; {numba_note} — "
              f"{'applied in every row' if applied else 'NOT applied in some rows (their ratios are left out, —)'}. "
              "Inputs: synthetic X float32 [rows, k] ~ N(0, 1) (seed 0). "
              f"{os.cpu_count()} CPUs, Python {platform.python_version()}; bench wall {wall:.0f} s.")
    def verdict(what: str) -> str:
        """Rows where a compiled PyTensor function beats the artifact's sess.run, from this run's medians."""
        wins = [f"{d['model']} at {d['rows']} row{'s' if d['rows'] > 1 else ''} ("
                + " and ".join(_LABEL[key] for key, _ in PYTENSOR_MODES
                               if d["median_p50_ms"][f"{key}_{what}"] < d["median_p50_ms"][f"ort_{what}"]) + ")"
                for d in data
                if any(d["median_p50_ms"][f"{key}_{what}"] < d["median_p50_ms"][f"ort_{what}"]
                       for key, _ in PYTENSOR_MODES)]
        if not wins:
            return "No compiled PyTensor function was faster than the artifact's sess.run in any row of this run. "
        return ("A compiled PyTensor function is faster than the artifact's sess.run at: " + "; ".join(wins)
                + ". There the artifact's claim is portability (one .onnx file served by onnxruntime from C, C++, "
                "C#, Java, Go or JavaScript, with no Python, PyMC or PyTensor at serving time), not raw speed in "
                "Python. ")

    floor_med = floors["median_p50_ms"]
    return [
        {"title": "PyMC draws: artifact vs pm.sample_posterior_predictive, p50 latency (ms), same run",
         "columns": ["model", "rows", "draws artifact, sess.run", "draws artifact, bound call", "PSP, 500 draws",
                     "× vs PSP (sess.run)", "× vs PSP (bound call)"],
         "rows": draws_rows,
         "notes": ("Both return 500 predictive draws per row, one per posterior sample; checked before timing "
                   "(both onnxruntime paths): consistent with PSP's draws (per-row means within 4 MC s.e., "
                   "5/50/95 % ECDF). No hand-written numpy/PyTensor draw generator is timed here. " + common),
         "data": [{k: d[k] for k in ("model", "rows")} | {"see": "tables[1].data"} for d in data]},
        {"title": "PyMC mean+std: artifact vs the cheapest alternative, p50 latency (ms), same run",
         "columns": ["model", "rows", "mean+std artifact, sess.run", "mean+std artifact, bound call",
                     "numpy from posterior", "PyTensor C (compiled)", "PyTensor numba (compiled)", "PSP + mean/std",
                     "cheapest alternative", "× vs cheapest (sess.run)", "× vs cheapest (bound call)",
                     "× vs PSP + mean/std (sess.run)"],
         "rows": ms_rows,
         "notes": ("Cheapest alternative = the fastest of numpy, the two compiled PyTensor functions and PSP + "
                   "mean/std in that row. Checked before timing: the artifact (both paths), numpy and both PyTensor "
                   "functions equal to the raw-posterior numpy reference (rtol 1e-4, atol 1e-5); PSP mean/std "
                   f"within 5 MC s.e. of the artifact's (max z {max_z:.1f}). PyTensor: the transform with the "
                   "PyTensor xp over the posterior as float32 constants, compiled once, called with trust_input="
                   f"True; C = mode FAST_RUN (VM linker with C thunks; BLAS ldflags "
                   f"'{pytensor.config.blas__ldflags or 'none: pip install'}'), numba = mode NUMBA. "
                   + verdict("mean_std") + common),
         "data": data},
        {"title": "PyMC quantiles: exact 5/50/95 % of E[y|x,θ], artifact vs np.quantile, p50 latency (ms), same run",
         "columns": ["model", "rows", "quantiles artifact, sess.run", "quantiles artifact, bound call",
                     "np.quantile", "PyTensor C (sort)", "PyTensor numba (sort)", "cheapest alternative",
                     "× vs cheapest (sess.run)", "× vs cheapest (bound call)", "× vs np.quantile (sess.run)"],
         "rows": q_rows,
         "notes": ("The artifact returns only the quantiles (exact order statistics: per quantile two onnxruntime "
                   "TopKs on its smaller side, numpy's 'linear' interpolation). np.quantile over the same float32 "
                   "samples of E[y|x,θ] from the raw posterior is the reference; the artifact (both paths) and the "
                   "PyTensor sort-and-interpolate functions are checked equal to it (rtol 1e-4, atol 1e-5) before "
                   "timing. " + verdict("quantiles") + common),
         "data": [{k: d[k] for k in ("model", "rows")} | {"see": "tables[1].data"} for d in data]},
        {"title": "PyMC: one-off costs and call floors",
         "columns": ["model", "posterior samples", "config load + ONNX export, 3 artifacts (ms)",
                     "PyTensor C compile, 2 fns (ms)", "PyTensor numba compile, 2 fns (ms)",
                     "model wall incl. timing (s)"],
         "rows": setup_rows,
         "notes": ("Compile times are with PyTensor's and numba's on-disk caches as this machine had them (a "
                   "first compile on a fresh machine can take longer). Call floor from Python, 1 row × 3 float32 columns, no work (an Identity ONNX graph / an "
                   f"identity PyTensor function), {ROUNDS} interleaved rounds, median p50: onnxruntime sess.run "
                   f"{floor_med['ort_sess_run'] * 1e3:.1f} µs, onnxforge Predictor call "
                   f"{floor_med['predictor_call'] * 1e3:.1f} µs (validates the feed, copies it into bound buffers, "
                   f"copies the outputs out), bound call {floor_med['bound_call'] * 1e3:.1f} µs (rows copied in, "
                   f"the run, outputs read in place); PyTensor C {floor_med['pytensor_c'] * 1e3:.1f} µs, PyTensor "
                   f"numba {floor_med['pytensor_numba'] * 1e3:.1f} µs. This is the fixed cost every candidate of that "
                   "kind pays per call: at 1 row it is most of the latency in the tables above, so 1-row ratios "
                   f"compare call overheads more than the math. onnxruntime {floors['ort_threads']}; "
                   f"{floors['python_threads']}."),
         "data": {"call_floor": floors}},
    ]


# ----------------------------------------------------------------------------- issue 16: new classes, quantiles



def _class_artifact(name: str, zero_code_example: bool):
    """A draws-only (500 draws, seed 0) zero-code artifact: a fixtures/pymc_classes.py model, or an example config
    with its transform dropped; returns (model, pred, psp builder module)."""
    from fixtures import pymc_classes as pc
    from onnxforge.bayes.module import export_onnx
    from onnxforge.config import parse_config, read_yaml
    from onnxforge.registry import frontend

    # one draw per posterior sample, as PSP returns: 2 × 250 for the examples, 2 × 200 for the class fixtures
    outputs = {"mean": False, "std": False, "quantiles": [], "draws": 500 if zero_code_example else 400}
    if zero_code_example:
        path = ROOT / "configs" / f"pymc_{name}.yaml"
        raw, lines = read_yaml(path)
        raw["source"] = {k: v for k, v in raw["source"].items() if k not in ("transform", "family", "params")}
        raw["source"]["outputs"] = outputs
        cfg = parse_config(raw, path, lines)
    else:
        raw = {"name": name, "source": {
            "framework": "pymc", "path": str(ROOT / f"fixtures/pymc_classes/{name}.nc"), "trust_code": True,
            "model": f"{ROOT / 'fixtures/pymc_classes.py'}:{name}_model", "outputs": outputs, "seed": 0},
            "inputs": [{"name": "X", "shape": ["batch", 1 if name in pc.CURVES else 2]}],
            "stages": {"convert": {}}}
        cfg = parse_config(raw, ROOT / "bench" / "classes.yaml")
    t0 = time.perf_counter()
    pred = frontend("pymc").load(cfg)
    model = export_onnx(pred, 18, seed=0)
    return model, pred, (time.perf_counter() - t0) * 1e3


# random numbers the shipped sampler of each family draws per draw at the least (normals, uniforms): gamma's
# Marsaglia-Tsang proposal takes one of each when accepted, beta two gammas, zero-inflated counts the count's
# uniform and the inflation's; every other count and the categoricals one uniform (inverse CDF). Other exact
# algorithms draw otherwise (a uniform-only gamma or beta sampler takes two uniforms per proposal)
_RANDOM_PER_DRAW = {"normal": (1, 0), "lognormal": (1, 0), "gamma": (1, 1), "beta": (2, 2), "poisson": (0, 1),
                    "negative-binomial": (0, 1), "zero-inflated-poisson": (0, 2),
                    "zero-inflated-negative-binomial": (0, 2), "categorical": (0, 1), "bernoulli": (0, 1)}


def _random_floor(family: str, draws: int, cols: int):
    """A graph that only makes the random numbers the shipped sampler of `family` draws for one row (and sums
    them into the (1, draws) output): a lower bound on that sampler's sess.run at one row."""
    from onnx import TensorProto, helper

    normals, uniforms = _RANDOM_PER_DRAW[family]
    nodes, parts = [], []
    for op, n in (("RandomNormal", normals), ("RandomUniform", uniforms)):
        if n:
            nodes += [helper.make_node(op, [], [f"{op}_raw"], shape=[n, draws], seed=1.0),
                      helper.make_node("ReduceSum", [f"{op}_raw", "axis0"], [f"{op}_sum"], keepdims=1)]
            parts.append(f"{op}_sum")
    nodes.append(helper.make_node("Add" if len(parts) == 2 else "Identity", parts, ["Y"]))
    g = helper.make_graph(nodes, "random_floor",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, cols])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, draws])],
                          [helper.make_tensor("axis0", TensorProto.INT64, [1], [0])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def class_tables() -> list[dict]:
    """The model classes of issue 16 (zero-code artifacts) at 1 row: draws artifact vs warm PSP; and the exact
    quantile formulations at 1000 rows × 500 samples vs np.quantile."""
    import pymc  # noqa: F401  (sets its logger level on import)
    import xarray as xr
    from threadpoolctl import threadpool_info, threadpool_limits

    from bench import num
    from fixtures import pymc_classes as pc
    from fixtures import pymc_models as pmm
    from onnxforge.score import Predictor

    logging.getLogger("pymc").setLevel(logging.ERROR)
    rng = np.random.default_rng(0)
    rows, data = [], []
    cases = [(n, False) for n in pc.CLASSES] + [("linear", True), ("logistic", True), ("poisson", True)]
    with threadpool_limits(1):
        for name, example in cases:
            model, pred, setup_ms = _class_artifact(name, example)
            k = 3 if name in ("linear", "logistic") else 1 if name in getattr(pc, "CURVES", ()) else 2
            X = rng.normal(size=(1, k)).astype(np.float32)
            sess, (threads, ok) = _session(model)
            post_path = pred.posterior.path
            post = xr.open_dataset(post_path, group="posterior", engine="h5netcdf").load()
            mod = pmm if example else pc
            psp = PSP.__new__(PSP)
            psp.pm, psp.post, psp.seed = pymc, post, 0
            psp.model = getattr(mod, f"{name}_model")(X.astype(np.float64))
            feed = {"X": X}
            got = sess.run(["draws"], feed)[0]
            ref = psp.draws()
            check = _check_draws(f"{name} 1 row", ref, got)
            floor_sess, _ = _session(_random_floor(pred.family.name, got.shape[1], k))
            assert floor_sess.run(["Y"], feed)[0].shape == got.shape
            call = Predictor(model, threads=1).bind(feed)

            def bound(c=call):
                c()
                return c.outputs["draws"]

            _check_draws(f"{name} 1 row, bound call", ref, bound().copy())
            t = _rounds({"ort": (lambda s=sess, f=feed: s.run(["draws"], f), False), "psp": (psp.draws, True),
                         "bound": (bound, False), "floor": (lambda s=floor_sess, f=feed: s.run(["Y"], f), False)}, 1)
            ratio = _ratio(t, "psp", "ort")
            at_floor, bound_ratio = _ratio(t, "psp", "floor"), _ratio(t, "psp", "bound")
            glm = name not in ("bspline", "hsgp")  # basis expansions; every other class is a GLM
            med = {k2: float(np.median(v)) for k2, v in t.items()}
            label = f"{name} (zero-code{' example' if example else ''}, {pred.family.name})"
            rows.append([label, num(med["ort"]), num(med["psp"]), num(ratio),
                         ">= 3000x" if glm else ">= 1000x", "yes" if ratio >= (3000 if glm else 1000) else "no",
                         num(med["bound"]), num(bound_ratio), num(med["floor"]), num(at_floor),
                         len(model.graph.node), num(setup_ms)])
            data.append({"model": name, "family": pred.family.name, "zero_code_example": example,
                         "median_p50_ms": med, "per_round_ms": t, "ratio_psp_over_ort": ratio,
                         "threads": threads, "threads_ok": ok, "check": check, "setup_ms": setup_ms,
                         "random_floor_ratio": at_floor, "ratio_psp_over_bound": bound_ratio,
                         "random_per_draw": _RANDOM_PER_DRAW[pred.family.name],
                         "nodes": len(model.graph.node)})
    q_rows, q_data = _quantile_formulations()
    import onnxruntime

    blas = [i.get("internal_api") for i in threadpool_info()]
    return [
        {"title": "PyMC model classes (issue 16), zero-code artifacts: 1-row draws latency vs warm "
                  "pm.sample_posterior_predictive (ms), same run",
         "columns": ["model", "artifact sess.run p50", "warm PSP p50", "× vs PSP", "goal", "met",
                     "bound call p50", "× (bound call)", "random-number floor p50", "× at that floor",
                     "ONNX nodes", "load + lower + export (ms)"],
         "rows": rows,
         "notes": (f"{ROUNDS} interleaved rounds; ratio = median of per-round paired ratios. Both return one "
                   "predictive draw per posterior sample (400 for the class fixtures, 500 for the examples) for one row (X ~ N(0, 1), seed 0); checked before timing: the artifact's draws "
                   "consistent with PSP's (per-row mean within 4 MC s.e., 5/50/95 % through the ECDF). "
                   f"onnxruntime {onnxruntime.__version__}, intra/inter-op threads 1 (read back); PyMC under "
                   f"threadpoolctl 1 thread ({', '.join(map(str, blas)) or 'no BLAS pools'}). Goal from the issue: "
                   "≥ 3000× for GLMs (every class but the B-spline and HSGP curves), ≥ 1000× otherwise. Count "
                   "families size their support at run time from the batch's largest mean, so their latency "
                   "depends on the query (these X give means of a few counts). 'met' judges sess.run; bound call = "
                   "onnxforge.score Predictor.bind (outputs read in place, checked like sess.run's). Random-number floor: one sess.run of a graph "
                   "that only makes the normals and uniforms the shipped sampler draws at the least (gamma 1 normal "
                   "+ 1 uniform per draw, beta 2 + 2, zero-inflated counts 2 uniforms, other counts and the "
                   "categoricals 1 uniform, normal-noise classes 1 normal) and sums them: the sampler cannot answer "
                   "faster, so '× at that floor' bounds what rewriting its graph can reach (another algorithm "
                   "draws other numbers: a uniform-only gamma/beta sampler 2 uniforms per proposal)."),
         "data": data},
        {"title": "Exact quantiles at 1000 rows × 500 samples: ONNX formulations vs np.quantile (ms), same run",
         "columns": ["formulation", "p50 (ms)", "× vs np.quantile"],
         "rows": q_rows,
         "notes": ("E[y|x,θ] stand-in: float32 N(0,1) of shape (1000, 500) (seed 0); 5/50/95 %, numpy's 'linear' "
                   "rule; every ONNX formulation checked equal to np.quantile (1e-6) before timing; onnxruntime 1 "
                   "thread, numpy under threadpoolctl 1 thread; 5 interleaved rounds of 30 calls, median."),
         "data": q_data},
    ]


def _quantile_formulations() -> tuple[list, dict]:
    """The shipped formulation (two TopKs per quantile on its smaller side) and two alternatives built directly in
    ONNX: one full TopK sort + Gather; one sorted TopK per side (k = the deepest rank needed) + Gather."""
    import io

    import onnx
    import torch
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    from bench import num
    from onnxforge.bayes.module import exact_quantiles, quantile_plan

    S, R, qs = 500, 1000, list(QUANTILES)
    m = np.random.default_rng(0).normal(size=(R, S)).astype(np.float32)
    pos = [q * (S - 1) for q in qs]
    lo = [int(np.floor(p)) for p in pos]
    hi = [min(v + 1, S - 1) for v in lo]
    w = np.asarray([p - v for p, v in zip(pos, lo, strict=True)], np.float32)

    def session(nodes, inits):
        g = h.make_graph(nodes, "q", [h.make_tensor_value_info("m", T.FLOAT, ["r", S])],
                         [h.make_tensor_value_info("q", T.FLOAT, ["r", len(qs)])], inits)
        mod = h.make_model(g, opset_imports=[h.make_opsetid("", 18)])
        mod.ir_version = 9
        onnx.checker.check_model(mod, full_check=True)
        return _session(mod)[0]

    def interp(a, b):
        return [h.make_node("Sub", [b, a], ["d"]), h.make_node("Mul", ["d", "w"], ["dw"]),
                h.make_node("Add", [a, "dw"], ["q"])]

    full = session([h.make_node("TopK", ["m", "k"], ["srt", "i"], axis=-1, largest=0, sorted=1),
                    h.make_node("Gather", ["srt", "lo"], ["a"], axis=1),
                    h.make_node("Gather", ["srt", "hi"], ["b"], axis=1), *interp("a", "b")],
                   [nh.from_array(np.array([S], np.int64), "k"), nh.from_array(np.array(lo, np.int64), "lo"),
                    nh.from_array(np.array(hi, np.int64), "hi"), nh.from_array(w, "w")])
    low = [i for i in range(len(qs)) if hi[i] + 1 <= S - lo[i]]
    kl = max([hi[i] + 1 for i in low] or [1])
    kh = max([S - lo[i] for i in range(len(qs)) if i not in low] or [1])
    nodes = [h.make_node("TopK", ["m", "kl"], ["low", "i1"], axis=-1, largest=0, sorted=1),
             h.make_node("TopK", ["m", "kh"], ["high", "i2"], axis=-1, largest=1, sorted=1)]
    inits = [nh.from_array(np.array([kl], np.int64), "kl"), nh.from_array(np.array([kh], np.int64), "kh"),
             nh.from_array(w, "w")]
    for i in range(len(qs)):
        src, ia, ib = ("low", lo[i], hi[i]) if i in low else ("high", S - 1 - lo[i], S - 1 - hi[i])
        nodes += [h.make_node("Gather", [src, f"ia{i}"], [f"a{i}"], axis=1),
                  h.make_node("Gather", [src, f"ib{i}"], [f"b{i}"], axis=1)]
        inits += [nh.from_array(np.array([ia], np.int64), f"ia{i}"), nh.from_array(np.array([ib], np.int64), f"ib{i}")]
    nodes += [h.make_node("Concat", [f"a{i}" for i in range(len(qs))], ["A"], axis=1),
              h.make_node("Concat", [f"b{i}" for i in range(len(qs))], ["B"], axis=1), *interp("A", "B")]
    sided = session(nodes, inits)
    plan = quantile_plan(qs, S)
    wt = torch.tensor([p[3] for p in plan])

    class Shipped(torch.nn.Module):
        def forward(self, x):
            return exact_quantiles(x, plan, wt)

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Shipped(), (torch.zeros(3, S),), buf, dynamo=False, opset_version=18, input_names=["m"],
                          output_names=["q"], dynamic_axes={"m": {0: "r"}})
    shipped = _session(onnx.load_from_string(buf.getvalue()))[0]
    cands = {"shipped: two TopKs per quantile (smaller side)": shipped, "one full sort (TopK k = S) + Gather": full,
             "one sorted TopK per side + Gather": sided}
    ref = np.quantile(m, qs, axis=1).T
    for k, sess in cands.items():
        np.testing.assert_allclose(sess.run(None, {"m": m})[0], ref, rtol=1e-6, atol=1e-6, err_msg=k)
    from threadpoolctl import threadpool_limits

    fns = {k: (lambda s=s: s.run(None, {"m": m})) for k, s in cands.items()}
    fns["np.quantile"] = lambda: np.quantile(m, qs, axis=1)
    times: dict[str, list[float]] = {k: [] for k in fns}
    with threadpool_limits(1):
        for r in range(5):
            for k in fns if r % 2 == 0 else list(fns)[::-1]:
                ts = []
                for _ in range(30):
                    t0 = time.perf_counter()
                    fns[k]()
                    ts.append(time.perf_counter() - t0)
                times[k].append(float(np.median(ts)) * 1e3)
    npq = np.asarray(times["np.quantile"])
    rows = [[k, num(float(np.median(v))), num(float(np.median(npq / np.asarray(v))))] for k, v in times.items()]
    return rows, {"per_round_ms": times}


def main() -> int:
    from bench.__main__ import to_markdown

    tables = run()
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "python": platform.python_version(),
            "cpus": os.cpu_count(), "rounds": ROUNDS}
    (OUT / "bayes.json").write_text(json.dumps({"meta": meta, "tables": tables}, indent=2, default=str) + "\n")
    (OUT / "bayes.md").write_text(f"_Measured {meta['date']}; every ratio compares numbers taken in this run._\n\n"
                                  + to_markdown(tables))
    print(to_markdown(tables))
    print(f"wrote {OUT / 'bayes.json'} and {OUT / 'bayes.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
