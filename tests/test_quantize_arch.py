"""quantize on the architectures real third-party models use (issue #11): Conv-only models get weight-only INT8
(DequantizeLinear → float Conv) when no calibration data is given, LSTM becomes DynamicQuantizeLSTM, GRU gets
weight-only W/R, Gemm inside an If branch is quantized (checker-clean order), float16 weights are quantized,
a Clip's ±inf bounds are no reason to refuse, opset-9 exports are converted on a copy — and nothing is written
outside the output's folder. Every model comes from torch's real exporters."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import run_cli

FAST = ("--set", "latency_rounds=1", "--set", "allow_slower=true", "--json")


def export(model, example: tuple, path: Path, names: list[str], opset: int = 17, **kw) -> Path:
    """TorchScript exporter (a second faster than dynamo here) with a dynamic first axis."""
    model.eval()
    torch.onnx.export(model, example, str(path), dynamo=False, input_names=names, output_names=["y"],
                      dynamic_axes={n: {0: "batch"} for n in names}, opset_version=opset, **kw)
    return path


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def quantize(model: Path, out: Path, *extra, cwd: Path | None = None, fresh: bool = False):
    res = run_cli("quantize", model, "-o", out, "--mode", "dynamic", *FAST, *extra, cwd=cwd, fresh=fresh)
    return res


def check_output(model: Path, out: Path, feeds: dict, rtol: float) -> tuple[np.ndarray, np.ndarray]:
    """The written file passes the full checker, runs, is finite, and is close to the float model:
    max |q - f| <= rtol * max |f| (weight-only/dynamic INT8 error is well under 1 % of the output range)."""
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    ref = session(model).run(None, feeds)[0].astype(np.float32)
    got = session(out).run(None, feeds)[0].astype(np.float32)
    assert np.isfinite(got).all()
    assert np.abs(got - ref).max() <= rtol * np.abs(ref).max(), (np.abs(got - ref).max(), np.abs(ref).max())
    return ref, got


def ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(8, 64, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(64, 16, 3, padding=1))
    return export(net, (torch.rand(2, 8, 12, 12),), tmp_path_factory.mktemp("conv") / "conv.onnx", ["x"])


def test_conv_only_model_gets_weight_only_int8_and_writes_nothing_outside_the_output_folder(conv_model, tmp_path):
    # before: exit 2 "no configuration quantizes anything"; ORT's dynamic Conv would be ConvInteger (no CPU kernel)
    cwd, outdir = tmp_path / "cwd", tmp_path / "out"
    cwd.mkdir()
    res = quantize(conv_model, outdir / "q.onnx", cwd=cwd)
    assert res.code == 0, res.stderr
    assert list(cwd.iterdir()) == []  # no sym_shape_infer_temp.onnx, no <uuid>.data
    assert sorted(p.name for p in outdir.iterdir()) == ["q.onnx", "q.quantize.json"]
    out = outdir / "q.onnx"
    got_ops = ops(out)
    assert got_ops.count("DequantizeLinear") == 3 and got_ops.count("Conv") == 3 and "ConvInteger" not in got_ops
    assert out.stat().st_size <= 0.35 * conv_model.stat().st_size
    x = np.random.default_rng(1).random((4, 8, 12, 12), dtype=np.float32)
    check_output(conv_model, out, {"x": x}, rtol=0.02)
    # same input, same bytes
    again = quantize(conv_model, tmp_path / "again" / "q.onnx", fresh=True)  # another hash seed than the first's
    assert again.code == 0, again.stderr
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256((tmp_path / "again/q.onnx").read_bytes()).digest()


def test_symbolic_shape_inference_leaves_nothing_in_cwd(tmp_path):
    """Shapes onnx cannot infer (a Resize to a size read off another input) send pre-processing to ORT's symbolic
    inference, which gives up at the Add of two unrelated batch dims and saved sym_shape_infer_temp.onnx and a
    <uuid>.data file to the current directory."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 64)

        def forward(self, x, z):
            y = torch.nn.functional.interpolate(self.fc(x).unsqueeze(0), size=z.shape[0]).squeeze(0)
            return y + z[:, :1]

    model = tmp_path / "m.onnx"
    torch.onnx.export(Net().eval(), (torch.rand(4, 64), torch.rand(4, 64)), str(model), dynamo=False,
                      input_names=["x", "z"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "z": {0: "m"}},
                      opset_version=17)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    res = quantize(model, tmp_path / "out" / "q.onnx", cwd=cwd)
    assert res.code == 0, res.stderr
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["q.onnx", "q.quantize.json"]


