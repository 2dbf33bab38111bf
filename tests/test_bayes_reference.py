"""Independent references for every PyMC example: each artifact's outputs against numbers recomputed here from the
raw posterior file, with no onnxforge code on the reference side.

The reference side opens the netcdf with h5netcdf (not onnxforge.bayes.posterior), flattens (chain, draw) itself,
applies the documented thinning and draw-selection rules itself, encodes categorical levels itself, and writes each
model's math out in numpy/scipy (not the transform functions in fixtures/pymc_models.py, not onnxforge.bayes).
The rules, as README ("Posterior loading", "Families and outputs", "Categorical inputs") documents them:

- samples: `(chain, draw)` flattened chain-major into one sample axis; `samples: N` keeps N evenly spaced samples
  (sample i of N is flattened index round(i·(T−1)/(N−1)); all T when N ≥ T). Config default: N = 1000.
- draws: draw d uses posterior sample d; evenly spaced (the same rule) when D < samples, d mod samples when D ≥.
- categories: levels are the posterior's coords for the dim, in file order; level → its position. An unseen level
  under `population` gets one extra code whose parameter values are the named hyper-mean.
- mean = E_θ[E(y|θ)]; std = sqrt(E_θ[Var(y|θ)] + Var_θ[E(y|θ)]); quantiles of E(y|θ) over samples, numpy's
  'linear' rule (h = (S−1)q, interpolate between order statistics ⌊h⌋ and ⌊h⌋+1).

Draws come from onnxruntime's generator, which numpy cannot replay, so they are checked as distributions: the
randomized probability integral transform of every draw under its own (row, posterior sample) distribution must be
uniform (KS), and each row's draw mean must sit within Monte-Carlo error of the mean implied by the samples it used.
Helpers here are imported by the other tests/test_bayes_*.py files for their references.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats
from scipy.special import expit

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ("linear", "logistic", "poisson", "hier")
TOL = {"rtol": 1e-5, "atol": 1e-5}
DEFAULT_SAMPLES = 1000  # source.samples when a config does not set it


# ----------------------------------------------------------------------------- the raw posterior, independently


def read_posterior(path: Path) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """The posterior group with h5netcdf alone: {var: array (T, *dims)} with T = chains·draws flattened chain-major,
    and {dim: levels in file order} for the non-sample dims."""
    import h5netcdf

    values, coords = {}, {}
    with h5netcdf.File(str(path), "r") as f:
        g = f.groups["posterior"]
        for name, var in g.variables.items():
            dims = tuple(var.dimensions)
            if name in dims:  # a coordinate variable
                if name not in ("chain", "draw"):
                    coords[name] = [v.decode() if isinstance(v, bytes) else v.item() if hasattr(v, "item") else v
                                    for v in var[...]]
                continue
            if "chain" not in dims or "draw" not in dims or var.dtype.kind not in "fiub":
                continue
            a = np.asarray(var[...], dtype=np.float64)
            a = np.moveaxis(a, [dims.index("chain"), dims.index("draw")], [0, 1])
            values[name] = a.reshape(a.shape[0] * a.shape[1], *a.shape[2:])
    return values, coords


def evenly_spaced(total: int, n: int | None) -> np.ndarray:
    """n evenly spaced indices out of total, round-half-up in exact integer arithmetic (all when n ≥ total)."""
    if n is None or n >= total:
        return np.arange(total)
    if n == 1:
        return np.array([0])
    i = np.arange(n, dtype=np.int64)
    return (2 * i * (total - 1) + (n - 1)) // (2 * (n - 1))


def draw_samples(samples: int, draws: int) -> np.ndarray:
    """Which kept posterior sample each predictive draw uses."""
    return evenly_spaced(samples, draws) if draws < samples else np.arange(draws) % samples


def thinned(path: Path, samples: int | None = DEFAULT_SAMPLES) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    values, coords = read_posterior(path)
    total = len(next(iter(values.values())))
    idx = evenly_spaced(total, samples)
    return {k: v[idx] for k, v in values.items()}, coords


def encode(raw, levels: list, policy: str = "error") -> np.ndarray:
    """Raw levels → codes by file position; unseen → len(levels) under population, an error under error."""
    pos = {lv: i for i, lv in enumerate(levels)}
    codes = []
    for v in np.asarray(raw, dtype=object).reshape(-1):
        key = v.item() if hasattr(v, "item") else v
        if key not in pos and policy != "population":
            raise KeyError(f"unseen level {key!r}")
        codes.append(pos.get(key, len(levels)))
    return np.asarray(codes, dtype=np.int64)


# ----------------------------------------------------------------------------- each example's math, written out


def moments(name: str, post: dict[str, np.ndarray], levels: dict[str, list], feeds: dict,
            policy: str = "population") -> tuple[np.ndarray, np.ndarray, dict]:
    """E(y|θ) and Var(y|θ), each (S, rows), for the example `name`, plus the per-(sample, row) distribution
    parameters for the draws check."""
    if name == "hier":
        codes = encode(feeds["group"], levels["group"], policy)
        alpha = np.concatenate([post["alpha"], post["mu_alpha"][:, None]], axis=1)  # the population level last
        x = np.asarray(feeds["x"], np.float64).reshape(-1)
        mu = alpha[:, codes] + post["beta"][:, None] * x[None, :]
        sigma = np.broadcast_to(post["sigma"][:, None], mu.shape)
        return mu, sigma**2, {"family": "normal", "mu": mu, "sigma": sigma}
    X = np.asarray(feeds["X"], np.float64)
    eta = post["alpha"][:, None] + post["beta"] @ X.T  # (S, rows): alpha + X·beta per sample
    if name == "linear":
        sigma = np.broadcast_to(post["sigma"][:, None], eta.shape)
        return eta, sigma**2, {"family": "normal", "mu": eta, "sigma": sigma}
    if name == "logistic":
        p = expit(eta)
        return p, p * (1 - p), {"family": "bernoulli", "p": p}
    if name == "poisson":
        lam = np.exp(eta)
        return lam, lam, {"family": "poisson", "lam": lam}
    raise KeyError(name)


def quantile_linear(m: np.ndarray, qs) -> np.ndarray:
    """numpy's 'linear' quantile written out: (rows, Q) from m (S, rows)."""
    srt = np.sort(m, axis=0)
    s = srt.shape[0]
    out = []
    for q in qs:
        h = (s - 1) * q
        lo = int(np.floor(h))
        hi = min(lo + 1, s - 1)
        out.append(srt[lo] + (h - lo) * (srt[hi] - srt[lo]))
    return np.stack(out, axis=1)


