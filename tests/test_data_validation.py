"""Data validated before use (issue #12, part 5): every bad data file is crafted here and run through the real CLI —
validate, quantize (static, calibrated on it), report, bench and predict. Each must end in one line, exit 2, no
traceback, naming the file (and the column or input) and the fix, with nothing written at the output path.

Also: predict --columns maps table columns onto a model onnxforge did not convert (checked against numpy and
onnxruntime), and the NaN policy — a booster converted by onnxforge is stamped as taking NaN as a missing value and
scores NaN rows as the native library does; a model without the stamp refuses NaN unless --allow-nan."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from conftest import CONFIGS, FIXTURES, assert_one_line_error, run_cli
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from onnx_models import linear, save

COLS = ["a", "b", "c", "d"]
ROWS = 24
CONFIG = """\
name: data-check
source: {{framework: onnx, path: {model}}}
inputs:
  - {{name: x, dtype: float32, shape: [batch, 4], columns: [a, b, c, d]}}
data: {{path: {data}{labels}}}
stages: {{convert: {{}}}}
"""


def _frame(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.normal(size=(ROWS, 4)).astype(np.float32), columns=COLS)


def _npz(path: Path, df: pd.DataFrame, **extra) -> Path:
    np.savez(path, **{c: df[c].to_numpy() for c in df.columns}, **extra)
    return path


def _with(df: pd.DataFrame, row: int, col: str, value) -> pd.DataFrame:
    df = df.copy()
    df.loc[row, col] = value
    return df


def make_bad(kind: str, d: Path) -> Path:
    """One bad data file, built at test time."""
    df = _frame()
    noise = np.random.default_rng(7).bytes(2048)
    if kind == "empty_csv":
        (d / "empty.csv").write_bytes(b"")
        return d / "empty.csv"
    if kind == "header_only_csv":
        (d / "header.csv").write_text(",".join(COLS) + "\n")
        return d / "header.csv"
    if kind == "zero_rows_npz":
        return _npz(d / "zero.npz", df.iloc[:0])
    if kind == "zero_rows_parquet":
        df.iloc[:0].to_parquet(d / "zero.parquet")
        return d / "zero.parquet"
    if kind == "nan_npz":
        return _npz(d / "nan.npz", _with(df, 5, "c", np.nan))
    if kind == "inf_csv":
        _with(df, 7, "b", np.inf).to_csv(d / "inf.csv", index=False)
        return d / "inf.csv"
    if kind == "neg_inf_parquet":
        _with(df, 2, "d", -np.inf).to_parquet(d / "ninf.parquet")
        return d / "ninf.parquet"
    if kind == "missing_cell_csv":  # an empty CSV cell is a missing value (NaN) to pandas
        text = df.to_csv(index=False).splitlines()
        cells = text[4].split(",")
        cells[0] = ""
        text[4] = ",".join(cells)
        (d / "hole.csv").write_text("\n".join(text) + "\n")
        return d / "hole.csv"
    if kind == "wrong_columns_csv":
        df.rename(columns={"d": "e"}).to_csv(d / "cols.csv", index=False)
        return d / "cols.csv"
    if kind == "wrong_shape_npz":  # column 'a' holds two values per row
        return _npz(d / "shape.npz", df.drop(columns="a"), a=np.ones((ROWS, 2), np.float32))
    if kind == "text_in_numbers_csv":
        df = df.astype(object)
        df.loc[3, "c"] = "n/a?"
        df.to_csv(d / "text.csv", index=False)
        return d / "text.csv"
    if kind.startswith("random_"):
        ext = kind.removeprefix("random_")
        (d / f"random.{ext}").write_bytes(noise)
        return d / f"random.{ext}"
    raise AssertionError(kind)


# what each message must say: the problem (and where), besides the file's name
EXPECT = {
    "empty_csv": ["empty"],
    "header_only_csv": ["no rows"],
    "zero_rows_npz": ["no rows"],
    "zero_rows_parquet": ["no rows"],
    "nan_npz": ["column 'c'", "NaN", "row 5"],
    "inf_csv": ["column 'b'", "inf", "row 7"],
    "neg_inf_parquet": ["column 'd'", "-inf", "row 2"],
    "missing_cell_csv": ["column 'a'", "NaN", "row 3"],
    "wrong_columns_csv": ["['d'] not in the data", "available: a, b, c, e"],
    "wrong_shape_npz": ["column 'a'", "[24, 2]", "input 'x'"],
    "text_in_numbers_csv": ["expects float32 but the data holds strings", "'n/a?'", "column 'c'", "row 3"],
    "random_npz": ["not a readable .npz file", "numpy.savez"],
    "random_npy": ["not a readable .npy file", "numpy.save"],
    "random_parquet": ["not a readable .parquet file", "to_parquet"],
    "random_csv": ["not a readable .csv file", "UTF-8"],
}
ALL = list(EXPECT)
# quantize, report and bench share one reader with validate: a representative subset keeps the suite short
SUBSET = ["header_only_csv", "zero_rows_npz", "nan_npz", "inf_csv", "wrong_shape_npz", "random_npz",
          "random_parquet"]
# a data file with a single array cannot feed a 4-column mapping by name; .npy is checked on its own below
SKIP_NPY_MATRIX = {"random_npy"}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data-validation")
    save(linear(), d / "lin.onnx")
    return d


def _config(d: Path, data: Path, labels: str | None = None) -> Path:
    cfg = d / f"{data.stem}-{data.suffix[1:]}.yaml"
    cfg.write_text(CONFIG.format(model=d / "lin.onnx", data=data, labels=f", labels: {labels}" if labels else ""))
    return cfg


def _fix_named(line: str) -> None:
    assert " — " in line and line.split(" — ", 1)[1].strip(), line  # the problem, then the fix


def _check(line: str, data: Path, kind: str) -> None:
    assert data.name in line, line
    for needle in EXPECT[kind]:
        assert needle in line, (needle, line)
    _fix_named(line)


@pytest.mark.parametrize("kind", ALL)
def test_validate_refuses_bad_data(work, tmp_path, kind):
    data = make_bad(kind, tmp_path)
    res = run_cli("validate", work / "lin.onnx", "--config", _config(tmp_path, data), "--against", "onnx-reference")
    _check(assert_one_line_error(res), data, kind)


@pytest.mark.parametrize("kind", ALL)
def test_predict_refuses_bad_data_and_writes_nothing(work, tmp_path, kind):
    data = make_bad(kind, tmp_path)
    out = tmp_path / "out" / "scores.parquet"
    (tmp_path / "out").mkdir()
    res = run_cli("predict", work / "lin.onnx", "--input", data, "-o", out, "--columns", "x=a,b,c,d")
    line = assert_one_line_error(res)
    _check(line, data, kind)
    assert list((tmp_path / "out").iterdir()) == []  # no scores, no temporary file left behind
    if kind in ("nan_npz", "inf_csv", "missing_cell_csv", "neg_inf_parquet"):
        assert "--allow-nan" in line, line


@pytest.mark.parametrize("kind", SUBSET)
def test_static_quantize_refuses_bad_calibration_data(work, tmp_path, kind):
    data = make_bad(kind, tmp_path)
    out = tmp_path / "q" / "model.int8.onnx"
    res = run_cli("quantize", work / "lin.onnx", "-o", out, "--config", _config(tmp_path, data), "--mode", "static")
    _check(assert_one_line_error(res), data, kind)
    assert not out.exists() and (not out.parent.exists() or list(out.parent.iterdir()) == [])


@pytest.mark.parametrize("kind", SUBSET)
def test_report_refuses_bad_evaluation_data(work, tmp_path, kind):
    data = make_bad(kind, tmp_path)
    out = tmp_path / "report"
    res = run_cli("report", work / "lin.onnx", "--config", _config(tmp_path, data), "--out", out, "--no-bench")
    _check(assert_one_line_error(res), data, kind)
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("kind", ["nan_npz", "header_only_csv", "random_csv"])
def test_report_data_flag_refuses_bad_data(work, tmp_path, kind):
    """--data without a config: the model's own input name, so a file keyed 'x' is needed for the good path."""
    data = make_bad(kind, tmp_path)
    if kind == "nan_npz":
        x = np.random.default_rng(0).normal(size=(ROWS, 4)).astype(np.float32)
        x[4, 1] = np.nan
        np.savez(data, x=x)
    res = run_cli("report", work / "lin.onnx", "--data", data, "--out", tmp_path / "rep", "--no-bench")
    line = assert_one_line_error(res)
    assert data.name in line, line
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize("kind", SUBSET)
def test_bench_refuses_bad_data(work, tmp_path, kind):
    data = make_bad(kind, tmp_path)
    res = run_cli("bench", work / "lin.onnx", "--config", _config(tmp_path, data), "--runs", "2", "--batch", "1")
    _check(assert_one_line_error(res), data, kind)


