"""convert on tabular models saved the way users save them (sweep 9): parts skl2onnx/onnxmltools convert without an
error into graphs that compute something else. Each was exit 0 (or exit 1 'report it') and is now a one-line exit 2
naming the part and the fix, with nothing written. Models are trained here on sklearn's bundled datasets; where a
variant converts, the expected values are the library's own predict on held-out rows, against onnxruntime."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

NUM = ["a", "b", "c", "d", "e"]


@pytest.fixture(scope="module")
def table():
    """breast_cancer's first five columns as a DataFrame, plus a text column with a rare level; float32 numbers so
    the float32 graph inputs are the very values scikit-learn sees."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    X = X.iloc[:, :5].astype(np.float32)
    X.columns = NUM
    rng = np.random.default_rng(0)
    band = np.where(X.a > 15, "big", np.where(X.a > 12, "mid", "small"))
    X["band"] = np.where(rng.random(len(X)) > 0.03, band, "rare")
    return X.iloc[:400], y.iloc[:400], X.iloc[400:]


def _save(est, path: Path) -> list[str]:
    import skops.io as sio

    sio.dump(est, path)
    return sio.get_untrusted_types(file=path)


def _convert(tmp_path: Path, name: str, trusted: list[str], cols: list[str]):
    args = ["convert", "--framework", "sklearn", "-m", f"{name}.skops", "-o", f"{name}.onnx"]
    for c in cols:
        args += ["-i", f"{c}:{'string' if c == 'band' else 'float32'}:batch,1"]
    if trusted:
        args += ["--source-opt", f"trusted_types=[{','.join(trusted)}]"]
    return run_cli(*args, cwd=tmp_path)


def _feeds(df) -> dict[str, np.ndarray]:
    return {c: (df[c].to_numpy().astype(object) if c == "band" else df[c].to_numpy(np.float32)).reshape(-1, 1)
            for c in df.columns}


def test_isotonic_calibration_is_refused_sigmoid_converts_exactly(tmp_path, table):
    """Was exit 0 or 1 by which 32 rows convert checked: skl2onnx looks up the nearest isotonic threshold where
    scikit-learn interpolates (exit 0 on a pipeline with a text column; predict_proba off by up to 0.067)."""
    import onnxruntime as ort
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    tr, y, te = table
    for method in ("isotonic", "sigmoid"):
        est = Pipeline([("ct", ColumnTransformer([("s", StandardScaler(), NUM)])),
                        ("m", CalibratedClassifierCV(LogisticRegression(max_iter=2000), cv=3, method=method))])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(tr[NUM], y)
        res = _convert(tmp_path, method, _save(est, tmp_path / f"{method}.skops"), NUM)
        if method == "isotonic":
            line = assert_one_line_error(res)
            assert "CalibratedClassifierCV(method='isotonic')" in line and "method='sigmoid'" in line, line
            assert not (tmp_path / "isotonic.onnx").exists()
            continue
        assert res.code == 0, res.stderr
        sess = ort.InferenceSession(str(tmp_path / "sigmoid.onnx"), providers=["CPUExecutionProvider"])
        label, proba = sess.run(None, _feeds(te[NUM]))
        np.testing.assert_array_equal(label, est.predict(te[NUM]))
        np.testing.assert_allclose(proba, est.predict_proba(te[NUM]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("min_frequency", [None, 30])
def test_one_hot_infrequent_if_exist_is_refused(tmp_path, table, min_frequency):
    """Was exit 0: the ONNX OneHotEncoder fails in onnxruntime ('Unknown Category and zeros = 0') on a level not seen
    in fit, which scikit-learn encodes as the infrequent column (or zeros when nothing is infrequent)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    tr, y, te = table
    enc = OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=min_frequency)
    est = Pipeline([("ct", ColumnTransformer([("s", StandardScaler(), NUM), ("o", enc, ["band"])])),
                    ("m", LogisticRegression(max_iter=2000))]).fit(tr, y)
    unseen = te.iloc[:3].assign(band="unseen")
    assert est.predict_proba(unseen).shape == (3, 2)  # scikit-learn scores the unseen level
    res = _convert(tmp_path, "ohe", _save(est, tmp_path / "ohe.skops"), [*NUM, "band"])
    line = assert_one_line_error(res)
    assert "handle_unknown='infrequent_if_exist'" in line and "handle_unknown='ignore'" in line, line
    assert not (tmp_path / "ohe.onnx").exists()


def test_xgboost_reg_logistic_is_refused(tmp_path):
    """Was exit 1, 'the converted graph does not compute what the model does … report it': onnxmltools returns the
    raw margin of a reg:logistic model, whose predict is its sigmoid."""
    import xgboost as xgb
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    m = xgb.XGBRegressor(n_estimators=10, max_depth=3, objective="reg:logistic", nthread=1).fit(X[:400], y[:400])
    m.save_model(tmp_path / "m.json")
    assert 0 < m.predict(X[400:]).min() < m.predict(X[400:]).max() < 1
    res = run_cli("convert", "--framework", "xgboost", "-m", "m.json", "-o", "m.onnx", cwd=tmp_path)
    line = assert_one_line_error(res)
    assert "reg:logistic" in line and "binary:logistic" in line, line
    assert not (tmp_path / "m.onnx").exists()