def summaries(mean_s: np.ndarray, var_s: np.ndarray, qs) -> dict[str, np.ndarray]:
    mean = mean_s.mean(0)
    out = {"mean": mean, "std": np.sqrt(var_s.mean(0) + ((mean_s - mean) ** 2).mean(0))}
    if qs:
        out["quantiles"] = quantile_linear(mean_s, qs)
    return out


def randomized_pit(draws: np.ndarray, dist: dict, idx: np.ndarray, rng) -> np.ndarray:
    """u = F(y⁻) + V·(F(y) − F(y⁻)), V ~ U(0,1): uniform iff each draws[r, d] follows its own distribution at
    posterior sample idx[d] (continuous: F(y⁻) = F(y))."""
    fam, y = dist["family"], draws.astype(np.float64)
    if fam == "normal":
        return stats.norm.cdf(y, dist["mu"][idx].T, dist["sigma"][idx].T)
    if fam == "bernoulli":
        p = dist["p"][idx].T
        lo = np.where(y >= 1, 1 - p, 0.0)
        hi = np.where(y >= 1, 1.0, 1 - p)
    elif fam == "poisson":
        lam = dist["lam"][idx].T
        lo, hi = stats.poisson.cdf(y - 1, lam), stats.poisson.cdf(y, lam)
    else:
        raise KeyError(fam)
    return lo + rng.random(y.shape) * (hi - lo)


def check_draws(draws: np.ndarray, mean_s: np.ndarray, var_s: np.ndarray, dist: dict, idx: np.ndarray,
                what: str) -> None:
    rows, d = draws.shape
    assert idx.shape == (d,)
    u = randomized_pit(draws, dist, idx, np.random.default_rng(0))
    p = stats.kstest(u.reshape(-1), "uniform").pvalue
    assert p > 1e-4, f"{what}: draws are not distributed as the posterior predictive (KS p = {p:.2g})"
    # each row's draw mean against the mean of the samples those draws used, within Monte-Carlo error
    want = mean_s[idx].mean(0)
    se = np.sqrt(var_s[idx].sum(0)) / d
    z = (draws.mean(1) - want) / np.maximum(se, 1e-12)
    assert np.abs(z).max() < 5.0, f"{what}: row draw means off by up to {np.abs(z).max():.1f} s.e."
    # the check has power: the same draws paired with the wrong rows fail it
    if rows > 10:
        order = np.argsort(want)
        swapped = draws[order[::-1]][np.argsort(order)]
        u_bad = randomized_pit(swapped, dist, idx, np.random.default_rng(0))
        assert stats.kstest(u_bad.reshape(-1), "uniform").pvalue < 1e-6, f"{what}: the draws check has no power"


