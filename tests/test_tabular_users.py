"""scikit-learn pipelines written the way users write them (a sweep of models from other packages found each case
below failing): fitted on pandas float64 frames, imputing their own NaN, encoders that refuse unseen levels.
Every reference is scikit-learn's / XGBoost's own predict on the data as the user has it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import assert_one_line_error

skio = pytest.importorskip("skops.io")


def _save(tmp, model, frame: pd.DataFrame, inputs: list[dict], name: str = "p") -> None:
    skio.dump(model, tmp / "m.skops")
    frame.to_csv(tmp / "data.csv", index=False)
    cfg = {"name": name, "source": {"framework": "sklearn", "path": "m.skops"}, "inputs": inputs,
           "data": {"path": "data.csv"}, "stages": {"convert": {}, "validate": {}}}
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def _predict(cli, tmp, model_path, csv: str, *extra):
    return cli("predict", model_path, "--input", tmp / csv, "--output", tmp / f"out_{csv}", *extra, cwd=tmp)


def test_float64_inputs_reproduce_predict_on_float64_data(tmp_path, cli):
    """Pipeline(StandardScaler, XGBRegressor) fitted on a float64 frame: the scaler runs in double in scikit-learn,
    then XGBoost casts to float32. Declared float64, the graph does the same (the trees get a Cast to float): it
    converts (before: onnx.checker failed, exit 1, the ensemble's float scores declared double) and matches
    predict on the float64 rows (compared in double, 32 of 50 rows moved across a split, by up to 78)."""
    xgb = pytest.importorskip("xgboost")
    from sklearn.datasets import load_diabetes
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_diabetes(return_X_y=True, as_frame=True)
    m = make_pipeline(StandardScaler(), xgb.XGBRegressor(n_estimators=10, n_jobs=1)).fit(X, y)
    _save(tmp_path, m, X.head(50), [{"name": "input", "dtype": "float64", "shape": ["batch", 10],
                                     "columns": list(X.columns)}])
    res = cli("run", tmp_path / "c.yaml", cwd=tmp_path)
    assert res.code == 0, res.stderr[-800:]
    res = _predict(cli, tmp_path, tmp_path / "runs/p/01-convert/model.onnx", "data.csv")
    assert res.code == 0, res.stderr[-800:]
    got = pd.read_csv(tmp_path / "out_data.csv").to_numpy().ravel()
    np.testing.assert_allclose(got, m.predict(X.head(50)), rtol=1e-6, atol=1e-4)


def test_validate_compares_with_predict_on_the_files_float64_values(tmp_path, cli):
    """The same pipeline declared float32 (held-out rows): validate's same-tensors comparison passes (6e-5), but
    predict on the user's float64 frame differs by up to 55 on 42 of 111 rows — validate now also compares with
    that and fails, exit 1, naming the fix (before: exit 0)."""
    xgb = pytest.importorskip("xgboost")
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_diabetes(return_X_y=True, as_frame=True)
    Xtr, Xte, ytr, _ = train_test_split(X, y, random_state=0)
    m = make_pipeline(StandardScaler(), xgb.XGBRegressor(n_estimators=30, n_jobs=1)).fit(Xtr, ytr)
    _save(tmp_path, m, Xte, [{"name": "input", "dtype": "float32", "shape": ["batch", 10],
                              "columns": list(X.columns)}])
    res = cli("run", tmp_path / "c.yaml", "--json", cwd=tmp_path)
    assert res.code == 1, res.stderr[-800:]
    assert "data file's float64 values" in res.stderr and "dtype: float64" in res.stderr, res.stderr[-800:]
    val = next(s for s in res.json()["result"]["stages"] if s["name"] == "validate")["summary"]
    same = [c for c in val["comparisons"] if c["output"] == "variable"]
    wide = [c for c in val["comparisons"] if c["output"] == "variable (float64 data)"]
    assert same and all(c["pass"] for c in same) and wide and not wide[0]["pass"]
    assert wide[0]["max_abs"] == pytest.approx(np.abs(m.predict(Xte) - m.predict(Xte.astype(np.float32))).max(),
                                               rel=1e-3, abs=1e-3)


def test_a_pipeline_that_imputes_takes_nan(tmp_path, cli):
    """Pipeline(SimpleImputer, Ridge) exists to take NaN: validate and predict let NaN rows through (before: exit 2
    'drop or impute those rows'), and the graph's Imputer gives scikit-learn's values; ±inf is still refused."""
    from sklearn.datasets import load_diabetes
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline

    X, y = load_diabetes(return_X_y=True, as_frame=True)
    X = X.mask(np.random.default_rng(0).random(X.shape) < 0.1)
    m = make_pipeline(SimpleImputer(), Ridge()).fit(X, y)
    _save(tmp_path, m, X.head(40), [{"name": "input", "dtype": "float32", "shape": ["batch", 10],
                                     "columns": list(X.columns)}])
    res = cli("run", tmp_path / "c.yaml", cwd=tmp_path)
    assert res.code == 0, res.stderr[-800:]
    model = tmp_path / "runs/p/01-convert/model.onnx"
    res = _predict(cli, tmp_path, model, "data.csv")
    assert res.code == 0, res.stderr[-800:]
    got = pd.read_csv(tmp_path / "out_data.csv").to_numpy().ravel()
    np.testing.assert_allclose(got, m.predict(X.head(40)), rtol=1e-5, atol=1e-4)
    X.head(3).fillna(np.inf).to_csv(tmp_path / "inf.csv", index=False)
    assert "inf" in assert_one_line_error(_predict(cli, tmp_path, model, "inf.csv")).lower()


@pytest.mark.parametrize("encoder", ["ordinal", "onehot"])
def test_an_encoder_that_refuses_unseen_levels_refuses_them_in_the_artifact(tmp_path, cli, encoder):
    """OrdinalEncoder / OneHotEncoder with handle_unknown='error' (their default): scikit-learn refuses an unseen
    level; the artifact's scorers refuse it too, naming the input, row and known levels (before: the ordinal
    graph scored it with a default code, exit 0; onnxruntime refused the one-hot row in its own words)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    X = X.iloc[:, :3].set_axis(["a", "b", "c"], axis=1)
    X["region"] = np.random.default_rng(0).choice(["n", "s"], len(X))
    enc = OrdinalEncoder() if encoder == "ordinal" else OneHotEncoder()
    ct = ColumnTransformer([("num", StandardScaler(), ["a", "b", "c"]), ("cat", enc, ["region"])])
    m = make_pipeline(ct, LogisticRegression(max_iter=1000)).fit(X, y)
    _save(tmp_path, m, X.head(30), [*({"name": c, "dtype": "float32", "shape": ["batch", 1]} for c in "abc"),
                                    {"name": "region", "dtype": "string", "shape": ["batch", 1]}])
    res = cli("run", tmp_path / "c.yaml", cwd=tmp_path)
    assert res.code == 0, res.stderr[-800:]
    new = X.head(3).copy()
    new.loc[new.index[1], "region"] = "east"
    with pytest.raises(ValueError, match="unknown categor"):
        m.predict(new)
    new.to_csv(tmp_path / "new.csv", index=False)
    line = assert_one_line_error(_predict(cli, tmp_path, tmp_path / "runs/p/01-convert/model.onnx", "new.csv"))
    assert "input 'region'" in line and "'east'" in line and "row(s) [1]" in line and "n, s" in line, line
    assert not (tmp_path / "out_new.csv").exists()
    # a typed number for the text input (a label-encoded parquet column, a JSON number): scikit-learn refuses it
    # (TypeError); before, it was scored as the text '1' (an unknown level, or 'no category' under ignore)
    from onnxforge.errors import UserError
    from onnxforge.score import Scorer

    new["region"] = [0, 1, 0]
    new.to_parquet(tmp_path / "codes.parquet")
    line = assert_one_line_error(_predict(cli, tmp_path, tmp_path / "runs/p/01-convert/model.onnx",
                                          "codes.parquet"))
    assert "input 'region' takes text but the data holds a number (0 in row 0)" in line, line
    scorer = Scorer(tmp_path / "runs/p/01-convert/model.onnx")
    with pytest.raises(UserError, match="takes text but the data holds a number"):
        scorer.feeds([{"a": 1.0, "b": 2.0, "c": 3.0, "region": 5}])


