"""The input model (onnxforge/inputspec.py) on real exports shaped like third-party models: a recurrent cell whose
state has no batch axis, token ids that index an embedding table, a scalar input, dims only metadata names, and
an IR-3 file. Every expected output is computed by onnxruntime on the model itself."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import assert_one_line_error, run_cli

FAST_OPT = ["--set", "latency_rounds=1", "--set", "batch_sizes=[1]"]


class StatefulCell(torch.nn.Module):
    """x [batch, 8] and a state h [1, 16] (no batch axis, like a VAD's state) → y [batch, 16]."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 16)

    def forward(self, x, h):
        return torch.tanh(self.lin(x) + h)


class Tokens(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 4)

    def forward(self, ids):
        return self.emb(ids).sum(1)


class Scaled(torch.nn.Module):
    """A scalar input (a sample rate) beside a batched one."""

    def forward(self, x, sr):
        return x * sr.to(torch.float32) / 16000.0


def _export(module, args, path, names, dynamic, opset=17):
    torch.onnx.export(module.eval(), args, str(path), dynamo=False, input_names=names, output_names=["y"],
                      dynamic_axes=dynamic, opset_version=opset)
    return path


@pytest.fixture
def cell(tmp_path):
    return _export(StatefulCell(), (torch.rand(2, 8), torch.rand(1, 16)), tmp_path / "cell.onnx", ["x", "h"],
                   {"x": {0: "batch"}, "y": {0: "batch"}})


def _json(res):
    assert res.code == 0, res.stderr[-800:]
    return json.loads(res.stdout)["result"]["summary"]


def test_state_without_batch_axis_is_fed_whole(cell, tmp_path):
    """The state [1, 16] was tiled to the batch (onnxruntime refused it); now it is fed whole to every run."""
    res = _json(run_cli("validate", cell, "--against", cell, "--synthetic", "--json", cwd=tmp_path))
    fed = {d["name"]: d for d in res["synthesized_inputs"]}
    assert fed["h"]["shape"] == [1, 16] and fed["h"]["batch_axis"] is False, fed
    assert fed["x"]["batch_axis"] is True and fed["x"]["shape"][0] > 1, fed


def test_data_file_with_state_of_another_leading_size(cell, tmp_path):
    """A data file may hold 5 rows of x beside one state: was 'inputs have different row counts [1, 5]'."""
    rng = np.random.default_rng(0)
    x, h = rng.random((5, 8), dtype=np.float32), rng.random((1, 16), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x, h=h)
    out = tmp_path / "o.onnx"
    r = run_cli("optimize", cell, "-o", out, "--data", tmp_path / "d.npz", *FAST_OPT, cwd=tmp_path)
    assert r.code == 0, r.stderr[-800:]
    want = ort.InferenceSession(str(cell)).run(None, {"x": x, "h": h})[0]
    got = ort.InferenceSession(str(out)).run(None, {"x": x, "h": h})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    r = run_cli("validate", out, "--against", cell, "--data", tmp_path / "d.npz", "--json", cwd=tmp_path)
    assert r.code == 0 and json.loads(r.stdout)["result"]["verdict"] == "pass", r.stderr[-800:]


def test_state_of_the_wrong_shape_is_one_line(cell, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 8), np.float32), h=np.zeros((2, 16), np.float32))
    line = assert_one_line_error(run_cli("validate", cell, "--data", tmp_path / "d.npz", cwd=tmp_path), 2)
    assert "'h'" in line and "[1, 16]" in line and "[2, 16]" in line, line


def test_token_ids_stay_inside_the_table(tmp_path):
    """Integer inputs were drawn from [0, 1) (all zeros) or would overflow the table: ids < 50 now."""
    model = _export(Tokens(), (torch.randint(0, 50, (2, 7)),), tmp_path / "tok.onnx", ["ids"],
                    {"ids": {0: "batch", 1: "seq"}})
    res = _json(run_cli("validate", model, "--against", model, "--synthetic", "--json", cwd=tmp_path))
    (fed,) = res["synthesized_inputs"]
    assert fed["dtype"] == "int64" and 0 <= fed["range"][0] and fed["range"][1] < 50 and fed["range"][1] > 8, fed
    assert "50" in fed["from"] and "Gather" in fed["from"], fed


def test_scalar_value_flag(tmp_path):
    model = _export(Scaled(), (torch.rand(3, 4), torch.tensor(16000)), tmp_path / "sr.onnx", ["x", "sr"],
                    {"x": {0: "batch"}, "y": {0: "batch"}})
    assert [d.dim_value for d in onnx.load(str(model)).graph.input[1].type.tensor_type.shape.dim] == []
    res = _json(run_cli("validate", model, "--against", model, "--synthetic", "--value", "sr=8000", "--json",
                        cwd=tmp_path))
    fed = {d["name"]: d for d in res["synthesized_inputs"]}
    assert fed["sr"]["shape"] == [] and fed["sr"]["value"] == 8000 and fed["sr"]["batch_axis"] is False, fed


@pytest.mark.parametrize("flag", [["--shape", "nope=1,2"], ["--value", "nope=3"], ["--shape", "x=a,b"],
                                  ["--shape", "x=1,2,3"]])