def test_lstm_becomes_dynamic_quantize_lstm(tmp_path):
    torch.manual_seed(0)
    model = export(torch.nn.LSTM(64, 128, batch_first=True), (torch.rand(2, 7, 64),), tmp_path / "lstm.onnx", ["x"])
    res = quantize(model, tmp_path / "q.onnx")
    assert res.code == 0, res.stderr
    assert "DynamicQuantizeLSTM" in ops(tmp_path / "q.onnx") and "LSTM" not in ops(tmp_path / "q.onnx")
    assert (tmp_path / "q.onnx").stat().st_size <= 0.35 * model.stat().st_size
    x = np.random.default_rng(1).standard_normal((3, 7, 64)).astype(np.float32)
    check_output(model, tmp_path / "q.onnx", {"x": x}, rtol=0.03)


def test_gru_weights_are_stored_weight_only(tmp_path):
    # onnxruntime has no quantized GRU: its W and R become int8 behind DequantizeLinear, the GRU stays float
    torch.manual_seed(0)
    model = export(torch.nn.GRU(64, 128, batch_first=True), (torch.rand(2, 7, 64),), tmp_path / "gru.onnx", ["x"])
    res = quantize(model, tmp_path / "q.onnx")
    assert res.code == 0, res.stderr
    q = onnx.load(str(tmp_path / "q.onnx"))
    gru = next(n for n in q.graph.node if n.op_type == "GRU")
    made_by = {o: n.op_type for n in q.graph.node for o in n.output}
    assert made_by[gru.input[1]] == "DequantizeLinear" and made_by[gru.input[2]] == "DequantizeLinear"
    assert (tmp_path / "q.onnx").stat().st_size <= 0.35 * model.stat().st_size
    x = np.random.default_rng(1).standard_normal((3, 7, 64)).astype(np.float32)
    check_output(model, tmp_path / "q.onnx", {"x": x}, rtol=0.02)