# ----------------------------------------------------------------------------- configs and artifacts


def config(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / f"pymc_{name}.yaml").read_text())


def example_feeds(name: str) -> dict[str, np.ndarray]:
    """The example's held-out rows as model inputs, from the npz and the config's columns."""
    cfg = config(name)
    data = np.load(ROOT / "configs" / cfg["data"]["path"], allow_pickle=False)
    feeds = {}
    for spec in cfg["inputs"]:
        if spec.get("dtype") == "string":
            feeds[spec["name"]] = data[spec.get("column", spec["name"])].astype(object)
        elif "columns" in spec:
            feeds[spec["name"]] = np.stack([data[c] for c in spec["columns"]], axis=1).astype(np.float32)
        else:
            feeds[spec["name"]] = data[spec.get("column", spec["name"])].astype(np.float32)
    return feeds



def convert(name: str, run_dir: Path, run_name: str | None = None, **source) -> Path:
    """configs/pymc_NAME.yaml through the real convert stage (the system under test), with source overrides."""
    from onnxforge.config import parse_config, read_yaml
    from onnxforge.pipeline import run_pipeline

    path = ROOT / "configs" / f"pymc_{name}.yaml"
    raw, lines = read_yaml(path)
    raw["source"] = {**raw["source"], **source}
    raw.update(stages={"convert": {}}, name=run_name or raw["name"])
    cfg = parse_config(raw, path, lines, run_dir=run_dir)
    return cfg.run_path / run_pipeline(cfg, force=True)["final_model"]


def run_model(path: Path, feeds: dict) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def posterior_path(name: str) -> Path:
    return (ROOT / "configs" / config(name)["source"]["path"]).resolve()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bayes-ref")
    return {name: convert(name, tmp) for name in EXAMPLES}


# ----------------------------------------------------------------------------- tests


def test_fixture_files_are_what_the_configs_name():
    """Every framework: pymc config is covered here, and every posterior the fixtures build is used by one."""
    pymc = sorted(p.stem.removeprefix("pymc_") for p in (ROOT / "configs").glob("*.yaml")
                  if (yaml.safe_load(p.read_text()) or {}).get("source", {}).get("framework") == "pymc")
    assert pymc == sorted(EXAMPLES)
    assert sorted(p.stem for p in (ROOT / "fixtures" / "pymc").glob("*.nc")) == sorted(EXAMPLES)
    for name in EXAMPLES:
        values, _ = read_posterior(posterior_path(name))
        assert len(next(iter(values.values()))) == 500  # 2 chains × 250 draws: no thinning at samples 1000


@pytest.mark.parametrize("name", EXAMPLES)
def test_deterministic_outputs_match_raw_posterior(artifacts, name):
    cfg = config(name)
    post, levels = thinned(posterior_path(name), cfg["source"].get("samples", DEFAULT_SAMPLES))
    feeds = example_feeds(name)
    qs = cfg["source"]["outputs"]["quantiles"]
    mean_s, var_s, _ = moments(name, post, levels, feeds)
    want = summaries(mean_s, var_s, qs)
    got = run_model(artifacts[name], feeds)
    for key, w in want.items():
        assert got[key].shape == w.shape, (name, key)
        np.testing.assert_allclose(got[key], w, **TOL, err_msg=f"{name}.{key}")
    for i in (0, 1, len(w) - 1):  # batch 1 through the same graph
        one = run_model(artifacts[name], {k: v[i:i + 1] for k, v in feeds.items()})
        for key, w in want.items():
            np.testing.assert_allclose(one[key][0], w[i], **TOL, err_msg=f"{name}.{key} row {i}")
    assert np.ptp(want["mean"]) > 0.1  # the reference is not degenerate


@pytest.mark.parametrize("name", EXAMPLES)
def test_draws_follow_raw_posterior_predictive(artifacts, name):
    cfg = config(name)
    post, levels = thinned(posterior_path(name), cfg["source"].get("samples", DEFAULT_SAMPLES))
    feeds = example_feeds(name)
    mean_s, var_s, dist = moments(name, post, levels, feeds)
    draws = run_model(artifacts[name], feeds)["draws"]
    n_draws = cfg["source"]["outputs"]["draws"]
    assert draws.shape == (len(mean_s[0]), n_draws)
    if dist["family"] != "normal":
        assert np.array_equal(draws, np.round(draws)) and draws.min() >= 0
    if dist["family"] == "bernoulli":
        assert set(np.unique(draws)) <= {0.0, 1.0}
    check_draws(draws, mean_s, var_s, dist, draw_samples(len(mean_s), n_draws), name)