def test_random_npy_and_wrong_member_shape_without_config(work, tmp_path):
    rnd = make_bad("random_npy", tmp_path)
    line = assert_one_line_error(run_cli("validate", work / "lin.onnx", "--data", rnd, "--against", "onnx-reference"))
    _check(line, rnd, "random_npy")
    np.save(tmp_path / "wide.npy", np.ones((ROWS, 5), np.float32))
    line = assert_one_line_error(run_cli("validate", work / "lin.onnx", "--data", tmp_path / "wide.npy",
                                         "--against", "onnx-reference"))
    assert "wide.npy" in line and "[24, 5]" in line and "input 'x'" in line, line


def test_zip_of_something_else_named_npz(work, tmp_path):
    """A real zip that holds no .npy members is not 'pickled object arrays' either."""
    import zipfile

    with zipfile.ZipFile(tmp_path / "notes.npz", "w") as zf:
        zf.writestr("x.npy", "just some text, not an array")
    line = assert_one_line_error(run_cli("validate", work / "lin.onnx", "--data", tmp_path / "notes.npz",
                                         "--against", "onnx-reference"))
    assert "notes.npz" in line and "pickle" not in line and "numpy.save" in line, line


def test_nan_labels_are_refused(work, tmp_path):
    df = _frame()
    data = _npz(tmp_path / "lab.npz", df, y=np.where(np.arange(ROWS) == 6, np.nan, 1.0))
    res = run_cli("validate", work / "lin.onnx", "--config", _config(tmp_path, data, labels="y"),
                  "--against", "onnx-reference")
    line = assert_one_line_error(res)
    assert "labels" in line and "nan" in line.lower() and "row 6" in line, line


