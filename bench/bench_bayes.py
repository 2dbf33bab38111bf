"""PyMC posterior → ONNX, like for like: each artifact against the alternatives that produce the same thing.

- **draws**: an artifact that returns only the predictive draws (D = the posterior's 500 samples, one draw per
  sample, as `pm.sample_posterior_predictive` gives) against warm `pm.sample_posterior_predictive` on the same rows
  with the same posterior (500 draws per row). Checked distributionally consistent before timing
  (onnxforge.compare.distribution: per-row means within 4 MC s.e., 5/50/95 % quantiles through the ECDF).
- **mean+std**: an artifact that returns the predictive mean and std (observation noise included) against the two
  ways to get them from PyMC/numpy: (a) numpy, vectorized, straight from the posterior arrays (float32, the model's
  math written out: exact, the same numbers as the artifact to 1e-4); (b) `pm.sample_posterior_predictive` then
  `.mean()`/`.std()` of its 500 draws (a Monte-Carlo estimate, checked within MC error). The "cheapest correct"
  alternative is whichever of (a) and (b) is faster in this run — stated in every row.

Rounds are interleaved (every candidate once per round, the order reversed every other round), each round gives one
p50 per candidate, and every ratio is the median over rounds of that round's paired ratio. onnxruntime runs with
intra_op_num_threads = inter_op_num_threads = 1 (read back from the session options); numpy and PyMC/PyTensor run
under threadpoolctl at 1 thread (read back; a row whose limit did not hold prints no ratio). Every cell is computed
from this run's data. `python -m bench.bench_bayes` writes bench/out/bayes.json and bench/out/bayes.md.
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
ROUNDS = int(os.environ.get("BENCH_BAYES_ROUNDS", "5"))
ORT_SECONDS = 0.25  # per candidate per round
PSP_RUNS = 3  # timed PSP calls per round (each 0.05–0.5 s)


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
    return export_onnx(pred, 18, seed=0), pred.posterior.samples


def _session(model):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    opts = sess.get_session_options()
    threads = f"intra_op {opts.intra_op_num_threads}, inter_op {opts.inter_op_num_threads}"
    return sess, threads, opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1


# ----------------------------------------------------------------------------- the alternatives


def _raw_posterior(name: str):
    import xarray as xr

    return xr.open_dataset(ROOT / "fixtures" / "pymc" / f"{name}.nc", group="posterior", engine="h5netcdf").load()


class NumpyMeanStd:
    """mean and std of the posterior predictive straight from the posterior arrays: float32, vectorized."""

    def __init__(self, post, family: str):
        flat = post.stack(sample=("chain", "draw"))
        self.alpha = flat["alpha"].values.astype(np.float32)  # (S,)
        self.beta = flat["beta"].transpose("feature", "sample").values.astype(np.float32)  # (k, S)
        self.family = family
        if family == "normal":
            self.noise = np.float32((flat["sigma"].values.astype(np.float64) ** 2).mean())  # E_θ[σ²]

    def __call__(self, X):
        from scipy.special import expit

        eta = X @ self.beta
        eta += self.alpha  # (rows, S)
        if self.family == "normal":
            mean = eta.mean(1)
            return mean, np.sqrt(self.noise + eta.var(1))
        p = expit(eta)
        mean = p.mean(1)
        return mean, np.sqrt((p * (1 - p)).mean(1) + p.var(1))


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


def _check_mean_std(what: str, ort_ms, numpy_ms, psp_draws: np.ndarray) -> dict:
    mean, std = (np.asarray(a, np.float64) for a in ort_ms)
    np.testing.assert_allclose(numpy_ms[0], mean, rtol=1e-4, atol=1e-5, err_msg=f"{what}: numpy mean")
    np.testing.assert_allclose(numpy_ms[1], std, rtol=1e-4, atol=1e-5, err_msg=f"{what}: numpy std")
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
    return {"numpy_max_abs": float(max(np.abs(numpy_ms[0] - mean).max(), np.abs(numpy_ms[1] - std).max())),
            "psp_mean_max_z": float(z_mean.max()), "psp_var_max_z": float(z_var.max())}


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


def run() -> list[dict]:
    import pymc  # imported first: it sets its logger's level on import

    from onnxforge.frontends.base import pool_threads

    logging.getLogger("pymc").setLevel(logging.ERROR)
    rng = np.random.default_rng(0)
    t_start = time.perf_counter()
    table, data, thread_notes = [], [], set()
    for name, family in MODELS:
        draws_model, samples = _artifact(name, {"draws": 500})
        ms_model, _ = _artifact(name, {"mean": True, "std": True})
        s_draws, th1, ok1 = _session(draws_model)
        s_ms, th2, ok2 = _session(ms_model)
        post = _raw_posterior(name)
        np_ms = NumpyMeanStd(post, family)
        k = post.sizes["feature"]
        for n in ROWS:
            X = rng.normal(size=(n, k)).astype(np.float32)
            feed = {"X": X}
            psp = PSP(name, post, X)
            with pool_threads(1) as limit:
                # checks before any timing: same rows, same posterior, same number of draws
                ort_draws = s_draws.run(["draws"], feed)[0]
                psp_draws = psp.draws()
                chk = _check_draws(f"{name} rows {n}", psp_draws, ort_draws)
                chk.update(_check_mean_std(f"{name} rows {n}", s_ms.run(["mean", "std"], feed), np_ms(X),
                                           psp_draws))
                fns = {
                    "ort_draws": (lambda s=s_draws, f=feed: s.run(["draws"], f), False),
                    "psp_draws": (psp.draws, True),
                    "ort_mean_std": (lambda s=s_ms, f=feed: s.run(["mean", "std"], f), False),
                    "numpy_mean_std": (lambda f=np_ms, x=X: f(x), False),
                    "psp_mean_std": (psp.mean_std, True),
                }
                t = _rounds(fns, n)
            thread_notes.add(limit.how)
            ok = limit.applied and ok1 and ok2
            med = {key: float(np.median(v)) for key, v in t.items()}
            cheapest = "numpy" if med["numpy_mean_std"] <= med["psp_mean_std"] else "PSP + mean/std"
            cheap_key = "numpy_mean_std" if cheapest == "numpy" else "psp_mean_std"
            r_draws = _ratio(t, "psp_draws", "ort_draws") if ok else float("nan")
            r_np = _ratio(t, "numpy_mean_std", "ort_mean_std") if ok else float("nan")
            r_pspms = _ratio(t, "psp_mean_std", "ort_mean_std") if ok else float("nan")
            r_cheap = _ratio(t, cheap_key, "ort_mean_std") if ok else float("nan")
            table.append([f"{name} ({family})", n, med["ort_draws"], med["psp_draws"], r_draws,
                          med["ort_mean_std"], med["numpy_mean_std"], med["psp_mean_std"], cheapest, r_cheap,
                          r_np, r_pspms])
            data.append({"model": name, "family": family, "rows": n, "posterior_samples": samples, "draws": 500,
                         "rounds_p50_ms": t, "median_p50_ms": med, "cheapest_mean_std": cheapest,
                         "speedup_draws_vs_psp": r_draws, "speedup_mean_std_vs_cheapest": r_cheap,
                         "speedup_mean_std_vs_numpy": r_np, "speedup_mean_std_vs_psp_mean_std": r_pspms,
                         "checks": chk, "ort_threads": th1, "python_threads": limit.how,
                         "threads_applied": ok})
    wall = time.perf_counter() - t_start
    import onnxruntime

    ort_threads = sorted({d["ort_threads"] for d in data})
    applied = all(d["threads_applied"] for d in data)
    notes = (f"{ROUNDS} interleaved rounds (order reversed every other round); each cell is the median over rounds "
             "of that round's p50; each ratio the median of the per-round paired ratios (>1: the artifact is "
             f"faster). Posterior: {data[0]['posterior_samples']} samples (2 chains × 250 draws); the draws artifact "
             "and PSP both return 500 draws per row, one per posterior sample. Checked before timing: draws "
             "consistent with PSP's (per-row means within 4 MC s.e., 5/50/95 % ECDF); numpy mean/std equal to the "
             "artifact's (rtol 1e-4); PSP mean/std within 5 MC s.e. of the artifact's (max z "
             f"{max(max(d['checks']['psp_mean_max_z'], d['checks']['psp_var_max_z']) for d in data):.1f}). "
             f"onnxruntime {onnxruntime.__version__} sess.run, {', '.join(ort_threads)} (read back); numpy and "
             f"PyMC {pymc.__version__}: {'; '.join(sorted(thread_notes))} — "
             f"{'applied in every row' if applied else 'NOT applied in some rows (their ratios are left out, —)'}. "
             "Inputs: synthetic X float32 [rows, k] ~ N(0, 1) (seed 0). "
             f"{os.cpu_count()} CPUs, Python {platform.python_version()}; bench wall {wall:.0f} s.")
    return [{"title": "PyMC posterior → ONNX, like for like: p50 latency (ms) and speedups, same run",
             "columns": ["model", "rows", "draws artifact (ORT)", "PSP, 500 draws", "× draws vs PSP",
                         "mean+std artifact (ORT)", "numpy mean+std from posterior", "PSP + mean/std",
                         "cheapest mean+std alternative", "× mean+std vs cheapest", "× vs numpy",
                         "× vs PSP + mean/std"],
             "rows": table, "notes": notes, "data": data}]


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
