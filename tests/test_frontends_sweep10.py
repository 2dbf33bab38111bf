"""`onnxforge convert` on PyTorch and Keras 3 models saved the way users save them, where it used to go wrong:
a torch.export program saved in training mode, a GRU with a dynamic sequence length whose dynamo graph declared the
traced length, a Python `if` on a tensor's value that the TorchScript trace froze (exit 0, wrong outputs), and Keras
Functional models built on dicts of inputs or outputs. Real torch/Keras, real onnxruntime; expected values from the
framework itself on inputs the conversion never saw."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from conftest import assert_one_line_error, run_cli

from onnxforge.frontends.torch import _training_ops

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _convert_torch(tmp_path: Path, src: str, *args: str):
    (tmp_path / "nets.py").write_text(textwrap.dedent(src))
    return run_cli("convert", "--framework", "torch", *args, "-o", tmp_path / "m.onnx", cwd=tmp_path)


def _load_factory(tmp_path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"nets_{tmp_path.name}", tmp_path / "nets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BN = '''
import torch, torch.nn as nn

class BN(nn.Module):
    def __init__(s):
        super().__init__()
        s.fc, s.bn, s.out = nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)

    def forward(s, x):
        return s.out(torch.relu(s.bn(s.fc(x))))
'''


def test_pt2_exported_in_train_mode_is_refused(tmp_path):
    (tmp_path / "nets.py").write_text(textwrap.dedent(BN))
    torch.manual_seed(0)
    m = _load_factory(tmp_path).BN().train()  # forgot model.eval() before torch.export
    ep = torch.export.export(m, (torch.randn(4, 4),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, tmp_path / "bn.pt2")
    res = run_cli("convert", "--framework", "torch", "-m", tmp_path / "bn.pt2", "--source-opt", "trust_pickle=true",
                  "-i", "x:float32:batch,4", "-o", tmp_path / "m.onnx", cwd=tmp_path)
    line = assert_one_line_error(res)
    assert "exported in training mode" in line and "model.eval()" in line and " — " in line
    assert not list(tmp_path.glob("m.onnx*"))

    m.eval()  # the same model exported in eval mode (and one whose batch norm keeps no running stats) is not refused
    ep = torch.export.export(m, (torch.randn(4, 4),))
    free = torch.nn.Sequential(torch.nn.BatchNorm1d(4, track_running_stats=False), torch.nn.Dropout(0.5)).eval()
    assert _training_ops(ep) == [] and _training_ops(torch.export.export(free, (torch.randn(4, 4),))) == []


GRU = '''
import torch, torch.nn as nn

class Tagger(nn.Module):
    def __init__(s):
        super().__init__()
        s.emb, s.gru, s.out = nn.Embedding(30, 8), nn.GRU(8, 6, batch_first=True), nn.Linear(6, 2)

    def forward(s, ids):
        h, _ = s.gru(s.emb(ids))
        return s.out(h)

def build():
    torch.manual_seed(0)
    return Tagger()
'''


def test_gru_dynamic_sequence_declares_the_sequence_dim(tmp_path):
    res = _convert_torch(tmp_path, GRU, "--source-opt", f"factory={tmp_path / 'nets.py'}:build",
                         "-i", "ids:int64:batch,seq")
    assert res.code == 0, res.stderr
    sess = _session(tmp_path / "m.onnx")
    assert sess.get_outputs()[0].shape == ["batch", "seq", 2]
    ids = np.random.default_rng(2).integers(0, 30, size=(5, 11))
    with torch.no_grad():
        want = _load_factory(tmp_path).build().eval()(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(sess.run(None, {"ids": ids})[0], want, rtol=1e-5, atol=1e-5)


BRANCH = '''
import torch, torch.nn as nn

class Branch(nn.Module):
    def __init__(s):
        super().__init__()
        s.fc = nn.Linear(4, 3)

    def forward(s, x):
        y = s.fc(x)
        if x.mean() > 0:  # a Python branch on a value: a trace keeps the one the example took
            return y * 2
        return -y

def build():
    torch.manual_seed(0)
    return Branch()
'''


def test_traced_value_branch_is_refused(tmp_path):
    # exporter auto reaches the same trace after dynamo's data-dependent failure (its fallback warning comes first)
    res = _convert_torch(tmp_path, BRANCH, "--source-opt", f"factory={tmp_path / 'nets.py'}:build",
                         "--source-opt", "exporter=torchscript", "-i", "x:float32:batch,4")
    line = assert_one_line_error(res)
    assert "Python branch on a tensor's value" in line and "nets.py" in line and "torch.where" in line
    assert not list(tmp_path.glob("m.onnx*"))


def _keras_convert(tmp_path: Path, model):
    model.save(tmp_path / "m.keras")
    return run_cli("convert", "--framework", "keras", "-m", tmp_path / "m.keras", "-o", tmp_path / "m.onnx",
                   cwd=tmp_path)


def test_keras_dict_outputs_named_by_key(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input((4,), name="x")
    dense = keras.layers.Dense
    model = keras.Model(x, {"zeta": dense(3, name="d1")(x), "alpha": dense(3, name="d2")(x)})
    res = _keras_convert(tmp_path, model)
    assert res.code == 0, res.stderr
    sess = _session(tmp_path / "m.onnx")
    xs = np.random.default_rng(3).normal(size=(6, 4)).astype(np.float32)
    want = {k: np.asarray(v) for k, v in model(xs, training=False).items()}
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": xs}), strict=True))
    assert sorted(got) == ["alpha", "zeta"]
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_keras_dict_inputs(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    zz, aa = keras.Input((3,), name="zz"), keras.Input((2,), name="aa")
    out = keras.layers.Dense(2)(keras.layers.Concatenate()([zz, aa]))
    model = keras.Model({"zz": zz, "aa": aa}, out)
    res = _keras_convert(tmp_path, model)
    assert res.code == 0, res.stderr
    sess = _session(tmp_path / "m.onnx")
    rng = np.random.default_rng(4)
    feeds = {"zz": rng.normal(size=(5, 3)).astype(np.float32), "aa": rng.normal(size=(5, 2)).astype(np.float32)}
    assert sorted(i.name for i in sess.get_inputs()) == ["aa", "zz"]
    want = np.asarray(model(feeds, training=False))
    np.testing.assert_allclose(sess.run(None, feeds)[0], want, rtol=1e-5, atol=1e-6)
