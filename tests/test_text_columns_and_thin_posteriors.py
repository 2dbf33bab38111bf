"""Found by sweep 5. A CSV column of digits feeding a text input keeps its text as written: pandas read "02139" as
the number 2139 and the artifact scored the text "2139" (another level, or none the encoder knew), silently, in
predict's chunks and in validate's data alike. The check refusing a typed number for a text input asks the reader
whether the file types its cells (`typed`), not the file's extension. A PyMC config whose validate would compare
draws on fewer than 20 posterior samples (or draws) is refused up front (exit 2), not failed after the convert."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import CONFIGS, ROOT, assert_one_line_error, run_cli
from onnx_models import bernoulli_draws, save

from onnxforge import data
from onnxforge.config import TensorSpec
from onnxforge.tables import iter_chunks

skio = pytest.importorskip("skops.io")

# "2139" is a level of its own: "02139" read as 2139 scored as it, silently (handle_unknown='ignore' scored the
# unseen "501" as no level at all)
LEVELS = {"02139": 1.0, "00501": 5.0, "10001": 9.0, "2139": -20.0}
SPECS = [TensorSpec(name="zip", dtype="string", shape=["batch", 1]),
         TensorSpec(name="x", dtype="float32", shape=["batch", 1])]


@pytest.fixture(scope="module")
def zips(tmp_path_factory):
    """Pipeline(ColumnTransformer(OneHotEncoder on zip codes, passthrough x), LinearRegression), converted and
    validated from the CSV the user wrote with DataFrame.to_csv (labels y: validate's metrics on its rows)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    tmp = tmp_path_factory.mktemp("zips")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"zip": rng.choice(list(LEVELS), 40), "x": rng.normal(size=40)})
    y = frame["zip"].map(LEVELS) + frame["x"]
    ct = ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), ["zip"]), ("num", "passthrough", ["x"])])
    model = make_pipeline(ct, LinearRegression()).fit(frame, y)
    skio.dump(model, tmp / "m.skops")
    frame.assign(y=y).to_csv(tmp / "data.csv", index=False)
    cfg = {"name": "z", "source": {"framework": "sklearn", "path": "m.skops"},
           "inputs": [s.model_dump(exclude_none=True) for s in SPECS], "data": {"path": "data.csv", "labels": "y"},
           "stages": {"convert": {}, "validate": {}}}
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = run_cli("run", tmp / "c.yaml", "--json", cwd=tmp)
    assert res.code == 0, res.stderr[-800:]
    val = next(s for s in res.json()["result"]["stages"] if s["name"] == "validate")["summary"]
    return tmp, model, frame, val


def test_a_csv_column_of_digits_for_a_text_input_keeps_its_leading_zeros(zips):
    """predict (streamed in chunks of 7 rows) scores "02139"/"00501" as written: the same as model.predict on the
    user's frame (before: rows of those levels off by 21 and 4); validate's data reads them the same way: its
    metrics on the labels are exact (before: r2 < 0.5)."""
    tmp, model, frame, val = zips
    assert (tmp / "data.csv").read_text().count("\n0") > 5  # the file holds the leading zeros
    res = run_cli("predict", tmp / "runs/z/01-convert/model.onnx", "--input", tmp / "data.csv", "--output",
                  tmp / "out.csv", "--chunk-rows", "7", cwd=tmp)
    assert res.code == 0, res.stderr[-800:]
    got = pd.read_csv(tmp / "out.csv").to_numpy().ravel()
    np.testing.assert_allclose(got, model.predict(frame), atol=1e-4)
    assert val["metrics"]["candidate"]["r2"] > 0.999, val["metrics"]
    # the data validate, quantize and report read (load_table → feeds_from_table): text as written
    feeds = data.feeds_from_table(data.load_table(tmp / "data.csv"), SPECS)
    assert feeds["zip"].ravel().tolist() == frame["zip"].tolist()
    # predict's reader: chunks of text as written, and the file's typing said (a CSV types no cell)
    _, chunks = iter_chunks(tmp / "data.csv", 16, lambda keys: data.input_keys(SPECS, keys))
    chunks = list(chunks)
    assert [c["zip"].tolist() for c in chunks][0] == frame["zip"].head(16).tolist()
    assert not any(c.typed for c in chunks) and not data.load_table(tmp / "data.csv").typed
    # a folder of CSVs (predict_dataset's own part reader): the same text
    (tmp / "parts").mkdir(exist_ok=True)
    frame.to_csv(tmp / "parts/a.csv", index=False)
    res = run_cli("predict", tmp / "runs/z/01-convert/model.onnx", "--input", tmp / "parts", "--output",
                  tmp / "scored", "--chunk-rows", "7", cwd=tmp)
    assert res.code == 0, res.stderr[-800:]
    got = pd.concat([pd.read_parquet(f) for f in sorted((tmp / "scored").glob("*.parquet"))])
    np.testing.assert_allclose(got.to_numpy().ravel(), model.predict(frame), atol=1e-4)


