"""XGBoost and LightGBM frontends: native files (XGBoost JSON and UBJSON, LightGBM text; classifiers and regressors)
and an XGBoost model inside an sklearn Pipeline with StandardScaler, each through `onnxforge run` (convert +
validate) and checked again here against the library itself at batch 1 and all held-out rows. Also: the two
measured traps (StandardScaler's division, LightGBM's double thresholds) fail without our handling, opsets are
chosen automatically, and bad inputs are one line, exit 2."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import yaml
from conftest import CONFIGS, FIXTURES, assert_one_line_error, run_cli

NUMERIC = ["radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity", "concave_points",
           "symmetry", "fractal_dimension"]
CONFIG_NAMES = {"xgboost_classifier": "xgboost-classifier", "xgboost_regressor": "xgboost-regressor",
                "xgboost_pipeline": "xgboost-pipeline", "lightgbm_classifier": "lightgbm-classifier",
                "lightgbm_regressor": "lightgbm-regressor"}
BATCH1_ROWS = 16


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("boost-runs")
    with ThreadPoolExecutor(max_workers=2) as pool:
        res = dict(zip(CONFIG_NAMES, pool.map(lambda c: run_cli("run", CONFIGS / f"{c}.yaml", cwd=work),
                                              CONFIG_NAMES), strict=True))
    return {c: (res[c], work / "runs" / name) for c, name in CONFIG_NAMES.items()}


def cancer_x() -> np.ndarray:
    return pd.read_csv(FIXTURES / "data/cancer_test.csv")[NUMERIC].to_numpy(np.float32)


def npz(name: str) -> dict:
    with np.load(FIXTURES / "data" / name) as z:
        return {k: z[k] for k in z.files}


def ort_run(model, X: np.ndarray) -> tuple[dict, dict]:
    """(outputs for all rows in one batch, outputs for the first rows one at a time)."""
    import onnxruntime as ort

    src = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    full = dict(zip(names, sess.run(None, {"input": X}), strict=True))
    singles = [sess.run(None, {"input": X[i : i + 1]}) for i in range(BATCH1_ROWS)]
    return full, {n: np.concatenate([s[j] for s in singles]) for j, n in enumerate(names)}


def native_reference(config: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Held-out inputs and the library's own predictions, computed here without onnxforge."""
    import lightgbm as lgb
    import xgboost as xgb

    tab = FIXTURES / "tabular"
    if config == "xgboost_classifier":
        X = npz("wine_test.npz")["x"]
        m = xgb.XGBClassifier()
        m.load_model(tab / "wine_xgb.json")
        return X, {"label": m.predict(X), "probabilities": m.predict_proba(X)}
    if config == "xgboost_regressor":
        X = npz("diabetes_test.npz")["x"]
        booster = xgb.Booster(model_file=str(tab / "diabetes_xgb.ubj"))
        return X, {"prediction": booster.predict(xgb.DMatrix(X))}
    if config == "xgboost_pipeline":
        import skops.io as sio

        X = cancer_x()
        path = tab / "cancer_xgb_pipeline.skops"
        pipe = sio.load(path, trusted=sio.get_untrusted_types(file=path))
        frame = pd.DataFrame(X, columns=NUMERIC)
        return X, {"label": pipe.predict(frame), "probabilities": pipe.predict_proba(frame)}
    if config == "lightgbm_classifier":
        X = cancer_x()
        p = lgb.Booster(model_file=str(tab / "cancer_lgbm.txt")).predict(X)
        return X, {"label": (p > 0.5).astype(np.int64), "probabilities": np.column_stack([1 - p, p])}
    X = npz("diabetes_test.npz")["x"]
    return X, {"prediction": lgb.Booster(model_file=str(tab / "diabetes_lgbm.txt")).predict(X)}


