"""INT4 weight-only: MatMul weights stored block-wise in 4 bits (com.microsoft MatMulNBits), written by
onnxruntime's own MatMulNBitsQuantizer. Activations stay float; each block of `block_size` weights along K shares
one scale (and a zero point unless symmetric). The word-embedding table goes to 4-bit blocks too
(com.microsoft GatherBlockQuantized; a fused EmbedLayerNormalization is first written back as Gather + Add +
LayerNormalization so its table can be). The stage holds the result to the same budget as INT8 (accuracy drop, or
output fidelity for token models): the weights that break it become 8-bit MatMulNBits (`fallback: int8`, the
default: near-lossless and as fast) or stay float (`fallback: float`) — stages/quantize/int4_search.py."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from onnxforge.config import StrictModel

EMBED_MIN_ROWS = 1024  # a Gather table this tall is a vocabulary (position tables are 512): worth 4 bits


class Int4Options(StrictModel):
    block_size: Literal[16, 32, 64, 128, 256] = Field(32, description="weights per scale along K (smaller: more "
                                                      "accurate, larger file); onnxruntime takes a power of 2 ≥ 16")
    symmetric: bool = Field(False, description="signed 4-bit weights without zero points; false (default) adds a "
                            "zero point per block — on all-MiniLM-L6-v2 min cosine 0.915 vs 0.871 for the same size")
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        4, description="onnxruntime's compute type for MatMulNBits on CPU: 0 unset (fp32), 1 fp32, 2 fp16, 3 bf16, "
                       "4 int8 (activations quantized per block at run time: fastest on CPUs with VNNI/AVX2)")
    embeddings: bool = Field(True, description="also store the word-embedding table (a Gather of ≥ 1024 rows, or "
                             "the table inside a fused EmbedLayerNormalization) in 4-bit blocks (GatherBlockQuantized)")
    attention: bool = Field(True, description="also the fused Attention's QKV weights: the Attention is written "
                            "back as MatMul + Split + MultiHeadAttention (the same attention) so its weights become "
                            "MatMulNBits; the search keeps them at 8 bits when 4 bits cost too much")
    fallback: Literal["int8", "float"] = Field(
        "int8", description="what a MatMul that breaks the budget becomes: int8 (8-bit MatMulNBits, same block "
                            "size: near-lossless, as fast as 4-bit) or float")


@dataclass(frozen=True)
class Int4Config:
    block_size: int
    symmetric: bool
    accuracy_level: int
    embeddings: bool = True
    fallback: str = "int8"
    attention: bool = True

    @property
    def label(self) -> str:
        return f"int4 b{self.block_size} {'sym' if self.symmetric else 'asym'} acc{self.accuracy_level}"

    def as_dict(self) -> dict:
        return {"mode": "int4", **asdict(self)}


def config(o: Int4Options) -> Int4Config:
    return Int4Config(o.block_size, o.symmetric, o.accuracy_level, o.embeddings, o.fallback, o.attention)


def _float_2d(model) -> dict:
    import onnx

    return {t.name: t for t in model.graph.initializer
            if len(t.dims) == 2 and t.data_type == onnx.TensorProto.FLOAT}


def embedding_node(n, weights: dict) -> bool:
    """A word-embedding lookup whose table can go to 4-bit blocks: a fused EmbedLayerNormalization (7 inputs, no
    mask/position ids) or a Gather on axis 0 of a stored 2-D float table of ≥ EMBED_MIN_ROWS rows."""
    ins = list(getattr(n, "inputs", None) or n.input)
    if n.op_type == "EmbedLayerNormalization":
        return len(ins) == 7 and all(ins) and ins[2] in weights
    if n.op_type == "Gather" and len(ins) == 2 and ins[0] in weights:
        axis = next((a.i for a in getattr(n, "attribute", ()) if a.name == "axis"), 0)
        return axis == 0 and weights[ins[0]].dims[0] >= EMBED_MIN_ROWS
    return False


_ATTENTION_ATTRS = {"num_heads", "unidirectional", "qkv_hidden_sizes", "scale", "mask_filter_value"}


def attention_node(n, weights: dict) -> bool:
    """A fused com.microsoft Attention that MultiHeadAttention computes the same way: a stored [D, 3D] weight,
    equal Q/K/V widths, bidirectional, no past state, relative bias or rotary attributes; mask index optional."""
    from onnx import helper

    if n.op_type != "Attention" or n.domain != "com.microsoft" or len(n.input) not in (3, 4) or len(n.output) != 1:
        return False
    a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
    t = weights.get(n.input[1])
    if t is None or not n.input[2] or set(a) - _ATTENTION_ATTRS or a.get("unidirectional", 0):
        return False
    sizes = list(a.get("qkv_hidden_sizes") or [])
    return t.dims[1] % 3 == 0 and (not sizes or sizes == [t.dims[1] // 3] * 3)


def targets(nodes, model, embeddings: bool = True, attention: bool = True) -> list:
    """MatMul nodes whose B is a stored 2-D float weight (what MatMulNBits replaces); with `embeddings` the
    word-embedding lookups (GatherBlockQuantized); with `attention` the fused Attentions (their QKV weight, as a
    MatMul before MultiHeadAttention): the budget search's candidates."""
    weights = _float_2d(model)
    proto = {n.name: n for n in model.graph.node}
    out = []
    for n in nodes:
        if n.op_type == "MatMul" and len(n.inputs) > 1 and n.inputs[1] in weights:
            out.append(n)
        elif embeddings and n.op_type in ("EmbedLayerNormalization", "Gather") and n.name in proto \
                and embedding_node(proto[n.name], weights):
            out.append(n)
        elif attention and n.op_type == "Attention" and n.name in proto and attention_node(proto[n.name], weights):
            out.append(n)
    return out