def test_thinning_and_draw_selection_follow_the_documented_rule(tmp_path):
    """samples: 120 of 500 (evenly spaced), draws: 50 < 120 (evenly spaced among the kept) and 300 > 120 (cycling).
    The reference thins the raw file itself; a different choice of samples moves mean/std/quantiles by far more
    than 1e-5."""
    name = "linear"
    qs = [0.0, 0.3, 0.5, 1.0]
    post, levels = thinned(posterior_path(name), 120)
    full, _ = thinned(posterior_path(name), None)
    feeds = example_feeds(name)
    mean_s, var_s, dist = moments(name, post, levels, feeds)
    want = summaries(mean_s, var_s, qs)
    # sanity: the first 120 samples would give a different answer than the evenly spaced ones
    first = summaries(*moments(name, {k: v[:120] for k, v in full.items()}, levels, feeds)[:2], qs)
    assert np.abs(first["quantiles"] - want["quantiles"]).max() > 1e-3
    for draws in (50, 300):
        model = convert(name, tmp_path, run_name=f"thin-{draws}", samples=120,
                        outputs={"quantiles": qs, "draws": draws})
        got = run_model(model, feeds)
        for key, w in want.items():
            np.testing.assert_allclose(got[key], w, **TOL, err_msg=f"samples 120 draws {draws}: {key}")
        check_draws(got["draws"], mean_s, var_s, dist, draw_samples(120, draws), f"draws {draws}")


def test_categories_follow_file_order_and_population_for_unseen(tmp_path, artifacts):
    """hier: levels by position in the file's `group` coords, unseen levels get mu_alpha. The posterior is also
    rewritten with its groups in another order: the same raw strings must give the same answers."""
    import xarray as xr

    name = "hier"
    x = np.array([-1.0, 0.0, 1.5, 0.7, 0.2], np.float32)
    groups = np.array(["virginica", "unheard-of", "setosa", "versicolor", ""], dtype=object)
    feeds = {"x": x, "group": groups}
    post, levels = thinned(posterior_path(name))
    assert levels["group"] == ["setosa", "versicolor", "virginica"]
    mean_s, var_s, _ = moments(name, post, levels, feeds)
    want = summaries(mean_s, var_s, [0.05, 0.5, 0.95])
    got = run_model(artifacts[name], feeds)
    for key, w in want.items():
        np.testing.assert_allclose(got[key], w, **TOL, err_msg=key)
    # rows 1 and 4 (unseen) carry the population intercept, not any species'
    np.testing.assert_allclose(got["mean"][1], (post["mu_alpha"]).mean(), **TOL)
    np.testing.assert_allclose(got["mean"][4], (post["mu_alpha"] + 0.2 * post["beta"]).mean(), **TOL)
    # the same posterior with the groups stored as [virginica, setosa, versicolor]
    ds = xr.open_dataset(posterior_path(name), group="posterior", engine="h5netcdf").load()
    perm = ds.isel(group=[2, 0, 1])
    perm.to_netcdf(tmp_path / "hier_perm.nc", group="posterior", engine="h5netcdf")
    ppost, plevels = thinned(tmp_path / "hier_perm.nc")
    assert plevels["group"] == ["virginica", "setosa", "versicolor"]
    pmean, pvar, _ = moments(name, ppost, plevels, feeds)
    pwant = summaries(pmean, pvar, [0.05, 0.5, 0.95])
    for key in want:
        np.testing.assert_allclose(pwant[key], want[key], rtol=1e-12, atol=1e-12)  # the reference agrees with itself
    model = convert(name, tmp_path, run_name="hier-perm", path=str(tmp_path / "hier_perm.nc"))
    pgot = run_model(model, feeds)
    for key, w in want.items():
        np.testing.assert_allclose(pgot[key], w, **TOL, err_msg=f"permuted levels: {key}")
    # and a test row of each species lands on its own intercept: the three are far apart (setosa ≪ virginica)
    sp = summaries(*moments(name, post, levels, {"x": np.zeros(3, np.float32),
                                                 "group": np.array(["setosa", "versicolor", "virginica"], object)})[:2],
                   [])
    assert sp["mean"][0] < sp["mean"][1] < sp["mean"][2]
    np.testing.assert_allclose(run_model(model, {"x": np.zeros(3, np.float32), "group": np.array(
        ["setosa", "versicolor", "virginica"], object)})["mean"], sp["mean"], **TOL)


