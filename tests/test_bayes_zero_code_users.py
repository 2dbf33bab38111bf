"""Zero-code export (issue #16) on PyMC models written the way users write them, not the way our fixtures do: each
style below failed before (exit 3, a misleading exit 2, or a validation that blamed a correct artifact) when a
sweep of gallery-style models was run through `onnxforge run` (convert + validate against PyTensor and
pm.sample_posterior_predictive).

- an integer group index as a plain int64 input (no `categorical:`);
- a parameter computed from the data alone: a known per-row sigma (measurement error), binomial trials from
  pm.Data;
- a number in the model (sigma=1.0, StudentT nu=4) with more draws than posterior samples;
- the gallery's builder() that takes no arguments (its data are module globals, replaced by pm.set_data);
- the posterior's coords passed back into a model whose pm.Data carry a rows dim (dims=("obs_id", ...));
- the numba engine (Predictor(engine="numba")) equal to the artifact on the first three;
- a categorical's task metric is the accuracy of its argmax, not a regression on the first class's probability;
- bad input: a builder that raises, a likelihood without a family, an observed variable left unobserved, a model
  PyMC itself cannot sample — exit 2, one line, nothing written.

Posteriors are synthetic (drawn here, saved as ArviZ writes them); every reference is PyMC/PyTensor's own, in
validate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import assert_one_line_error

pytest.importorskip("pymc")

SAMPLES = 40  # 2 chains x 20 draws; the artifacts make 300 draws per row, more than the samples

MODELS = '''
import numpy as np
import pymc as pm

_X = np.random.default_rng(7).normal(size=(50, 2))  # gallery style: the training data are module globals
_Y = _X @ np.array([1.0, -0.5]) + np.random.default_rng(8).normal(size=50)


def hier_int(x, g, y=None, coords=None):
    with pm.Model(coords={"group": [0, 1, 2]}) as m:
        xd = pm.Data("x", np.asarray(x, float))
        gd = pm.Data("g", np.asarray(g, "int64"))
        a = pm.Normal("a", 0, 1, dims="group")
        b = pm.Normal("b", 0, 1)
        sigma = pm.HalfNormal("sigma", 1)
        pm.Normal("y", a[gd] + b * xd, sigma, observed=np.zeros(len(x)) if y is None else y, shape=xd.shape[0])
    return m


def known_sigma(x, se, y=None, coords=None):
    with pm.Model() as m:
        xd = pm.Data("x", np.asarray(x, float))
        sd = pm.Data("se", np.asarray(se, float))
        a = pm.Normal("a", 0, 2)
        b = pm.Normal("b", 0, 2)
        pm.Normal("y", a + b * xd, sd, observed=np.zeros(len(x)) if y is None else y, shape=xd.shape[0])
    return m


def trials(x, n, y=None, coords=None, n_dtype="int64"):
    with pm.Model() as m:
        xd = pm.Data("x", np.asarray(x, float))
        nd = pm.Data("n", np.asarray(n, n_dtype))
        a = pm.Normal("a", 0, 1.5)
        b = pm.Normal("b", 0, 1)
        pm.Binomial("y", n=nd, p=pm.math.invlogit(a + b * xd), observed=np.zeros(len(x), "int64"),
                    shape=xd.shape[0])
    return m


def float_trials(x, n, y=None, coords=None):
    return trials(x, n, y, coords, n_dtype=float)


def fixed_sigma(x, y=None, coords=None):
    with pm.Model() as m:
        xd = pm.Data("x", np.asarray(x, float))
        a = pm.Normal("a", 0, 2)
        b = pm.Normal("b", 0, 2)
        pm.Normal("y", a + b * xd, 1.0, observed=np.zeros(len(x)), shape=xd.shape[0])
    return m


def fixed_nu(x, y=None, coords=None):
    with pm.Model() as m:
        xd = pm.Data("x", np.asarray(x, float))
        a = pm.Normal("a", 0, 2)
        b = pm.Normal("b", 0, 2)
        sigma = pm.HalfNormal("sigma", 1)
        pm.StudentT("y", nu=4, mu=a + b * xd, sigma=sigma, observed=np.zeros(len(x)), shape=xd.shape[0])
    return m


def no_args():
    with pm.Model(coords={"feature": ["f0", "f1"]}) as m:
        X = pm.Data("X", _X)
        beta = pm.Normal("beta", 0, 1, dims="feature")
        sigma = pm.HalfNormal("sigma", 1)
        pm.Normal("y", X @ beta, sigma, observed=_Y, shape=X.shape[0])
    return m


def row_dims(X, y=None, coords=None):
    with pm.Model(coords=coords) as m:
        X = pm.Data("X", np.asarray(X, float), dims=("obs_id", "feature"))
        beta = pm.Normal("beta", 0, 1, dims="feature")
        sigma = pm.HalfNormal("sigma", 1)
        mu = pm.Deterministic("mu", X @ beta, dims="obs_id")
        pm.Normal("y", mu, sigma, observed=np.zeros(X.get_value().shape[0]), shape=X.shape[0], dims="obs_id")
    return m


def softmax(X, y=None, coords=None):
    import pytensor.tensor as pt

    with pm.Model(coords={"feature": ["f0", "f1"], "cls": [1, 2]}) as m:
        X = pm.Data("X", np.asarray(X, float))
        beta = pm.Normal("beta", 0, 1, dims=("feature", "cls"))
        eta = pt.concatenate([pt.zeros((X.shape[0], 1)), X @ beta], axis=1)
        pm.Categorical("y", p=pm.math.softmax(eta, axis=1), observed=np.zeros(X.get_value().shape[0], "int64"),
                       shape=X.shape[0])
    return m


def raises(x, y=None, coords=None):
    raise ValueError("no such table: visits")


def weibull(x, y=None, coords=None):
    with pm.Model() as m:
        xd = pm.Data("x", np.asarray(x, float))
        a = pm.HalfNormal("a", 1)
        b = pm.Normal("b", 0, 1)
        pm.Weibull("y", alpha=a, beta=pm.math.exp(b * xd), observed=np.ones(len(x)), shape=xd.shape[0])
    return m


def unobserved(x, y=None, coords=None):
    with pm.Model() as m:
        xd = pm.Data("x", np.asarray(x, float))
        b = pm.Normal("b", 0, 1)
        pm.Normal("y", b * xd, 1.0, observed=y, shape=xd.shape[0])
    return m
'''


def _posterior(tmp: Path, variables: dict) -> None:
    import xarray as xr

    rng = np.random.default_rng(0)
    data, coords = {}, {"chain": [0, 1], "draw": np.arange(SAMPLES // 2)}
    for name, (dims, make) in variables.items():
        shape = (2, SAMPLES // 2, *[len(c) for _, c in dims])
        data[name] = (("chain", "draw", *[d for d, _ in dims]), make(rng, shape))
        coords.update(dict(dims))
    xr.Dataset(data, coords=coords).to_netcdf(tmp / "post.nc", engine="h5netcdf", group="posterior")


def _normal(scale=1.0):
    return lambda rng, shape: rng.normal(scale=scale, size=shape)


def _positive(rng, shape):
    return rng.gamma(20.0, 0.05, size=shape)


def _project(tmp: Path, builder: str, inputs: list[dict], data: dict, variables: dict, **source) -> Path:
    (tmp / "users_models.py").write_text(MODELS)
    _posterior(tmp, variables)
    np.savez(tmp / "data.npz", **data)
    src = {"framework": "pymc", "path": "post.nc", "model": f"users_models.py:{builder}", "trust_code": True,
           "outputs": {"mean": True, "std": True, "quantiles": [0.1, 0.5, 0.9], "draws": 300}, "seed": 0, **source}
    cfg = {"name": builder.replace("_", "-"), "source": src, "inputs": inputs,
           "data": {"path": "data.npz", "labels": "y"}, "stages": {"convert": {}, "validate": {}}}
    (tmp / "p.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tmp / "p.yaml"


def _validates(cli, cfg: Path) -> dict:
    res = cli("run", cfg, "--json", cwd=cfg.parent)
    assert res.code == 0, (res.stdout[-1500:], res.stderr[-1500:])
    val = next(s for s in res.json()["result"]["stages"] if s["name"] == "validate")["summary"]
    bad = [c for c in val["comparisons"] if not c["pass"]]
    assert val["verdict"] == "pass" and not bad, bad
    assert {c["output"] for c in val["comparisons"]} >= {"mean", "std", "quantiles", "draws"}
    return val


def _numba_equals_artifact(cfg: Path, feeds: dict) -> None:
    """Predictor(engine="numba") on the same config: mean/std/quantiles equal to the artifact's."""
    from onnxforge.score import Predictor

    model = next(cfg.parent.rglob("01-convert/model.onnx"))
    want = Predictor(str(model))(**feeds)
    got = Predictor(str(model), engine="numba", source=str(cfg))(**feeds)
    for key in ("mean", "std", "quantiles"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5, err_msg=key)