def test_a_missing_text_cell_stays_missing(zips, tmp_path):
    """An empty cell in the text column is refused as missing (not scored as the text 'nan'); --allow-nan scores
    it as before. The digits around it keep their zeros."""
    tmp, model, frame, _ = zips
    rows = frame.head(4).astype({"zip": object})
    rows.loc[rows.index[2], "zip"] = None
    rows.to_csv(tmp_path / "gap.csv", index=False)
    onnx_model = tmp / "runs/z/01-convert/model.onnx"
    line = assert_one_line_error(run_cli("predict", onnx_model, "--input", tmp_path / "gap.csv", "--output",
                                         tmp_path / "out.csv", cwd=tmp_path))
    assert "missing value" in line and "row 2" in line, line
    table = data.load_table(tmp_path / "gap.csv")
    table.load(data.input_keys(SPECS, list(table)))
    assert table["zip"].tolist() == [*frame["zip"].head(2), None, frame["zip"].iloc[3]]


def test_check_text_judges_the_dtype_and_the_readers_typing(tmp_path):
    """Typed files (parquet) still refuse a number for a text input; a text column passes without a Python loop
    over its cells (the dtype says numbers, pandas' infer_dtype says text)."""
    spec = SPECS[0]
    col = np.array([f"{i:05d}" for i in range(1000)], dtype=object)
    col[::7] = None
    data._check_text(col, "zip", spec, None)  # text and missing cells: nothing to refuse
    data._check_text(np.full(5, np.nan), "zip", spec, None)  # all null: judged as missing later
    for bad, what in ((np.array([np.nan, 2.5]), "a number (2.5 in row 1)"),
                      (np.array([True, False]), "a boolean (True in row 0)"),
                      (np.array(["a", None, 7], dtype=object), "a number (7 in row 2)")):
        with pytest.raises(data.UserError, match=re.escape(f"takes text but the data holds {what}")):
            data._check_text(bad, "zip", spec, None)
    pd.DataFrame({"zip": [2139, 501], "x": [0.5, 1.5]}).to_parquet(tmp_path / "codes.parquet")
    table = data.load_table(tmp_path / "codes.parquet")
    assert table.typed
    with pytest.raises(data.UserError, match=r"takes text but the data holds a number \(2139 in row 0\)"):
        data.feeds_from_table(table, SPECS)


# ------------------------------------------------------------------ PyMC: fewer than 20 draws to compare


def _pymc_config(tmp: Path, name: str = "p.yaml", validate=None, **source) -> Path:
    raw = yaml.safe_load((CONFIGS / "pymc_linear.yaml").read_text())
    raw["source"].update({"path": str(ROOT / "fixtures/pymc/linear.nc"),
                          "transform": str(ROOT / "fixtures/pymc_models.py") + ":linear_mu",
                          "model": str(ROOT / "fixtures/pymc_models.py") + ":linear_model", **source})
    raw["data"]["path"] = str(ROOT / "fixtures/data/pymc_linear.npz")
    raw["stages"] = {"convert": {}, "validate": validate or {}}
    (tmp / name).write_text(yaml.safe_dump(raw, sort_keys=False))
    return tmp / name


def test_a_posterior_thinned_below_20_samples_is_refused_before_convert(tmp_path):
    """2 chains × 5 draws in the file, or source.samples: 12 of 500: validate's draws check (one PyMC draw per
    posterior sample) failed after the convert, exit 1; config check and run now refuse it, naming the count and
    both fixes, and make nothing. stochastic: [] (the fix) and 20 samples are accepted."""
    import xarray as xr

    with xr.open_dataset(ROOT / "fixtures/pymc/linear.nc", group="posterior", engine="h5netcdf") as ds:
        ds.isel(draw=slice(0, 5)).load().to_netcdf(tmp_path / "thin.nc", group="posterior", engine="h5netcdf")
    cases = {"keeps 10 samples (2 chain(s) × 5 draws in thin.nc)": _pymc_config(tmp_path, path=str(
                 tmp_path / "thin.nc")),
             "keeps 12 samples (source.samples: 12)": _pymc_config(tmp_path, "s12.yaml", samples=12),
             "source.outputs.draws is 10": _pymc_config(tmp_path, "d10.yaml", outputs={"draws": 10})}
    for needle, cfg in cases.items():
        for args in (("config", "check", cfg), ("run", cfg)):
            line = assert_one_line_error(run_cli(*args, cwd=tmp_path))
            assert needle in line and "at least 20" in line and "stochastic: []" in line, line
    assert not (tmp_path / "runs").exists()
    for ok in (_pymc_config(tmp_path, "skip.yaml", validate={"stochastic": []}, path=str(tmp_path / "thin.nc")),
               _pymc_config(tmp_path, "s20.yaml", samples=20)):
        res = run_cli("config", "check", ok, cwd=tmp_path)
        assert res.code == 0, res.stderr


def test_too_few_draws_per_row_at_validate_is_a_config_error(tmp_path):
    """validate alone (no preflight): a stochastic output with 10 draws per row was a failed check (exit 1); the
    check cannot run on so few, so it is refused (exit 2) naming the count and the fix. Its only output: skipping
    the check is no fix, and is not offered."""
    np.savez(tmp_path / "p.npz", p=np.linspace(0.05, 0.95, 12).astype(np.float32))
    save(bernoulli_draws(10, use_bernoulli=False), tmp_path / "few.onnx")
    line = assert_one_line_error(run_cli("validate", tmp_path / "few.onnx", "--against", "onnx-reference",
                                         "--data", tmp_path / "p.npz", cwd=tmp_path))
    assert "output 'draws'" in line and "10 draws per row" in line and "at least 20" in line, line
    assert "stochastic: []" not in line, line
