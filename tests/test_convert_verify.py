"""convert verifies its artifact before writing it (issue #13 item 1), and validate names shape/dtype mismatches as
such (item 2). Real conversions, real onnxruntime: the mis-declared models are real converter output (onnxmltools'
own XGBoost converter on a three-target regressor declares [N, 1] and returns (N, 3)) or a real converted model whose
declared output dim was edited in the graph — nothing is mocked."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import CONFIGS, FIXTURES, assert_one_line_error, run_cli
from onnx import TensorProto, helper


@pytest.fixture(scope="module")
def three_targets(tmp_path_factory) -> dict:
    """An XGBRegressor with three targets (one tree per target), saved as users save it, the raw onnxmltools
    conversion of it (the converter's bug: declares [N, 1]) and held-out rows."""
    import xgboost as xgb
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType
    from sklearn.datasets import make_regression

    d = tmp_path_factory.mktemp("three")
    X, y = make_regression(n_samples=240, n_features=6, n_targets=3, noise=1.0, random_state=0)
    X = X.astype(np.float32)
    m = xgb.XGBRegressor(n_estimators=8, max_depth=3, tree_method="hist", multi_strategy="one_output_per_tree",
                         n_jobs=1, random_state=0).fit(X[:200], y[:200])
    m.save_model(d / "three.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = convert_xgboost(m, initial_types=[("input", FloatTensorType([None, 6]))], target_opset=15)
    onnx.save(raw, d / "raw.onnx")
    np.savez(d / "rows.npz", input=X[200:], y=y[200:].astype(np.float32))
    return {"dir": d, "model": d / "three.json", "raw": d / "raw.onnx", "rows": d / "rows.npz", "x": X[200:]}


def _sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def test_convert_refuses_a_misdeclared_output(three_targets, tmp_path):
    """The real onnxmltools output given to convert (framework onnx): exit 1, one line naming the output and both
    shapes, and nothing at the -o path (nor a temporary file beside it)."""
    import onnxruntime as ort

    # the premise, measured: onnxruntime returns three columns for an output the converter declared as one
    raw = onnx.load(three_targets["raw"])
    assert raw.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 1
    got = ort.InferenceSession(str(three_targets["raw"]), providers=["CPUExecutionProvider"]).run(
        None, {"input": three_targets["x"]})[0]
    assert got.shape == (40, 3)
    out = tmp_path / "out" / "m.onnx"
    res = run_cli("convert", "--framework", "onnx", "--model", three_targets["raw"], "-o", out)
    line = assert_one_line_error(res, 1)
    assert "output 'variable' declares [batch, 1]" in line or "output 'variable' declares [?, 1]" in line, line
    assert "onnxruntime returns (32, 3)" in line and "multi-output" in line, line
    assert not out.exists() and not out.parent.exists(), list(out.parent.glob("*")) if out.parent.exists() else None


def test_convert_refuses_an_edited_declared_dim(tmp_path):
    """A correct conversion (the wine classifier: probabilities [batch, 3]) with its declared probability dim edited
    to 2 in the graph: convert from that file refuses it, from the user's own data rows."""
    ok = tmp_path / "wine.onnx"
    res = run_cli("convert", "--config", CONFIGS / "xgboost_classifier.yaml", "-o", ok)
    assert res.code == 0, res.stderr
    m = onnx.load(ok)
    out = next(o for o in m.graph.output if o.name == "probabilities")
    out.type.tensor_type.shape.dim[1].dim_value = 2
    onnx.save(m, tmp_path / "edited.onnx")
    cfg = tmp_path / "edited.yaml"
    cfg.write_text(json.dumps({"name": "edited", "source": {"framework": "onnx", "path": "edited.onnx"},
                               "data": {"path": str(FIXTURES / "data/wine_test.npz")},
                               "inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", 13],
                                           "column": "x"}], "stages": {"convert": {}}}))
    dest = tmp_path / "again.onnx"
    res = run_cli("convert", "--config", cfg, "-o", dest)
    line = assert_one_line_error(res, 1)
    assert "output 'probabilities' declares [batch, 2] but onnxruntime returns (32, 3)" in line, line
    assert "wine_test.npz" in line, line
    assert not dest.exists()