@pytest.mark.parametrize("config", list(CONFIG_NAMES))
def test_run_converts_and_matches_native(runs, config):
    res, run_path = runs[config]
    assert res.code == 0, res.stderr + res.stdout
    result = json.loads((run_path / "02-validate/validation.json").read_text())
    assert result["verdict"] == "pass"
    framework = config.split("_")[0]
    assert result["reference"] == f"{framework} native predict"
    X, ref = native_reference(config)
    assert result["rows"] == len(X)
    for c in result["comparisons"]:
        assert c["pass"] and c["batch"] in (1, len(X)), c
    assert {(c["output"], c["batch"]) for c in result["comparisons"]} == {(o, b) for o in ref for b in (1, len(X))}

    model_path = run_path / "01-convert/model.onnx"
    model = onnx.load(str(model_path))
    onnx.checker.check_model(model, full_check=True)
    full, one = ort_run(model_path, X)
    for name, want in ref.items():
        for got, rows in ((full[name], len(X)), (one[name], BATCH1_ROWS)):
            if name == "label":
                np.testing.assert_array_equal(got, want[:rows])
            elif name == "probabilities":
                np.testing.assert_allclose(got, want[:rows], rtol=0, atol=1e-5)
            else:  # regressors
                np.testing.assert_allclose(got.reshape(-1), want[:rows], rtol=1e-4, atol=1e-4)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["onnxforge.source.framework"] == framework
    opsets = json.loads(meta["onnxforge.opsets"])
    assert opsets["ai.onnx"] <= 15 and opsets["ai.onnx.ml"] <= 3  # onnxmltools' caps, chosen automatically
    if "label" in ref:
        assert meta["onnxforge.task"] == "classifier"
        assert json.loads(meta["onnxforge.classes"]) == list(range(ref["probabilities"].shape[1]))
    else:
        assert meta["onnxforge.task"] == "regressor"


# ------------------------------------------------------------------ the traps, shown to bite without the fix


def frontend_export(config: dict, tmp_path: Path):
    from onnxforge.config import parse_config
    from onnxforge.registry import frontend

    cfg = parse_config(config, tmp_path / "cfg.yaml")
    fe = frontend(cfg.source.framework)
    native = fe.load(cfg)
    return fe, cfg, native, fe.export(native, cfg, None, tmp_path)


