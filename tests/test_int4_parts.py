"""Issue #15 (INT4): the pieces the INT4 budget search stands on, on tiny real models run by onnxruntime — the
decoded 4-bit blocks are what MatMulNBits multiplies by, the fused embedding written back in standard ops computes
the same sums, the builder writes GatherBlockQuantized / 8-bit MatMulNBits / float where asked, checker-clean and
byte-identical across builds."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxforge.stages.quantize import int4


def _run(model, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    data = model if isinstance(model, bytes) else (model.SerializeToString() if hasattr(model, "SerializeToString")
                                                    else str(model))
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _model(tmp_path, fused: bool):
    """ids [n, seq] → embedding (2000 × 64 table; fused EmbedLayerNormalization or Gather) → MatMul 64×96 →
    MatMul 96×64 → y."""
    rng = np.random.default_rng(0)
    w = {"word": rng.normal(0, 1, (2000, 64)), "pos": rng.normal(0, 0.1, (32, 64)),
         "typ": rng.normal(0, 0.1, (2, 64)), "g": 1 + rng.normal(0, 0.1, 64), "b": rng.normal(0, 0.1, 64),
         "w1": rng.normal(0, 0.2, (64, 96)), "w2": rng.normal(0, 0.2, (96, 64))}
    inits = [nh.from_array(v.astype(np.float32), k) for k, v in w.items()]
    nodes = [h.make_node("Cast", ["ids"], ["ids32"], name="cast_ids", to=T.INT32),
             h.make_node("Cast", ["seg"], ["seg32"], name="cast_seg", to=T.INT32)]
    if fused:
        nodes.append(h.make_node("EmbedLayerNormalization", ["ids32", "seg32", "word", "pos", "typ", "g", "b"],
                                 ["e", "mask_index"], name="embed", domain="com.microsoft", epsilon=1e-12))
    else:
        nodes.append(h.make_node("Gather", ["word", "ids32"], ["e"], name="embed", axis=0))
    nodes += [h.make_node("MatMul", ["e", "w1"], ["m1"], name="mm1"), h.make_node("Relu", ["m1"], ["r"], name="relu"),
              h.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    ins = [h.make_tensor_value_info("ids", T.INT64, ["n", "s"]), h.make_tensor_value_info("seg", T.INT64, ["n", "s"])]
    g = h.make_graph(nodes, "emb", ins, [h.make_tensor_value_info("y", T.FLOAT, ["n", "s", 64])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 18), h.make_opsetid("com.microsoft", 1)])
    m.ir_version = 10
    path = tmp_path / ("fused.onnx" if fused else "gather.onnx")
    onnx.save(m, path)
    feeds = {"ids": rng.integers(0, 2000, (4, 12)).astype(np.int64), "seg": np.zeros((4, 12), np.int64)}
    return path, feeds


def test_decoded_blocks_are_what_matmulnbits_multiplies_by(tmp_path):
    """Ranking swaps decoded 4-bit weights into the float model: they must equal what onnxruntime computes with."""
    path, feeds = _model(tmp_path, fused=False)
    cfg = int4.Int4Config(32, False, 0, embeddings=False)
    q = int4.Int4Builder(path, tmp_path, cfg).model([])
    dec = int4.dequantized_matmul_weights(q)
    assert set(dec) == {"mm1", "mm2"}
    f = onnx.load(str(path))
    w1 = nh.to_array(next(t for t in f.graph.initializer if t.name == "w1"))
    assert 0.02 < np.linalg.norm(dec["mm1"] - w1) / np.linalg.norm(w1) < 0.15  # 4-bit rounding, not a no-op
    for t in f.graph.initializer:
        if t.name in ("w1", "w2"):
            t.CopyFrom(nh.from_array(dec["mm" + t.name[1]], t.name))
    np.testing.assert_allclose(_run(q, feeds), _run(f, feeds), rtol=1e-4, atol=1e-4)


def test_fused_embedding_written_back_computes_the_same(tmp_path):
    path, feeds = _model(tmp_path, fused=True)
    m = onnx.load(str(path))
    done = int4.unfuse_embedding(m, {"embed"})
    assert done == {"embed": "embed_word_Gather"}
    assert "EmbedLayerNormalization" not in {n.op_type for n in m.graph.node}
    onnx.checker.check_model(m, full_check=True)
    np.testing.assert_allclose(_run(m, feeds), _run(path, feeds), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_builder_writes_each_precision_where_asked(tmp_path, fused):
    path, feeds = _model(tmp_path, fused)
    b = int4.Int4Builder(path, tmp_path, int4.Int4Config(32, False, 4))
    nodes = {n.name: n for n in onnx.load(str(path)).graph.node}
    infos = [type("N", (), {"name": k, "op_type": n.op_type, "inputs": tuple(n.input)})() for k, n in nodes.items()]
    assert [t.name for t in int4.targets(infos, onnx.load(str(path)))] == ["embed", "mm1", "mm2"]
    p = b.build([], ["mm2"])
    m = onnx.load(str(p))
    onnx.checker.check_model(m, full_check=True)
    ops = {n.op_type: n for n in m.graph.node}
    assert "GatherBlockQuantized" in ops and "EmbedLayerNormalization" not in ops
    bits = {n.name: {a.name: h.get_attribute_value(a) for a in n.attribute}["bits"] for n in m.graph.node
            if n.op_type == "MatMulNBits"}
    assert bits == {"mm1_Q4": 4, "mm2_Q8": 8}, bits
    ref = _run(path, feeds)
    got = _run(m, feeds)
    cos = (ref * got).sum(-1) / np.linalg.norm(ref, axis=-1) / np.linalg.norm(got, axis=-1)
    assert cos.min() > 0.95
    assert int4.has_nbits(p)
    # float where asked: the embedding kept as it was, both MatMuls float → nothing left in 4 bits
    p2 = b.build(["embed", "mm1", "mm2"])
    kinds = {n.op_type for n in onnx.load(str(p2)).graph.node}
    assert "GatherBlockQuantized" not in kinds and "MatMulNBits" not in kinds and not int4.has_nbits(p2)
    assert (("EmbedLayerNormalization" if fused else "Gather") in kinds)
    # the same build twice: the same bytes
    assert b.build([], ["mm2"]).read_bytes() == p.read_bytes()


def test_fake_quant_rows_matches_the_gather_quantizer(tmp_path):
    """The ranking rounds an embedding table with fake_quant_rows: the same values GatherBlockQuantized returns."""
    path, feeds = _model(tmp_path, fused=False)
    q = int4.Int4Builder(path, tmp_path, int4.Int4Config(32, False, 0)).model(["mm1", "mm2"])
    assert {n.op_type for n in q.graph.node} >= {"GatherBlockQuantized"}
    word = nh.to_array(next(t for t in onnx.load(str(path)).graph.initializer if t.name == "word"))
    rounded = int4.fake_quant_rows(word, 32, False)
    f = onnx.load(str(path))
    for t in f.graph.initializer:
        if t.name == "word":
            t.CopyFrom(nh.from_array(rounded, "word"))
    np.testing.assert_allclose(_run(q, feeds), _run(f, feeds), rtol=1e-4, atol=1e-4)


def test_fused_attention_written_back_computes_the_same(tmp_path):
    """Attention(x, W, b, mask) → MatMul + Split + MultiHeadAttention: the same outputs (so its QKV weight can be
    block-quantized as a MatMul), padded keys masked the same way."""
    rng = np.random.default_rng(1)
    d = 32
    inits = [nh.from_array(rng.normal(0, 0.3, (d, 3 * d)).astype(np.float32), "w"),
             nh.from_array(rng.normal(0, 0.1, 3 * d).astype(np.float32), "b")]
    nodes = [h.make_node("Cast", ["mask"], ["mask32"], name="cast", to=T.INT32),
             h.make_node("Attention", ["x", "w", "b", "mask32"], ["y"], name="att", domain="com.microsoft",
                         num_heads=4, qkv_hidden_sizes=[d, d, d])]
    g = h.make_graph(nodes, "att", [h.make_tensor_value_info("x", T.FLOAT, ["n", "s", d]),
                                    h.make_tensor_value_info("mask", T.INT64, ["n", "s"])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["n", "s", d])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 18), h.make_opsetid("com.microsoft", 1)])
    mask = np.ones((3, 7), np.int64)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    feeds = {"x": rng.normal(0, 1, (3, 7, d)).astype(np.float32), "mask": mask}
    ref = _run(m, feeds)
    done = int4.unfuse_attention(m, {"att"})
    assert done == ["att_qkv_MatMul"]
    assert [n.op_type for n in m.graph.node] == ["Cast", "MatMul", "Split", "MultiHeadAttention"]
    onnx.checker.check_model(m, full_check=True)
    np.testing.assert_allclose(_run(m, feeds), ref, rtol=1e-5, atol=1e-5)


def test_smallest_holding_doubles_bisects_and_respects_the_cap():
    """The INT8 and INT4 budget searches' shared loop: the smallest k that holds, with one build per k tried;
    a k that leaves nothing to quantize lowers the cap instead of ending the search."""
    from onnxforge.stages.quantize.budget import smallest_holding

    def search(n, first_holding, buildable=None):
        tried = []

        def at(k):
            tried.append(k)
            if buildable is not None and k > buildable:
                return None
            return ("path", {"within": k >= first_holding})

        return smallest_holding(at, n), tried

    for n in (1, 2, 7, 20, 33):
        for first in range(1, n + 1):
            k, tried = search(n, first)
            assert k == first and len(tried) == len(set(tried)) and len(tried) <= 2 * n.bit_length() + 1
    assert search(20, 25)[0] is None  # nothing holds
    k, tried = search(20, 10, buildable=12)  # 16 leaves nothing to quantize: 12 is tried, holds, bisect down
    assert k == 10 and 16 in tried and 12 in tried
    assert search(20, 14, buildable=12)[0] is None  # what would hold is not buildable
    k, tried = search(64, 40, buildable=45)  # the cap is found by halving too: builds stay logarithmic
    assert k == 40 and len(tried) <= 14, tried
