"""Keras 3 layer breadth (issue 13 item 3): preprocessing and common layers in real .keras fixtures
(fixtures/build_keras.py) convert through the CLI and validate against Keras, or are refused with exit 2 naming the
layer and the reason.

- keras_normalized: the issue's case, a Functional model with an adapted Normalization. model.export leaves the
  layer's mean and variance as graph inputs; the frontend freezes the model and converts that: one input.
- keras_preprocessing: Normalization, Rescaling, Discretization, CategoryEncoding, StringLookup + Embedding on a
  string input (an ONNX string tensor), IntegerLookup on an int64 input, BatchNormalization — three inputs.
- keras_sequence: Conv2D, BatchNormalization, Conv1D, MultiHeadAttention, LayerNormalization, LSTM, GRU; model.export
  is clean there and stays the export path.
- text_hashing: Hashing and TextVectorization, which tf2onnx cannot convert: exit 2, one line.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import CONFIGS, FIXTURES, assert_one_line_error, example_runs, run_cli

NUMERIC = ["radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity", "concave_points",
           "symmetry", "fractal_dimension"]
CASES = {  # config → (model file, graph inputs, outputs, exported through the frozen path)
    "keras_normalized": ("cancer_normalized.keras", ["features"], ["probabilities"], True),
    "keras_preprocessing": ("cancer_mixed.keras", ["features", "size_band", "grade"], ["probabilities"], True),
    "keras_sequence": ("digits_sequence.keras", ["input"], ["logits"], False),
}


def sha256(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


workdir, runs, ran = example_runs(CASES, "keras-layers")


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    return keras


def rows(case: str) -> dict[str, np.ndarray]:
    """The rows validate reads for each case, as arrays per model input."""
    if case == "keras_sequence":
        with np.load(FIXTURES / "data/digits_test.npz") as d:
            return {"input": d["input"]}
    import pandas as pd

    df = pd.read_csv(FIXTURES / "data/cancer_test.csv")
    return {"features": df[NUMERIC].to_numpy(np.float32), "size_band": df[["size_band"]].to_numpy(object),
            "grade": df[["grade"]].to_numpy(np.int64)}


def test_layers_convert_and_validate_against_keras(ran):
    case, res, run, _ = ran
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["ok"] is True
    v = json.loads((run / "02-validate/validation.json").read_text())
    assert v["verdict"] == "pass" and v["reference"] == "keras native predict", v
    n = len(rows(case)[CASES[case][1][0]])
    assert v["rows"] == n
    for name in CASES[case][2]:
        assert {c["batch"] for c in v["comparisons"] if c["output"] == name and c["pass"]} == {1, n}
    assert v["metrics"]["candidate"]["top1_agreement"] == 1.0


def test_model_matches_model_predict(ran, keras):
    """ORT on the converted file against keras model.predict on the same rows (independent of validate)."""
    import tensorflow as tf

    case, res, run, _ = ran
    assert res.code == 0, res.stderr
    file, inputs, outputs, frozen = CASES[case]
    path = run / "01-convert/model.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == inputs  # no constants turned into inputs
    assert [o.name for o in model.graph.output] == outputs
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta.get("onnxforge.keras.export", "").startswith("frozen") == frozen, meta
    feeds = {k: v for k, v in rows(case).items() if k in inputs}
    native = keras.saving.load_model(str(FIXTURES / "keras" / file), compile=False)
    # model.predict takes no numpy string arrays: strings go in as a tf tensor
    args = [tf.constant(feeds[t.name].astype(str)) if t.dtype == "string" else feeds[t.name] for t in native.inputs]
    want = native.predict(args[0] if len(args) == 1 else args, verbose=0)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(outputs, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    print(f"{case}: max |ORT - model.predict| = {np.abs(got - want).max():.2e}")


def test_issue_13_adapted_normalization_has_one_input(runs):
    """The issue: the adapted Normalization's mean and variance were graph inputs and onnxforge blamed `inputs:`."""
    _, res, run, _ = runs["keras_normalized"]
    assert res.code == 0, res.stderr
    model = onnx.load(str(run / "01-convert/model.onnx"))
    assert [i.name for i in model.graph.input] == ["features"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert "2 extra graph inputs" in meta["onnxforge.keras.export"]
    assert "'normalize' (Normalization)" in meta["onnxforge.keras.export"]


def test_preprocessing_graph_is_pure_onnx_with_a_string_input(runs):
    _, res, run, _ = runs["keras_preprocessing"]
    assert res.code == 0, res.stderr
    model = onnx.load(str(run / "01-convert/model.onnx"))
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert types == {"features": onnx.TensorProto.FLOAT, "size_band": onnx.TensorProto.STRING,
                     "grade": onnx.TensorProto.INT64}
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    # StringLookup → CategoryMapper, IntegerLookup → LabelEncoder, Discretization's Bucketize → GreaterOrEqual+ReduceSum
    assert {("ai.onnx.ml", "CategoryMapper"), ("ai.onnx.ml", "LabelEncoder"), ("", "GreaterOrEqual")} <= ops
    assert not {op for _, op in ops} & {"Bucketize", "LookupTableFindV2", "HashTableV2"}


def test_frozen_export_is_byte_stable(runs, workdir):
    """Reruns give the same bytes: hash-table entries sorted, tf2onnx's merge and node order made independent of
    its set-ordered counters."""
    case, res, run, first = runs["keras_preprocessing"]
    assert res.code == 0, res.stderr
    # fresh: another hash seed than the zygote's first run, so set-order nondeterminism shows
    again = run_cli("run", CONFIGS / f"{case}.yaml", "--until", "convert", "--force", cwd=workdir, fresh=True)
    assert again.code == 0, again.stderr
    assert sha256(run / "01-convert/model.onnx") == first


def test_layers_tf2onnx_cannot_convert_are_refused_by_name(tmp_path):
    out = tmp_path / "text.onnx"
    res = run_cli("convert", "--framework", "keras", "-m", FIXTURES / "keras/text_hashing.keras", "-o", out,
                  cwd=tmp_path)
    line = assert_one_line_error(res)
    assert "'hash' (Hashing) (TensorFlow op StringToHashBucketFast)" in line, line
    assert "'vectorize' (TextVectorization) (TensorFlow ops StaticRegexReplace, StringSplitV2)" in line, line
    assert "cannot be exported to ONNX: tf2onnx" in line and " — " in line
    assert not out.exists() and not list(tmp_path.glob(".*onnx*"))


@pytest.mark.filterwarnings("ignore:In the future `np.object`:FutureWarning")  # Keras's tf2onnx numpy-2 patch
def test_discretization_boundaries_and_integer_lookup_oov(keras):
    """Edge rows the fixtures do not hit: values exactly on a Discretization boundary (TF buckets x ≥ b upward) and
    int64 keys outside an IntegerLookup vocabulary (→ the OOV index)."""
    import tensorflow as tf

    from onnxforge.frontends._keras_freeze import export_frozen, foreign_nodes

    x = keras.Input((3,), name="x")
    k = keras.Input((2,), dtype="int64", name="k")
    bins = keras.layers.Discretization(bin_boundaries=[-1.0, 0.0, 2.5])(x)
    ids = keras.layers.IntegerLookup(vocabulary=[7, 3, 11])(k)
    model = keras.Model([x, k], [bins, ids])
    sig = [tf.TensorSpec([None, 3], "float32", name="x"), tf.TensorSpec([None, 2], "int64", name="k")]
    proto = export_frozen(model, sig, 18)
    assert not foreign_nodes(proto)
    xs = np.array([[-1.0, 0.0, 2.5], [-1.5, -0.0, 3.0], [np.inf, -np.inf, 1.0]], np.float32)
    ks = np.array([[7, 3], [11, 5], [0, -7]], np.int64)
    want = [np.asarray(t) for t in model([xs, ks], training=False)]
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {proto.graph.input[0].name: xs, proto.graph.input[1].name: ks})
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_leak_left_after_freezing_names_the_inputs_and_the_layer(keras):
    """The message when a constant still leaks after freezing (no fixture does): the graph names and the layer."""
    from onnxforge.frontends._keras_freeze import refusal

    model = keras.saving.load_model(str(FIXTURES / "keras/cancer_normalized.keras"), compile=False)
    extra = ["cancer_normalized_1/normalize_1/Sub/y:0", "cancer_normalized_1/normalize_1/Sqrt/x:0"]
    line = refusal({"extra": extra}, model)
    assert line.startswith(f"the export produced extra graph inputs {extra[0]}, {extra[1]} that the Keras model "
                           "does not have (constants of layer 'normalize' (Normalization))"), line
    assert " — " in line and "\n" not in line