def _column(n: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=n)


X1 = {"name": "x", "dtype": "float32", "shape": ["batch"]}
AB = {"a": ((), _normal()), "b": ((), _normal())}


@pytest.mark.parametrize("dtype", ["int64", "float32"])
def test_integer_group_index_input(tmp_path, cli, dtype):
    """The index declared int64 (the graph takes int64), or float32 with the builder casting it (validate's
    reference must not put floats into the int pm.Data itself)."""
    n = 30
    g = np.random.default_rng(4).integers(0, 3, size=n)
    cfg = _project(tmp_path, "hier_int", [X1, {"name": "g", "dtype": dtype, "shape": ["batch"]}],
                   {"x": _column(n), "g": g, "y": _column(n, 5)},
                   {"a": ((("group", [0, 1, 2]),), _normal()), "b": ((), _normal()), "sigma": ((), _positive)})
    _validates(cli, cfg)
    import onnx

    m = onnx.load(str(next(tmp_path.rglob("01-convert/model.onnx"))))
    want = onnx.TensorProto.INT64 if dtype == "int64" else onnx.TensorProto.FLOAT
    assert {i.name: i.type.tensor_type.elem_type for i in m.graph.input}["g"] == want
    _numba_equals_artifact(cfg, {"x": _column(n).astype(np.float32), "g": g.astype(dtype)})