def test_good_data_still_passes(work, tmp_path):
    data = _npz(tmp_path / "good.npz", _frame())
    res = run_cli("validate", work / "lin.onnx", "--config", _config(tmp_path, data), "--against", "onnx-reference")
    assert res.code == 0, res.stderr
    res = run_cli("quantize", work / "lin.onnx", "-o", tmp_path / "q.onnx", "--config", _config(tmp_path, data),
                  "--mode", "static")
    assert res.code in (0, 1), res.stderr  # a failed check (1) is fine here: the data was accepted
    assert "Traceback" not in res.stderr


# ------------------------------------------------------------------ predict --columns on a foreign model


def _foreign(path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """y = x @ W + z for x [N, 3] and z [N, 1]: built with onnx.helper, no onnxforge metadata."""
    rng = np.random.default_rng(11)
    w = rng.normal(size=(3, 2)).astype(np.float32)
    b = rng.normal(size=2).astype(np.float32)
    g = h.make_graph(
        [h.make_node("MatMul", ["x", "W"], ["xw"]), h.make_node("Add", ["xw", "b"], ["xwb"]),
         h.make_node("Add", ["xwb", "z"], ["y"])],
        "foreign", [h.make_tensor_value_info("x", T.FLOAT, ["N", 3]), h.make_tensor_value_info("z", T.FLOAT, ["N", 1])],
        [h.make_tensor_value_info("y", T.FLOAT, ["N", 2])], [nh.from_array(w, "W"), nh.from_array(b, "b")])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], producer_name="elsewhere"), str(path))
    return path, w, b


