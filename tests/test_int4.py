"""Issue #15: `quantize --mode int4` — MatMul weights in 4-bit blocks (com.microsoft MatMulNBits, written by
onnxruntime's MatMulNBitsQuantizer) under the same accuracy budget as INT8. The model is an MLP trained here on
digits with scikit-learn; accuracies are computed here with onnxruntime and sklearn.metrics."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import FIXTURES, run_cli
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from sklearn.metrics import accuracy_score

pytestmark = pytest.mark.slow  # trains an MLP and times candidates: ~1-2 min on 2 shared cores

TEST = FIXTURES / "data" / "digits_test.npz"
TRAIN = FIXTURES / "data" / "digits_train.npz"


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """64 → 256 → 256 → 10 logits (MatMul + Add + Relu), trained on the digits train split."""
    from sklearn.neural_network import MLPClassifier

    d = tmp_path_factory.mktemp("int4")
    with np.load(TRAIN) as z:
        x, y = z["x"].reshape(len(z["x"]), -1).astype(np.float32), z["label"]
    clf = MLPClassifier((256, 256), max_iter=60, random_state=0).fit(x, y)
    inits, nodes, cur = [], [], "x"
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_, strict=True)):
        inits += [nh.from_array(w.astype(np.float32), f"w{i}"), nh.from_array(b.astype(np.float32), f"b{i}")]
        nodes += [h.make_node("MatMul", [cur, f"w{i}"], [f"m{i}"], name=f"mm{i}"),
                  h.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        cur = f"a{i}"
        if i < len(clf.coefs_) - 1:
            nodes.append(h.make_node("Relu", [cur], [f"r{i}"]))
            cur = f"r{i}"
    nodes.append(h.make_node("Identity", [cur], ["logits"]))
    g = h.make_graph(nodes, "mlp", [h.make_tensor_value_info("x", T.FLOAT, ["n", 64])],
                     [h.make_tensor_value_info("logits", T.FLOAT, ["n", 10])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], producer_name="tests")
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, d / "mlp.onnx")
    with np.load(TEST) as z:
        np.savez(d / "test.npz", x=z["x"].reshape(len(z["x"]), -1).astype(np.float32), label=z["label"])
    return d


def _accuracy(path, d) -> float:
    with np.load(d / "test.npz") as z:
        x, y = z["x"], z["label"]
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return accuracy_score(y, logits.argmax(1))


def test_int4_blocks_the_matmuls_and_holds_the_accuracy_budget(mlp, tmp_path):
    out = tmp_path / "q4.onnx"
    res = run_cli("quantize", mlp / "mlp.onnx", "-o", out, "--mode", "int4", "--data", mlp / "test.npz",
                  "--labels", "label", "--max-accuracy-drop", "0.01", "--set", "int4={block_size: 32, symmetric: false}",
                  "--json", cwd=tmp_path)
    assert res.code == 0, res.stderr[-2000:]
    s = res.json()["result"]["summary"]
    m = onnx.load(str(out))
    onnx.checker.check_model(m, full_check=True)
    nbits = [n for n in m.graph.node if n.op_type == "MatMulNBits"]
    assert nbits, [n.op_type for n in m.graph.node]
    for n in nbits:
        attrs = {a.name: h.get_attribute_value(a) for a in n.attribute}
        assert attrs["bits"] == 4 and attrs["block_size"] == 32 and attrs["accuracy_level"] == 4
        assert len(n.input) >= 4 and n.input[3]  # asymmetric: a zero point per block
    drop = _accuracy(mlp / "mlp.onnx", mlp) - _accuracy(out, mlp)
    assert drop <= 0.01 and s["accuracy_drop"] == pytest.approx(drop, abs=1e-9)
    assert out.stat().st_size < 0.3 * (mlp / "mlp.onnx").stat().st_size  # 4-bit weights + a scale per 32
    assert s["config"] == {"mode": "int4", "block_size": 32, "symmetric": False, "accuracy_level": 4,
                           "embeddings": True, "fallback": "int8", "attention": True}


@pytest.mark.parametrize("fallback", ["int8", "float"])
def test_int4_over_budget_demotes_matmuls_or_fails(mlp, tmp_path, fallback):
    """A zero-drop budget: the MatMuls that cost accuracy become 8-bit MatMulNBits (fallback int8) or stay float
    (fallback float), each named in float_nodes with its precision — or exit 1 with no model; never a model over
    budget."""
    out = tmp_path / "q4.onnx"
    res = run_cli("quantize", mlp / "mlp.onnx", "-o", out, "--mode", "int4", "--data", mlp / "test.npz",
                  "--labels", "label", "--max-accuracy-drop", "0", "--set",
                  f"int4={{block_size: 128, symmetric: true, fallback: {fallback}}}", "--json", cwd=tmp_path)
    base = _accuracy(mlp / "mlp.onnx", mlp)
    if res.code == 1:
        assert not out.exists()
        return
    assert res.code == 0, res.stderr[-2000:]
    assert _accuracy(out, mlp) >= base
    s = res.json()["result"]["summary"]
    m = onnx.load(str(out))
    onnx.checker.check_model(m, full_check=True)
    bits = {n.name.rsplit("_Q", 1)[0]: {a.name: h.get_attribute_value(a) for a in n.attribute}["bits"]
            for n in m.graph.node if n.op_type == "MatMulNBits"}
    assert 4 in bits.values()  # something is left in 4 bits
    demoted = {n: 8 for n, b in bits.items() if b == 8} | {n.name: 32 for n in m.graph.node if n.op_type == "MatMul"}
    assert demoted == {f["node"]: 8 if f["precision"] == "int8" else 32 for f in s["float_nodes"]}
    if fallback == "float":
        assert 8 not in bits.values()


def test_int4_options_are_checked(mlp, tmp_path):
    res = run_cli("quantize", mlp / "mlp.onnx", "-o", tmp_path / "q.onnx", "--mode", "int4", "--data",
                  mlp / "test.npz", "--set", "int4={block_size: 24}", cwd=tmp_path)
    assert res.code == 2 and "block_size" in res.stderr, res.stderr


def test_int4_on_a_gemm_model_is_exit_2_pointing_to_int8(tmp_path):
    """A torch Linear exports as Gemm: INT4 (MatMulNBits) has nothing to quantize there — said as such, not as
    the INT8 op list."""
    from conftest import assert_one_line_error

    rng = np.random.default_rng(0)
    w = nh.from_array(rng.normal(size=(3, 4)).astype(np.float32), "w")
    g = h.make_graph([h.make_node("Gemm", ["x", "w"], ["y"], transB=1)], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, ["n", 4])], [h.make_tensor_value_info("y", T.FLOAT, ["n", 3])],
                     [w])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), tmp_path / "gemm.onnx")
    np.save(tmp_path / "x.npy", rng.normal(size=(16, 4)).astype(np.float32))
    res = run_cli("quantize", tmp_path / "gemm.onnx", "-o", tmp_path / "q.onnx", "--mode", "int4", "--data",
                  tmp_path / "x.npy", cwd=tmp_path)
    line = assert_one_line_error(res, 2)
    assert "INT4 (MatMulNBits) covers MatMul weights only" in line and "--mode dynamic or static" in line, line
    assert not (tmp_path / "q.onnx").exists()