def qkv_matmul(name: str) -> str:
    """The MatMul an unfused Attention's QKV projection becomes (unfuse_attention)."""
    return f"{name}_qkv_MatMul"


def unfuse_attention(model, names: set[str]) -> list[str]:
    """In place: each Attention named in `names` (attention_node) becomes MatMul(x, W) → Split in Q, K, V →
    com.microsoft MultiHeadAttention(q, k, v, bias, mask) with the same heads, scale and mask — so its weight is a
    MatMul the quantizer can block. Returns the new MatMuls' names (qkv_matmul)."""
    from onnx import helper, numpy_helper

    g = model.graph
    weights = _float_2d(model)
    out, done = [], []
    for n in g.node:
        if n.name not in names or not attention_node(n, weights):
            out.append(n)
            continue
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        d = weights[n.input[1]].dims[1] // 3
        p = n.name
        extra = {k: a[k] for k in ("scale", "mask_filter_value") if k in a}
        mask = [n.input[3]] if len(n.input) > 3 and n.input[3] else []
        out += [helper.make_node("MatMul", [n.input[0], n.input[1]], [f"{p}_qkv"], name=qkv_matmul(p)),
                helper.make_node("Split", [f"{p}_qkv", f"{p}_qkv_split"], [f"{p}_q", f"{p}_k", f"{p}_v"],
                                 name=f"{p}_Split", axis=-1),
                helper.make_node("MultiHeadAttention", [f"{p}_q", f"{p}_k", f"{p}_v", n.input[2], *mask],
                                 list(n.output), name=f"{p}_MultiHeadAttention", domain="com.microsoft",
                                 num_heads=a["num_heads"], **extra)]
        g.initializer.append(numpy_helper.from_array(np.array([d, d, d], np.int64), f"{p}_qkv_split"))
        done.append(qkv_matmul(p))
    if done:
        del g.node[:]
        g.node.extend(out)
    return done


def unfuse_embedding(model, names: set[str]) -> dict[str, str]:
    """In place: each EmbedLayerNormalization named in `names` (whose mask-index output nobody reads) becomes
    Gather(word table) + Slice(position table to the sequence length) + Gather(segment table) + Add + Add +
    LayerNormalization — the same sums (positions 0…seq-1, as the fused op uses without position ids) in standard
    ops, so the word table's Gather can be block-quantized. Returns {fused node name: its word Gather's name}."""
    from onnx import helper, numpy_helper

    g = model.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    weights = _float_2d(model)
    out, done = [], {}
    for n in g.node:
        if n.name not in names or n.op_type != "EmbedLayerNormalization" or not embedding_node(n, weights) \
                or any(o in used for o in n.output[1:]):
            out.append(n)
            continue
        ids, seg, word, pos, typ, gamma, beta = n.input
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-12)
        p = n.name
        out += [helper.make_node("Gather", [word, ids], [f"{p}_word"], name=f"{p}_word_Gather", axis=0),
                helper.make_node("Shape", [ids], [f"{p}_seq"], name=f"{p}_Shape", start=1, end=2),
                helper.make_node("Slice", [pos, f"{p}_zero", f"{p}_seq", f"{p}_zero"], [f"{p}_pos"],
                                 name=f"{p}_pos_Slice"),
                helper.make_node("Gather", [typ, seg], [f"{p}_type"], name=f"{p}_type_Gather", axis=0),
                helper.make_node("Add", [f"{p}_word", f"{p}_pos"], [f"{p}_wp"], name=f"{p}_Add_pos"),
                helper.make_node("Add", [f"{p}_wp", f"{p}_type"], [f"{p}_sum"], name=f"{p}_Add_type"),
                helper.make_node("LayerNormalization", [f"{p}_sum", gamma, beta], [n.output[0]],
                                 name=f"{p}_LayerNormalization", axis=-1, epsilon=eps)]
        g.initializer.append(numpy_helper.from_array(np.array([0], np.int64), f"{p}_zero"))
        done[p] = f"{p}_word_Gather"
    if done:
        del g.node[:]
        g.node.extend(out)
    return done


