"""quantize's accuracy-budget fallback reaches nodes inside If bodies: a model whose MatMuls sit in If branches and
that is over budget after dynamic INT8 ships with the sensitive branch MatMul kept float (it used to exit 1 with
"keeping one more would leave nothing reduced" without ever offering a branch node). Real onnxruntime, hand-built
ONNX models (no torch), fresh CLI processes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import run_cli
from onnx import TensorProto, helper, numpy_helper

D, H, C = 32, 64, 8
DROP = 0.02  # one of the 64 rows may disagree with the float model: all INT8 loses 5, the outlier MatMul float 1


def if_model(path: Path, main_matmul: bool = False) -> Path:
    """x [N, 32] → (optionally a benign MatMul) → If(mean(x) > -1e9, always true): then = MatMul(w1, one outlier
    row: per-tensor int8 steps swamp the rest) → Relu → MatMul(w2); else = MatMul(w3), never taken. Body nodes
    are unnamed, as exporters often leave them."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(D, H)).astype(np.float32)
    w1[0, :] *= 60.0
    w2 = (rng.normal(size=(H, C)) * 0.1).astype(np.float32)
    w3 = rng.normal(size=(D, C)).astype(np.float32)
    src = "xm" if main_matmul else "x"

    def body(name, nodes, inits, out):
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                                 inits)

    then_g = body("then", [helper.make_node("MatMul", [src, "w1"], ["h"]), helper.make_node("Relu", ["h"], ["hr"]),
                           helper.make_node("MatMul", ["hr", "w2"], ["t_out"])],
                  [numpy_helper.from_array(w2, "w2")], "t_out")
    else_g = body("else", [helper.make_node("MatMul", [src, "w3"], ["e_out"])], [], "e_out")
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w3, "w3"),
             numpy_helper.from_array(np.float32(-1e9), "lo")]
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0),
             helper.make_node("Greater", ["m", "lo"], ["c"]),
             helper.make_node("If", ["c"], ["logits"], then_branch=then_g, else_branch=else_g)]
    if main_matmul:
        w0 = (np.eye(D) + 0.05 * rng.normal(size=(D, D))).astype(np.float32)
        inits.append(numpy_helper.from_array(w0, "w0"))
        nodes.insert(0, helper.make_node("MatMul", ["x", "w0"], ["xm"], name="main_mm"))
    g = helper.make_graph(nodes, "if_matmuls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", C])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "x.npy"
    np.save(p, np.random.default_rng(1).normal(size=(64, D)).astype(np.float32))
    return p


def quantize(model: Path, data: Path, out: Path, *extra: str):
    # fresh: a process of its own per call (no zygote preloading torch/TF), and its own hash seed for determinism
    return run_cli("quantize", model, "-o", out, "--mode", "dynamic", "--data", data, "--max-accuracy-drop",
                   str(DROP), "--set", "latency_rounds=1", "--set", "batch_sizes=[1]", *extra, "--json",
                   cwd=out.parent, fresh=True)


def body_ops(path: Path) -> dict[str, list[str]]:
    """op types inside the If's then branch, by node name."""
    m = onnx.load(str(path))
    then_g = next(a.g for n in m.graph.node if n.op_type == "If" for a in n.attribute if a.name == "then_branch")
    out: dict[str, list[str]] = {}
    for n in then_g.node:
        out.setdefault(n.name, []).append(n.op_type)
    return out


def test_if_branch_matmul_is_kept_float_to_fit_the_budget(data, tmp_path):
    model = if_model(tmp_path / "ifmm.onnx")
    out = tmp_path / "ifmm.int8.onnx"
    res = quantize(model, data, out)
    assert res.code == 0, res.stdout[-2000:] + res.stderr[-2000:]
    s = res.json()["result"]["summary"]
    kept = s["float_nodes"]
    # the outlier MatMul of the then branch, found by measurement (the never-taken else branch stays INT8)
    assert [k["node"] for k in kept] == ["If_2.then_branch/MatMul_0"]
    assert kept[0]["reason"].startswith("keeping it in float (inside If_2.then_branch)")
    steps = s["fallback"]["steps"]
    assert not steps[0]["within_budget"] and steps[-1]["within_budget"]
    # the shipped model: checker-clean, that MatMul float, the other branch MatMul still INT8, budget held
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    ops = body_ops(out)
    assert ops["If_2.then_branch/MatMul_0"] == ["MatMul"]
    assert any(op in ("MatMulInteger", "DynamicQuantizeMatMul") for v in ops.values() for op in v)
    x = np.load(data)
    ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 1 - DROP
    # deterministic: the same inputs ship the same bytes
    again = tmp_path / "again" / "ifmm.int8.onnx"
    again.parent.mkdir()
    res2 = quantize(model, data, again)
    assert res2.code == 0, res2.stderr[-2000:]
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(again.read_bytes()).digest()


def test_tensor_sensitivity_probes_body_nodes_against_main_graph_ranking(data, tmp_path):
    """`tensor` cannot fetch tensors inside bodies: the body nodes are probed, and the measured better choice — the
    outlier branch MatMul, not the benign main-graph one the tensor ranking offers — is kept float."""
    model = if_model(tmp_path / "ifmm2.onnx", main_matmul=True)
    out = tmp_path / "ifmm2.int8.onnx"
    res = quantize(model, data, out, "--set", "sensitivity=tensor")
    assert res.code == 0, res.stdout[-2000:] + res.stderr[-2000:]
    s = res.json()["result"]["summary"]
    assert [k["node"] for k in s["float_nodes"]] == ["If_3.then_branch/MatMul_0"]
    m = onnx.load(str(out))
    assert not any(n.name == "main_mm" and n.op_type == "MatMul" for n in m.graph.node)  # still quantized


def test_body_nodes_named_uniquely_and_offered_where_a_mode_reaches_them(tmp_path):
    from onnxforge.stages.quantize import int8

    path = if_model(tmp_path / "named.onnx")
    m = onnx.load(str(path))
    for n in m.graph.node:  # the else branch reuses a name of the then branch: both must stay addressable
        if n.op_type == "If":
            for a in n.attribute:
                a.g.node[0].name = "mm"
    onnx.save(m, str(path))
    int8.name_nodes(path)
    first = path.read_bytes()
    int8.name_nodes(path)
    assert path.read_bytes() == first  # stable
    nodes = int8.graph_nodes(path, nested=True)
    names = [n.name for n in nodes]
    assert len(names) == len(set(names)) and "" not in names
    # bodies in attribute order (else_branch sorts first): the first "mm" keeps its name, the repeat is renamed
    assert [(n.scope, n.name) for n in nodes if n.scope] == [
        ("If_2.else_branch", "mm"), ("If_2.then_branch", "If_2.then_branch/MatMul_0"),
        ("If_2.then_branch", "If_2.then_branch/Relu_1"), ("If_2.then_branch", "If_2.then_branch/MatMul_2")]
    dyn = int8.targets(nodes, int8.Int8Config("dynamic"), bodies=True)
    assert [n.name for n in dyn] == ["mm", "If_2.then_branch/MatMul_0", "If_2.then_branch/MatMul_2"]
    # static QDQ/QOperator never reach bodies: no body MatMul is offered there (excluding it would change nothing)
    for fmt in ("QDQ", "QOperator"):
        assert not [n for n in int8.targets(nodes, int8.Int8Config("static", quant_format=fmt)) if n.scope]