def test_standard_scaler_divides_like_sklearn(tmp_path):
    """skl2onnx's default scaler multiplies by 1/scale; a tree split then flips for some rows. Ours divides."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    cfg = yaml.safe_load((CONFIGS / "xgboost_pipeline.yaml").read_text())
    cfg["source"]["path"] = str(FIXTURES / "tabular/cancer_xgb_pipeline.skops")
    fe, _, pipe, ours = frontend_export({k: cfg[k] for k in ("name", "source", "inputs")}, tmp_path)
    X = pd.concat([pd.read_csv(FIXTURES / f"data/cancer_{s}.csv") for s in ("train", "test")])[NUMERIC]
    X = X.to_numpy(np.float32)
    want = pipe.predict_proba(pd.DataFrame(X, columns=NUMERIC))
    default = convert_sklearn(pipe, initial_types=[("input", FloatTensorType([None, 10]))],
                              options={id(pipe.steps[-1][1]): {"zipmap": False}},
                              target_opset={"": 15, "ai.onnx.ml": 2})
    assert np.abs(ort_run(default, X)[0]["probabilities"] - want).max() > 1e-3  # the trap is real here
    assert np.abs(ort_run(ours, X)[0]["probabilities"] - want).max() <= 1e-5


def test_lightgbm_double_thresholds_exact_for_float32(tmp_path):
    """Adjacent float32 values with different labels: LightGBM's double thresholds between them round up to the
    upper value in float32. Plain onnxmltools output flips those rows; ours does not."""
    import lightgbm as lgb
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 1500).astype(np.float32)
    x0 = np.concatenate([base, np.nextafter(base, np.float32(2))])
    X = np.column_stack([x0, rng.uniform(size=x0.size).astype(np.float32)])
    y = np.repeat([0, 1], base.size)
    model = lgb.LGBMClassifier(n_estimators=5, num_leaves=64, min_child_samples=1, min_data_in_bin=1,
                               max_bin=5000, n_jobs=1, verbose=-1, deterministic=True).fit(X, y)
    model.booster_.save_model(tmp_path / "adjacent.txt")
    want = model.booster_.predict(X) > 0.5
    plain = onnxmltools.convert_lightgbm(model.booster_, initial_types=[("input", FloatTensorType([None, 2]))],
                                         zipmap=False, target_opset=15)
    assert (ort_run(plain, X)[0]["label"] != want).sum() > 0  # the trap is real here
    cfg = {"name": "adjacent", "source": {"framework": "lightgbm", "path": str(tmp_path / "adjacent.txt")},
           "inputs": [{"name": "input", "shape": ["batch", 2]}]}
    fe, cfg, native, ours = frontend_export(cfg, tmp_path)
    full, _ = ort_run(ours, X)
    np.testing.assert_array_equal(full["label"], want)
    np.testing.assert_array_equal(full["label"], fe.predict(native, {"input": X}, cfg)["label"])
    meta = {p.key: p.value for p in ours.metadata_props}
    assert json.loads(meta["onnxforge.convert.lightgbm_thresholds"])["fixed"] > 0


def _train_other(kind: str, path: Path):
    """Small native models with objectives the fixtures do not cover, trained here; returns (X, library predict)."""
    import lightgbm as lgb
    import xgboost as xgb
    from sklearn.datasets import load_breast_cancer, load_wine

    X, y = (load_breast_cancer if kind == "xgb-binary" else load_wine)(return_X_y=True)
    X = X.astype(np.float32)
    if kind == "xgb-binary":
        xgb.XGBClassifier(n_estimators=8, max_depth=3, n_jobs=1).fit(X, y).save_model(path)
    elif kind == "xgb-softmax":  # the raw Booster API: no sklearn attributes in the file
        xgb.train({"objective": "multi:softmax", "num_class": 3, "max_depth": 2, "nthread": 1},
                  xgb.DMatrix(X, label=y), 6).save_model(path)
    else:
        lgb.LGBMClassifier(n_estimators=8, num_leaves=6, n_jobs=1, verbose=-1).fit(X, y).booster_.save_model(path)
    if kind.startswith("xgb"):
        m = xgb.XGBClassifier()
        m.load_model(path)
        return X, m.predict(X), m.predict_proba(X)
    proba = lgb.Booster(model_file=str(path)).predict(X)
    return X, proba.argmax(1), proba


@pytest.mark.parametrize("kind, framework, file", [("xgb-binary", "xgboost", "m.json"),
                                                    ("xgb-softmax", "xgboost", "m.ubj"),
                                                    ("lgbm-multiclass", "lightgbm", "m.txt")])
def test_other_native_objectives(tmp_path, kind, framework, file):
    X, labels, proba = _train_other(kind, tmp_path / file)
    cfg = {"name": kind, "source": {"framework": framework, "path": str(tmp_path / file)}}  # inputs inferred
    *_, model = frontend_export(cfg, tmp_path)
    full, one = ort_run(model, X)
    np.testing.assert_array_equal(full["label"], labels)
    np.testing.assert_allclose(full["probabilities"], proba, rtol=0, atol=1e-5)
    np.testing.assert_allclose(one["probabilities"], proba[:BATCH1_ROWS], rtol=0, atol=1e-5)


def test_lightgbm_inside_pipeline(tmp_path):
    import lightgbm as lgb
    import skops.io as sio
    from sklearn.datasets import load_diabetes
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_diabetes(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), lgb.LGBMRegressor(n_estimators=10, num_leaves=8, n_jobs=1, verbose=-1))
    sio.dump(pipe.fit(X.astype(np.float32), y), tmp_path / "pipe.skops")
    test_x = npz("diabetes_test.npz")["x"]
    cfg = {"name": "lgbm-pipe", "source": {"framework": "lightgbm", "path": str(tmp_path / "pipe.skops")},
           "inputs": [{"name": "input", "shape": ["batch", 10]}]}
    _, _, _, model = frontend_export(cfg, tmp_path)
    full, one = ort_run(model, test_x)
    np.testing.assert_allclose(full["variable"].ravel(), pipe.predict(test_x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(one["variable"].ravel(), pipe.predict(test_x[:BATCH1_ROWS]), rtol=1e-4, atol=1e-4)


def test_opset_above_the_booster_cap_is_upgraded(tmp_path, cli):
    out = tmp_path / "reg18.onnx"
    res = cli("convert", "--framework", "lightgbm", "-m", FIXTURES / "tabular/diabetes_lgbm.txt", "--opset", "18",
              "-o", out)
    assert res.code == 0, res.stderr
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    meta = {p.key: p.value for p in model.metadata_props}
    assert int(meta["onnxforge.convert.opset_upgraded_from"]) <= 15
    X = npz("diabetes_test.npz")["x"]
    import lightgbm as lgb

    want = lgb.Booster(model_file=str(FIXTURES / "tabular/diabetes_lgbm.txt")).predict(X)
    np.testing.assert_allclose(ort_run(out, X)[0]["variable"].ravel(), want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ bad inputs: one line, exit 2


@pytest.mark.parametrize("framework, fixture, needle", [
    ("lightgbm", "wine_xgb.json", "is an XGBoost JSON model, not a LightGBM model"),
    ("lightgbm", "diabetes_xgb.ubj", "is an XGBoost UBJSON model"),
    ("xgboost", "cancer_lgbm.txt", "is a LightGBM text model, not an XGBoost model"),
    ("xgboost", "cancer_pipeline.skops", "holds no XGBoost model"),
    ("lightgbm", "cancer_xgb_pipeline.skops", "holds no LightGBM model"),
])
def test_wrong_framework_for_file(tmp_path, cli, framework, fixture, needle):
    res = cli("convert", "--framework", framework, "-m", FIXTURES / "tabular" / fixture, "-o", tmp_path / "x.onnx")
    line = assert_one_line_error(res)
    assert needle in line and "use source.framework:" in line
    assert not (tmp_path / "x.onnx").exists()


def test_pickle_refused_without_trust_pickle(tmp_path, cli):
    import joblib
    import xgboost as xgb

    m = xgb.XGBRegressor()
    m.load_model(FIXTURES / "tabular/diabetes_xgb.ubj")
    joblib.dump(m, tmp_path / "reg.pkl")
    line = assert_one_line_error(cli("convert", "--framework", "xgboost", "-m", tmp_path / "reg.pkl",
                                     "-o", tmp_path / "x.onnx"))
    assert "reg.pkl is a pickle/joblib file" in line and "trust_pickle: true" in line


def spec_config(config: str, inputs: list[dict]) -> dict:
    cfg = yaml.safe_load((CONFIGS / f"{config}.yaml").read_text())
    cfg["source"]["path"] = str((CONFIGS / cfg["source"]["path"]).resolve())
    cfg["data"]["path"] = str((CONFIGS / cfg["data"]["path"]).resolve())
    cfg["inputs"] = inputs
    return cfg


def test_input_spec_not_matching_model_cli(tmp_path):
    cfg = spec_config("xgboost_classifier", [{"name": "input", "shape": ["batch", 12], "column": "x"}])
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    line = assert_one_line_error(run_cli("run", tmp_path / "c.yaml", cwd=tmp_path))
    assert "has 12 features" in line and "expects 13" in line


# the same check in-process for the other variants (the CLI's one-line, exit-2 rendering is shown above)
@pytest.mark.parametrize("config, inputs, needle", [
    ("lightgbm_regressor", [{"name": "input", "shape": ["batch", 11], "column": "x"}], "expects 10"),
    ("lightgbm_classifier", [{"name": "input", "dtype": "string", "shape": ["batch", 10], "columns": NUMERIC}],
     "is a string input"),
    ("xgboost_pipeline", [{"name": "input", "shape": ["batch", 10], "columns": NUMERIC[::-1]}],
     "differ from the model's feature names"),
    ("xgboost_regressor", [{"name": "input", "shape": ["batch", 2, 5], "column": "x"}], "2-D inputs"),
])
def test_input_spec_not_matching_model(tmp_path, config, inputs, needle):
    from onnxforge.errors import UserError

    cfg = spec_config(config, inputs)
    with pytest.raises(UserError) as err:
        frontend_export({k: cfg[k] for k in ("name", "source", "inputs")}, tmp_path)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_task_contradicting_objective(tmp_path, cli):
    res = cli("convert", "--framework", "xgboost", "-m", FIXTURES / "tabular/wine_xgb.json", "--source-opt",
              "task=regressor", "-o", tmp_path / "x.onnx")
    line = assert_one_line_error(res)
    assert "multi:softprob" in line and "task: classifier" in line