def test_bad_shape_and_value_flags_are_one_line(cell, tmp_path, flag):
    line = assert_one_line_error(run_cli("validate", cell, "--synthetic", *flag, cwd=tmp_path), 2)
    assert flag[0] in line or "no input 'nope" in line, line


def test_metadata_names_the_dims(tmp_path):
    """Ultralytics stores imgsz: the image's height and width come from it, not from a probe."""
    class Conv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(3, 4, 3, stride=32)

        def forward(self, images):
            return self.c(images)

    path = _export(Conv(), (torch.rand(1, 3, 64, 64),), tmp_path / "det.onnx", ["images"],
                   {"images": {0: "batch", 2: "height", 3: "width"}})
    m = onnx.load(str(path))
    m.metadata_props.add(key="imgsz", value="[96, 128]")
    onnx.save(m, str(path))
    res = _json(run_cli("validate", path, "--against", path, "--synthetic", "--json", cwd=tmp_path))
    (fed,) = res["synthesized_inputs"]
    assert fed["shape"][1:] == [3, 96, 128] and "imgsz" in fed["from"], fed


def test_probed_dim_is_reported(tmp_path):
    """A Conv with kernel 400 over a symbolic length: 1 (the old default) fails; the probe finds 1024."""
    class Frames(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv1d(1, 2, 400, stride=160)

        def forward(self, audio):
            return self.c(audio.unsqueeze(1))

    path = _export(Frames(), (torch.rand(2, 1600),), tmp_path / "frames.onnx", ["audio"],
                   {"audio": {0: "batch", 1: "samples"}})
    res = _json(run_cli("validate", path, "--against", path, "--synthetic", "--json", cwd=tmp_path))
    (fed,) = res["synthesized_inputs"]
    assert fed["shape"][1] == 1024 and "smallest" in fed["from"], fed


def test_ir3_model_is_normalized_in_memory_only(tmp_path):
    """An IR-3 file (initializers also listed as graph inputs): quantize sees constants; the file is untouched."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(64, 64)

        def forward(self, x):
            return self.lin(x)

    path = _export(Net(), (torch.rand(2, 64),), tmp_path / "ir3.onnx", ["x"], {"x": {0: "batch"}}, opset=7)
    m = onnx.load(str(path))
    inits = {t.name for t in m.graph.initializer}
    for t in m.graph.initializer:
        if t.name not in {i.name for i in m.graph.input}:
            m.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    m.ir_version = 3
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    before = path.read_bytes()
    out = tmp_path / "q.onnx"
    r = run_cli("quantize", path, "-o", out, "--mode", "dynamic", "--set", "latency_rounds=1", "--set",
                "allow_slower=true", cwd=tmp_path)  # speed is not this test's business
    assert r.code == 0, r.stderr[-800:]
    assert path.read_bytes() == before
    q = onnx.load(str(out))
    assert not inits & {i.name for i in q.graph.input}
    onnx.checker.check_model(q, full_check=True)
    x = np.random.default_rng(0).random((3, 64), dtype=np.float32)
    want = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(out)).run(None, {"x": x})[0]
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    assert out.stat().st_size < 0.5 * path.stat().st_size


class Recurrent(torch.nn.Module):
    """A GRU step with its state as an input, batch on axis 1 of the state (like silero's h/c: [2, batch, 64])."""

    def __init__(self):
        super().__init__()
        self.gru = torch.nn.GRU(8, 16)

    def forward(self, x, h):
        y, hn = self.gru(x.unsqueeze(0), h)
        return y[0]


def test_state_with_the_batch_on_another_axis_runs_one_row_per_run(tmp_path):
    """h [1, batch, 16] beside x [batch, 8]: h is fed whole at batch 1 and the rows run one at a time (tiling h to
    64 rows, or feeding it as one state beside 64 rows, both fail in onnxruntime)."""
    path = _export(Recurrent(), (torch.rand(2, 8), torch.rand(1, 2, 16)), tmp_path / "rnn.onnx", ["x", "h"],
                   {"x": {0: "batch"}, "h": {1: "batch"}, "y": {0: "batch"}})
    res = _json(run_cli("validate", path, "--against", path, "--synthetic", "--json", cwd=tmp_path))
    fed = {d["name"]: d for d in res["synthesized_inputs"]}
    assert fed["h"]["shape"] == [1, 1, 16] and fed["h"]["batch_axis"] is False and "one row per run" in \
        fed["h"]["from"], fed
    r = run_cli("quantize", path, "-o", tmp_path / "q.onnx", "--mode", "dynamic", "--set", "latency_rounds=1",
                cwd=tmp_path)
    assert r.code == 0, r.stderr[-800:]


def test_string_input_model_with_a_data_file(tmp_path):
    """A string input cannot be synthesized; probing must not refuse a model the user gives real text for
    (it raised 'list its categories' before the data file was read)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.preprocessing import OneHotEncoder

    text = np.array([["a"], ["b"], ["c"], ["a"]])
    model = to_onnx(OneHotEncoder().fit(text), initial_types=[("s", StringTensorType([None, 1]))])
    path = tmp_path / "enc.onnx"
    onnx.save(model, str(path))
    np.savez(tmp_path / "d.npz", s=text)
    r = run_cli("validate", path, "--against", path, "--data", tmp_path / "d.npz", cwd=tmp_path)
    assert r.code == 0, r.stderr[-800:]
