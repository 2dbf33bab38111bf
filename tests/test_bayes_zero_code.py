"""Zero-code export (issue #16): no `transform:`, the observed variable's parameters are read from the PyMC model and
lowered to ONNX.

- every PyMC example config converted twice — with its hand transform and without — gives the same outputs (1e-6);
- the zero-code artifacts against the raw-posterior references of test_bayes_reference (no onnxforge on that side);
- one model exercising every op group the issue names (link functions, dot/matmul, dimshuffle/reshape/shape
  arithmetic, basic and advanced indexing, switch, concatenate, reductions, cumsum, set_subtensor) with an
  input-dependent sigma, on a synthetic posterior, against its math written out in numpy;
- `onnxforge run` (convert + validate, draws against pm.sample_posterior_predictive) of the hierarchical example
  zero-code, with raw species strings and the population level for unseen ones;
- bad input: an op without a lowering, a variable the posterior lacks, an input that is not a pm.Data — exit 2,
  one line, nothing written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import assert_one_line_error
from test_bayes_reference import (
    DEFAULT_SAMPLES,
    TOL,
    check_draws,
    config,
    draw_samples,
    example_feeds,
    moments,
    posterior_path,
    run_model,
    summaries,
    thinned,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ("linear", "logistic", "poisson", "hier")
EQUAL = {"rtol": 1e-6, "atol": 1e-6}


def convert(name: str, run_dir: Path, *, zero_code: bool, **source) -> Path:
    """configs/pymc_NAME.yaml through the real convert stage; zero_code drops transform (and family/params, which
    the model decides)."""
    from onnxforge.config import parse_config, read_yaml
    from onnxforge.pipeline import run_pipeline

    path = ROOT / "configs" / f"pymc_{name}.yaml"
    raw, lines = read_yaml(path)
    src = dict(raw["source"])
    if zero_code:
        src = {k: v for k, v in src.items() if k not in ("transform", "family", "params")}
    raw["source"] = {**src, **source}
    raw.update(stages={"convert": {}}, name=f"{raw['name']}-{'zero' if zero_code else 'hand'}")
    cfg = parse_config(raw, path, lines, run_dir=run_dir)
    return cfg.run_path / run_pipeline(cfg, force=True)["final_model"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zero-code")
    return {n: (convert(n, tmp, zero_code=False), convert(n, tmp, zero_code=True)) for n in EXAMPLES}


@pytest.mark.parametrize("name", EXAMPLES)
def test_zero_code_equals_hand_transform(pairs, name):
    hand, zero = pairs[name]
    feeds = example_feeds(name)
    a, b = run_model(hand, feeds), run_model(zero, feeds)
    assert sorted(a) == sorted(b) == ["draws", "mean", "quantiles", "std"]
    for key in a:  # draws too: same graph of random nodes, same baked seed
        assert a[key].shape == b[key].shape
        np.testing.assert_allclose(b[key], a[key], **EQUAL, err_msg=f"{name}.{key}")
    import onnx

    meta = " ".join(p.value for p in onnx.load(str(zero)).metadata_props)
    assert '"zero_code"' in meta and f'"model": "{name}_model"' in meta, meta[:500]
    assert '"zero_code"' not in " ".join(p.value for p in onnx.load(str(hand)).metadata_props)


@pytest.mark.parametrize("name", EXAMPLES)
def test_zero_code_matches_raw_posterior(pairs, name):
    cfg = config(name)
    post, levels = thinned(posterior_path(name), cfg["source"].get("samples", DEFAULT_SAMPLES))
    feeds = example_feeds(name)
    mean_s, var_s, dist = moments(name, post, levels, feeds)
    want = summaries(mean_s, var_s, cfg["source"]["outputs"]["quantiles"])
    got = run_model(pairs[name][1], feeds)
    for key, w in want.items():
        np.testing.assert_allclose(got[key], w, **TOL, err_msg=f"{name}.{key}")
    check_draws(got["draws"], mean_s, var_s, dist, draw_samples(len(mean_s), cfg["source"]["outputs"]["draws"]),
                name)


# ----------------------------------------------------------------------------- every op group, one model

OPS_MODEL = '''
import numpy as np
import pymc as pm
import pytensor.tensor as pt


def build(X, g, coords=None):
    coords = coords or {"feature": ["a", "b", "c"], "group": [0, 1, 2]}
    with pm.Model(coords=coords) as m:
        Xd = pm.Data("X", np.asarray(X, dtype=np.float64))
        gd = pm.Data("g", np.asarray(g, dtype=np.int64))
        beta = pm.Normal("beta", dims="feature")
        a = pm.Normal("a", dims="group")
        w = pm.Normal("w", shape=(3, 2))
        s0 = pm.HalfNormal("s0")
        eta = pt.dot(Xd, beta)
        h = pt.tanh(pt.matmul(Xd, w))
        joined = pt.concatenate([h, Xd[:, :1]], axis=1)
        r = pt.sum(joined, axis=1) + pt.max(Xd, axis=1) - pt.mean(Xd, axis=1)
        c = pt.cumsum(Xd, axis=1)[:, -1]
        sw = pt.switch(Xd[:, 0] > 0, 1.0, -0.5)
        rs = pt.reshape(Xd, (Xd.shape[0], 3, 1))[:, 1, 0]
        ab = pt.set_subtensor(a[0], 0.0)
        pm.Deterministic("eta", eta)
        mu = (eta + ab[gd] + 0.1 * r + 0.05 * c * sw + 0.2 * rs + pm.math.sigmoid(eta)
              + pt.log1p(pt.exp(-pt.abs(Xd[:, 2]))) + pt.sqr(Xd.T[1]) * 0.01)
        sigma = s0 * pt.exp(0.1 * Xd[:, 1])
        pm.Normal("y", mu, sigma, observed=np.zeros(len(X)))
    return m
'''


def ops_reference(post: dict, X: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model above in numpy, per sample: mu and sigma (S, rows)."""
    beta, a, w, s0 = post["beta"], post["a"].copy(), post["w"], post["s0"]
    eta = beta @ X.T
    h = np.tanh(np.einsum("rk,skj->srj", X, w))
    joined = np.concatenate([h, np.broadcast_to(X[None, :, :1], (len(beta), *X[:, :1].shape))], axis=2)
    r = joined.sum(2) + X.max(1) - X.mean(1)
    c = np.cumsum(X, axis=1)[:, -1]
    sw = np.where(X[:, 0] > 0, 1.0, -0.5)
    a[:, 0] = 0.0
    mu = (eta + a[:, g] + 0.1 * r + 0.05 * c * sw + 0.2 * X[:, 1] + 1 / (1 + np.exp(-eta))
          + np.log1p(np.exp(-np.abs(X[:, 2]))) + X[:, 1] ** 2 * 0.01)
    sigma = s0[:, None] * np.exp(0.1 * X[:, 1])[None, :]
    return mu, np.broadcast_to(sigma, mu.shape)


