"""Observation families: moments against scipy.stats, and the ONNX predictive draws of every family against
numpy's own samplers on the same posterior samples (per-row means within 4 MC standard errors, quantiles
close), plus exactness checks on a fixed-parameter posterior (KS for student-t, pmf for poisson/binomial)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from scipy import stats
from scipy.special import expit
from test_bayes_reference import draw_samples, thinned

from onnxforge.bayes.families import FAMILIES
from onnxforge.bayes.shim import numpy_xp
from onnxforge.compare import distribution
from onnxforge.config import parse_config
from onnxforge.pipeline import run_pipeline
from onnxforge.registry import frontend

TRANSFORMS = '''
def ident(xp, params, x):
    return params["m"] + x

def prob(xp, params, x):
    return xp.sigmoid(params["m"] + x)

def rate(xp, params, x):
    return xp.exp(params["m"] + x)

def prob_trials(xp, params, x):
    return xp.sigmoid(params["m"] + x)
'''


def _posterior(path: Path) -> Path:
    import xarray as xr

    rng = np.random.default_rng(0)
    shape = (2, 200)

    def var(mean, sd):
        return (("chain", "draw"), rng.normal(mean, sd, shape))

    ds = xr.Dataset({"m": var(1.0, 0.15), "sigma": var(2.0, 0.1), "nu": var(4.0, 0.3), "phi": var(3.0, 0.2)},
                    coords={"chain": [0, 1], "draw": np.arange(200)})
    ds.to_netcdf(path, engine="h5netcdf", group="posterior")
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("families")
    (tmp / "transforms.py").write_text(TRANSFORMS)
    _posterior(tmp / "post.nc")
    return tmp


def build(tmp: Path, family: str, fn: str, draws: int, *, params=None, inputs=None, max_count: int = 64):
    raw = {"name": f"fam-{family}-{fn}", "run_dir": str(tmp),
           "source": {"framework": "pymc", "path": "post.nc", "transform": f"transforms.py:{fn}", "family": family,
                      "params": params or {}, "outputs": {"quantiles": [0.1, 0.5, 0.9], "draws": draws},
                      "seed": 0, "max_count": max_count},
           "inputs": inputs or [{"name": "x", "shape": ["batch"]}], "stages": {"convert": {}}}
    cfg = parse_config(raw, tmp / "pipeline.yaml")
    manifest = run_pipeline(cfg, force=True)
    native = frontend("pymc").load(cfg)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(cfg.run_path / manifest["final_model"]), so)
    return cfg, native, sess


LINKS = {"ident": lambda eta: eta, "prob": expit, "rate": np.exp, "prob_trials": expit}
POST_VARS = {"sigma": "sigma", "nu": "nu", "phi": "phi"}


def raw_params(tmp: Path, fn: str, params: dict, feeds: dict, draws: int):
    """From post.nc alone (tests/test_bayes_reference helpers, no onnxforge code): the family mean parameter mu
    (rows, D) at the posterior sample each draw uses, and the family parameters broadcast to it."""
    post, _ = thinned(tmp / "post.nc")
    idx = draw_samples(len(post["m"]), draws)
    x = np.asarray(feeds["x"], np.float64)
    mu = LINKS[fn](post["m"][idx][None, :] + x[:, None])
    p = {}
    for name, ref in params.items():
        if isinstance(ref, int | float):
            p[name] = np.full(mu.shape, float(ref))
        elif ref in feeds:
            p[name] = np.broadcast_to(np.asarray(feeds[ref], np.float64)[:, None], mu.shape)
        else:
            p[name] = np.broadcast_to(post[POST_VARS[ref]][idx][None, :], mu.shape)
    return mu, p, idx


def numpy_draws(mu, p, family: str, rng) -> np.ndarray:
    """Reference draws with numpy's samplers, using the same posterior sample per draw as the artifact."""
    if family == "normal":
        return mu + p["sigma"] * rng.standard_normal(mu.shape)
    if family == "student-t":
        return mu + p["sigma"] * rng.standard_t(p["nu"])
    if family == "bernoulli":
        return rng.random(mu.shape) < mu
    if family == "binomial":
        return rng.binomial(p["n"].astype(np.int64), mu)
    if family == "poisson":
        return rng.poisson(mu)
    a = p["alpha"]
    return rng.negative_binomial(a, a / (a + mu))


def scipy_dist(m, v: dict, family: str):
    """The family as a (vectorized) scipy distribution: mean parameter m, family parameters v."""
    return {
        "normal": lambda: stats.norm(m, v.get("sigma")),
        "student-t": lambda: stats.t(v.get("nu"), m, v.get("sigma")),
        "bernoulli": lambda: stats.bernoulli(m),
        "binomial": lambda: stats.binom(v.get("n"), m),
        "poisson": lambda: stats.poisson(m),
        "negative-binomial": lambda: stats.nbinom(v.get("alpha"), v.get("alpha") / (v.get("alpha") + m)),
    }[family]()


def mixture(mu, p, idx, family: str, row: int):
    """scipy distributions for one row, one per posterior sample the draws use (each used equally often)."""
    first = np.unique(idx, return_index=True)[1]
    assert idx.size % first.size == 0
    return scipy_dist(mu[row, first], {k: a[row, first] for k, a in p.items()}, family)


def raw_summaries(tmp: Path, family: str, fn: str, params: dict, feeds: dict, qs) -> dict[str, np.ndarray]:
    """mean, std (noise included) and quantiles of E[y|θ] over every posterior sample, moments from scipy."""
    post, _ = thinned(tmp / "post.nc")
    mu, p, _ = raw_params(tmp, fn, params, feeds, len(post["m"]))
    dist = scipy_dist(mu, p, family)
    e, var = dist.mean(), dist.var()
    mean = e.mean(1)
    return {"mean": mean, "std": np.sqrt(var.mean(1) + ((e - mean[:, None]) ** 2).mean(1)),
            "quantiles": np.quantile(e, qs, axis=1).T}