def test_predict_columns_maps_a_table_onto_a_foreign_model(tmp_path):
    model, w, b = _foreign(tmp_path / "foreign.onnx")
    rng = np.random.default_rng(5)
    df = pd.DataFrame(rng.normal(size=(50, 5)).astype(np.float32), columns=["id", "f3", "f1", "offset", "f2"])
    df.to_csv(tmp_path / "table.csv", index=False)
    out = tmp_path / "scores.csv"
    res = run_cli("predict", model, "--input", tmp_path / "table.csv", "-o", out,
                  "--columns", "x=f1,f2,f3", "--columns", "z=offset", "--chunk-rows", "16")
    assert res.code == 0, res.stderr
    got = pd.read_csv(out)[["y_0", "y_1"]].to_numpy()
    x = df[["f1", "f2", "f3"]].to_numpy(np.float32)
    z = df[["offset"]].to_numpy(np.float32)
    np.testing.assert_allclose(got, x @ w + b + z, rtol=1e-5, atol=1e-5)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, sess.run(None, {"x": x, "z": z})[0], rtol=1e-6, atol=1e-6)


def test_predict_without_columns_says_how_to_map_them(tmp_path):
    model, _, _ = _foreign(tmp_path / "foreign.onnx")
    pd.DataFrame({"f1": [1.0], "f2": [2.0], "f3": [3.0], "offset": [0.0]}).to_csv(tmp_path / "t.csv", index=False)
    line = assert_one_line_error(run_cli("predict", model, "--input", tmp_path / "t.csv", "-o", tmp_path / "o.csv"))
    assert "t.csv" in line and "input 'x'" in line and "--columns" in line, line
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("flags, needle", [
    (["--columns", "q=f1,f2,f3"], "no input 'q'"),
    (["--columns", "x"], "INPUT=COL1,COL2"),
    (["--columns", "x=f1,,f3"], "INPUT=COL1,COL2"),
    (["--columns", "x=f1,f2,f3", "--columns", "x=f1,f2,f3"], "twice"),
    (["--columns", "x=f1,f2", "--columns", "z=offset"], "2 columns"),
    (["--columns", "x=f1,f2,nope", "--columns", "z=offset"], "['nope'] not in the data"),
])
def test_predict_columns_misuse_is_one_line(tmp_path, flags, needle):
    model, _, _ = _foreign(tmp_path / "foreign.onnx")
    pd.DataFrame({"f1": [1.0], "f2": [2.0], "f3": [3.0], "offset": [0.0]}).to_csv(tmp_path / "t.csv", index=False)
    line = assert_one_line_error(run_cli("predict", model, "--input", tmp_path / "t.csv", "-o", tmp_path / "o.csv",
                                         *flags))
    assert needle in line, line
    assert not (tmp_path / "o.csv").exists()


# ------------------------------------------------------------------ NaN policy in predict


def _nan_rows(X: np.ndarray, seed: int = 2) -> np.ndarray:
    X = X.copy()
    X[np.random.default_rng(seed).random(X.shape) < 0.3] = np.nan
    X[0, :] = np.nan  # one row missing everything
    return X