def _ops_project(tmp: Path, draws: int = 0) -> tuple[dict, dict]:
    import xarray as xr

    rng = np.random.default_rng(0)
    chains, n = 2, 60
    ds = xr.Dataset({"beta": (("chain", "draw", "feature"), rng.normal(size=(chains, n, 3))),
                     "a": (("chain", "draw", "group"), rng.normal(size=(chains, n, 3))),
                     "w": (("chain", "draw", "w_dim_0", "w_dim_1"), rng.normal(size=(chains, n, 3, 2))),
                     "s0": (("chain", "draw"), rng.gamma(4.0, 0.1, size=(chains, n))),
                     "eta": (("chain", "draw", "eta_dim_0"), rng.normal(size=(chains, n, 5)))},
                    coords={"chain": [0, 1], "draw": np.arange(n), "feature": ["a", "b", "c"],
                            "group": [0, 1, 2]})
    ds.to_netcdf(tmp / "post.nc", engine="h5netcdf", group="posterior")
    (tmp / "ops_model.py").write_text(OPS_MODEL)
    raw = {"name": "ops", "source": {"framework": "pymc", "path": "post.nc", "model": "ops_model.py:build",
                                     "outputs": {"quantiles": [0.1, 0.5, 0.9], "draws": draws}, "seed": 1,
                                     "categorical": {"g": {"dim": "group"}}},
           "inputs": [{"name": "X", "shape": ["batch", 3]}, {"name": "g", "dtype": "int64", "shape": ["batch"]}],
           "stages": {"convert": {}}}
    post, levels = thinned(tmp / "post.nc")
    return raw, {"post": post, "levels": levels}


