"""PyTorch frontend on user-written models that the dynamo exporter gets wrong without failing: a TransformerEncoder
it cannot write below opset 18, and an LSTM/GRU whose dynamic batch and sequence dims it mixes up. Real torch and
onnxruntime; `auto` must fall back to TorchScript and give a working file, `dynamo` must exit 2 naming the fix."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from conftest import assert_one_line_error, run_cli

from onnxforge.config import TensorSpec
from onnxforge.frontends.torch import _example

ENCODER = '''
import torch, torch.nn as nn

class Enc(nn.Module):
    def __init__(s, vocab=20, d=8):
        super().__init__()
        s.emb = nn.Embedding(vocab, d)
        s.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, 2, 16, dropout=0.0, batch_first=True), 1)
        s.head = nn.Linear(d, 3)

    def forward(s, ids):
        return s.head(s.enc(s.emb(ids)).mean(1))

def build():
    torch.manual_seed(0)
    return Enc().eval()
'''

RNN = '''
import torch, torch.nn as nn

class RNN(nn.Module):
    def __init__(s):
        super().__init__()
        s.lstm = nn.LSTM(4, 8, batch_first=True)
        s.gru = nn.GRU(8, 8, batch_first=True)
        s.fc = nn.Linear(8, 3)

    def forward(s, x):
        h, _ = s.lstm(x)
        h, _ = s.gru(h)
        return s.fc(h[:, -1])

def build():
    torch.manual_seed(0)
    return RNN().eval()
'''


def write(tmp_path: Path, code: str, exporter: str, inputs: list, stages: dict, data: dict) -> Path:
    (tmp_path / "m.py").write_text(textwrap.dedent(code))
    cfg = {"name": "user", "source": {"framework": "torch", "factory": "m.py:build", "exporter": exporter},
           "inputs": inputs, "outputs": ["logits"], "data": data, "stages": stages}
    path = tmp_path / f"{exporter}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def meta_of(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def opset_of(path: Path) -> int:
    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


ENC_INPUTS = [{"name": "ids", "dtype": "int64", "shape": ["batch", "seq"], "low": 0, "high": 20}]


def test_dynamo_opset_below_what_it_can_write_is_exit_2_naming_both_fixes(tmp_path):
    cfg = write(tmp_path, ENCODER, "dynamo", ENC_INPUTS, {"convert": {"opset": 17}}, {"synthetic": True})
    res = run_cli("convert", "--config", cfg, "-o", tmp_path / "out.onnx", cwd=tmp_path)
    line = assert_one_line_error(res)
    assert "opset 17" in line and "convert.opset: 18" in line and "exporter: torchscript" in line, line
    assert not (tmp_path / "out.onnx").exists()


def test_auto_writes_the_asked_opset_through_torchscript(tmp_path):
    cfg = write(tmp_path, ENCODER, "auto", ENC_INPUTS, {"convert": {"opset": 17}}, {"synthetic": True})
    res = run_cli("convert", "--config", cfg, "-o", tmp_path / "out.onnx", cwd=tmp_path)
    assert res.code == 0, res.stderr
    meta = meta_of(tmp_path / "out.onnx")
    assert opset_of(tmp_path / "out.onnx") == 17 and meta["onnxforge.opset"] == "17"
    assert meta["onnxforge.torch.exporter"] == "torchscript" and "opset 18" in meta["onnxforge.torch.dynamo_failure"]


def test_example_sizes_differ_per_dynamic_dim_name():
    specs = [TensorSpec(name="x", dtype="float32", shape=["batch", "seq", 4]),
             TensorSpec(name="m", dtype="int64", shape=["batch", None])]
    x, m = _example(specs)
    assert x.shape[0] == m.shape[0]  # one name, one size: dims that must agree still do
    assert len({x.shape[0], x.shape[1], m.shape[1]}) == 3 and min(x.shape[:2]) >= 2
    x3, m3 = _example(specs, base=3)
    assert all(a != b for a, b in zip([*x.shape[:2], m.shape[1]], [*x3.shape[:2], m3.shape[1]], strict=True))


@pytest.fixture(scope="module")
def rnn_data(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("rnn") / "seq.npz"
    np.savez(path, x=rng.uniform(-1, 1, size=(40, 6, 4)).astype(np.float32), label=rng.integers(0, 3, size=40))
    return path


RNN_INPUTS = [{"name": "x", "dtype": "float32", "shape": ["batch", "seq", 4]}]


def test_rnn_with_dynamic_batch_and_seq_dynamo_names_the_exporter_fix(tmp_path, rnn_data):
    cfg = write(tmp_path, RNN, "dynamo", RNN_INPUTS, {"convert": {}}, {"path": str(rnn_data), "labels": "label"})
    res = run_cli("convert", "--config", cfg, "-o", tmp_path / "out.onnx", cwd=tmp_path)
    line = assert_one_line_error(res)
    assert "dynamo exporter" in line and "exporter: torchscript" in line and "give data" not in line, line
    assert not (tmp_path / "out.onnx").exists()


def test_rnn_with_dynamic_batch_and_seq_auto_converts_validates_and_is_deterministic(tmp_path, rnn_data):
    cfg = write(tmp_path, RNN, "auto", RNN_INPUTS, {"convert": {}, "validate": {}},
                {"path": str(rnn_data), "labels": "label"})
    res = run_cli("run", cfg, "--force", cwd=tmp_path)
    assert res.code == 0, res.stderr
    outs = [tmp_path / f"{i}.onnx" for i in range(2)]
    for out in outs:
        assert run_cli("convert", "--config", cfg, "-o", out, cwd=tmp_path, fresh=True).code == 0
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in outs}) == 1
    assert meta_of(outs[0])["onnxforge.torch.exporter"] == "torchscript"
    sess = ort.InferenceSession(str(outs[0]), providers=["CPUExecutionProvider"])
    ns: dict = {}
    exec(textwrap.dedent(RNN), ns)  # the same module, to compare at shapes the export never saw
    x = np.random.default_rng(1).uniform(-1, 1, size=(5, 11, 4)).astype(np.float32)
    with torch.no_grad():
        want = ns["build"]()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-4)