@pytest.fixture(scope="module")
def boosters(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("boosters")
    out = {}
    for name in ("xgboost_classifier", "lightgbm_regressor"):
        res = run_cli("convert", "--config", CONFIGS / f"{name}.yaml", "-o", d / f"{name}.onnx")
        assert res.code == 0, res.stderr
        out[name] = d / f"{name}.onnx"
    return out


def _meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def test_converted_boosters_are_stamped_as_accepting_missing_values(boosters):
    for path in boosters.values():
        assert _meta(path).get("onnxforge.accepts_missing") == "true", path


def test_xgboost_predict_scores_nan_rows_like_xgboost(boosters, tmp_path):
    import xgboost as xgb

    with np.load(FIXTURES / "data/wine_test.npz") as z:
        X = _nan_rows(z["x"])
    np.savez(tmp_path / "wine_nan.npz", x=X)
    out = tmp_path / "scores.npz"
    res = run_cli("predict", boosters["xgboost_classifier"], "--input", tmp_path / "wine_nan.npz", "-o", out)
    assert res.code == 0, res.stderr
    clf = xgb.XGBClassifier(n_jobs=1)
    clf.load_model(str(FIXTURES / "tabular/wine_xgb.json"))
    with np.load(out) as got:
        np.testing.assert_allclose(got["probabilities"], clf.predict_proba(X), rtol=0, atol=1e-5)
        np.testing.assert_array_equal(got["label"], clf.predict(X))


def test_lightgbm_predict_scores_nan_rows_like_lightgbm(boosters, tmp_path):
    import lightgbm as lgb

    with np.load(FIXTURES / "data/diabetes_test.npz") as z:
        X = _nan_rows(z["x"])
    np.savez(tmp_path / "diab_nan.npz", x=X)
    out = tmp_path / "scores.parquet"
    res = run_cli("predict", boosters["lightgbm_regressor"], "--input", tmp_path / "diab_nan.npz", "-o", out)
    assert res.code == 0, res.stderr
    ref = lgb.Booster(model_file=str(FIXTURES / "tabular/diabetes_lgbm.txt")).predict(X.astype(np.float64),
                                                                                      num_threads=1)
    got = pd.read_parquet(out).iloc[:, 0].to_numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)


def test_stamped_model_still_refuses_inf(boosters, tmp_path):
    with np.load(FIXTURES / "data/wine_test.npz") as z:
        X = z["x"].copy()
    X[3, 2] = np.inf
    np.savez(tmp_path / "inf.npz", x=X)
    out = tmp_path / "scores.npz"
    line = assert_one_line_error(run_cli("predict", boosters["xgboost_classifier"], "--input", tmp_path / "inf.npz",
                                         "-o", out))
    assert "inf.npz" in line and "inf" in line and "row 3" in line and "--allow-nan" in line, line
    assert not out.exists()


def test_unstamped_model_refuses_nan_unless_allow_nan(work, tmp_path):
    x = np.random.default_rng(1).normal(size=(ROWS, 4)).astype(np.float32)
    x[9, 0] = np.nan
    np.savez(tmp_path / "x.npz", x=x)
    out = tmp_path / "scores.npz"
    line = assert_one_line_error(run_cli("predict", work / "lin.onnx", "--input", tmp_path / "x.npz", "-o", out))
    assert "x.npz" in line and "NaN" in line and "row 9" in line and "--allow-nan" in line, line
    assert not out.exists()
    res = run_cli("predict", work / "lin.onnx", "--input", tmp_path / "x.npz", "-o", out, "--allow-nan")
    assert res.code == 0, res.stderr
    sess = ort.InferenceSession(str(work / "lin.onnx"), providers=["CPUExecutionProvider"])
    with np.load(out) as got:
        np.testing.assert_allclose(got["y"], sess.run(["y"], {"x": x})[0], rtol=1e-6, equal_nan=True)
        assert np.isnan(got["y"][9]).all() and np.isfinite(np.delete(got["y"], 9, axis=0)).all()


def test_nan_aware_estimators_only():
    """The stamp is decided per estimator: boosters (alone or after a StandardScaler) yes; a random forest — whose
    NaN routing skl2onnx does not reproduce — and a custom XGBoost `missing` marker no."""
    import lightgbm as lgb
    import xgboost as xgb
    from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    from onnxforge.frontends._tabular import accepts_missing

    assert accepts_missing(xgb.XGBClassifier())
    assert accepts_missing(make_pipeline(StandardScaler(), lgb.LGBMRegressor()))
    assert accepts_missing(HistGradientBoostingRegressor())
    assert not accepts_missing(RandomForestClassifier())
    assert not accepts_missing(xgb.XGBRegressor(missing=-999.0))
    assert not accepts_missing(lgb.LGBMClassifier(use_missing=False))
    assert not accepts_missing(make_pipeline(MinMaxScaler(), xgb.XGBClassifier()))


