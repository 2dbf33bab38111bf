"""More model classes (issue #16): Gamma, LogNormal, Beta, zero-inflated Poisson and negative-binomial, ordered
logistic and categorical (softmax) likelihoods, B-spline regression and an HSGP approximate Gaussian process, exported zero-code from plain PyMC models
(fixtures/pymc_classes.py, fitted by fixtures/build_pymc_classes.py).

Each artifact is checked twice: its deterministic outputs (mean, std, quantiles of E[y|θ]) against the class's
moments written out here with scipy.stats on the raw posterior file (h5netcdf, no onnxforge); its draws against
`pm.sample_posterior_predictive` run on the raw posterior with the same rows — every row's mean within 4 Monte-Carlo
standard errors and its 5/50/95 % quantiles inside the order-statistic bracket of PyMC's draws — with a negative
control (draws paired with the wrong rows fail)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from scipy.special import expit
from test_bayes_reference import TOL, run_model, summaries, thinned

ROOT = Path(__file__).resolve().parents[1]
SCALAR = ("gamma", "lognormal", "beta", "zip", "zinb")
PROBS = ("ordered", "categorical")  # class probabilities: outputs per class, draws are class indices
CURVES = ("bspline", "hsgp")  # normal likelihood around a basis expansion of x, evaluated in the graph
CLASSES = SCALAR + PROBS + CURVES
QS = [0.05, 0.5, 0.95]
DRAWS = 400  # one draw per posterior sample (2 chains × 200), as PSP gives


def config(name: str, run_dir: Path) -> dict:
    return {"name": f"pymc-{name}", "run_dir": str(run_dir),
            "source": {"framework": "pymc", "path": str(ROOT / f"fixtures/pymc_classes/{name}.nc"),
                       "model": f"{ROOT / 'fixtures/pymc_classes.py'}:{name}_model", "trust_code": True,
                       "outputs": {"quantiles": QS, "draws": DRAWS}, "seed": 0},
            "inputs": [{"name": "X", "shape": ["batch", 1], "columns": ["x"]} if name in CURVES else
                       {"name": "X", "shape": ["batch", 2], "columns": ["x1", "x2"]}],
            "data": {"path": str(ROOT / f"fixtures/data/pymc_{name}.npz"), "labels": "y"},
            "stages": {"convert": {}}}


def feeds(name: str) -> dict[str, np.ndarray]:
    z = np.load(ROOT / f"fixtures/data/pymc_{name}.npz")
    if name in CURVES:
        return {"X": z["x"][:, None].astype(np.float32)}
    return {"X": np.stack([z["x1"], z["x2"]], axis=1).astype(np.float32)}


def moments(name: str, post: dict, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """E[y|θ] and Var[y|θ], (S, rows), from scipy.stats' own distributions."""
    eta = post["alpha"][:, None] + post["beta"] @ X.T
    if name == "gamma":
        shape = post["shape"][:, None]
        d = stats.gamma(shape, scale=np.exp(eta) / shape)
    elif name == "lognormal":
        d = stats.lognorm(post["sigma"][:, None], scale=np.exp(eta))
    elif name in ("zip", "zinb"):
        # a mixture of 0 (weight 1 - psi) and a count c (weight psi): E = psi E[c], Var = psi E[c^2] - E^2
        psi, mu = post["psi"][:, None], np.exp(eta)
        if name == "zip":
            c = stats.poisson(mu)
        else:
            phi = post["phi"][:, None]
            c = stats.nbinom(phi, phi / (phi + mu))
        m = psi * c.mean()
        return m, psi * (c.var() + c.mean() ** 2) - m**2
    else:
        mu, kappa = expit(eta), post["kappa"][:, None]
        d = stats.beta(mu * kappa, (1 - mu) * kappa)
    return d.mean(), d.var()


