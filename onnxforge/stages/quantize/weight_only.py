"""Weight-only INT8: a stored float weight becomes int8 + per-channel scale, and a DequantizeLinear restores it in
front of the unchanged float op (float compute, ~4x smaller file). onnxruntime.quantization has no such mode for
Conv/ConvTranspose/GRU/RNN (its dynamic mode yields ConvInteger, which ORT's CPU provider cannot run; its
MatMulNBits tools cover MatMul/Gather only), so this is the one quantizer written here. It also carries float16
weights, which onnxruntime's dynamic quantizer cannot take."""

from __future__ import annotations

import numpy as np

# op type → (weight input index, per-channel axis of that weight: the output-channel axis)
WEIGHT_INPUTS: dict[str, tuple[tuple[int, int], ...]] = {
    "Conv": ((1, 0),),
    "ConvTranspose": ((1, 1),),
    "GRU": ((1, 1), (2, 1)),  # W, R: [num_directions, gates*hidden, ...]
    "RNN": ((1, 1), (2, 1)),
    "LSTM": ((1, 1), (2, 1)),
    "MatMul": ((1, -1),),
    "Gemm": ((1, None),),  # axis from transB
}
# ops weight-only covers whatever the weights' dtype; MatMul/Gemm only where the dynamic quantizer cannot (fp16)
DEFAULT_OPS = ("Conv", "ConvTranspose", "GRU", "RNN", "LSTM")
# every initializer input of these ops is a weight some quantizer in this package may turn into int8
QUANTIZED_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "MatMul": (1,), "Gemm": (1, 2), "LSTM": (1, 2, 3), "GRU": (1, 2, 3),
    "RNN": (1, 2, 3), "Attention": (1, 2), "EmbedLayerNormalization": (2, 3, 4), "Gather": (0,),
}
_FLOATS = (1, 10, 11)  # FLOAT, FLOAT16, DOUBLE


def _subgraphs(node):
    for a in node.attribute:
        if a.HasField("g"):
            yield a.g
        yield from a.graphs


def _all_nodes(graph):
    for n in graph.node:
        yield n
        for g in _subgraphs(n):
            yield from _all_nodes(g)


def _axis(node, default: int | None, rank: int) -> int:
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return default % rank


def refusable_weights(model, op_types) -> list[str]:
    """Float initializers that a quantizer would turn into int8 (weights of `op_types`) and that hold NaN/inf.
    Other constants (a Clip's ±inf bounds, a mask's -inf) stay float and are no reason to refuse."""
    from onnx import numpy_helper

    inits = {t.name: t for t in all_initializers(model.graph)}
    names = []
    for n in _all_nodes(model.graph):
        if n.op_type not in op_types:
            continue
        for i in QUANTIZED_INPUTS.get(n.op_type, ()):
            t = inits.get(n.input[i]) if i < len(n.input) else None
            if t is not None and t.data_type in _FLOATS and t.name not in names \
                    and not np.isfinite(numpy_helper.to_array(t)).all():
                names.append(t.name)
    return names


def all_initializers(graph):
    yield from graph.initializer
    for n in graph.node:
        for g in _subgraphs(n):
            yield from all_initializers(g)


def quantize_weights(model, op_types, exclude=(), fp16_only=("MatMul", "Gemm")) -> list[str]:
    """Weight-only INT8 in place on `model` (every graph, subgraphs included) for the nodes of `op_types` not named
    in `exclude`; ops in `fp16_only` only where their weight is float16. Returns the weights quantized.
    Needs opset >= 13 (per-channel DequantizeLinear)."""
    done: list[str] = []
    _graph(model.graph, set(op_types), set(exclude), set(fp16_only), done)
    return done


def _graph(graph, ops, excluded, fp16_only, done) -> None:
    import onnx
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    # weights this graph stores, read by nodes here or in nested bodies (an If branch reads outer weights)
    wanted: dict[str, int] = {}
    blocked = {i.name for i in graph.input}  # an initializer that is also an input can be fed: not a weight
    for n in _all_nodes(graph):
        for idx, default in WEIGHT_INPUTS.get(n.op_type, ()):
            name = n.input[idx] if idx < len(n.input) else ""
            t = inits.get(name)
            if t is None or t.data_type not in (1, 10) or len(t.dims) < 2:
                continue
            if (n.op_type not in ops or n.name in excluded
                    or (n.op_type in fp16_only and t.data_type != onnx.TensorProto.FLOAT16)):
                blocked.add(name)
                continue
            axis = _axis(n, default, len(t.dims))
            if wanted.setdefault(name, axis) != axis:
                blocked.add(name)  # shared by two ops that need different channel axes
    new_nodes, new_inits = [], []
    for name in sorted(set(wanted) - blocked):
        t = inits[name]
        w = numpy_helper.to_array(t).astype(np.float32)
        if not np.isfinite(w).all():
            continue
        axis = wanted[name]
        amax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        qname, sname, zname = f"{name}_wq", f"{name}_wq_scale", f"{name}_wq_zero_point"
        new_inits += [numpy_helper.from_array(q, qname), numpy_helper.from_array(scale, sname),
                      numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), zname)]
        fp16 = t.data_type == onnx.TensorProto.FLOAT16
        out = f"{name}_wq_f32" if fp16 else name
        new_nodes.append(helper.make_node("DequantizeLinear", [qname, sname, zname], [out],
                                          name=f"{name}_DequantizeLinear", axis=axis))
        if fp16:  # DequantizeLinear's float16 scale needs opset 19: dequantize to float32, then cast
            new_nodes.append(helper.make_node("Cast", [out], [name], name=f"{name}_Cast", to=t.data_type))
        done.append(name)
    if new_nodes:
        keep = [t for t in graph.initializer if t.name not in set(done)]
        del graph.initializer[:]
        graph.initializer.extend(keep + new_inits)
        rest = list(graph.node)
        del graph.node[:]
        graph.node.extend(new_nodes + rest)  # their inputs are initializers: first is topologically fine
    for n in graph.node:
        for g in _subgraphs(n):
            _graph(g, ops, excluded, fp16_only, done)


def fp16_weight_nodes(model) -> list[str]:
    """Named nodes (top-level: those the quantizer's nodes_to_exclude can address) with a float16 weight."""
    inits = {t.name: t.data_type for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.name and any(
        inits.get(n.input[i] if i < len(n.input) else "") == 10 for i, _ in WEIGHT_INPUTS.get(n.op_type, ()))]
