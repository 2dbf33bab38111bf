"""Keras 3 frontend: real exports of the Sequential and Functional digits models, checked with onnx.checker and
onnxruntime against Keras itself (computed here), byte-stable reruns, the input spec read off the model, and bad
inputs as one-line exit 2."""

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

TEST = FIXTURES / "data/digits_test.npz"
CASES = {  # config → (model file, input name, data key, outputs)
    "keras_sequential": (FIXTURES / "keras/digits_sequential.keras", "x", "x", ["logits"]),
    "keras_functional": (FIXTURES / "keras/digits_functional.keras", "input", "input", ["logits", "probabilities"]),
}


def sha256(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    return keras


def keras_reference(keras, path: Path, x: np.ndarray) -> list[np.ndarray]:
    model = keras.saving.load_model(str(path), compile=False)
    out = model(x, training=False)
    return [np.asarray(t) for t in (out if isinstance(out, list | tuple) else [out])]


def assert_matches_keras(model_path: Path, want: list[np.ndarray], x: np.ndarray, input_name: str,
                         outputs: list[str]):
    """ORT on the exported file vs Keras on the same rows: one row at a time (16 rows) and all rows at once."""
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    got_all = sess.run(outputs, {input_name: x})
    parts = [sess.run(outputs, {input_name: x[i : i + 1]}) for i in range(16)]
    for k, name in enumerate(outputs):
        np.testing.assert_allclose(got_all[k], want[k], rtol=1e-5, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(np.concatenate([p[k] for p in parts]), want[k][:16], rtol=1e-5, atol=1e-4,
                                   err_msg=name)
    assert (got_all[0].argmax(1) == want[0].argmax(1)).all()


workdir, runs, ran = example_runs(CASES, "keras")


def test_run_converts_and_validates(ran):
    case, res, run, _ = ran
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["ok"] is True  # stdout is clean JSON: TF/tf2onnx chatter is kept off it
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["verdict"] == "pass"
    assert [(s["name"], s["verdict"]) for s in manifest["stages"]][:2] == [("convert", "pass"), ("validate", "pass")]
    v = json.loads((run / "02-validate/validation.json").read_text())
    assert v["verdict"] == "pass" and v["reference"] == "keras native predict" and v["rows"] == 450
    for name in CASES[case][3]:
        assert {c["batch"] for c in v["comparisons"] if c["output"] == name and c["pass"]} == {1, 450}
    assert all(c["rtol"] == 1e-5 and c["atol"] == 1e-4 for c in v["comparisons"])  # measured defaults
    assert v["metrics"]["candidate"]["accuracy"] > 0.9


def test_model_is_checked_named_and_matches_keras(ran, keras):
    case, res, run, _ = ran
    assert res.code == 0, res.stderr
    path, input_name, key, outputs = CASES[case]
    out = run / "01-convert/model.onnx"
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == [input_name]
    assert [o.name for o in model.graph.output] == outputs  # tf2onnx's Identity:0 renamed to the config's names
    for vi in [*model.graph.input, *model.graph.output]:
        assert vi.type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["onnxforge.source.framework"] == "keras"
    assert json.loads(meta["onnxforge.source.sha256"])[path.name] == sha256(path)
    with np.load(TEST) as d:
        x = d[key]
    assert_matches_keras(out, keras_reference(keras, path, x), x, input_name, outputs)


def test_rerun_with_force_is_byte_identical(runs, workdir):
    """tf2onnx names de-duplicated constants by set order; the frontend canonicalizes them."""
    case, res, run, first = runs["keras_functional"]
    assert res.code == 0, res.stderr
    # fresh: another hash seed than the zygote's first run, so set-order nondeterminism shows
    again = run_cli("run", CONFIGS / f"{case}.yaml", "--until", "convert", "--force", cwd=workdir, fresh=True)
    assert again.code == 0, again.stderr
    assert sha256(run / "01-convert/model.onnx") == first


def test_convert_without_input_spec_reads_it_off_the_model(tmp_path, keras):
    out = tmp_path / "seq.onnx"
    path = FIXTURES / "keras/digits_sequential.keras"
    res = run_cli("convert", "--framework", "keras", "-m", path, "-o", out)
    assert res.code == 0, res.stderr
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["x"]  # the Keras input's own name
    assert [o.name for o in model.graph.output] == ["logits"]  # a Sequential output: its last layer's name
    with np.load(TEST) as d:
        x = d["x"]
    assert_matches_keras(out, keras_reference(keras, path, x), x, "x", ["logits"])


def test_lambda_layer_refused_without_trust(tmp_path, keras):
    inp = keras.Input(shape=(4,), name="x")
    model = keras.Model(inp, keras.layers.Lambda(lambda t: t * 2.0)(inp))
    path = tmp_path / "lam.keras"
    model.save(path)
    line = assert_one_line_error(run_cli("convert", "--framework", "keras", "-m", path, "-o", tmp_path / "l.onnx"))
    assert "trust_pickle: true" in line
    assert not (tmp_path / "l.onnx").exists()


@pytest.mark.parametrize("case", ["torch_file", "hdf5_file", "spec_shape", "spec_count", "output_count"])
def test_bad_inputs_are_one_line_exit_2(case, tmp_path):
    seq = FIXTURES / "keras/digits_sequential.keras"
    (tmp_path / "legacy.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    args, expect = {
        "torch_file": (["-m", FIXTURES / "torch/digits_cnn.pt"], "framework: torch"),
        "hdf5_file": (["-m", tmp_path / "legacy.h5"], "re-save it"),
        "spec_shape": (["-m", seq, "-i", "x:float32:batch,32"], "the model's input 'x' is float32 ['None', 64]"),
        "spec_count": (["-m", seq, "-i", "x:float32:batch,64", "-i", "y:float32:batch,3"], "takes 1"),
        "output_count": (["-c", CONFIGS / "keras_functional.yaml", "--source-opt",
                          f"path={FIXTURES / 'keras/digits_sequential.keras'}", "-i", "x:float32:batch,64"],
                         "names 2 outputs"),
    }[case]
    fw = [] if "-c" in args else ["--framework", "keras"]
    out = tmp_path / "out.onnx"
    line = assert_one_line_error(run_cli("convert", *fw, *args, "-o", out))
    assert expect in line, line
    assert " — " in line
    assert not out.exists()