def test_verification_is_recorded_and_leaves_the_bytes_alone(tmp_path):
    """The summary says what was verified (rows, where they came from, the reference, max errors); the artifact is
    byte-identical with the check off."""
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    res = run_cli("convert", "--config", CONFIGS / "xgboost_regressor.yaml", "-o", a, "--json")
    assert res.code == 0, res.stderr
    v = res.json()["result"]["summary"]["verified"]
    # a tabular model is checked on up to 1024 rows: here every row of the data file (111)
    assert v["checked"] and v["values"] and v["rows"] == 111 and v["data"].endswith("diabetes_test.npz"), v
    assert v["reference"] == "xgboost native predict"
    pred = v["outputs"]["prediction"]
    assert pred["shape"] == [111, 1] and pred["pass"] and 0 < pred["max_abs"] < 1e-3, pred
    res = run_cli("convert", "--config", CONFIGS / "xgboost_regressor.yaml", "-o", b, "--set", "verify_rows=0",
                  "--json")
    assert res.code == 0, res.stderr
    assert res.json()["result"]["summary"]["verified"] == {"checked": False, "reason": "convert.verify_rows is 0"}
    assert any("values were not checked" in w for w in res.json()["warnings"]), res.json()["warnings"]
    assert _sha(a) == _sha(b)


def test_verification_without_data_synthesizes_the_models_inputs(tmp_path):
    res = run_cli("convert", "--framework", "lightgbm", "--model", FIXTURES / "tabular/cancer_lgbm.txt", "-o",
                  tmp_path / "m.onnx", "--json")
    assert res.code == 0, res.stderr
    v = res.json()["result"]["summary"]["verified"]
    assert v["checked"] and v["data"] == "synthetic" and v["rows"] == 1024, v
    assert v["outputs"]["label"]["pass"] and v["outputs"]["probabilities"]["shape"] == [1024, 2], v


def test_run_convert_failure_leaves_no_model_in_the_stage_folder(three_targets, tmp_path):
    cfg = tmp_path / "raw.yaml"
    cfg.write_text(json.dumps({"name": "raw", "source": {"framework": "onnx", "path": str(three_targets["raw"])},
                               "data": {"path": str(three_targets["rows"])},
                               "stages": {"convert": {}, "validate": {}}}))
    res = run_cli("run", cfg, cwd=tmp_path)
    assert res.code == 1, res.stderr
    assert "declares [?, 1] but onnxruntime returns (32, 3)" in res.stderr, res.stderr
    assert not list((tmp_path / "runs/raw").glob("*-convert/*.onnx"))
    man = json.loads((tmp_path / "runs/raw/manifest.json").read_text())
    conv = next(s for s in man["stages"] if s["name"] == "convert")
    assert conv["verdict"] == "fail" and conv["summary"]["failing"][0]["kind"] == "shape", conv


# ------------------------------------------------------------------ validate: shape and dtype mismatches as such


def test_validate_names_a_misdeclared_output(three_targets):
    """validate the raw converter output against XGBoost itself: the verdict starts with the shape mismatch, not a
    tolerance figure (before: 'max_abs=… (needs atol≥…)' only)."""
    cfg = three_targets["dir"] / "validate.yaml"
    cfg.write_text(json.dumps({"name": "three", "source": {"framework": "xgboost", "path": "three.json"},
                               "data": {"path": "rows.npz"},
                               "inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", 6]}],
                               "stages": {"validate": {"batch_sizes": [0]}}}))
    res = run_cli("validate", three_targets["raw"], "--config", cfg)
    line = assert_one_line_error(res, 1)
    assert "variable@batch40: shape mismatch: declared [?, 1] vs onnxruntime (40, 3)" in line, line