@dataclass
class Int4Builder:
    src: Path
    work: Path
    cfg: Int4Config
    tag: str = "int4"  # file name prefix: builders sharing a work folder must not overwrite each other's models
    _n: int = 0

    def build(self, exclude: list[str], int8: list[str] | tuple = ()) -> Path:
        """Every target in 4 bits except `exclude` (kept float) and `int8` (MatMuls in 8-bit MatMulNBits)."""
        self._n += 1
        from onnxforge.artifact import save_model

        return save_model(self.model(exclude, int8), self.work / f"{self.tag}-{self._n}.onnx", run_check=False)

    def model(self, exclude, int8=()):
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        from onnxforge.runtime import quiet

        m = onnx.load(str(self.src))
        skip = set(exclude) | set(int8)
        gathers = {}
        if self.cfg.embeddings:
            weights = _float_2d(m)
            fused = {n.name for n in m.graph.node if n.op_type == "EmbedLayerNormalization" and n.name not in skip}
            gathers = unfuse_embedding(m, fused)
            gathers |= {n.name: n.name for n in m.graph.node if n.op_type == "Gather" and n.name not in skip
                        and n.name not in gathers.values() and embedding_node(n, weights)}
        attention8 = set()
        if self.cfg.attention:
            atts = {n.name for n in m.graph.node if n.op_type == "Attention" and n.name not in set(exclude)}
            unfuse_attention(m, atts)
            attention8 = {qkv_matmul(a) for a in atts & set(int8)}
            skip |= attention8
            int8 = [*int8, *sorted(attention8)]
        ops = ("MatMul", "Gather") if gathers else ("MatMul",)
        other = [n.name for n in m.graph.node if n.op_type == "Gather" and n.name not in gathers.values()]
        with quiet():
            q = MatMulNBitsQuantizer(m, bits=4, block_size=self.cfg.block_size, is_symmetric=self.cfg.symmetric,
                                     accuracy_level=self.cfg.accuracy_level, nodes_to_exclude=sorted(skip) + other,
                                     op_types_to_quantize=ops, quant_axes=(("MatMul", 0), ("Gather", 1)))
            q.process()
            m = q.model.model
            if int8:
                rest = [n.name for n in m.graph.node if n.op_type == "MatMul" and n.name not in set(int8)]
                q = MatMulNBitsQuantizer(m, bits=8, block_size=self.cfg.block_size, is_symmetric=False,
                                         accuracy_level=self.cfg.accuracy_level, nodes_to_exclude=rest,
                                         op_types_to_quantize=("MatMul",))
                q.process()
                m = q.model.model
        return m


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _unpack4(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.uint8)
    return np.stack([a & 0x0F, a >> 4], -1).reshape(*a.shape[:-1], a.shape[-1] * 2)