def psp(name: str, X: np.ndarray) -> np.ndarray:
    """pm.sample_posterior_predictive on the raw posterior file: (rows, chains·draws)."""
    import warnings

    import pymc as pm
    import xarray as xr

    from fixtures import pymc_classes as pc

    post = xr.open_dataset(ROOT / f"fixtures/pymc_classes/{name}.nc", group="posterior", engine="h5netcdf").load()
    model = getattr(pc, f"{name}_model")(X.astype(np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = pm.sample_posterior_predictive(post, model=model, var_names=["y"], random_seed=7, progressbar=False)
    d = idata.posterior_predictive["y"].transpose("chain", "draw", ...).values
    return d.reshape(-1, d.shape[-1]).T.astype(np.float64)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from onnxforge.config import parse_config
    from onnxforge.pipeline import run_pipeline

    tmp = tmp_path_factory.mktemp("classes")
    out = {}
    for name in CLASSES:
        cfg = parse_config(config(name, tmp), tmp / f"{name}.yaml")
        model = cfg.run_path / run_pipeline(cfg, force=True)["final_model"]
        out[name] = run_model(model, feeds(name))
    return out


@pytest.fixture(scope="module")
def psps():
    return {name: psp(name, feeds(name)["X"]) for name in CLASSES}


@pytest.mark.parametrize("name", SCALAR)
def test_moments_match_scipy_on_raw_posterior(artifacts, name):
    got = artifacts[name]
    post, _ = thinned(ROOT / f"fixtures/pymc_classes/{name}.nc")
    mean_s, var_s = moments(name, post, feeds(name)["X"].astype(np.float64))
    want = summaries(mean_s, var_s, QS)
    for key, w in want.items():
        np.testing.assert_allclose(got[key], w, **TOL, err_msg=f"{name}.{key}")
    assert np.ptp(want["mean"]) > 0.1


def _bracket(ref: np.ndarray, q: float, sigmas: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the order statistics of `ref` that bracket another sample's q-quantile: ±sigmas binomial s.d. of
    the rank, doubled in variance because both quantiles are estimates."""
    n = ref.shape[1]
    half = sigmas * np.sqrt(2 * n * q * (1 - q))
    srt = np.sort(ref, axis=1)
    lo, hi = int(max(np.floor(n * q - half), 0)), int(min(np.ceil(n * q + half), n - 1))
    return srt[:, lo], srt[:, hi]


def check_against_psp(draws: np.ndarray, mean: np.ndarray, ref: np.ndarray) -> tuple[int, int]:
    """(rows whose mean is off by > 4 MC s.e., rows with a quantile outside the bracket)."""
    se = np.sqrt(ref.var(1) / ref.shape[1] + draws.var(1) / draws.shape[1])
    bad_mean = np.abs(draws.mean(1) - ref.mean(1)) > 4 * se
    bad_mean |= np.abs(mean - ref.mean(1)) > 4 * np.sqrt(ref.var(1) / ref.shape[1])  # the exact mean output too
    bad_q = np.zeros(len(ref), bool)
    for q in QS:
        lo, hi = _bracket(ref, q)
        v = np.quantile(draws, q, axis=1)
        bad_q |= (v < lo) | (v > hi)
    return int(bad_mean.sum()), int(bad_q.sum())


@pytest.mark.slow
@pytest.mark.parametrize("name", SCALAR + CURVES)
def test_draws_match_pymc_posterior_predictive(artifacts, psps, name):
    got, ref = artifacts[name], psps[name]
    draws = got["draws"]
    assert draws.shape == (ref.shape[0], DRAWS) and np.isfinite(draws).all()
    if name == "beta":
        assert ((draws > 0) & (draws < 1)).all()
    elif name in ("zip", "zinb"):
        assert np.array_equal(draws, np.round(draws)) and draws.min() == 0
        assert abs((draws == 0).mean() - (ref == 0).mean()) < 0.02  # the share of zeros, over all rows
    elif name not in CURVES:  # the curves are normal: any sign
        assert (draws > 0).all()
    bad_mean, bad_q = check_against_psp(draws, got["mean"], ref)
    assert bad_mean == 0 and bad_q == 0, (name, bad_mean, bad_q)
    # the check has power: the same draws paired with the wrong rows fail it
    order = np.argsort(ref.mean(1))
    swapped = draws[order[::-1]][np.argsort(order)]
    assert sum(check_against_psp(swapped, got["mean"], ref)) > 10


def class_probs(name: str, post: dict, X: np.ndarray) -> np.ndarray:
    """P(y = k | θ), (S, rows, K), written out: ordered logistic from its cutpoints, categorical as a softmax."""
    if name == "ordered":
        eta = post["beta"] @ X.T  # (S, rows)
        above = expit(eta[..., None] - post["cutpoints"][:, None, :])  # P(y > k), k = 0..2
        ones, zeros = np.ones_like(above[..., :1]), np.zeros_like(above[..., :1])
        return np.concatenate([ones, above], -1) - np.concatenate([above, zeros], -1)
    logits = np.concatenate([np.zeros((len(post["alpha"]), len(X), 1)),
                             post["alpha"][:, None, :] + np.einsum("rf,sfk->srk", X, post["beta"])], axis=-1)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("name", PROBS)
def test_class_probabilities_match_raw_posterior(artifacts, name):
    got = artifacts[name]
    post, _ = thinned(ROOT / f"fixtures/pymc_classes/{name}.nc")
    p = class_probs(name, post, feeds(name)["X"].astype(np.float64))  # (S, rows, K)
    k = p.shape[-1]
    assert k == (4 if name == "ordered" else 3)
    pbar = p.mean(0)
    np.testing.assert_allclose(got["mean"], pbar, **TOL)
    np.testing.assert_allclose(got["mean"].sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got["std"], np.sqrt(pbar * (1 - pbar)), **TOL)  # the indicator y == k
    want_q = np.stack([summaries(p[..., j], np.zeros_like(p[..., j]), QS)["quantiles"] for j in range(k)], axis=1)
    assert got["quantiles"].shape == want_q.shape == (len(pbar), k, len(QS))
    np.testing.assert_allclose(got["quantiles"], want_q, **TOL)
    assert np.ptp(pbar[:, 0]) > 0.1  # the classes' probabilities move with X


@pytest.mark.slow
@pytest.mark.parametrize("name", PROBS)
def test_class_draws_match_pymc_posterior_predictive(artifacts, psps, name):
    got, ref = artifacts[name], psps[name]
    draws = got["draws"]
    k = got["mean"].shape[1]
    assert draws.shape == (ref.shape[0], DRAWS) and set(np.unique(draws)) <= set(range(k))
    for j in range(k):  # per row and class: frequency vs PSP's, and the exact mean output vs PSP's frequency
        f_got, f_ref = (draws == j).mean(1), (ref == j).mean(1)
        pb = got["mean"][:, j]
        se = np.sqrt(pb * (1 - pb) * (1 / DRAWS + 1 / ref.shape[1])) + 1e-9
        assert (np.abs(f_got - f_ref) <= 4 * se).all(), (name, j, np.abs(f_got - f_ref).max())
        assert (np.abs(pb - f_ref) <= 4 * np.sqrt(pb * (1 - pb) / ref.shape[1]) + 1e-9).all(), (name, j)
    order = np.argsort((ref == 0).mean(1))  # negative control: draws paired with the wrong rows
    swapped = draws[order[::-1]][np.argsort(order)]
    f_bad, f_ref = (swapped == 0).mean(1), (ref == 0).mean(1)
    pb = got["mean"][:, 0]
    assert (np.abs(f_bad - f_ref) > 4 * np.sqrt(pb * (1 - pb) * (1 / DRAWS + 1 / ref.shape[1]))).sum() > 3


def curve_mean(name: str, post: dict, X: np.ndarray) -> np.ndarray:
    """E[y|θ] (S, rows): B-spline from scipy's own design matrix; HSGP from PyMC's compute_deterministics of f on
    these rows (the reference framework evaluating its own basis)."""
    if name == "bspline":
        from scipy.interpolate import BSpline

        from fixtures.pymc_classes import KNOTS

        B = BSpline.design_matrix(X[:, 0], KNOTS, 3).toarray()
        return post["alpha"][:, None] + post["w"] @ B.T
    import warnings

    import pymc as pm
    import xarray as xr

    from fixtures import pymc_classes as pc

    ds = xr.open_dataset(ROOT / "fixtures/pymc_classes/hsgp.nc", group="posterior", engine="h5netcdf").load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = pm.compute_deterministics(ds, var_names=["f"], model=pc.hsgp_model(X), progressbar=False)["f"]
    f = f.transpose("chain", "draw", ...).values
    return f.reshape(-1, f.shape[-1])


@pytest.mark.parametrize("name", CURVES)
def test_basis_in_graph_matches_reference(artifacts, name):
    got = artifacts[name]
    post, _ = thinned(ROOT / f"fixtures/pymc_classes/{name}.nc")
    X = feeds(name)["X"].astype(np.float64)
    mu = curve_mean(name, post, X)
    want = summaries(mu, np.broadcast_to(post["sigma"][:, None] ** 2, mu.shape), QS)
    for key, w in want.items():
        np.testing.assert_allclose(got[key], w, rtol=1e-5, atol=2e-5, err_msg=f"{name}.{key}")
    assert np.ptp(want["mean"]) > 1.0  # a curve, not a constant


def test_gamma_sampler_is_exact_at_small_and_large_shapes():
    """The ONNX gamma sampler (Marsaglia-Tsang unrolled, boosted below shape 1) against scipy's CDF: KS on 20,000
    draws each at shapes 0.3, 1 and 7."""
    import contextlib
    import io

    import onnxruntime as ort
    import torch

    from onnxforge.bayes.families import standard_gamma

    class G(torch.nn.Module):
        def forward(self, a):
            return standard_gamma(a)

    a = torch.full((20000,), 1.0)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates its steps
        prog = torch.onnx.export(G(), (a,), dynamo=True, opset_version=18, input_names=["a"], optimize=False)
    model = prog.model_proto
    assert "If" in [n.op_type for n in model.graph.node]  # the boost runs only where a shape is below 1
    from onnxforge.score.scorer import reseed

    reseed(model, 0)  # fixed p-values: no 1-in-1000 failure of a correct sampler
    sess = ort.InferenceSession(model.SerializeToString())
    for shape in (0.3, 1.0, 7.0):
        x = sess.run(None, {"a": np.full(20000, shape, np.float32)})[0]
        p = stats.kstest(x, stats.gamma(shape).cdf).pvalue
        assert p > 1e-3, (shape, p)
    assert stats.kstest(sess.run(None, {"a": np.full(20000, 2.0, np.float32)})[0], stats.gamma(3.0).cdf).pvalue < 1e-6