def _graph(path: Path, reduce: bool) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    if reduce:
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])
        axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
        node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)
        g = helper.make_graph([node], "g", [x], [y], [axes])
    else:
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
        g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_validate_shape_mismatch_against_a_reference(tmp_path):
    """ONNX (64, 3) against a reference returning (64,): 'shape mismatch: onnx (64, 3) vs reference (64,)'."""
    _graph(tmp_path / "wide.onnx", reduce=False)
    _graph(tmp_path / "sum.onnx", reduce=True)
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((64, 3), dtype=np.float32))
    res = run_cli("validate", tmp_path / "wide.onnx", "--against", tmp_path / "sum.onnx", "--data",
                  tmp_path / "d.npz", "--set", "batch_sizes=[0]")
    line = assert_one_line_error(res, 1)
    assert "y@batch64: shape mismatch: onnx (64, 3) vs reference (64,)" in line, line
    assert "atol" not in line


def test_compare_reports_shapes_and_types_not_tolerances():
    from onnxforge.compare import compare, conforms

    c = compare("y", np.zeros(64), np.ones((64, 3), np.float32), 1e-3, 1e-5)
    assert c["kind"] == "shape" and c["reason"] == "shape mismatch: onnx (64, 3) vs reference (64,)"
    c = compare("y", np.zeros(64), np.ones((64, 1), np.float32), 1e-3, 1e-5)  # (N,) vs (N, 1): same prediction
    assert c["kind"] == "float" and not c["pass"]
    c = compare("label", np.array(["a", "b"]), np.array([0, 1], np.int64), 0, 0)
    assert c["kind"] == "dtype" and c["reason"] == "dtype mismatch: onnx int64 vs reference <U1", c
    c = conforms("v", (TensorProto.FLOAT, ["batch", 1]), np.zeros((64, 3), np.float32))
    assert not c["pass"] and c["reason"] == "shape mismatch: declared [batch, 1] vs onnxruntime (64, 3)"
    assert conforms("v", (TensorProto.FLOAT, [None, "n", 3]), np.zeros((5, 7, 3), np.float32))["pass"]
    c = conforms("v", (TensorProto.DOUBLE, ["batch"]), np.zeros(4, np.float32))
    assert not c["pass"] and c["kind"] == "dtype", c


def _nan_forest(tmp_path) -> Path:
    """A RandomForest fitted on rows with NaN (sklearn ≥ 1.4 routes NaN per split; skl2onnx's graph does not)."""
    import skops.io as sio
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    X, y = load_breast_cancer(return_X_y=True)
    X = X[:, :6].copy()
    X[np.random.default_rng(0).random(X.shape) < 0.3] = np.nan
    path = tmp_path / "forest.skops"
    sio.dump(RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0).fit(X, y), path)
    return path


@pytest.mark.parametrize("stamped", [False, True])
def test_synthesized_check_covers_missing_values_where_the_model_is_stamped_for_them(tmp_path, monkeypatch, stamped):
    """A model stamped as scoring NaN natively is verified on synthesized rows with NaN cells too. The forest's
    converted graph routes NaN differently from sklearn: unstamped (the truth) it converts — NaN never reaches it,
    predict/validate refuse NaN rows —; pretended NaN-aware it must be refused, which a complete-rows-only check
    would have let through."""
    from onnxforge.errors import CheckFailed
    from onnxforge.frontends import _tabular
    from onnxforge.standalone import build_config, run_alone

    if stamped:
        monkeypatch.setattr(_tabular, "NAN_AWARE", _tabular.NAN_AWARE | {("sklearn", "RandomForestClassifier"),
                                                                          ("sklearn", "DecisionTreeClassifier")})
    path, out = _nan_forest(tmp_path), tmp_path / "m.onnx"
    cfg = build_config("convert", None, None, {}, source={"framework": "sklearn", "path": str(path)},
                       top={"name": "m"})
    if not stamped:
        result, _ = run_alone("convert", cfg, None, out)
        v = result.summary["verified"]
        assert v["data"] == "synthetic" and v["values"], v
        assert out.exists()
        return
    with pytest.raises(CheckFailed, match=r"output '(label|probabilities)' differs .* synthetic rows"):
        run_alone("convert", cfg, None, out)
    assert not out.exists()
