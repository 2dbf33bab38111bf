"""sweep6: quantize refuses inputs a mode cannot take up front (exit 2, one line, a fix that works) — INT4 and
static INT8 on float16 models, INT4 on a model whose MatMul weights sit in If branches — and bench never counts a
model without a batch axis (a scalar input) as more rows than one call runs."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh


def _mlp(path, data, dtype=np.float16):
    rng = np.random.default_rng(0)
    et = T.FLOAT16 if dtype == np.float16 else T.FLOAT
    w1 = nh.from_array(rng.standard_normal((16, 64)).astype(dtype), "W1")
    w2 = nh.from_array(rng.standard_normal((64, 4)).astype(dtype), "W2")
    g = h.make_graph([h.make_node("MatMul", ["x", "W1"], ["a"], name="mm1"),
                      h.make_node("Relu", ["a"], ["b"], name="r"),
                      h.make_node("MatMul", ["b", "W2"], ["y"], name="mm2")], "g",
                     [h.make_tensor_value_info("x", et, ["N", 16])], [h.make_tensor_value_info("y", et, ["N", 4])],
                     [w1, w2])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), path)
    np.savez(data, x=rng.standard_normal((200, 16)).astype(dtype))


def _if_model(path, data):
    rng = np.random.default_rng(0)
    wa = nh.from_array(rng.standard_normal((16, 32)).astype(np.float32), "Wa")
    wb = nh.from_array(rng.standard_normal((16, 32)).astype(np.float32), "Wb")
    out = [h.make_tensor_value_info("o", T.FLOAT, ["N", 32])]
    thn = h.make_graph([h.make_node("MatMul", ["x", "Wa"], ["o"], name="mm_then")], "then", [], out)
    els = h.make_graph([h.make_node("MatMul", ["x", "Wb"], ["o"], name="mm_else")], "else", [], out)
    g = h.make_graph([h.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="rs"),
                      h.make_node("Constant", [], ["z"], value=nh.from_array(np.array(0, np.float32)), name="c0"),
                      h.make_node("Greater", ["s", "z"], ["c"], name="gt"),
                      h.make_node("If", ["c"], ["y"], then_branch=thn, else_branch=els, name="if")], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, ["N", 16])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["N", 32])], [wa, wb])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), path)
    np.savez(data, x=rng.standard_normal((200, 16)).astype(np.float32))


def _refused(r, *words):
    assert r.code == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "budget" not in lines[0] and "Gemm" not in lines[0].split("—")[0], lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_static_refuses_float16_model(cli, tmp_path):
    _mlp(tmp_path / "m.onnx", tmp_path / "d.npz")
    r = cli("quantize", "m.onnx", "-o", "q.onnx", "--mode", "static", "--data", "d.npz", cwd=tmp_path)
    line = _refused(r, "float16", "--mode dynamic", "float32 model")
    assert "--mode fp16" not in line and not (tmp_path / "q.onnx").exists()


def test_int4_refuses_float16_model_and_the_named_fixes_work(cli, tmp_path):
    _mlp(tmp_path / "m.onnx", tmp_path / "d.npz")
    r = cli("quantize", "m.onnx", "-o", "q.onnx", "--mode", "int4", "--data", "d.npz", cwd=tmp_path)
    _refused(r, "float16", "--mode dynamic", "float32 model")
    assert not (tmp_path / "q.onnx").exists()
    r = cli("quantize", "m.onnx", "-o", "dyn.onnx", "--mode", "dynamic", "--data", "d.npz", cwd=tmp_path)
    assert r.code == 0, r.stderr
    _mlp(tmp_path / "m32.onnx", tmp_path / "d32.npz", np.float32)
    r = cli("quantize", "m32.onnx", "-o", "q4.onnx", "--mode", "int4", "--data", "d32.npz", "--max-accuracy-drop",
            "1", cwd=tmp_path)
    assert r.code == 0, r.stderr


def test_int4_names_matmuls_inside_if_branches(cli, tmp_path):
    _if_model(tmp_path / "if.onnx", tmp_path / "d.npz")
    r = cli("quantize", "if.onnx", "-o", "q.onnx", "--mode", "int4", "--data", "d.npz", cwd=tmp_path)
    line = _refused(r, "If/Loop/Scan", "2 MatMul", "--mode dynamic")
    assert "stores none" not in line and "torch" not in line
    r = cli("quantize", "if.onnx", "-o", "dyn.onnx", "--mode", "dynamic", "--data", "d.npz", cwd=tmp_path)
    assert r.code == 0, r.stderr


def test_bench_times_a_scalar_only_model_at_batch_1_and_skips_64(cli, tmp_path):
    g = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g", [h.make_tensor_value_info("x", T.FLOAT, [])],
                     [h.make_tensor_value_info("y", T.FLOAT, [])])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), tmp_path / "scalar.onnx")
    r = cli("bench", "scalar.onnx", "--runs", "5", "--json", cwd=tmp_path)
    assert r.code == 0, r.stderr
    res = json.loads(r.stdout)["result"]
    assert [x["batch"] for x in res["results"]] == [1]
    assert res["batches"] == [1] and res["skipped_batches"] == [64]