CASES = [
    ("normal", "ident", {"sigma": "sigma"}, [-1.0, 0.0, 2.0], 3),
    ("student-t", "ident", {"nu": "nu", "sigma": "sigma"}, [-1.0, 0.0, 2.0], 3),
    ("bernoulli", "prob", {}, [-3.0, -1.0, 0.0, 1.5], 4),
    ("binomial", "prob", {"n": 20}, [-3.0, -1.0, 0.0, 1.5], 4),
    # rates ≈ 0.4, 2.7, 12 (exact inverse CDF) and 90 (beyond max_count/2: the rounded-normal branch)
    ("poisson", "rate", {}, [-2.0, 0.0, 1.5, 3.5], 3),
    ("negative-binomial", "rate", {"alpha": "phi"}, [-2.0, 0.0, 1.0], 3),
]


@pytest.mark.parametrize(("family", "fn", "params", "xs", "exact_rows"), CASES, ids=[c[0] for c in CASES])
def test_draws(workdir, family, fn, params, xs, exact_rows):
    cfg, native, sess = build(workdir, family, fn, 20000, params=params)
    feeds = {"x": np.asarray(xs, dtype=np.float32)}
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    draws = out["draws"]
    # 1. against numpy's own sampler on the same posterior samples: means within 4 MC s.e., quantiles close
    mu, p, idx = raw_params(workdir, fn, params, feeds, draws.shape[1])
    ref = numpy_draws(mu, p, family, np.random.default_rng(1)).astype(np.float64)
    c = distribution("draws", ref, draws, sigmas=4.0)
    assert c["pass"], c
    # 2. exactness where the sampler is exact: the posterior-mixture CDF (KS) or pmf (frequencies)
    for r in range(exact_rows):
        dist = mixture(mu, p, idx, family, r)
        if FAMILIES[family].discrete:
            k = np.arange(int(draws[r].max()) + 1)
            freq = np.bincount(draws[r].astype(int), minlength=k.size) / draws.shape[1]
            pmf = dist.pmf(k[:, None]).mean(1)
            assert (np.abs(freq - pmf) <= 4.5 * np.sqrt(pmf * (1 - pmf) / draws.shape[1]) + 2e-4).all(), (r, freq, pmf)
        else:
            # the mixture CDF on a fine grid (interpolation error ≪ the KS resolution 1/sqrt(draws))
            grid = np.linspace(draws[r].min() - 1, draws[r].max() + 1, 4001)
            cdf = dist.cdf(grid[:, None]).mean(1)
            assert stats.kstest(draws[r], lambda x, c=cdf, g=grid: np.interp(x, g, c)).pvalue > 1e-3, r
            # the KS test has the power to see a 0.1 shift
            assert stats.kstest(draws[r], lambda x, c=cdf, g=grid: np.interp(x - 0.1, g, c)).pvalue < 1e-4
    if FAMILIES[family].discrete:
        assert np.array_equal(draws, np.round(draws)) and draws.min() >= 0
    # 3. the deterministic outputs of the same graph equal numpy; the draws' mean agrees with the predictive mean
    det = raw_summaries(workdir, family, fn, params, feeds, [0.1, 0.5, 0.9])
    for key in det:
        np.testing.assert_allclose(out[key], det[key], rtol=1e-5, atol=1e-5)
    se = draws.std(1) / np.sqrt(draws.shape[1])
    assert (np.abs(draws.mean(1) - det["mean"]) < 5 * se + 1e-3).all()


def test_binomial_trials_from_an_input(workdir):
    inputs = [{"name": "x", "shape": ["batch"]}, {"name": "trials", "shape": ["batch"]}]
    cfg, native, sess = build(workdir, "binomial", "prob_trials", 3000, params={"n": "trials"}, inputs=inputs,
                              max_count=40)
    feeds = {"x": np.array([-1.0, 0.5, 0.0], np.float32), "trials": np.array([3.0, 12.0, 40.0], np.float32)}
    draws = sess.run(["draws"], feeds)[0]
    assert (draws.max(1) <= feeds["trials"]).all()
    mu, p, _ = raw_params(workdir, "prob_trials", {"n": "trials"}, feeds, draws.shape[1])
    ref = numpy_draws(mu, p, "binomial", np.random.default_rng(2)).astype(np.float64)
    assert distribution("draws", ref, draws)["pass"]


@pytest.mark.parametrize(("family", "mu", "params", "dist"), [
    ("normal", 1.3, {"sigma": 0.7}, stats.norm(1.3, 0.7)),
    ("student-t", 1.3, {"nu": 5.0, "sigma": 0.7}, stats.t(5.0, 1.3, 0.7)),
    ("bernoulli", 0.3, {}, stats.bernoulli(0.3)),
    ("binomial", 0.3, {"n": 12.0}, stats.binom(12, 0.3)),
    ("poisson", 4.2, {}, stats.poisson(4.2)),
    ("negative-binomial", 4.2, {"alpha": 2.5}, stats.nbinom(2.5, 2.5 / (2.5 + 4.2))),
], ids=lambda v: v if isinstance(v, str) else "")
def test_moments_match_scipy(family, mu, params, dist):
    fam, xp = FAMILIES[family], numpy_xp()
    mu_a = np.array([mu])
    p = {k: np.array([v]) for k, v in params.items()}
    np.testing.assert_allclose(fam.mean(xp, mu_a, p), dist.mean(), rtol=1e-12)
    np.testing.assert_allclose(fam.variance(xp, mu_a, p), dist.var(), rtol=1e-12)
