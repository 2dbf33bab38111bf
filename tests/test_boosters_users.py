"""Booster files the way users have them (sweep 3): a truncated LightGBM text model (an interrupted copy), LightGBM
boosting='rf' and zero_as_missing, XGBoost DART and gblinear, a truncated XGBoost JSON, an XGBoost '.model' file,
and LightGBM's 1e300 missing-value thresholds. Models are trained here on sklearn's bundled datasets; the expected
outputs are the libraries' own predict, on held-out rows, against the converted model in onnxruntime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, assert_one_line_error, run_cli


def _config(d: Path, name: str, framework: str, model: str, data: str | None = None) -> Path:
    cfg = d / f"{name}.yaml"
    body = {"name": name, "source": {"framework": framework, "path": model},
            "stages": {"convert": {}, **({"validate": {}} if data else {})}}
    if data:
        body["data"] = {"path": data}
    cfg.write_text(json.dumps(body))
    return cfg


def _onnx(d: Path, name: str, x: np.ndarray) -> np.ndarray:
    """The converted model's last output (values, or probabilities) on x, in onnxruntime."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(d / "runs" / name / "01-convert" / "model.onnx"),
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[-1]


@pytest.fixture(scope="module")
def lgb_text(tmp_path_factory) -> bytes:
    import lightgbm as lgb
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    d = tmp_path_factory.mktemp("lgb_text")
    lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1}, lgb.Dataset(X, y), 10).save_model(d / "m.txt")
    return (d / "m.txt").read_bytes()