def test_nothing_reads_past_a_cheap_sniff(tmp_path, work):
    """Random bytes are refused from their first bytes, even in a large file (no parser runs over it)."""
    big = tmp_path / "big.csv"
    with open(big, "wb") as f:
        f.write(b"\x00\xff" * 1024)
        f.write(os.urandom(1 << 20))
    line = assert_one_line_error(run_cli("predict", work / "lin.onnx", "--input", big, "-o", tmp_path / "o.csv"))
    assert "not a readable .csv file" in line, line


@pytest.mark.parametrize("hidden, out", [("pandas", "x.npz"), ("pandas", "x.csv"), ("pyarrow", "x.parquet")])
def test_missing_reader_names_the_extra(tmp_path, hidden, out):
    """csv/parquet without the [data] extra: exit 2 naming it, for validate's data and predict's input and
    output alike (predict's streaming reader raised ModuleNotFoundError: exit 3)."""
    import subprocess
    import sys

    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "m.onnx")
    (tmp_path / "rows.csv").write_text("a,b\n1,2\n3,4\n")
    code = (f"import sys; sys.modules[{hidden!r}] = None; from onnxforge.cli import main; "
            f"sys.argv = ['onnxforge', 'predict', 'm.onnx', '--input', 'rows.csv', '--columns', 'x=a,b', "
            f"'--output', {out!r}]; main()")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "pip install 'onnxforge[data]'" in p.stderr and "Traceback" not in p.stderr
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.onnx", "rows.csv"]  # nothing left behind


def _int_index_model(path: Path) -> None:
    """y = float(g) + x with g an int64 input (a group index)."""
    ins = [h.make_tensor_value_info("x", T.FLOAT, ["n"]), h.make_tensor_value_info("g", T.INT64, ["n"])]
    g = h.make_graph([h.make_node("Cast", ["g"], ["gf"], to=T.FLOAT), h.make_node("Add", ["gf", "x"], ["y"])],
                     "idx", ins, [h.make_tensor_value_info("y", T.FLOAT, ["n"])])
    save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), path)


def test_fraction_in_an_integer_input_is_not_called_missing(tmp_path):
    """1.5 in an int64 column (a group index) is refused naming the fix for it (whole numbers), not the NaN advice
    (--allow-nan would not help: it is no missing value)."""
    _int_index_model(tmp_path / "idx.onnx")
    (tmp_path / "rows.csv").write_text("x,g\n0.1,0\n0.2,2\n0.3,1.5\n")
    out = tmp_path / "scores.csv"
    line = assert_one_line_error(run_cli("predict", tmp_path / "idx.onnx", "--input", tmp_path / "rows.csv",
                                         "-o", out))
    assert "'g'" in line and "1.5" in line and "row 2" in line and "whole numbers" in line, line
    assert "allow-nan" not in line and "missing" not in line, line
    assert not out.exists()


def test_missing_value_in_an_integer_input_gives_a_fix_that_works(tmp_path):
    """An empty cell in an int64 column advised --allow-nan, which then failed the same way."""
    _int_index_model(tmp_path / "idx.onnx")
    (tmp_path / "rows.csv").write_text("x,g\n0.1,0\n0.2,\n")
    out = tmp_path / "scores.csv"
    for extra in ([], ["--allow-nan"]):
        line = assert_one_line_error(run_cli("predict", tmp_path / "idx.onnx", "--input", tmp_path / "rows.csv",
                                             "-o", out, *extra))
        assert "'g'" in line and "row 1" in line and "cannot hold a missing value" in line, line
        assert "pass --allow-nan" not in line, line
        assert not out.exists()