def dequantized_matmul_weights(model) -> dict[str, np.ndarray]:
    """{original MatMul name: its float [K, N] weight as the 4-bit MatMulNBits nodes of `model` store it} —
    (q - zero point) × scale per block, exactly what onnxruntime multiplies by at accuracy level 0."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type != "MatMulNBits":
            continue
        a = _attrs(n)
        if a.get("bits") != 4:
            continue
        k, cols, bs = a["K"], a["N"], a["block_size"]
        b = numpy_helper.to_array(inits[n.input[1]])  # [N, blocks, bs/2] uint8, low nibble first
        nb = b.shape[1]
        q = _unpack4(b).reshape(cols, nb, bs).astype(np.float32)
        sc = numpy_helper.to_array(inits[n.input[2]]).reshape(cols, nb).astype(np.float32)
        if len(n.input) > 3 and n.input[3]:
            zp = numpy_helper.to_array(inits[n.input[3]]).reshape(cols, -1)
            zp = _unpack4(zp)[:, :nb].astype(np.float32) if zp.dtype == np.uint8 else zp.astype(np.float32)
        else:
            zp = np.full((cols, nb), 8.0, np.float32)
        w = ((q - zp[:, :, None]) * sc[:, :, None]).reshape(cols, nb * bs)[:, :k]
        name = n.name[:-3] if n.name.endswith("_Q4") else n.name
        out[name] = np.ascontiguousarray(w.T)
    return out


def fake_quant_rows(table: np.ndarray, block_size: int, symmetric: bool) -> np.ndarray:
    """A [rows, dim] table rounded to 4-bit blocks of `block_size` along dim (the same scheme as the quantizer's
    GatherBlockQuantized: min/max over each block, zero included), back in float — for the sensitivity ranking."""
    rows, dim = table.shape
    pad = (-dim) % block_size
    t = np.pad(table.astype(np.float32), ((0, 0), (0, pad))).reshape(rows, -1, block_size)
    if symmetric:
        amax = np.abs(t).max(2, keepdims=True)
        sc = np.where(amax > 0, amax / 7.0, 1.0)
        q = np.clip(np.rint(t / sc), -8, 7) * sc
    else:
        mn, mx = np.minimum(t.min(2, keepdims=True), 0), np.maximum(t.max(2, keepdims=True), 0)
        sc = np.where(mx > mn, (mx - mn) / 15.0, 1.0)
        zp = np.clip(np.rint(-mn / sc), 0, 15)
        q = (np.clip(np.rint(t / sc) + zp, 0, 15) - zp) * sc
    return q.reshape(rows, -1)[:, :dim].astype(np.float32)


def has_nbits(path: Path) -> bool:
    """Whether any weight is left in 4 bits (MatMulNBits bits=4 or GatherBlockQuantized); False: nothing is."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return any((n.op_type == "MatMulNBits" and _attrs(n).get("bits", 4) == 4) or n.op_type == "GatherBlockQuantized"
               for n in m.graph.node)


def refusal(model, name: str, embeddings: bool = True, attention: bool = True) -> str | None:
    """Why INT4 has nothing to take in `model` (None when it has a target): the exit-2 line, naming what the model
    does store — float16 MatMul weights, MatMul weights inside If/Loop/Scan bodies, Gemm — and a mode that works."""
    import onnx

    from onnxforge.stages.quantize import weight_only

    g = model.graph
    weights = _float_2d(model)
    for n in g.node:
        if (n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in weights) \
                or (embeddings and embedding_node(n, weights)) or (attention and attention_node(n, weights)):
            return None
    top = {t.name: t for t in g.initializer}
    half = [n.input[1] for n in g.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in top
            and len(top[n.input[1]].dims) == 2 and top[n.input[1]].data_type == onnx.TensorProto.FLOAT16]
    every = {t.name: t for t in weight_only.all_initializers(g)}
    inner = [m for n in g.node for s in weight_only._subgraphs(n) for m in weight_only._all_nodes(s)]
    nested = [m.input[1] for m in inner if m.op_type == "MatMul" and len(m.input) > 1 and m.input[1] in every
              and len(every[m.input[1]].dims) == 2]
    gemm = [n for n in weight_only._all_nodes(g) if n.op_type == "Gemm" and len(n.input) > 1 and n.input[1] in every]
    if half:
        return (f"quantize: INT4 (MatMulNBits) takes float32 MatMul weights, and {name} stores its {len(half)} "
                "MatMul weight(s) in float16 — quantize the float32 model with --mode int4, or use --mode dynamic "
                "(weight-only INT8 for float16 MatMul weights)")
    if nested:
        return (f"quantize: INT4 (MatMulNBits) does not reach If/Loop/Scan bodies, and all {len(nested)} MatMul "
                f"weight(s) of {name} sit inside them — use --mode dynamic, which quantizes MatMul/Gemm in those "
                "bodies too")
    why = f" (its {len(gemm)} Gemm: torch exports a Linear as Gemm)" if gemm else ""
    return (f"quantize: INT4 (MatMulNBits) covers MatMul weights only, and {name} stores none{why} — use --mode "
            "dynamic or static for INT8, which covers Gemm and Conv too")