@pytest.mark.parametrize("damage", ["cut 10%", "cut 50%", "cut in parameters", "crlf"])
def test_damaged_lightgbm_text_is_refused_not_a_native_crash(tmp_path, lgb_text, damage):
    """Was: segfault (139) or abort (134, 'terminate called without an active exception') inside LightGBM's parser,
    and `run` left runs/<name>/01-convert/ behind."""
    data = {"cut 10%": lgb_text[: len(lgb_text) // 10], "cut 50%": lgb_text[: len(lgb_text) // 2],
            "cut in parameters": lgb_text[: lgb_text.index(b"end of parameters") - 40],
            "crlf": lgb_text.replace(b"\n", b"\r\n")}[damage]
    (tmp_path / "m.txt").write_bytes(data)
    line = assert_one_line_error(run_cli("run", _config(tmp_path, "trunc", "lightgbm", "m.txt"), cwd=tmp_path))
    assert line.startswith("error: m.txt: a ") and "re-save it with booster.save_model" in line, line
    assert ("truncated" in line) == damage.startswith("cut"), line
    assert not (tmp_path / "runs").exists()
    line = assert_one_line_error(run_cli("convert", "--framework", "lightgbm", "-m", "m.txt", "-o", "m.onnx",
                                         cwd=tmp_path))
    assert "re-save it" in line and not (tmp_path / "m.onnx").exists()


def test_lightgbm_random_forest_converts_as_its_average(tmp_path):
    """Was: exit 1 'the converted graph does not compute what the model does' (onnxmltools summed the trees)."""
    import lightgbm as lgb
    from sklearn.datasets import load_breast_cancer, load_diabetes

    rf = {"boosting": "rf", "bagging_freq": 1, "bagging_fraction": 0.7, "feature_fraction": 0.8, "verbose": -1,
          "num_threads": 1}
    X, y = load_diabetes(return_X_y=True)
    Xb, yb = load_breast_cancer(return_X_y=True)
    cases = {"rf-reg": (lgb.train({**rf, "objective": "regression"}, lgb.Dataset(X[:-60], y[:-60]), 23), X),
             "rf-bin": (lgb.train({**rf, "objective": "binary"}, lgb.Dataset(Xb[:-60], yb[:-60]), 13), Xb)}
    for name, (booster, XX) in cases.items():
        booster.save_model(tmp_path / f"{name}.txt")
        x = XX[-60:].astype(np.float32)
        np.savez(tmp_path / f"{name}.npz", input=x)
        res = run_cli("run", _config(tmp_path, name, "lightgbm", f"{name}.txt", f"{name}.npz"), cwd=tmp_path)
        assert res.code == 0, (name, res.stderr[-600:])
        want = booster.predict(x)
        got = _onnx(tmp_path, name, x)
        got = got[:, 1] if got.ndim == 2 and got.shape[1] == 2 else got.reshape(want.shape)
        assert np.abs(got - want).max() <= 1e-6 * max(1.0, np.abs(want).max()), name


def test_lightgbm_zero_as_missing_is_refused_up_front(tmp_path):
    """Was: exit 1 '... report it with the model file' after the self-check caught the wrong graph."""
    import lightgbm as lgb
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    X[X > 0.04] = 0.0
    lgb.train({"objective": "regression", "zero_as_missing": True, "verbose": -1, "num_threads": 1},
              lgb.Dataset(X, y), 10).save_model(tmp_path / "zam.txt")
    np.savez(tmp_path / "zam.npz", input=X[:40].astype(np.float32))
    line = assert_one_line_error(run_cli("run", _config(tmp_path, "zam", "lightgbm", "zam.txt", "zam.npz"),
                                         cwd=tmp_path))
    assert "zero_as_missing=True" in line and "retrain without zero_as_missing" in line, line
    assert not (tmp_path / "runs").exists()


def test_lightgbm_missing_value_thresholds_do_not_warn():
    """Was: 'RuntimeWarning: overflow encountered in cast' from fix_lightgbm_thresholds (thresholds of 1e300)."""
    import lightgbm as lgb
    import onnx
    from sklearn.datasets import load_diabetes

    from onnxforge.frontends._tabular import fix_lightgbm_thresholds

    X, y = load_diabetes(return_X_y=True)
    X[X > 0.02] = np.nan  # missing where large: some splits put all numbers left of a 1e300 threshold
    booster = lgb.train({"objective": "regression", "verbose": -1, "num_threads": 1}, lgb.Dataset(X, y), 30)
    assert "1e+300" in json.dumps(booster.dump_model())  # the thresholds that overflow float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fix_lightgbm_thresholds(onnx.ModelProto(), [booster]) == {"fixed": 0, "ambiguous": 0}


def test_xgboost_dart_converts_with_its_tree_weights(tmp_path):
    """Was: exit 2 "KeyError: 'gbtree_model_param' — rerun with --debug". Trees with weight_drop ≠ 1 included."""
    import xgboost as xgb
    from sklearn.datasets import load_breast_cancer, load_diabetes

    kw = {"booster": "dart", "rate_drop": 0.3, "skip_drop": 0.0, "n_estimators": 20, "max_depth": 3,
          "random_state": 0, "n_jobs": 1}
    X, y = load_diabetes(return_X_y=True)
    Xb, yb = load_breast_cancer(return_X_y=True)
    cases = {"dart-reg": (xgb.XGBRegressor(**kw).fit(X[:-60], y[:-60]), X),
             "dart-bin": (xgb.XGBClassifier(**kw).fit(Xb[:-60], yb[:-60]), Xb)}
    for name, (model, XX) in cases.items():
        weights = json.loads(model.get_booster().save_raw("json"))["learner"]["gradient_booster"]["weight_drop"]
        assert min(weights) < 0.9  # dropout did reweight trees: the weights must reach the graph
        model.save_model(tmp_path / f"{name}.json")
        x = XX[-60:].astype(np.float32)
        np.savez(tmp_path / f"{name}.npz", input=x)
        res = run_cli("run", _config(tmp_path, name, "xgboost", f"{name}.json", f"{name}.npz"), cwd=tmp_path)
        assert res.code == 0, (name, res.stderr[-600:])
        want = model.predict_proba(x) if name == "dart-bin" else model.predict(x)
        got = _onnx(tmp_path, name, x).reshape(want.shape)
        assert np.abs(got - want).max() <= 2e-6 * max(1.0, np.abs(want).max()), name


def test_xgboost_gblinear_is_refused_naming_the_booster(tmp_path):
    import xgboost as xgb
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    xgb.XGBRegressor(booster="gblinear", n_estimators=5, n_jobs=1).fit(X, y).save_model(tmp_path / "lin.json")
    line = assert_one_line_error(run_cli("convert", "--framework", "xgboost", "-m", "lin.json", "-o", "m.onnx",
                                         cwd=tmp_path))
    assert "booster='gblinear'" in line and "retrain with booster='gbtree'" in line, line
    assert "KeyError" not in line and not (tmp_path / "m.onnx").exists()


@pytest.fixture(scope="module")
def xgb_json(tmp_path_factory) -> Path:
    import xgboost as xgb
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    d = tmp_path_factory.mktemp("xgb")
    xgb.XGBRegressor(n_estimators=5, max_depth=3, n_jobs=1).fit(X, y).save_model(d / "m.json")
    return d / "m.json"


def test_truncated_xgboost_json_gives_xgboost_first_line_only(tmp_path, xgb_json):
    """Was: the line carried XGBoost's C++ 'Stack trace: [bt] (0) /…/site-packages/xgboost/…'."""
    raw = xgb_json.read_bytes()
    (tmp_path / "t.json").write_bytes(raw[: len(raw) // 2])
    line = assert_one_line_error(run_cli("convert", "--framework", "xgboost", "-m", "t.json", "-o", "m.onnx",
                                         cwd=tmp_path))
    assert "XGBoost cannot read it (" in line and "re-save it" in line, line
    assert "Stack trace" not in line and "[bt]" not in line and "site-packages" not in line and "~" not in line, line


def test_xgboost_dot_model_file_prints_no_format_guess_warning(tmp_path, xgb_json):
    """Was: XGBoost's 'Unknown file format: model. Using JSON as a guess' UserWarning on stderr, twice. Run with
    warnings shown (the cli fixture runs with PYTHONWARNINGS=ignore)."""
    (tmp_path / "old.model").write_bytes(xgb_json.read_bytes())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    p = subprocess.run([sys.executable, "-m", "onnxforge", "convert", "--framework", "xgboost", "-m", "old.model",
                        "-o", "m.onnx"], cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True,
                       text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr[-600:]
    assert "Unknown file format" not in p.stderr and "Warning" not in p.stderr, p.stderr
