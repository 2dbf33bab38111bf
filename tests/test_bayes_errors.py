"""pymc frontend, bad input: one line, exit 2, naming the problem and the fix — from the real CLI for the four
cases the issue names, in-process for the rest of the config checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import assert_one_line_error

from onnxforge.config import parse_config
from onnxforge.errors import UserError
from onnxforge.registry import frontend

ROOT = Path(__file__).resolve().parents[1]
BASE = {
    "name": "bad",
    "source": {"framework": "pymc", "path": str(ROOT / "fixtures/pymc/linear.nc"),
               "transform": f"{ROOT / 'fixtures/pymc_models.py'}:linear_mu", "trust_code": True},
    "inputs": [{"name": "X", "dtype": "float32", "shape": ["batch", 3]}],
    "stages": {"convert": {}},
}


def write(tmp: Path, name: str, *, source=None, inputs=None) -> Path:
    cfg = {**BASE, "source": {**BASE["source"], **(source or {})}, "inputs": inputs or BASE["inputs"]}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_netcdf_without_posterior_group(tmp_path, cli):
    import xarray as xr

    xr.Dataset({"y": (("obs",), np.arange(5.0))}).to_netcdf(tmp_path / "obs.nc", engine="h5netcdf",
                                                              group="observed_data")
    res = cli("convert", "--config", write(tmp_path, "nopost", source={"path": "obs.nc"}), "-o",
              tmp_path / "m.onnx")
    line = assert_one_line_error(res)
    assert "no 'posterior' group" in line and "to_netcdf" in line
    assert not (tmp_path / "m.onnx").exists()


def test_transform_asks_for_a_missing_variable(tmp_path, cli):
    (tmp_path / "mu.py").write_text("def mu(xp, params, X):\n    return params['alpha'] + X @ params['gamma']\n")
    res = cli("convert", "--config", write(tmp_path, "missing", source={"transform": "mu.py:mu"}), "-o",
              tmp_path / "m.onnx")
    line = assert_one_line_error(res)
    assert "'gamma'" in line and "alpha, beta, sigma" in line


def test_shape_mismatch_between_posterior_dims_and_inputs(tmp_path, cli):
    res = cli("convert", "--config", write(tmp_path, "shape", inputs=[{"name": "X", "shape": ["batch", 4]}]),
              "-o", tmp_path / "m.onnx")
    line = assert_one_line_error(res)
    assert "X [3, 4]" in line and "beta(feature=3)" in line and "inputs[].shape" in line


def test_unseen_category_under_error_policy_refused_at_predict(tmp_path, cli):
    import pandas as pd

    from onnxforge.config import read_yaml
    from onnxforge.pipeline import run_pipeline

    path = ROOT / "configs" / "pymc_hier.yaml"
    raw, lines = read_yaml(path)
    raw["source"].update(categorical={"group": {"policy": "error"}}, outputs={"draws": 0})
    raw.update(stages={"convert": {}})
    cfg = parse_config(raw, path, lines, run_dir=tmp_path)
    model = cfg.run_path / run_pipeline(cfg)["final_model"]
    df = pd.DataFrame({"x": [0.1, 0.2, 0.3], "group": ["setosa", "atlantica", "virginica"]})
    df.to_csv(tmp_path / "in.csv", index=False)
    res = cli("predict", model, "--input", tmp_path / "in.csv", "--output", tmp_path / "out.parquet")
    line = assert_one_line_error(res)
    assert "atlantica" in line and "row(s) [1]" in line and "'error'" in line
    assert not (tmp_path / "out.parquet").exists() and not list(tmp_path.glob(".out.parquet*"))
    df.iloc[[0, 2]].to_csv(tmp_path / "ok.csv", index=False)  # known levels score fine
    ok = cli("predict", model, "--input", tmp_path / "ok.csv", "--output", tmp_path / "out.parquet")
    assert ok.code == 0, ok.stderr
    assert len(pd.read_parquet(tmp_path / "out.parquet")) == 2


@pytest.mark.parametrize(("source", "inputs", "needle"), [
    ({"transform": f"{ROOT / 'fixtures/pymc_models.py'}:nope"}, None, "no function 'nope'"),
    ({}, [{"name": "Z", "shape": ["batch", 3]}], "differ from the transform's arguments"),
    ({"family": "negative-binomial"}, None, "params.alpha"),
    ({"family": "student-t"}, None, "'nu' is not a posterior variable"),
    ({"params": {"sigma": "tau"}}, None, "'tau' is not a posterior variable"),
    ({"params": {"sigma": "sigma", "phi": "x"}}, None, "no parameter(s) ['phi']"),
    ({"categorical": {"X": {}}}, None, "no dim 'X'"),
    ({"outputs": {"mean": False, "std": False, "quantiles": []}}, None, "every output is off"),
], ids=["transform-name", "input-names", "negbin-alpha", "t-nu", "sigma-var", "unknown-param", "cat-dim",
        "no-outputs"])
def test_config_mismatches_are_user_errors(source, inputs, needle):
    raw = {**BASE, "source": {**BASE["source"], **source}, "inputs": inputs or BASE["inputs"]}
    with pytest.raises(UserError) as e:
        frontend("pymc").load(parse_config(raw))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_opset_above_21_with_draws_is_refused():
    raw = {**BASE, "source": {**BASE["source"], "outputs": {"draws": 10}}}
    cfg = parse_config(raw)
    fe = frontend("pymc")
    with pytest.raises(UserError, match="opset ≤ 21"):
        fe.export(fe.load(cfg), cfg, 22, None)


def test_cli_import_stays_light():
    """Registering the pymc frontend (schema building) must not import torch, pymc or xarray."""
    code = ("import sys; from onnxforge.config import json_schema; json_schema(); import onnxforge.cli; "
            "print(','.join(m for m in ('torch', 'pymc', 'pytensor', 'xarray', 'arviz') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


MISTAKES = {  # a hand transform's usual mistakes: each was exit 3, a NaN artifact passing, or a shapes message
    "np_function": ("import numpy as np\ndef mu(xp, params, X):\n    return np.tanh(params['alpha'] + X @ "
                    "params['beta'])\n", ["cannot be exported to ONNX", "with xp"]),
    "returns_none": ("def mu(xp, params, X):\n    return None\n", ["returned NoneType, not mu"]),
    "raises": ("def mu(xp, params, X):\n    raise ValueError('user bug in transform')\n",
               ["raised ValueError: user bug in transform", "fix the transform"]),
    "nan_everywhere": ("def mu(xp, params, X):\n    return xp.log(params['alpha'] - 100 + 0 * (X @ "
                       "params['beta']))\n", ["NaN/inf mean for 3 of 3 rows", "fix the transform"]),
}


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_transform_mistakes_are_named(tmp_path, cli, case):
    """Before: np.tanh on the export backend and a None return were exit 3 (torch.export's error), a transform's
    own ValueError was blamed on the input shapes, and a transform giving NaN for every row converted and
    validated with exit 0 (NaN on both sides compared as equal)."""
    code, words = MISTAKES[case]
    (tmp_path / "mu.py").write_text(code)
    np.savez(tmp_path / "rows.npz", X=np.random.default_rng(0).normal(size=(3, 3)).astype(np.float32))
    cfg = yaml.safe_load(write(tmp_path, case, source={"transform": "mu.py:mu"}).read_text())
    cfg["data"] = {"path": "rows.npz"}
    (tmp_path / f"{case}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    line = assert_one_line_error(cli("convert", "--config", tmp_path / f"{case}.yaml", "-o", tmp_path / "m.onnx"))
    assert all(w in line for w in words), line
    assert not (tmp_path / "m.onnx").exists()
