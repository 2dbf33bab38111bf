"""Stochastic outputs against PyMC itself: the artifact's predictive draws vs pm.sample_posterior_predictive on
the same new data and the same posterior. `onnxforge run` (convert + validate) for the normal and bernoulli
examples — the validate stage does the distributional check — and a direct check for poisson against PyMC run on
the raw posterior file (no onnxforge loader), with a negative control showing the check fails when the rows do not
correspond."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from onnxforge.compare import distribution
from onnxforge.config import parse_config, read_yaml
from onnxforge.data import feeds_from_table, load_table
from onnxforge.pipeline import run_pipeline
from onnxforge.registry import frontend

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["linear", "logistic"])
def test_run_convert_validate_checks_draws_against_pymc(name, cli, tmp_path):
    res = cli("run", ROOT / "configs" / f"pymc_{name}.yaml", "--json", cwd=tmp_path)
    assert res.code == 0, res.stderr[-2000:]
    manifest = res.json()["result"]
    assert manifest["verdict"] == "pass"
    val = next(s for s in manifest["stages"] if s["name"] == "validate")["summary"]
    assert val["reference"] == "pymc native predict"
    comps = {(c["output"], c["batch"]): c for c in val["comparisons"]}
    rows = val["rows"]
    for out in ("mean", "std", "quantiles"):
        for batch in (1, rows):
            c = comps[(out, batch)]
            assert c["pass"] and c["kind"] == "float" and c["rtol"] == c["atol"] == 1e-5, c
    d = comps[("draws", rows)]
    assert d["kind"] == "distribution" and d["pass"]
    # every row's mean within 4 Monte-Carlo standard errors, every row's 5/50/95% quantiles close
    assert d["mean_fail_rows"] == 0 and d["quantile_fail_rows"] == 0 and d["max_z"] < 4.0
    assert d["draws_ref"] == 500 and d["draws_got"] == 500 and d["rows"] == rows > 30
    assert (tmp_path / "runs" / f"pymc-{name}" / "01-convert" / "model.onnx").is_file()


def psp_from_raw_posterior(name: str, feeds: dict, seed: int = 0) -> np.ndarray:
    """pm.sample_posterior_predictive on the raw posterior file (xarray, every sample, no onnxforge loader or
    thinning) with the example's PyMC model built on the same rows: (rows, chains·draws), chain-major."""
    import warnings

    import pymc as pm
    import xarray as xr

    from fixtures import pymc_models as pmm

    post = xr.open_dataset(ROOT / "fixtures" / "pymc" / f"{name}.nc", group="posterior", engine="h5netcdf").load()
    model = getattr(pmm, f"{name}_model")(np.asarray(feeds["X"], np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = pm.sample_posterior_predictive(post, model=model, var_names=["y"], random_seed=seed,
                                               progressbar=False)
    draws = idata.posterior_predictive["y"].transpose("chain", "draw", ...).values
    return draws.reshape(-1, draws.shape[-1]).T.astype(np.float64)


@pytest.fixture(scope="module")
def poisson(tmp_path_factory):
    path = ROOT / "configs" / "pymc_poisson.yaml"
    raw, lines = read_yaml(path)
    raw.update(stages={"convert": {}})
    cfg = parse_config(raw, path, lines, run_dir=tmp_path_factory.mktemp("psp"))
    model = cfg.run_path / run_pipeline(cfg, force=True)["final_model"]
    feeds = feeds_from_table(load_table(cfg.data.path), cfg.inputs)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    got = ort.InferenceSession(str(model), so).run(["draws"], feeds)[0]
    ref = psp_from_raw_posterior("poisson", feeds)
    return got, ref


def test_poisson_draws_match_pymc(poisson):
    got, ref = poisson
    assert got.shape == ref.shape == (75, 500)
    assert np.array_equal(ref, np.round(ref)) and np.array_equal(got, np.round(got))
    c = distribution("draws", ref, got, sigmas=4.0)
    assert c["pass"] and c["mean_fail_rows"] == 0 and c["quantile_fail_rows"] == 0, c
    # independently of compare.distribution: 5/50/95% quantiles within one count plus sampling noise
    for q in (0.05, 0.5, 0.95):
        qr, qg = np.quantile(ref, q, axis=1), np.quantile(got, q, axis=1)
        allow = 1.0 + 4 * ref.std(1) * np.sqrt(q * (1 - q) / ref.shape[1]) * 2.5
        assert (np.abs(qr - qg) <= allow).all(), q


def test_distribution_check_fails_on_mismatched_rows(poisson):
    got, ref = poisson
    order = np.argsort(ref.mean(1))
    shuffled = got[order[::-1]][np.argsort(order)]  # each row gets another row's draws
    c = distribution("draws", ref, shuffled, sigmas=4.0)
    assert not c["pass"] and c["mean_fail_rows"] > 10


def test_validate_without_model_builder_says_so():
    from onnxforge.errors import UserError

    path = ROOT / "configs" / "pymc_logistic.yaml"
    raw, lines = read_yaml(path)
    raw["source"] = {k: v for k, v in raw["source"].items() if k != "model"}
    cfg = parse_config(raw, path, lines)
    fe = frontend("pymc")
    with pytest.raises(UserError, match="source.model"):
        fe.sample(fe.load(cfg), feeds_from_table(load_table(cfg.data.path), cfg.inputs), cfg)