def test_every_op_group_lowers_to_its_numpy_math(tmp_path):
    from onnxforge.config import parse_config
    from onnxforge.pipeline import run_pipeline

    raw, ref = _ops_project(tmp_path, draws=300)
    raw["run_dir"] = str(tmp_path)
    cfg = parse_config(raw, tmp_path / "p.yaml")
    model = cfg.run_path / run_pipeline(cfg)["final_model"]
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 3)).astype(np.float32)
    X[0, 0] = 0.0  # the switch's boundary
    g = rng.integers(0, 3, size=40).astype(np.int64)
    got = run_model(model, {"X": X, "g": g})
    mu, sigma = ops_reference(ref["post"], X.astype(np.float64), g)
    want = summaries(mu, sigma**2, [0.1, 0.5, 0.9])
    for key, w in want.items():
        np.testing.assert_allclose(got[key], w, rtol=2e-5, atol=2e-5, err_msg=key)
    assert np.ptp(want["std"]) > 0.05  # sigma depends on the row: a per-row graph parameter, not a constant
    check_draws(got["draws"], mu, sigma**2, {"family": "normal", "mu": mu, "sigma": sigma},
                draw_samples(len(mu), 300), "ops")
    one = run_model(model, {"X": X[3:4], "g": g[3:4]})  # one row through the same graph
    np.testing.assert_allclose(one["mean"], want["mean"][3:4], rtol=2e-5, atol=2e-5)
    import onnx

    m = onnx.load(str(model))
    onnx.checker.check_model(m, full_check=True)
    meta = {p.key: p.value for p in m.metadata_props}
    ops = " ".join(meta.values())
    for op in ("Blockwise", "Join", "CumOp", "AdvancedSubtensor", "Subtensor", "Reshape", "Switch", "Sum", "Max"):
        assert op in ops, op


# ----------------------------------------------------------------------------- the CLI, end to end


@pytest.mark.slow
def test_run_hier_zero_code_validates_against_pymc(tmp_path, cli):
    cfg = yaml.safe_load((ROOT / "configs" / "pymc_hier.yaml").read_text())
    src = {k: v for k, v in cfg["source"].items() if k not in ("transform", "family", "params")}
    src.update(path=str(ROOT / "fixtures/pymc/hier.nc"), model=f"{ROOT / 'fixtures/pymc_models.py'}:hier_model")
    cfg.update(source=src, data={"path": str(ROOT / "fixtures/data/pymc_hier.npz"), "labels": "y"})
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = cli("run", tmp_path / "p.yaml", "--json", cwd=tmp_path)
    assert res.code == 0, res.stderr[-2000:]
    manifest = res.json()["result"]
    val = next(s for s in manifest["stages"] if s["name"] == "validate")["summary"]
    comps = {(c["output"], c["batch"]): c for c in val["comparisons"]}
    rows = val["rows"]
    for out in ("mean", "std", "quantiles"):
        assert comps[(out, rows)]["pass"] and comps[(out, 1)]["pass"]
    d = comps[("draws", rows)]
    assert d["kind"] == "distribution" and d["pass"] and d["mean_fail_rows"] == 0