def test_integer_levels_in_file_order(tmp_path):
    """Integer coords [30, 10, 20] (not sorted, not 0..2): the reference encodes by file position."""
    import xarray as xr

    from onnxforge.config import parse_config
    from onnxforge.pipeline import run_pipeline

    rng = np.random.default_rng(0)
    ds = xr.Dataset({"effect": (("chain", "draw", "store"), rng.normal([1.0, 2.0, 3.0], 0.1, (2, 50, 3))),
                     "slope": (("chain", "draw"), rng.normal(0.5, 0.1, (2, 50)))},
                    coords={"chain": [0, 1], "draw": np.arange(50), "store": [30, 10, 20]})
    ds.to_netcdf(tmp_path / "post.nc", engine="h5netcdf", group="posterior")
    (tmp_path / "t.py").write_text("def mu(xp, params, x, store):\n"
                                   "    return params['effect'][store] + params['slope'] * x\n")
    raw = {"name": "stores", "run_dir": str(tmp_path),
           "source": {"framework": "pymc", "path": "post.nc", "transform": "t.py:mu", "params": {"sigma": 0.3},
                      "categorical": {"store": {"policy": "error"}}, "outputs": {"quantiles": [0.1, 0.9]}},
           "inputs": [{"name": "x", "shape": ["batch"]}, {"name": "store", "dtype": "int64", "shape": ["batch"]}],
           "stages": {"convert": {}}}
    cfg = parse_config(raw, tmp_path / "p.yaml")
    model = cfg.run_path / run_pipeline(cfg)["final_model"]
    feeds = {"x": np.array([0.0, 1.0, 2.0, -1.0], np.float32), "store": np.array([10, 20, 30, 10], np.int64)}
    post, levels = thinned(tmp_path / "post.nc")
    assert levels["store"] == [30, 10, 20]
    codes = encode(feeds["store"], levels["store"])
    np.testing.assert_array_equal(codes, [1, 2, 0, 1])
    mu = post["effect"][:, codes] + post["slope"][:, None] * feeds["x"].astype(np.float64)
    want = summaries(mu, np.full_like(mu, 0.3**2), [0.1, 0.9])
    got = run_model(model, feeds)
    for key, w in want.items():
        np.testing.assert_allclose(got[key], w, **TOL, err_msg=key)
    with pytest.raises(KeyError):
        encode(np.array([40]), levels["store"])  # the reference refuses unseen levels under `error`, as the graph does


@pytest.mark.parametrize(("samples", "draws"), [(60, 25), (60, 150), (None, 200)])
def test_draw_selection_and_chain_major_order_are_exact(tmp_path, samples, draws):
    """A posterior whose value *is* its flattened index (chain c, draw t → c·100 + t) and tiny noise: every draw
    reveals which sample it used, so the thinning, the chain-major flattening and the draw selection are checked
    exactly, not only as a distribution."""
    import xarray as xr

    from onnxforge.config import parse_config
    from onnxforge.pipeline import run_pipeline

    chains, n = 2, 100
    ds = xr.Dataset({"m": (("chain", "draw"), np.arange(chains * n, dtype=np.float64).reshape(chains, n)),
                     "sigma": (("chain", "draw"), np.full((chains, n), 1e-3))},
                    coords={"chain": [0, 1], "draw": np.arange(n)})
    ds.to_netcdf(tmp_path / "post.nc", engine="h5netcdf", group="posterior")
    (tmp_path / "t.py").write_text("def mu(xp, params, x):\n    return params['m'] + x\n")
    raw = {"name": "index", "run_dir": str(tmp_path),
           "source": {"framework": "pymc", "path": "post.nc", "transform": "t.py:mu", "samples": samples,
                      "outputs": {"quantiles": [0.5], "draws": draws}, "seed": 3},
           "inputs": [{"name": "x", "shape": ["batch"]}], "stages": {"convert": {}}}
    cfg = parse_config(raw, tmp_path / "p.yaml")
    model = cfg.run_path / run_pipeline(cfg)["final_model"]
    x = np.array([0.0, 1000.0], np.float32)
    got = run_model(model, {"x": x})
    post, _ = thinned(tmp_path / "post.nc", samples)
    kept = post["m"]  # the flattened indices that were kept
    if samples is not None:
        np.testing.assert_array_equal(kept, evenly_spaced(chains * n, samples))
    used = kept[draw_samples(len(kept), draws)]
    np.testing.assert_array_equal(np.round(got["draws"] - x[:, None]), np.broadcast_to(used, (2, draws)))
    np.testing.assert_allclose(got["mean"], kept.mean() + x, rtol=1e-6)
