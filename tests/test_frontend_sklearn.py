"""scikit-learn frontend: the mixed-type Pipeline (ColumnTransformer + OneHotEncoder on a string and an int64 column)
and the RandomForest, each run through `onnxforge run` (convert + validate) and checked again here against
scikit-learn itself with onnxruntime, at batch 1 and all held-out rows. Bad inputs: one line, exit 2."""

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
CONFIG_NAMES = {"sklearn_pipeline": "sklearn-pipeline", "sklearn_forest": "sklearn-forest"}
BATCH1_ROWS = 16


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Run every sklearn config once, concurrently, into a scratch working directory."""
    work = tmp_path_factory.mktemp("sk-runs")
    with ThreadPoolExecutor(max_workers=2) as pool:
        res = dict(zip(CONFIG_NAMES, pool.map(lambda c: run_cli("run", CONFIGS / f"{c}.yaml", cwd=work),
                                              CONFIG_NAMES), strict=True))
    return {c: (res[c], work / "runs" / name) for c, name in CONFIG_NAMES.items()}


def load_skops(name: str):
    import skops.io as sio

    path = FIXTURES / "tabular" / f"{name}.skops"
    return sio.load(path, trusted=sio.get_untrusted_types(file=path))


def held_out():
    return pd.read_csv(FIXTURES / "data/cancer_test.csv")


def ort_outputs(model_path: Path, feeds: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """(outputs for all rows in one batch, outputs for the first rows one at a time)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    full = dict(zip(names, sess.run(None, feeds), strict=True))
    singles = [sess.run(None, {k: v[i : i + 1] for k, v in feeds.items()}) for i in range(BATCH1_ROWS)]
    one = {n: np.concatenate([s[j] for s in singles]) for j, n in enumerate(names)}
    return full, one


def check_validation(run_path: Path, outputs: list[str]) -> dict:
    manifest = json.loads((run_path / "manifest.json").read_text())
    assert manifest["verdict"] == "pass"
    result = json.loads((run_path / "02-validate/validation.json").read_text())
    assert result["verdict"] == "pass" and result["reference"] == "sklearn native predict"
    rows = result["rows"]
    for out in outputs:
        cs = {c["batch"]: c for c in result["comparisons"] if c["output"] == out}
        assert set(cs) == {1, rows}, (out, cs.keys())  # batch 1 and all rows in one batch
        for c in cs.values():
            assert c["pass"], c
            if c["kind"] == "label":
                assert c["flips"] == 0
            else:
                assert c["max_abs"] <= 1e-5
    return result


