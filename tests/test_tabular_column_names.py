"""Column names that are not C identifiers: a Pipeline whose ColumnTransformer selects DataFrame columns by name,
fitted on load_iris(as_frame=True) ('sepal length (cm)') and load_wine(as_frame=True)
('od280/od315_of_diluted_wines'), declared with the real names. skl2onnx names its graph inputs
'sepal_length__cm_'; onnxforge gives the graph the declared names back, so convert + validate pass against
scikit-learn, and `onnxforge predict` on a CSV with the real headers and `serve` JSON records keyed by them score
what scikit-learn does. The graph-safe name + `column:` spelling is refused with the spelling that works."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import yaml
from conftest import assert_one_line_error, run_cli

CASES = ("iris", "wine")


def _fit(case: str):
    from sklearn.compose import make_column_transformer
    from sklearn.datasets import load_iris, load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    X, y = (load_iris if case == "iris" else load_wine)(return_X_y=True, as_frame=True)
    cols = list(X.columns)
    if case == "iris":  # every column by name, all numeric
        ct = make_column_transformer((StandardScaler(), cols))
    else:  # '/' in 'od280/od315_of_diluted_wines', selected by name with the others
        ct = make_column_transformer((StandardScaler(), cols[:7]), (MinMaxScaler(), cols[7:]))
    return make_pipeline(ct, LogisticRegression(max_iter=2000)).fit(X, y), X


def _write(work: Path, case: str, inputs: list[dict], name: str) -> Path:
    cfg = {"name": name, "source": {"framework": "sklearn", "path": f"{case}.skops"}, "inputs": inputs,
           "outputs": ["label", "probabilities"], "data": {"path": f"{case}.csv"},
           "stages": {"convert": {}, "validate": {}}}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _real_inputs(X: pd.DataFrame) -> list[dict]:
    return [{"name": c, "dtype": "float32", "shape": ["batch", 1]} for c in X.columns]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    import skops.io as sio

    work = tmp_path_factory.mktemp("column-names")
    for case in CASES:
        model, X = _fit(case)
        sio.dump(model, work / f"{case}.skops")
        X.to_csv(work / f"{case}.csv", index=False)
    return work


@pytest.fixture(scope="module")
def fitted() -> dict:
    return {case: _fit(case) for case in CASES}


@pytest.fixture(scope="module")
def runs(work, fitted) -> dict:
    """`onnxforge run` (convert + validate) of each case, the inputs declared with the real column names."""
    cfgs = {case: _write(work, case, _real_inputs(fitted[case][1]), case) for case in CASES}
    with ThreadPoolExecutor(max_workers=2) as pool:
        res = dict(zip(CASES, pool.map(lambda c: run_cli("run", cfgs[c], cwd=work), CASES), strict=True))
    return {case: (res[case], work / "runs" / case) for case in CASES}


def _sklearn(model, X: pd.DataFrame):
    X32 = X.astype(np.float32)  # the cells as the float32 inputs carry them
    return model.predict(X32), model.predict_proba(X32)


@pytest.mark.parametrize("case", CASES)
def test_real_column_names_convert_validate_and_name_the_graph_inputs(runs, fitted, case):
    res, run = runs[case]
    assert res.code == 0, res.stderr
    assert json.loads((run / "manifest.json").read_text())["verdict"] == "pass"
    model_path = run / "01-convert/model.onnx"
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    cols = list(fitted[case][1].columns)
    assert [i.name for i in model.graph.input] == cols  # the declared names, not skl2onnx's 'sepal_length__cm_'
    meta = {p.key: p.value for p in model.metadata_props}
    assert [s["name"] for s in json.loads(meta["onnxforge.input_spec"])] == cols

    import onnxruntime as ort

    X = fitted[case][1]
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    label, proba = sess.run(None, {c: X[[c]].to_numpy(np.float32) for c in cols})
    want_label, want_proba = _sklearn(fitted[case][0], X)
    np.testing.assert_array_equal(label, want_label)
    np.testing.assert_allclose(proba, want_proba, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_predict_reads_a_csv_with_the_real_headers(runs, work, fitted, case):
    res, run = runs[case]
    assert res.code == 0, res.stderr
    out = work / f"{case}-pred.csv"
    got = run_cli("predict", run / "01-convert/model.onnx", "--input", work / f"{case}.csv", "-o", out)
    assert got.code == 0, got.stderr
    pred = pd.read_csv(out)
    want_label, want_proba = _sklearn(*fitted[case])
    np.testing.assert_array_equal(pred["label"].to_numpy(), want_label)
    proba = pred[[f"probabilities_{k}" for k in range(want_proba.shape[1])]].to_numpy()
    np.testing.assert_allclose(proba, want_proba, rtol=0, atol=1e-5)


def test_serve_records_keyed_by_the_real_names(runs, fitted):
    from serve_http_server import Served

    res, run = runs["wine"]
    assert res.code == 0, res.stderr
    model, X = fitted["wine"]
    rows = X.iloc[::20]
    records = [{c: float(v) for c, v in r.items()} for _, r in rows.iterrows()]
    assert "od280/od315_of_diluted_wines" in records[0]
    with Served(run) as s:
        status, doc = s.json("POST", "/predict", records)
    assert status == 200, doc
    want_label, want_proba = _sklearn(model, rows)
    assert [r["label"] for r in doc["predictions"]] == want_label.tolist()
    got = [[r["probabilities"][str(c)] for c in model.classes_] for r in doc["predictions"]]  # keyed by class
    np.testing.assert_allclose(got, want_proba, rtol=0, atol=1e-5)


def test_graph_safe_name_with_column_is_refused_naming_the_real_spelling(work, fitted):
    X = fitted["iris"][1]
    inputs = _real_inputs(X)
    inputs[0] = {**inputs[0], "name": "sepal_length__cm_", "column": "sepal length (cm)"}
    res = run_cli("run", _write(work, "iris", inputs, "iris-safe"), cwd=work)
    line = assert_one_line_error(res)
    assert "'sepal_length__cm_'" in line and "name the input 'sepal length (cm)'" in line, line
    assert not (work / "runs/iris-safe/01-convert/model.onnx").exists()


def test_names_skl2onnx_would_collide_keep_their_own_inputs(tmp_path):
    """'a b' and 'a_b' both become 'a_b…' in skl2onnx, '2nd' becomes '_2nd': each graph input is still the column
    the spec names, fed its own values."""
    import skops.io as sio
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(64, 3)), columns=["a b", "a_b", "2nd"])
    y = X["a b"] * 3 - X["a_b"] + 0.5 * X["2nd"]
    model = make_pipeline(make_column_transformer((StandardScaler(), ["a b", "a_b", "2nd"])),
                          LinearRegression()).fit(X, y)
    sio.dump(model, tmp_path / "m.skops")
    X.to_csv(tmp_path / "m.csv", index=False)
    cfg = {"name": "m", "source": {"framework": "sklearn", "path": "m.skops"}, "inputs": _real_inputs(X),
           "data": {"path": "m.csv"}, "stages": {"convert": {}, "validate": {}}}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = run_cli("run", tmp_path / "m.yaml", cwd=tmp_path)
    assert res.code == 0, res.stderr
    model_path = tmp_path / "runs/m/01-convert/model.onnx"
    assert [i.name for i in onnx.load(model_path).graph.input] == ["a b", "a_b", "2nd"]

    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {c: X[[c]].to_numpy(np.float32) for c in X.columns})
    np.testing.assert_allclose(got.ravel(), model.predict(X.astype(np.float32)), rtol=1e-4, atol=1e-4)