def test_gemm_inside_an_if_branch_is_quantized_in_topological_order(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b = torch.nn.Linear(128, 128), torch.nn.Linear(128, 128)

        def forward(self, x):
            return torch.cond(x.sum() > 0, lambda t: self.a(t).relu(), lambda t: self.b(t).tanh(), (x,))

    path = tmp_path / "if.onnx"
    torch.onnx.export(Net().eval(), (torch.rand(2, 128),), str(path), dynamo=True, external_data=False,
                      input_names=["x"], output_names=["y"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    assert "If" in ops(path)
    res = quantize(path, tmp_path / "q.onnx")
    assert res.code == 0, res.stderr
    q = onnx.load(str(tmp_path / "q.onnx"))
    body_ops = [n.op_type for node in q.graph.node if node.op_type == "If"
                for a in node.attribute for n in a.g.node]
    assert "MatMulInteger" in body_ops
    assert (tmp_path / "q.onnx").stat().st_size <= 0.35 * path.stat().st_size
    rng = np.random.default_rng(1)
    for sign in (1, -1):  # both branches
        check_output(path, tmp_path / "q.onnx", {"x": sign * rng.random((3, 128), dtype=np.float32)}, rtol=0.03)


def test_float16_model_is_quantized(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64)).half()
    model = export(net, (torch.rand(2, 128).half(),), tmp_path / "fp16.onnx", ["x"])
    assert onnx.load(str(model)).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    res = quantize(model, tmp_path / "q.onnx")
    assert res.code == 0, res.stderr
    assert "DequantizeLinear" in ops(tmp_path / "q.onnx")
    # fp16 → int8 halves the weights (plus scales)
    assert (tmp_path / "q.onnx").stat().st_size <= 0.6 * model.stat().st_size
    x = np.random.default_rng(1).random((3, 128)).astype(np.float16)
    check_output(model, tmp_path / "q.onnx", {"x": x}, rtol=0.03)


def test_infinite_clip_bounds_do_not_refuse(tmp_path):
    # openwakeword's melspectrogram clamps with an +inf bound: a constant nobody quantizes
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc = torch.nn.Linear(128, 128)

        def forward(self, x):
            return torch.clamp(self.fc(x), min=-float("inf"), max=float("inf")).log1p().nan_to_num() + \
                torch.clamp(x, min=1e-10, max=float("inf"))

    model = export(Net(), (torch.rand(2, 128),), tmp_path / "clip.onnx", ["x"])
    m = onnx.load(str(model))
    consts = [onnx.numpy_helper.to_array(a.t) for n in m.graph.node if n.op_type == "Constant" for a in n.attribute]
    consts += [onnx.numpy_helper.to_array(t) for t in m.graph.initializer]
    assert any(np.isinf(c).any() for c in consts if c.dtype.kind == "f")
    res = quantize(model, tmp_path / "q.onnx")
    assert res.code == 0, res.stderr
    x = np.random.default_rng(1).random((3, 128), dtype=np.float32)
    check_output(model, tmp_path / "q.onnx", {"x": x}, rtol=0.03)


def test_opset9_export_with_initializers_as_inputs_is_converted_on_a_copy(conv_model, tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(8, 64, 3), torch.nn.ReLU(), torch.nn.Conv2d(64, 32, 3))
    model = export(net, (torch.rand(2, 8, 12, 12),), tmp_path / "old.onnx", ["x"], opset=9,
                   keep_initializers_as_inputs=True)
    before = model.read_bytes()
    m = onnx.load(str(model))
    assert m.opset_import[0].version == 9 and len(m.graph.input) > 1
    res = quantize(model, tmp_path / "q.onnx")
    assert res.code == 0, res.stderr
    assert model.read_bytes() == before
    assert (tmp_path / "q.onnx").stat().st_size <= 0.35 * model.stat().st_size
    assert any("opset 9" in w for w in json.loads(res.stdout)["result"]["summary"]["warnings"])
    x = np.random.default_rng(1).random((3, 8, 12, 12), dtype=np.float32)
    check_output(model, tmp_path / "q.onnx", {"x": x}, rtol=0.02)


def test_weights_fed_as_inputs_really_quantize_nothing(tmp_path):
    """The one true 'nothing to quantize': a Conv whose weight is a graph input, not stored."""

    class Net(torch.nn.Module):
        def forward(self, x, w):
            return torch.nn.functional.conv2d(x, w)

    model = tmp_path / "w.onnx"
    torch.onnx.export(Net(), (torch.rand(1, 3, 8, 8), torch.rand(4, 3, 3, 3)), str(model), dynamo=False,
                      input_names=["x", "w"], output_names=["y"], opset_version=17)
    res = run_cli("quantize", model, "-o", tmp_path / "q.onnx", "--mode", "dynamic", *FAST[:-1])
    assert res.code == 2 and "quantizes anything" in res.stderr, res.stderr
    assert not (tmp_path / "q.onnx").exists()


def test_generated_weights_are_not_materialized(tmp_path):
    """onnx's light zoo style: weights made by ConstantOfShape at load. ORT's pre-processing folds them, so INT8
    grew a 1 KB file to ~1 MB; that is refused by name (exit 2), nothing written."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    shape = nh.from_array(np.array([256, 1024], dtype=np.int64), "W_shape")
    nodes = [h.make_node("ConstantOfShape", ["W_shape"], ["W"],
                         value=h.make_tensor("v", T.FLOAT, [1], [0.01])),
             h.make_node("MatMul", ["x", "W"], ["y"])]
    g = h.make_graph(nodes, "gen", [h.make_tensor_value_info("x", T.FLOAT, ["n", 256])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["n", 1024])], [shape])
    path = tmp_path / "gen.onnx"
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), str(path))
    res = quantize(path, tmp_path / "q.onnx")
    assert res.code == 2 and "generates its weights" in res.stderr, res.stderr
    assert not (tmp_path / "q.onnx").exists()