def test_the_usual_categorical_branches_convert(tmp_path, cli):
    """Pipeline(SimpleImputer, OneHotEncoder) on a text column (before: refused as 'treats it as numbers', and
    skl2onnx refused a text imputer looking for NaN) and one OneHotEncoder over a text and an integer column
    (before: every dtype for the integer column was refused). Numeric NaN goes through the imputers, as in
    scikit-learn; probabilities match predict_proba on the same rows."""
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_breast_cancer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    rng = np.random.default_rng(1)
    X = X.iloc[:, :3].set_axis(["a", "b", "c"], axis=1).mask(rng.random((len(X), 3)) < 0.1)
    X["color"] = rng.choice(["red", "green", "blue"], len(X)).astype(object)
    X.loc[X.index[::17], "color"] = np.nan
    X["region"] = rng.choice(["n", "s"], len(X))
    X["grade"] = rng.integers(0, 4, len(X))
    ct = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["a", "b", "c"]),
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
         ["color"]),
        ("mixed", OneHotEncoder(drop="first"), ["region", "grade"])])
    m = make_pipeline(ct, LogisticRegression(max_iter=1000)).fit(X, y)
    rows = X.iloc[1:60]  # no null text cell: a text input refuses those (see data validation)
    rows = rows[rows["color"].notna()]
    _save(tmp_path, m, rows, [*({"name": c, "dtype": "float32", "shape": ["batch", 1]} for c in "abc"),
                              {"name": "color", "dtype": "string", "shape": ["batch", 1]},
                              {"name": "region", "dtype": "string", "shape": ["batch", 1]},
                              {"name": "grade", "dtype": "int64", "shape": ["batch", 1]}])
    res = cli("run", tmp_path / "c.yaml", cwd=tmp_path)
    assert res.code == 0, res.stderr[-800:]
    assert rows[["a", "b", "c"]].isna().any().any()
    res = _predict(cli, tmp_path, tmp_path / "runs/p/01-convert/model.onnx", "data.csv")
    assert res.code == 0, res.stderr[-800:]
    got = pd.read_csv(tmp_path / "out_data.csv")
    proba = got[[c for c in got.columns if c.startswith("probabilities")]].to_numpy()
    np.testing.assert_allclose(proba, m.predict_proba(rows), atol=1e-5)