def test_known_per_row_sigma_from_data(tmp_path, cli):
    n = 30
    se = np.abs(_column(n, 6)) + 0.2
    cfg = _project(tmp_path, "known_sigma", [X1, {"name": "se", "dtype": "float32", "shape": ["batch"]}],
                   {"x": _column(n), "se": se, "y": _column(n, 5)}, AB)
    val = _validates(cli, cfg)
    assert val["rows"] == n
    _numba_equals_artifact(cfg, {"x": _column(n).astype(np.float32), "se": se.astype(np.float32)})
    pd.DataFrame({"x": [0.1, 0.2], "se": [0.5, -0.5]}).to_csv(tmp_path / "bad.csv", index=False)
    model = next(tmp_path.rglob("01-convert/model.onnx"))
    line = assert_one_line_error(cli("predict", model, "--input", tmp_path / "bad.csv", "-o", tmp_path / "o"))
    assert "input 'se' feeds the family's sigma, which must be positive" in line and "-0.5 at row(s) [1]" in line


def test_binomial_trials_from_data(tmp_path, cli):
    n = 30
    trials = np.random.default_rng(6).integers(5, 30, size=n)
    cfg = _project(tmp_path, "trials", [X1, {"name": "n", "dtype": "int64", "shape": ["batch"]}],
                   {"x": _column(n), "n": trials, "y": trials // 2}, AB)
    _validates(cli, cfg)
    _numba_equals_artifact(cfg, {"x": _column(n).astype(np.float32), "n": trials})
    # trials past the draws' log-factorial table (max_count 64) or negative: the artifact would fail in
    # onnxruntime with "invalid index found" or return a negative mean and draws of 65 with exit 0
    model = next(tmp_path.rglob("01-convert/model.onnx"))
    for bad, fix in ((100, "larger source.max_count"), (-2, "fix those rows")):
        pd.DataFrame({"x": [0.1, 0.2], "n": [10, bad]}).to_csv(tmp_path / "bad.csv", index=False)
        line = assert_one_line_error(cli("predict", model, "--input", tmp_path / "bad.csv", "-o", tmp_path / "o"))
        assert "input 'n' feeds the family's n" in line and f"got {bad} at row(s) [1]" in line and fix in line
        assert not (tmp_path / "o").exists()
    # the same rows in the config's data: refused before convert runs the artifact on them
    data = dict(np.load(tmp_path / "data.npz"))
    data["n"] = np.where(np.arange(n) == 3, 100, data["n"])
    np.savez(tmp_path / "data.npz", **data)
    line = assert_one_line_error(cli("run", cfg, cwd=tmp_path))
    assert "got 100 at row(s) [3]" in line, line


@pytest.mark.parametrize(("builder", "extra"), [("fixed_sigma", {}), ("fixed_nu", {"sigma": ((), _positive)})])
def test_a_number_in_the_model_with_more_draws_than_samples(tmp_path, cli, builder, extra):
    n = 25
    cfg = _project(tmp_path, builder, [X1], {"x": _column(n), "y": _column(n, 5)}, {**AB, **extra})
    _validates(cli, cfg)
    import json

    import onnx

    m = onnx.load(str(next(tmp_path.rglob("01-convert/model.onnx"))))
    params = json.loads({p.key: p.value for p in m.metadata_props}["onnxforge.bayes"])["params"]
    want = ({"sigma": ["const", 1.0]} if builder == "fixed_sigma"
            else {"nu": ["const", 4.0], "sigma": ["var", "sigma"]})
    assert params == want, params


def test_builder_without_arguments_gets_the_new_rows(tmp_path, cli):
    """builder() built on its training globals (50 rows): validate's pm.sample_posterior_predictive must score the
    20 new rows (pm.set_data), not the training ones."""
    n = 20
    X = np.random.default_rng(9).normal(size=(n, 2))
    cfg = _project(tmp_path, "no_args", [{"name": "X", "dtype": "float32", "shape": ["batch", 2]}],
                   {"X": X, "y": X @ np.array([1.0, -0.5])},
                   {"beta": ((("feature", ["f0", "f1"]),), _normal(0.3)), "sigma": ((), _positive)})
    assert _validates(cli, cfg)["rows"] == n


def test_posterior_coords_with_a_rows_dim(tmp_path, cli):
    """The posterior holds a deterministic over the training rows (obs_id: 50); the model takes those coords back
    and puts the new rows (20) on the same dim."""
    n = 20
    X = np.random.default_rng(9).normal(size=(n, 2))
    cfg = _project(tmp_path, "row_dims", [{"name": "X", "dtype": "float32", "shape": ["batch", 2]}],
                   {"X": X, "y": X @ np.array([1.0, -0.5])},
                   {"beta": ((("feature", ["f0", "f1"]),), _normal(0.3)), "sigma": ((), _positive),
                    "mu": ((("obs_id", np.arange(50)),), _normal())})
    assert _validates(cli, cfg)["rows"] == n


def test_categorical_task_metric_is_accuracy(tmp_path, cli):
    n = 40
    X = np.random.default_rng(9).normal(size=(n, 2))
    cfg = _project(tmp_path, "softmax", [{"name": "X", "dtype": "float32", "shape": ["batch", 2]}],
                   {"X": X, "y": np.random.default_rng(2).integers(0, 3, size=n)},
                   {"beta": ((("feature", ["f0", "f1"]), ("cls", [1, 2])), _normal())})
    task = _validates(cli, cfg)["metrics"]["candidate"]
    assert task["task"] == "classification" and "accuracy" in task and "r2" not in task, task
    assert task["top1_agreement"] == 1.0


@pytest.mark.parametrize(("builder", "inputs", "named"), [
    ("raises", [X1], ["raises() raised ValueError", "no such table: visits", "fix the model builder"]),
    ("weibull", [X1], ["weibull likelihood", "no predictive family", "pm.Normal"]),
    ("unobserved", [X1], ["'y' is a free variable", "placeholder observations"]),
    ("float_trials", [X1, {"name": "n", "dtype": "float32", "shape": ["batch"]}],
     ["pm.sample_posterior_predictive on the model raised", "fix the model so PyMC can sample it"]),
])
def test_user_model_errors_are_exit_2(tmp_path, cli, builder, inputs, named):
    n = 10
    data = {"x": _column(n), "y": np.arange(n) % 3}
    if builder == "float_trials":
        data["n"] = np.full(n, 12.0)
    cfg = _project(tmp_path, builder, inputs, data, {**AB, "sigma": ((), _positive)})
    res = cli("run", cfg, cwd=tmp_path)
    line = assert_one_line_error(res)
    for text in named:
        assert text in line, line
    if builder != "float_trials":  # that one fails in validate: the converted artifact stays, as after any check
        assert not list(tmp_path.rglob("*.onnx")), list(tmp_path.rglob("*"))


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_a_non_finite_posterior_draw_is_refused(tmp_path, cli, bad):
    """One inf sigma draw gave std = inf on every row with exit 0 (inf == inf passed validate); a NaN one was blamed
    on the converter. Now: exit 2 at load, naming the variable, nothing written."""
    n = 10

    def sigma(rng, shape):
        v = _positive(rng, shape)
        v[1, 3] = bad
        return v

    cfg = _project(tmp_path, "fixed_nu", [X1], {"x": _column(n), "y": _column(n, 5)}, {**AB, "sigma": ((), sigma)})
    line = assert_one_line_error(cli("run", cfg, cwd=tmp_path))
    assert "'sigma'" in line and ("inf" if bad == np.inf else "NaN") in line and "1 of its 40 samples" in line, line
    assert not list(tmp_path.rglob("*.onnx"))


def test_quantiles_only_artifact_has_no_task_metric(tmp_path, cli):
    """Without a mean output the [rows, Q] quantiles were scored as class scores (accuracy 0.0)."""
    n = 25
    cfg = _project(tmp_path, "fixed_nu", [X1], {"x": _column(n), "y": _column(n, 5)},
                   {**AB, "sigma": ((), _positive)},
                   outputs={"mean": False, "std": False, "quantiles": [0.1, 0.9], "draws": 0})
    res = cli("run", cfg, "--json", cwd=tmp_path)
    assert res.code == 0, res.stderr[-1500:]
    val = next(s for s in res.json()["result"]["stages"] if s["name"] == "validate")["summary"]
    assert val["verdict"] == "pass" and not val["metrics"], val["metrics"]


def test_input_shape_against_the_models_data_names_the_graph(tmp_path, cli):
    """inputs: X [batch, 3] for a model whose design matrix has 2 columns: the message speaks of the model's graph
    (there is no transform in a zero-code config)."""
    cfg = _project(tmp_path, "no_args", [{"name": "X", "dtype": "float32", "shape": ["batch", 3]}],
                   {"X": np.zeros((5, 3)), "y": np.zeros(5)},
                   {"beta": ((("feature", ["f0", "f1"]),), _normal(0.3)), "sigma": ((), _positive)})
    line = assert_one_line_error(cli("run", cfg, cwd=tmp_path))
    assert "the model's graph fails on these shapes" in line and "X [3, 3]" in line, line
    assert not list(tmp_path.rglob("*.onnx"))