@pytest.mark.parametrize("config", list(CONFIG_NAMES))
def test_run_converts_and_validates(runs, config):
    res, run_path = runs[config]
    assert res.code == 0, res.stderr + res.stdout
    check_validation(run_path, ["label", "probabilities"])
    model = onnx.load(str(run_path / "01-convert/model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert not [n for n in model.graph.node if n.op_type == "ZipMap"]  # probabilities are a plain tensor


def test_pipeline_encodes_categories_in_graph_and_matches_sklearn(runs):
    _, run_path = runs["sklearn_pipeline"]
    model_path = run_path / "01-convert/model.onnx"
    model = onnx.load(str(model_path))
    assert [i.name for i in model.graph.input] == [*NUMERIC, "size_band", "grade"]
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert types["size_band"] == onnx.TensorProto.STRING and types["grade"] == onnx.TensorProto.INT64
    assert "OneHotEncoder" in {n.op_type for n in model.graph.node}
    table = held_out()
    feeds = {c: table[c].to_numpy(np.float32).reshape(-1, 1) for c in NUMERIC}
    feeds["size_band"] = table["size_band"].to_numpy().astype(str).astype(object).reshape(-1, 1)
    feeds["grade"] = table["grade"].to_numpy(np.int64).reshape(-1, 1)
    full, one = ort_outputs(model_path, feeds)
    pipe = load_skops("cancer_pipeline")
    frame = pd.DataFrame({c: feeds[c][:, 0] for c in NUMERIC} | {
        "size_band": table["size_band"].astype(str), "grade": feeds["grade"][:, 0]})
    labels, proba = pipe.predict(frame), pipe.predict_proba(frame)
    assert set(labels) == {"benign", "malignant"}
    np.testing.assert_array_equal(full["label"], labels)
    np.testing.assert_allclose(full["probabilities"], proba, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(one["label"], labels[:BATCH1_ROWS])
    np.testing.assert_allclose(one["probabilities"], proba[:BATCH1_ROWS], rtol=0, atol=1e-5)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["onnxforge.classes"]) == list(pipe.classes_)
    assert meta["onnxforge.source.framework"] == "sklearn" and meta["onnxforge.task"] == "classifier"
    assert json.loads(meta["onnxforge.opsets"])["ai.onnx"] == json.loads(meta["onnxforge.opset"])


def test_forest_matrix_input_matches_sklearn(runs):
    _, run_path = runs["sklearn_forest"]
    model_path = run_path / "01-convert/model.onnx"
    X = held_out()[NUMERIC].to_numpy(np.float32)
    full, one = ort_outputs(model_path, {"input": X})
    forest = load_skops("cancer_forest")
    np.testing.assert_array_equal(full["label"], forest.predict(X))
    np.testing.assert_allclose(full["probabilities"], forest.predict_proba(X), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(one["label"], forest.predict(X[:BATCH1_ROWS]))
    meta = {p.key: p.value for p in onnx.load(str(model_path)).metadata_props}
    assert json.loads(meta["onnxforge.classes"]) == [0, 1]


# ------------------------------------------------------------------ bad inputs: one line, exit 2


def write_config(tmp_path: Path, base: str, **changes) -> Path:
    """A copy of configs/<base>.yaml with absolute paths and some keys replaced."""
    cfg = yaml.safe_load((CONFIGS / f"{base}.yaml").read_text())
    cfg["source"]["path"] = str((CONFIGS / cfg["source"]["path"]).resolve())
    cfg["data"] = {"path": str((CONFIGS / cfg["data"]["path"]).resolve()), "labels": cfg["data"]["labels"]}
    for key, value in changes.items():
        if key.startswith("source_"):
            cfg["source"][key.removeprefix("source_")] = value
        else:
            cfg[key] = value
    path = tmp_path / f"{base}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def pickled(tmp_path_factory) -> Path:
    import joblib

    path = tmp_path_factory.mktemp("pickles") / "forest.joblib"
    joblib.dump(load_skops("cancer_forest"), path)
    return path


def test_pickle_refused_without_trust_pickle(tmp_path, pickled):
    res = run_cli("run", write_config(tmp_path, "sklearn_forest", source_path=str(pickled)), cwd=tmp_path)
    line = assert_one_line_error(res)
    assert "forest.joblib" in line and "trust_pickle: true" in line
    assert not (tmp_path / "runs/sklearn-forest/01-convert/model.onnx").exists()


def test_pickle_loads_with_trust_pickle(tmp_path, pickled):
    res = run_cli("run", write_config(tmp_path, "sklearn_forest", source_path=str(pickled), source_trust_pickle=True),
                  cwd=tmp_path)
    assert res.code == 0, res.stderr
    check_validation(tmp_path / "runs/sklearn-forest", ["label", "probabilities"])


def test_untrusted_skops_type_refused(tmp_path, cli):
    import operator

    import skops.io as sio
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    path = tmp_path / "func.skops"
    sio.dump(make_pipeline(FunctionTransformer(operator.neg), load_skops("cancer_forest")), path)
    line = assert_one_line_error(cli("convert", "--framework", "sklearn", "-m", path, "-o", tmp_path / "x.onnx"))
    assert "operator.neg" in line and "trusted_types" in line
    assert not (tmp_path / "x.onnx").exists()


def test_wrong_framework_file(tmp_path, cli):
    res = cli("convert", "--framework", "sklearn", "-m", FIXTURES / "tabular/wine_xgb.json", "-o", tmp_path / "x.onnx")
    line = assert_one_line_error(res)
    assert "XGBoost JSON model" in line and "framework: xgboost" in line


def test_input_spec_not_matching_pipeline_cli(tmp_path):
    base = yaml.safe_load((CONFIGS / "sklearn_pipeline.yaml").read_text())
    res = run_cli("run", write_config(tmp_path, "sklearn_pipeline", inputs=base["inputs"][:-1]), cwd=tmp_path)
    line = assert_one_line_error(res)
    assert "missing ['grade']" in line and "fix inputs:" in line
    assert not (tmp_path / "runs/sklearn-pipeline/01-convert/model.onnx").exists()


def convert_in_process(tmp_path: Path, base: str, inputs: list[dict]):
    from onnxforge.config import parse_config
    from onnxforge.registry import frontend

    cfg = yaml.safe_load((CONFIGS / f"{base}.yaml").read_text())
    cfg["source"]["path"] = str((CONFIGS / cfg["source"]["path"]).resolve())
    cfg = parse_config({"name": "x", "source": cfg["source"], "inputs": inputs}, tmp_path / "c.yaml")
    fe = frontend("sklearn")
    return fe.export(fe.load(cfg), cfg, None, tmp_path)


# the same check in-process for the other variants (the CLI's one-line, exit-2 rendering is shown above)
@pytest.mark.parametrize("base, mutate, needle", [
    # a string category declared as a number
    ("sklearn_pipeline", lambda ins: [dict(i, dtype="float32") if i["name"] == "size_band" else i for i in ins],
     "declare it dtype: string"),
    # a numeric column declared as a string
    ("sklearn_pipeline", lambda ins: [dict(i, dtype="string") if i["name"] == "radius" else i for i in ins],
     "treats it as numbers"),
    # one matrix input for a pipeline that selects columns by name
    ("sklearn_pipeline", lambda ins: [{"name": "input", "shape": ["batch", 12]}], "one input per column"),
    # a matrix narrower than the forest's features
    ("sklearn_forest", lambda ins: [{"name": "input", "shape": ["batch", 9], "columns": NUMERIC[:9]}],
     "has 9 features, shape (batch, 9), but RandomForestClassifier from cancer_forest.skops expects 10"),
])
def test_input_spec_not_matching_model(tmp_path, base, mutate, needle):
    from onnxforge.errors import UserError

    inputs = yaml.safe_load((CONFIGS / f"{base}.yaml").read_text())["inputs"]
    with pytest.raises(UserError) as err:
        convert_in_process(tmp_path, base, mutate(inputs))
    assert needle in str(err.value) and "\n" not in str(err.value)
