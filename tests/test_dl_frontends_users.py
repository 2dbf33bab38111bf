"""PyTorch and Keras models written the way users write them: a state_dict saved from a torch.compile'd (and/or
DataParallel) model converts and matches the eager model; a subclassed Keras model, a custom layer and a custom
function are refused with one line that names them and gives fixes onnxforge really supports, and the suggested
export route converts."""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import assert_one_line_error, run_cli

NETS = """import torch
import torch.nn as nn


def make():
    torch.manual_seed(123)  # weights unlike the saved ones, so a match shows the file was loaded
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
"""


def _wrap(kind: str, model: torch.nn.Module) -> torch.nn.Module:
    # the real wrappers, so the test follows whatever prefixes torch gives them
    return {
        "compile": lambda m: torch.compile(m),
        "compile_dataparallel": lambda m: torch.compile(torch.nn.DataParallel(m)),
        "dataparallel_compile": lambda m: torch.nn.DataParallel(torch.compile(m)),
    }[kind](model)


@pytest.mark.parametrize("kind", ["compile", "compile_dataparallel", "dataparallel_compile"])
def test_torch_compile_state_dict_converts_and_matches(kind, tmp_path):
    (tmp_path / "nets.py").write_text(NETS)
    torch.manual_seed(0)
    eager = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    sd = _wrap(kind, eager).state_dict()
    assert all("_orig_mod." in k for k in sd), list(sd)
    torch.save(sd, tmp_path / "w.pt")
    out = tmp_path / "m.onnx"
    res = run_cli("convert", "--framework", "torch", "-m", "w.pt", "--source-opt", "factory=nets.py:make",
                  "--source-opt", "exporter=torchscript", "-i", "x:float32:batch,4", "-o", out, cwd=tmp_path)
    assert res.code == 0, res.stderr
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        want = eager(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    return keras


def _convert_keras(path, out):
    return run_cli("convert", "--framework", "keras", "-m", path, "-o", out)


def test_subclassed_keras_model_names_it_and_the_export_route_works(tmp_path, keras):
    class Sub(keras.Model):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.d1 = keras.layers.Dense(8, activation="relu")
            self.d2 = keras.layers.Dense(2)

        def call(self, x):
            return self.d2(self.d1(x))

    model = Sub()
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    want = np.asarray(model(x))
    model.save(tmp_path / "sub.keras")
    out = tmp_path / "m.onnx"
    line = assert_one_line_error(_convert_keras(tmp_path / "sub.keras", out))
    assert "subclassed model (class 'Sub')" in line, line
    assert "Functional or Sequential" in line and "source.framework: onnx" in line, line
    assert "register" not in line and "re-save" not in line, line  # fixes onnxforge cannot act on
    assert not out.exists()

    # the fix it gives: export with Keras where the class is defined, convert the ONNX file
    model.export(str(tmp_path / "sub.onnx"), format="onnx", verbose=False)
    res = run_cli("convert", "--framework", "onnx", "-m", tmp_path / "sub.onnx", "-o", out)
    assert res.code == 0, res.stderr
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["functional", "sequential"])
def test_custom_layer_is_named_as_a_layer(arch, tmp_path, keras):
    class Twice(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    if arch == "functional":
        inp = keras.Input(shape=(4,), name="x")
        model = keras.Model(inp, keras.layers.Dense(2)(Twice()(inp)))
    else:
        model = keras.Sequential([keras.Input(shape=(4,)), Twice(), keras.layers.Dense(2)])
    model.save(tmp_path / "twice.keras")
    out = tmp_path / "m.onnx"
    line = assert_one_line_error(_convert_keras(tmp_path / "twice.keras", out))
    assert "custom layer 'Twice'" in line, line
    assert "built-in" in line and "source.framework: onnx" in line, line
    assert "subclassed" not in line and "register" not in line, line
    assert not out.exists()


def test_custom_function_is_named(tmp_path, keras):
    @keras.saving.register_keras_serializable(package="onnxforge_test")
    def triple(x):
        return x * 3.0

    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(2, activation=triple)])
    model.save(tmp_path / "fn.keras")
    line = assert_one_line_error(_convert_keras(tmp_path / "fn.keras", tmp_path / "m.onnx"))
    assert "custom function 'triple'" in line, line
    assert "register" not in line, line


def test_unloadable_keras_file_gives_a_fix_that_exists(tmp_path, keras):
    seq = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(2)])
    seq.save(tmp_path / "ok.keras")
    import zipfile

    with zipfile.ZipFile(tmp_path / "ok.keras") as src, zipfile.ZipFile(tmp_path / "bad.keras", "w") as dst:
        for name in src.namelist():
            if name != "model.weights.h5":  # an incomplete save: config without weights
                dst.writestr(name, src.read(name))
    line = assert_one_line_error(_convert_keras(tmp_path / "bad.keras", tmp_path / "m.onnx"))
    assert "Keras cannot load it" in line and "register" not in line, line
    assert f"under Keras {keras.__version__}" in line, line