# ----------------------------------------------------------------------------- bad input


def _write(tmp: Path, body: str, inputs=None, post_vars=None) -> Path:
    import xarray as xr

    rng = np.random.default_rng(0)
    data = {k: (("chain", "draw", *dims), rng.normal(size=(2, 20, *[3] * len(dims))))
            for k, dims in (post_vars or {"beta": ("feature",), "sigma": ()}).items()}
    xr.Dataset(data, coords={"chain": [0, 1], "draw": np.arange(20)}).to_netcdf(
        tmp / "post.nc", engine="h5netcdf", group="posterior")
    (tmp / "m.py").write_text("import numpy as np\nimport pymc as pm\nimport pytensor.tensor as pt\n\n\n"
                              "def build(X=np.zeros((3, 3)), coords=None):\n"
                              "    with pm.Model(coords={'feature': ['a', 'b', 'c']}) as m:\n"
                              "        Xd = pm.Data('X', X)\n"
                              "        beta = pm.Normal('beta', dims='feature')\n"
                              "        sigma = pm.HalfNormal('sigma')\n"
                              f"        {body}\n"
                              "        pm.Normal('y', mu, sigma, observed=np.zeros(len(X)))\n"
                              "    return m\n")
    cfg = {"name": "bad", "source": {"framework": "pymc", "path": "post.nc", "model": "m.py:build"},
           "inputs": inputs or [{"name": "X", "shape": ["batch", 3]}], "stages": {"convert": {}}}
    (tmp / "p.yaml").write_text(yaml.safe_dump(cfg))
    return tmp / "p.yaml"


@pytest.mark.parametrize(("body", "named"), [
    ("mu = pt.gammaln(pt.exp(Xd @ beta))", "GammaLn"),
    ("mu = pt.sort(Xd, axis=1) @ beta", "Sort"),
])
def test_op_without_lowering_is_exit_2_naming_it(tmp_path, cli, body, named):
    cfg = _write(tmp_path, body)
    res = cli("convert", "--config", cfg, "-o", tmp_path / "m.onnx", cwd=tmp_path)
    line = assert_one_line_error(res)
    assert named in line and "transform" in line and "y's mu" in line, line
    assert not (tmp_path / "m.onnx").exists() and not list(tmp_path.glob("*.onnx*"))


def test_variable_missing_from_posterior_is_exit_2(tmp_path, cli):
    cfg = _write(tmp_path, "gamma = pm.Normal('gamma')\n        mu = Xd @ beta + gamma")
    res = cli("convert", "--config", cfg, "-o", tmp_path / "m.onnx", cwd=tmp_path)
    line = assert_one_line_error(res)
    assert "'gamma'" in line and "beta, sigma" in line
    assert not (tmp_path / "m.onnx").exists()


def test_input_that_is_not_pm_data_is_exit_2(tmp_path, cli):
    cfg = _write(tmp_path, "mu = Xd @ beta", inputs=[{"name": "Z", "shape": ["batch", 3]}])
    res = cli("convert", "--config", cfg, "-o", tmp_path / "m.onnx", cwd=tmp_path)
    line = assert_one_line_error(res)
    assert "'Z'" in line and "pm.Data" in line and "X" in line
    assert not (tmp_path / "m.onnx").exists()


def test_value_computed_from_build_time_data_is_exit_2(tmp_path, cli):
    """The model is built on placeholder rows: a value it takes from its data while being built (numpy on
    X.get_value(), as HSGP does with its centre) would be baked into the graph — refused, not silently wrong."""
    cfg = _write(tmp_path, "mu = (Xd - Xd.get_value().mean(0)) @ beta")
    res = cli("convert", "--config", cfg, "-o", tmp_path / "m.onnx", cwd=tmp_path)
    line = assert_one_line_error(res)
    assert "when it is built" in line and "transform" in line, line
    assert not (tmp_path / "m.onnx").exists()
