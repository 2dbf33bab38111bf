"""Seeded mutations of the three kinds of file onnxforge reads: ONNX models, pipeline YAML, data tables.

Every mutation is `fn(rng, ...) -> (result, detail)`: `rng` is a numpy Generator seeded from the case id, so a
(seed, command, mutation) triple always produces the same bytes; `detail` names the variant picked (e.g.
"edge/cycle") for the report. Mutations of a parsed ModelProto re-serialize it; byte mutations work on the
serialized file. Nothing here runs onnxforge.
"""

from __future__ import annotations

import copy
import io
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import TensorProto as T
from onnx import helper as h

Rng = np.random.Generator


def pick(rng: Rng, seq):
    seq = list(seq)
    return seq[int(rng.integers(len(seq)))]


def flip_bits(rng: Rng, b: bytes, n: int | None = None) -> bytes:
    b = bytearray(b)
    if not b:
        return bytes(b)
    for _ in range(n or int(rng.integers(1, 9))):
        i = int(rng.integers(len(b)))
        b[i] ^= 1 << int(rng.integers(8))
    return bytes(b)


def byte_mutation(rng: Rng, b: bytes) -> tuple[bytes, str]:
    """Raw-byte damage any file format can suffer."""
    kind = pick(rng, ["bitflip", "truncate", "empty", "garbage", "insert", "delete", "zeros", "prefix", "double",
                      "text"])
    n = len(b)
    if kind == "bitflip":
        return flip_bits(rng, b), kind
    if kind == "truncate":
        return b[: int(rng.integers(0, max(n, 1)))], kind
    if kind == "empty":
        return b"", kind
    if kind == "garbage":
        return rng.integers(0, 256, size=int(rng.integers(1, 4096)), dtype=np.uint8).tobytes(), kind
    if kind == "insert":
        i = int(rng.integers(0, n + 1))
        return b[:i] + rng.integers(0, 256, size=int(rng.integers(1, 64)), dtype=np.uint8).tobytes() + b[i:], kind
    if kind == "delete":
        i = int(rng.integers(0, max(n, 1)))
        return b[:i] + b[i + int(rng.integers(1, 64)):], kind
    if kind == "zeros":
        i = int(rng.integers(0, max(n, 1)))
        return b[:i] + bytes(min(n - i, int(rng.integers(1, 256)))) + b[i + int(rng.integers(1, 256)):], kind
    if kind == "prefix":
        return pick(rng, [b"\xef\xbb\xbf", b"\x00", b"PK\x03\x04", b"\x93NUMPY", b"PAR1", b"#"]) + b, kind
    if kind == "double":
        return b + b, kind
    return pick(rng, [b"hello\n", b"name: x\n", b"{}", b"\xff\xfe\x00\x00", b"a,b\n1,2\n"]), kind


# ====================================================================== ONNX models


def _graphs(g: onnx.GraphProto):
    yield g
    for n in g.node:
        for a in n.attribute:
            if a.HasField("g"):
                yield from _graphs(a.g)
            for sub in a.graphs:
                yield from _graphs(sub)


def _any_graph(rng: Rng, m: onnx.ModelProto) -> onnx.GraphProto:
    gs = list(_graphs(m.graph))
    return gs[0] if len(gs) == 1 or rng.random() < 0.6 else pick(rng, gs[1:])


def _any_node(rng: Rng, m: onnx.ModelProto) -> tuple[onnx.GraphProto, onnx.NodeProto | None]:
    g = _any_graph(rng, m)
    return g, (pick(rng, g.node) if len(g.node) else None)


def _value_infos(m: onnx.ModelProto) -> list:
    out = []
    for g in _graphs(m.graph):
        out += [*g.input, *g.output, *g.value_info]
    return out


DIM_VALUES = [0, -1, -7, 1, 2, 5, 64, 2**31, 2**40, 10**12, 2**62]
DIM_PARAMS = ["", "N", "batch", " batch", "??", "x" * 300, "1", "-1", "\u00e9\u4e2d", "a\nb"]
# ONNX data types: valid ones, the newer small floats/ints, UNDEFINED and two that do not exist
DTYPES = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 99, -1]
OPS = ["Relu", "Sigmoid", "Gemm", "MatMul", "Conv", "Add", "Softmax", "Identity", "Loop", "If", "Scan", "Reshape",
       "Cast", "ArgMax", "TopK", "NonZero", "Shape", "Dropout", "Bernoulli", "RandomNormal", "LabelEncoder",
       "TreeEnsembleClassifier", "ZipMap", "Fuzz", "", "relu", "Relu ", "QuantizeLinear", "DequantizeLinear",
       "Resize", "Einsum", "Concat", "Split", "SequenceConstruct", "Constant", "Attention"]
DOMAINS = ["", "ai.onnx", "ai.onnx.ml", "com.microsoft", "org.fuzz", "ai.onnx.preview.training", "com.ms.internal.nhwc"]


def m_dims(rng: Rng, m: onnx.ModelProto, ctx: dict) -> str:
    if rng.random() < 0.3 and m.graph.initializer:
        init = pick(rng, m.graph.initializer)
        kind = pick(rng, ["value", "add", "drop", "clear"])
        if kind == "value" and init.dims:
            init.dims[int(rng.integers(len(init.dims)))] = pick(rng, DIM_VALUES)
        elif kind == "add":
            init.dims.append(pick(rng, DIM_VALUES))
        elif kind == "drop" and init.dims:
            del init.dims[-1]
        else:
            del init.dims[:]
        return f"initializer/{kind}"
    vi = pick(rng, _value_infos(m))
    tt = vi.type.tensor_type
    kind = pick(rng, ["value", "value", "param", "clear", "add", "drop", "unset"])
    dims = tt.shape.dim
    if kind == "value" and dims:
        dims[int(rng.integers(len(dims)))].dim_value = pick(rng, DIM_VALUES)
    elif kind == "param" and dims:
        dims[int(rng.integers(len(dims)))].dim_param = pick(rng, DIM_PARAMS)
    elif kind == "clear":
        tt.ClearField("shape")
    elif kind == "add":
        tt.shape.dim.add().dim_value = pick(rng, DIM_VALUES)
    elif kind == "drop" and dims:
        del dims[int(rng.integers(len(dims)))]
    elif dims:
        dims[int(rng.integers(len(dims)))].Clear()
    return f"{kind}:{vi.name}"


def m_dtype(rng: Rng, m: onnx.ModelProto, ctx: dict) -> str:
    t = pick(rng, DTYPES)
    where = pick(rng, ["io", "io", "initializer", "cast", "value_info"])
    if where == "initializer" and m.graph.initializer:
        pick(rng, m.graph.initializer).data_type = t
    elif where == "cast":
        casts = [n for g in _graphs(m.graph) for n in g.node if n.op_type == "Cast"]
        if casts:
            next(a for a in pick(rng, casts).attribute if a.name == "to").i = t
        else:
            m.graph.input[0].type.tensor_type.elem_type = t
    elif where == "value_info":
        g = m.graph
        g.value_info.append(h.make_tensor_value_info(pick(rng, [n.output[0] for n in g.node]), t, None))
    else:
        pick(rng, [*m.graph.input, *m.graph.output]).type.tensor_type.elem_type = t
    return f"{where}={t}"


def m_op_type(rng: Rng, m: onnx.ModelProto, ctx: dict) -> str:
    _, n = _any_node(rng, m)
    if n is None:
        return "no-node"
    if rng.random() < 0.25:
        n.domain = pick(rng, DOMAINS)
        return f"domain:{n.op_type}->{n.domain!r}"
    old, n.op_type = n.op_type, pick(rng, OPS)
    return f"{old}->{n.op_type!r}"


def _attr_value(rng: Rng):
    return pick(rng, [0, -1, 1, 3, 2**31, -(2**40), 0.5, float("nan"), float("inf"), -1e38, "", "x", "\xff\u0000",
                      [0], [], [-1, -1], [2**31] * 4, [1.5, 2.5], ["a", "b"]])


def m_attr(rng: Rng, m: onnx.ModelProto, ctx: dict) -> str:
    g, n = _any_node(rng, m)
    with_attrs = [x for gg in _graphs(m.graph) for x in gg.node if x.attribute]
    if with_attrs and (n is None or not n.attribute or rng.random() < 0.5):
        n = pick(rng, with_attrs)
    if n is None:
        return "no-node"
    kind = pick(rng, ["int", "ints", "float", "string", "type", "delete", "add", "dup", "graph", "value"])
    a = pick(rng, n.attribute) if n.attribute else None
    if kind in ("add",) or a is None:
        name = pick(rng, ["fuzz", "axis", "kernel_shape", "to", "keepdims", "pads", "then_branch", ""])
        try:
            n.attribute.append(h.make_attribute(name, _attr_value(rng)))
        except Exception:
            n.attribute.append(h.make_attribute(name, 1))
        return f"add:{n.op_type}.{name}"
    if kind == "int":
        a.i = pick(rng, [0, -1, 7, 2**31, -(2**40), 2**62])
    elif kind == "ints":
        a.ints[:] = pick(rng, [[], [0], [-1, -1], [2**31] * 4, [1, 2, 3, 4, 5, 6, 7, 8], [0, 0, 0, 0]])
    elif kind == "float":
        a.f = pick(rng, [float("nan"), float("inf"), -1e38, 0.0, -1.0])
    elif kind == "string":
        a.s = pick(rng, [b"", b"\xff\xfe", b"NOTSET", b"x" * 5000, b"SAME_UPPER"])
    elif kind == "type":
        a.type = int(pick(rng, range(0, 15)))
    elif kind == "delete":
        n.attribute.remove(a)
    elif kind == "dup":
        n.attribute.append(copy.deepcopy(a))
    elif kind == "graph":
        graph_attrs = [x for x in n.attribute if x.HasField("g")]
        if graph_attrs:
            ga = pick(rng, graph_attrs)
            sub = pick(rng, ["empty", "no-output", "extra-output", "drop"])
            if sub == "empty":
                ga.g.CopyFrom(h.make_graph([], "empty", [], []))
            elif sub == "no-output":
                del ga.g.output[:]
            elif sub == "extra-output":
                ga.g.output.append(h.make_tensor_value_info("x", T.FLOAT, None))
            else:
                n.attribute.remove(ga)
            return f"graph:{n.op_type}.{ga.name}/{sub}"
        a.ClearField("i") if a.HasField("i") else None
        a.g.CopyFrom(h.make_graph([], "stray", [], []))
    else:
        try:
            new = h.make_attribute(a.name, _attr_value(rng))
            a.CopyFrom(new)
        except Exception:
            a.i = -1
    return f"{kind}:{n.op_type}.{a.name}"


def m_edge(rng: Rng, m: onnx.ModelProto, ctx: dict) -> str:
    g, n = _any_node(rng, m)
    if n is None:
        g, n = m.graph, m.graph.node[0]
    names = [o for x in g.node for o in x.output] + [i.name for i in g.input] + [i.name for i in g.initializer]
    kind = pick(rng, ["dangling", "empty", "cycle", "dup-output", "graph-output", "drop-node", "dup-node", "reverse",
                      "swap", "extra-input", "drop-input", "rename-output", "self"])
    if kind == "dangling" and n.input:
        n.input[int(rng.integers(len(n.input)))] = "nowhere"
    elif kind == "empty" and n.input:
        n.input[int(rng.integers(len(n.input)))] = ""
    elif kind == "cycle":
        last = g.node[len(g.node) - 1]
        g.node[0].input.append(last.output[0]) if rng.random() < 0.5 or not g.node[0].input else None
        if g.node[0].input:
            g.node[0].input[0] = last.output[0]
    elif kind == "dup-output" and names:
        n.output[0] = pick(rng, names)
    elif kind == "graph-output" and g.output:
        pick(rng, g.output).name = pick(rng, ["nowhere", "", names[0] if names else "x"])
    elif kind == "drop-node":
        g.node.remove(n)
    elif kind == "dup-node":
        g.node.append(copy.deepcopy(n))
    elif kind == "reverse":
        nodes = list(g.node)[::-1]
        del g.node[:]
        g.node.extend(nodes)
    elif kind == "swap" and len(n.input) > 1:
        n.input[0], n.input[1] = n.input[1], n.input[0]
    elif kind == "extra-input":
        n.input.append(pick(rng, names) if names else "x")
    elif kind == "drop-input" and n.input:
        del n.input[-1]
    elif kind == "rename-output":
        n.output[0] = n.output[0] + "_renamed"
    else:
        if n.input:
            n.input[0] = n.output[0]
    return f"{kind}:{n.op_type}"


def m_initializer(rng: Rng, m: onnx.ModelProto, ctx: dict) -> str:
    g = m.graph
    init = pick(rng, g.initializer)
    kind = pick(rng, ["raw-truncate", "raw-extend", "dup", "external", "as-input", "typed-data", "drop", "nan",
                      "huge-claim", "sparse"])
    if kind == "raw-truncate":
        init.raw_data = init.raw_data[: int(rng.integers(0, max(len(init.raw_data), 1)))]
    elif kind == "raw-extend":
        init.raw_data = init.raw_data + b"\x00" * int(rng.integers(1, 64))
    elif kind == "dup":
        g.initializer.append(copy.deepcopy(init))
    elif kind == "external":
        where = pick(rng, ["missing.bin", "../tmp/outside.bin", "../../../../etc/hostname", ctx["abs_outside"],
                           ctx["data_name"], "", ".", "model.onnx"])
        init.ClearField("raw_data")
        init.data_location = T.EXTERNAL
        del init.external_data[:]
        for k, v in (("location", where), ("offset", str(pick(rng, [0, 3, -1, 2**40]))),
                     ("length", str(pick(rng, [16, 0, 2**40, -5])))):
            e = init.external_data.add()
            e.key, e.value = k, v
        return f"{kind}:{where}"
    elif kind == "as-input":
        g.input.append(h.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    elif kind == "typed-data":
        init.ClearField("raw_data")
        init.float_data[:] = [1.0] * int(rng.integers(0, 5))
    elif kind == "drop":
        g.initializer.remove(init)
    elif kind == "nan":
        arr = onnx.numpy_helper.to_array(init).copy()
        if arr.dtype.kind == "f" and arr.size:
            arr.reshape(-1)[int(rng.integers(arr.size))] = pick(rng, [np.nan, np.inf, -np.inf, 3e38])
            init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    elif kind == "huge-claim":
        init.dims[:] = [2**31, 2**31]
    else:
        sp = g.sparse_initializer.add()
        sp.values.CopyFrom(init)
        sp.values.dims[:] = [1]
        sp.indices.CopyFrom(onnx.numpy_helper.from_array(np.asarray([2**40], dtype=np.int64), init.name + "_i"))
        sp.dims[:] = list(init.dims) or [1]
        g.initializer.remove(init)
    return f"{kind}:{init.name}"


def m_opset(rng: Rng, m: onnx.ModelProto, ctx: dict) -> str:
    kind = pick(rng, ["version", "version", "no-default", "dup-domain", "unknown-domain", "ir", "ir", "ml"])
    default = next((o for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    if kind == "version" and default is not None:
        default.version = pick(rng, [0, 1, 6, 7, 12, 21, 22, 23, 25, 99, 10**6, -3])
        return f"opset={default.version}"
    if kind == "no-default" and default is not None:
        m.opset_import.remove(default)
    elif kind == "dup-domain":
        m.opset_import.append(h.make_opsetid("", pick(rng, [11, 17, 21])))
    elif kind == "unknown-domain":
        m.opset_import.append(h.make_opsetid(pick(rng, ["org.fuzz", "com.microsoft", "ai.onnx.ml"]), 1))
    elif kind == "ml":
        ml = next((o for o in m.opset_import if o.domain == "ai.onnx.ml"), None)
        if ml is not None:
            ml.version = pick(rng, [0, 1, 2, 4, 5, 99])
            return f"ml={ml.version}"
        m.opset_import.append(h.make_opsetid("ai.onnx.ml", 3))
    else:
        m.ir_version = pick(rng, [0, 1, 2, 3, 4, 7, 10, 11, 12, 13, 99, -1])
        return f"ir={m.ir_version}"
    return kind


META_VALUES = {
    "onnxforge.input_spec": ["{", "null", "[]", '[{"name": 3}]', '[{"name": "nope"}]', '"x"', "[1, 2]",
                             '[{"name": "x", "dtype": "complex"}]', '[{"name": "x", "shape": [-1, 1000000000]}]',
                             '[{"name": "x", "columns": ["f0", "f1", "f2", "f3"]}]'],
    "onnxforge.rows_per_chunk": ["0", "-3", "1", "99999999999999999999", "abc", "", "1e3"],
    "onnxforge.output_columns": ["{", "[]", '{"y": 5}', '{"y": ["a"]}', '{"y": ["a", "b", "c", "d"]}', "null"],
    "onnxforge.categories": ['{"band": []}', '{"band": [1, "a"]}', "{", '{"x": ["a"]}', '{"band": null}', "[]",
                             '{"band": ["small"]}'],
    "onnxforge.unseen_policy": ['{"band": "error"}', "{", '{"band": 5}', "[]"],
    "onnxforge.stochastic_outputs": ['["nope"]', "{", '["y"]', "5", '"y"'],
    "onnxforge.version": ["", "\x1b[31mred", "0" * 10000],
}


def m_metadata(rng: Rng, m: onnx.ModelProto, ctx: dict) -> str:
    kind = pick(rng, [*META_VALUES, "producer", "doc", "dup", "many"])
    if kind in META_VALUES:
        value = pick(rng, META_VALUES[kind])
        if kind == "onnxforge.categories" and rng.random() < 0.5:
            # the `error` policy with a level the data holds or not: predict's unseen-level check
            m.metadata_props.add(key="onnxforge.unseen_policy", value='{"band": "error"}')
        m.metadata_props.add(key=kind, value=value)
        return f"{kind}={value[:40]!r}"
    if kind == "producer":
        m.producer_name = pick(rng, ["\x1b[2J\x1b[31mred", "<script>alert(1)</script>", "a" * 100000, "\u202etxt.exe"])
        m.producer_version = "[bold]x[/bold]"
    elif kind == "doc":
        m.doc_string = "d" * 200_000
        m.graph.doc_string = "\x00\x01"
    elif kind == "dup":
        for v in ("a", "b"):
            m.metadata_props.add(key="dup", value=v)
    else:
        for i in range(5000):
            m.metadata_props.add(key=f"k{i}", value="v" * 20)
    return kind


def m_io(rng: Rng, m: onnx.ModelProto, ctx: dict) -> str:
    g = m.graph
    kind = pick(rng, ["no-inputs", "no-outputs", "dup-input", "dup-output", "rename-input", "rename-consistent",
                      "no-type", "sequence", "map", "optional", "scalar-input", "unused-input", "int-input",
                      "output-is-input", "unknown-output-type"])
    first = g.input[0]
    if kind == "no-inputs":
        del g.input[:]
    elif kind == "no-outputs":
        del g.output[:]
    elif kind == "dup-input":
        g.input.append(copy.deepcopy(first))
    elif kind == "dup-output":
        g.output.append(copy.deepcopy(g.output[0]))
    elif kind == "rename-input":
        first.name = first.name + "_renamed"
    elif kind == "rename-consistent":
        old, new = first.name, pick(rng, ["renamed", "", "x y", "\u00e9", "label"])
        first.name = new
        for gg in _graphs(g):
            for n in gg.node:
                n.input[:] = [new if i == old else i for i in n.input]
        return f"{kind}:{new!r}"
    elif kind == "no-type":
        first.type.Clear()
    elif kind == "sequence":
        t = h.make_sequence_type_proto(h.make_tensor_type_proto(T.FLOAT, ["batch", 4]))
        pick(rng, [first, g.output[0]]).type.CopyFrom(t)
    elif kind == "map":
        t = h.make_map_type_proto(T.INT64, h.make_tensor_type_proto(T.FLOAT, []))
        pick(rng, [first, g.output[0]]).type.CopyFrom(t)
    elif kind == "optional":
        first.type.CopyFrom(h.make_optional_type_proto(copy.deepcopy(first.type)))
    elif kind == "scalar-input":
        # a scalar input with no batch axis (a rate, a threshold) that scales the first output
        out = g.output[0].name
        for n in g.node:
            n.output[:] = [out + "_pre" if o == out else o for o in n.output]
        g.node.append(h.make_node("Mul", [out + "_pre", "scale"], [out], name="scale_mul"))
        g.input.append(h.make_tensor_value_info("scale", T.FLOAT, []))
    elif kind == "unused-input":
        g.input.append(h.make_tensor_value_info("extra", pick(rng, [T.FLOAT, T.INT64, T.STRING, T.BOOL]),
                                                ["batch", 2]))
    elif kind == "int-input":
        old = first.name
        first.type.tensor_type.elem_type = pick(rng, [T.INT64, T.INT32, T.UINT8, T.BOOL, T.FLOAT16, T.DOUBLE])
        g.node.insert(0, h.make_node("Cast", [old], [old + "_f"], to=T.FLOAT, name="cast_in"))
        for n in list(g.node)[1:]:
            n.input[:] = [old + "_f" if i == old else i for i in n.input]
        for gg in list(_graphs(g))[1:]:
            for n in gg.node:
                n.input[:] = [old + "_f" if i == old else i for i in n.input]
        return f"{kind}:{first.type.tensor_type.elem_type}"
    elif kind == "output-is-input":
        g.output.append(copy.deepcopy(first))
    else:
        g.output[0].type.Clear()
    return kind


def m_subgraph(rng: Rng, m: onnx.ModelProto, ctx: dict) -> str:
    """Damage inside an If branch (the branch model), elsewhere the same damage to the main graph."""
    subs = list(_graphs(m.graph))[1:]
    fn = pick(rng, [m_dims, m_op_type, m_edge, m_attr])
    if not subs:
        return "main/" + fn(rng, m, ctx)
    sub = pick(rng, subs)
    tmp = onnx.ModelProto()
    tmp.graph.CopyFrom(sub)
    detail = fn(rng, tmp, ctx)
    sub.CopyFrom(tmp.graph)
    return f"branch/{detail}"


def _rename_everywhere(m: onnx.ModelProto, old: str, new: str) -> None:
    for g in _graphs(m.graph):
        for n in g.node:
            n.input[:] = [new if i == old else i for i in n.input]
            n.output[:] = [new if o == old else o for o in n.output]
        for vi in [*g.input, *g.output, *g.value_info]:
            if vi.name == old:
                vi.name = new


def m_inputs(rng: Rng, m: onnx.ModelProto, ctx: dict) -> str:
    """Models that pass the checker but read unusual inputs: pinned batches, odd names, integer indices."""
    g = m.graph
    first = g.input[0]
    kind = pick(rng, ["static-batch", "static-batch", "symbolic", "name", "name", "gather-index", "float16",
                      "double", "bool-input", "int-input"])
    dims = first.type.tensor_type.shape.dim
    if kind == "static-batch" and dims:
        v = pick(rng, [1, 7, 24, 5000, 10**6])
        for inp in g.input:
            if inp.type.tensor_type.shape.dim:
                inp.type.tensor_type.shape.dim[0].dim_value = v
        for out in g.output:
            if out.type.tensor_type.shape.dim:
                out.type.tensor_type.shape.dim[0].dim_value = v
        return f"{kind}={v}"
    if kind == "symbolic":
        for inp in g.input:
            for i, d in enumerate(inp.type.tensor_type.shape.dim):
                d.dim_param = f"d{i}"
        return kind
    if kind == "name":
        new = pick(rng, ["input:0", "a b", "label", "X", "\u00e9\u4e2d", "n" * 300, "y", "0", "serving_default_x"])
        if new in {o.name for o in g.output}:  # SSA: an output of that name exists; rename it out of the way
            _rename_everywhere(m, new, new + "_out")
        _rename_everywhere(m, first.name, new)
        return f"{kind}={new[:20]!r}"
    if kind == "gather-index":
        # an extra int64 index input [batch] looked up in a 10-row table and added to the first output
        out = g.output[0].name
        width = g.output[0].type.tensor_type.shape.dim[1].dim_value if len(
            g.output[0].type.tensor_type.shape.dim) > 1 else 1
        _rename_everywhere(m, out, out + "_pre")
        g.output[0].name = out
        g.initializer.append(onnx.numpy_helper.from_array(np.ones((10, max(width, 1)), np.float32), "emb"))
        g.node.extend([h.make_node("Gather", ["emb", "idx"], ["looked"], axis=0, name="lookup"),
                       h.make_node("Add", [out + "_pre", "looked"], [out], name="add_lookup")])
        g.input.append(h.make_tensor_value_info("idx", T.INT64, ["batch"]))
        return kind
    elem = {"float16": T.FLOAT16, "double": T.DOUBLE, "bool-input": T.BOOL, "int-input": T.INT32}[kind]
    old = first.name
    if first.type.tensor_type.elem_type != T.FLOAT:
        return "not-float"
    first.type.tensor_type.elem_type = elem
    for gg in _graphs(g):
        for n in gg.node:
            n.input[:] = [old + "_f" if i == old else i for i in n.input]
    g.node.insert(0, h.make_node("Cast", [old], [old + "_f"], to=T.FLOAT, name="cast_in"))
    return kind


def m_outputs(rng: Rng, m: onnx.ModelProto, ctx: dict) -> str:
    """Models that pass the checker but produce unusual outputs: other dtypes, ranks, names, data-dependent
    shapes, non-finite values, random draws."""
    g = m.graph
    y = g.output[0].name
    kind = pick(rng, ["string", "bool", "float16", "int8", "double", "rank3", "scalar", "empty", "nonzero", "name",
                      "column-clash", "inf", "random", "only-int"])
    new = f"{y}_{kind}"
    vi = None
    if kind == "string":
        g.node.append(h.make_node("Cast", [y], [new], to=T.STRING))
        vi = h.make_tensor_value_info(new, T.STRING, None)
    elif kind == "bool":
        g.initializer.append(onnx.numpy_helper.from_array(np.float32(0), "zero_f"))
        g.node.append(h.make_node("Greater", [y, "zero_f"], [new]))
        vi = h.make_tensor_value_info(new, T.BOOL, None)
    elif kind in ("float16", "int8", "double"):
        t = {"float16": T.FLOAT16, "int8": T.INT8, "double": T.DOUBLE}[kind]
        g.node.append(h.make_node("Cast", [y], [new], to=t))
        vi = h.make_tensor_value_info(new, t, None)
    elif kind == "rank3":
        g.initializer.append(onnx.numpy_helper.from_array(np.asarray([2], np.int64), "ax2"))
        g.node.append(h.make_node("Unsqueeze", [y, "ax2"], [new]))
        vi = h.make_tensor_value_info(new, g.output[0].type.tensor_type.elem_type, None)
    elif kind == "scalar":
        g.node.append(h.make_node("ReduceMean", [y], [new], keepdims=0))
        vi = h.make_tensor_value_info(new, T.FLOAT, [])
    elif kind == "empty":
        g.initializer.extend([onnx.numpy_helper.from_array(np.asarray([0], np.int64), "s0"),
                              onnx.numpy_helper.from_array(np.asarray([1], np.int64), "ax1")])
        g.node.append(h.make_node("Slice", [y, "s0", "s0", "ax1"], [new]))
        vi = h.make_tensor_value_info(new, T.FLOAT, None)
    elif kind == "nonzero":
        g.node.append(h.make_node("NonZero", [y], [new]))
        vi = h.make_tensor_value_info(new, T.INT64, None)
    elif kind == "name":
        name = pick(rng, ["a/b:0", "output 1", "\u00e9\u4e2d", "o" * 300, "label", "x.1", "=cmd|' /C calc'!A0"])
        _rename_everywhere(m, y, name)
        return f"{kind}={name[:20]!r}"
    elif kind == "column-clash":
        # predict writes y [batch, k] as columns y_0..y_k-1: an output already named y_0 collides with them
        g.node.append(h.make_node("Identity", [y], [f"{y}_0"]))
        vi = h.make_tensor_value_info(f"{y}_0", g.output[0].type.tensor_type.elem_type, None)
    elif kind == "inf":
        g.initializer.append(onnx.numpy_helper.from_array(np.float32(0), "zero_d"))
        g.node.append(h.make_node("Div", [y, "zero_d"], [new]))
        vi = h.make_tensor_value_info(new, T.FLOAT, None)
    elif kind == "random":
        g.node.append(h.make_node("RandomUniformLike", [y], [new]))
        vi = h.make_tensor_value_info(new, T.FLOAT, None)
    else:  # only an integer output is left
        ints = [o for o in g.output if o.type.tensor_type.elem_type == T.INT64]
        if ints:
            del g.output[:]
            g.output.extend(ints)
            return kind
        g.node.append(h.make_node("ArgMax", [y], [new], axis=-1, keepdims=0))
        del g.output[:]
        vi = h.make_tensor_value_info(new, T.INT64, None)
    g.output.append(vi)
    _infer_output_types(m)
    return kind


def _infer_output_types(m: onnx.ModelProto) -> None:
    """Graph outputs declared without a shape get the one shape inference finds (onnx.checker requires one)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(m)
    except Exception:
        return
    known = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]}
    for out in m.graph.output:
        tt = out.type.tensor_type
        if out.type.HasField("tensor_type") and not tt.HasField("shape") and out.name in known:
            got = known[out.name].type.tensor_type
            if got.HasField("shape"):
                tt.shape.CopyFrom(got.shape)
            else:
                tt.shape.SetInParent()


def m_bitflip(rng: Rng, b: bytes) -> tuple[bytes, str]:
    return flip_bits(rng, b), "bitflip"


def m_truncate(rng: Rng, b: bytes) -> tuple[bytes, str]:
    cut = int(rng.integers(0, len(b)))
    return b[:cut], f"truncate@{cut}/{len(b)}"


def m_bytes(rng: Rng, b: bytes) -> tuple[bytes, str]:
    return byte_mutation(rng, b)


PROTO_MUTATIONS: dict[str, Callable] = {
    "model.dims": m_dims, "model.dtype": m_dtype, "model.op_type": m_op_type, "model.attr": m_attr,
    "model.edge": m_edge, "model.initializer": m_initializer, "model.opset": m_opset, "model.metadata": m_metadata,
    "model.io": m_io, "model.subgraph": m_subgraph, "model.inputs": m_inputs, "model.outputs": m_outputs,
}
BYTE_MUTATIONS: dict[str, Callable] = {"model.bitflip": m_bitflip, "model.truncate": m_truncate,
                                       "model.bytes": m_bytes}
MODEL = tuple(PROTO_MUTATIONS) + tuple(BYTE_MUTATIONS)


def mutate_model(rng: Rng, mutation: str, model: onnx.ModelProto, ctx: dict) -> tuple[bytes, str]:
    """The mutated model file's bytes and the variant picked."""
    if mutation in BYTE_MUTATIONS:
        return BYTE_MUTATIONS[mutation](rng, model.SerializeToString())
    m = onnx.ModelProto()
    m.CopyFrom(model)
    detail = PROTO_MUTATIONS[mutation](rng, m, ctx)
    return m.SerializeToString(), detail


# ====================================================================== data tables

Table = dict[str, np.ndarray]


def _col(rng: Rng, cols: Table, numeric: bool | None = None) -> str:
    keys = [k for k, v in cols.items() if numeric is None or (np.asarray(v).dtype.kind in "fiub") == numeric]
    return pick(rng, keys or list(cols))


def d_columns(rng: Rng, cols: Table, fmt: str) -> tuple[Table, str]:
    cols = dict(cols)
    k = _col(rng, cols)
    kind = pick(rng, ["rename", "drop", "add", "dup-case", "empty-name", "numeric-name", "unicode", "long-name",
                      "only-label"])
    if kind == "rename":
        cols[k[::-1] + "_"] = cols.pop(k)
    elif kind == "drop":
        cols.pop(k)
    elif kind == "add":
        cols["extra"] = np.arange(len(next(iter(cols.values()))))
    elif kind == "dup-case":
        cols[k.upper() if k != k.upper() else k.lower()] = cols[k]
    elif kind == "empty-name":
        cols[""] = cols.pop(k)
    elif kind == "numeric-name":
        cols["0"] = cols.pop(k)
    elif kind == "unicode":
        cols["\u00e9\u4e2d\U0001f600"] = cols.pop(k)
    elif kind == "long-name":
        cols["c" * 5000] = cols.pop(k)
    else:
        cols = {"label": cols.get("label", np.zeros(3))}
    return cols, f"{kind}:{k[:20]}"


DATA_DTYPES = ["int64", "int8", "uint8", "bool", "float16", "float64", "complex64", "str", "bytes", "datetime64[ns]",
               "timedelta64[s]", "object-str"]


def d_dtype(rng: Rng, cols: Table, fmt: str) -> tuple[Table, str]:
    cols = dict(cols)
    k = _col(rng, cols)
    t = pick(rng, DATA_DTYPES)
    a = np.asarray(cols[k])
    if t == "str":
        cols[k] = a.astype(str)
    elif t == "bytes":
        cols[k] = a.astype(str).astype("S")
    elif t == "object-str":
        cols[k] = a.astype(str).astype(object)
    elif t.startswith(("datetime", "timedelta")):
        cols[k] = (np.abs(np.nan_to_num(a.astype(float, copy=False) if a.dtype.kind in "fiub" else
                                        np.arange(a.size).reshape(a.shape))) * 1000).astype("int64").astype(t)
    elif a.dtype.kind in "US":
        cols[k] = np.arange(a.size).reshape(a.shape).astype(t) if t != "bool" else np.ones(a.shape, bool)
    else:
        with np.errstate(all="ignore"):
            cols[k] = a.astype(t)
    return cols, f"{k}->{t}"


def d_shape(rng: Rng, cols: Table, fmt: str) -> tuple[Table, str]:
    cols = dict(cols)
    k = _col(rng, cols)
    a = np.asarray(cols[k])
    n = len(a) if a.ndim else 1
    kind = pick(rng, ["flat", "wider", "narrower", "extra-axis", "transpose", "zero-width", "scalar", "rank5",
                      "one-row"])
    if kind == "flat":
        cols[k] = a.reshape(-1)
    elif kind == "wider":
        cols[k] = np.concatenate([a.reshape(n, -1), a.reshape(n, -1)[:, :1]], axis=1)
    elif kind == "narrower":
        cols[k] = a.reshape(n, -1)[:, :-1] if a.reshape(n, -1).shape[1] > 1 else a.reshape(n, -1)[:, :0]
    elif kind == "extra-axis":
        cols[k] = a.reshape(n, 1, -1)
    elif kind == "transpose":
        cols[k] = a.reshape(n, -1).T
    elif kind == "zero-width":
        cols[k] = np.zeros((n, 0), a.dtype)
    elif kind == "scalar":
        cols[k] = np.asarray(a.reshape(-1)[0])
    elif kind == "rank5":
        cols[k] = a.reshape(n, 1, 1, 1, -1)
    else:
        cols[k] = a[:1]
    return cols, f"{kind}:{k[:20]}"


def d_nan(rng: Rng, cols: Table, fmt: str) -> tuple[Table, str]:
    cols = dict(cols)
    k = _col(rng, cols, numeric=True)
    a = np.array(cols[k], copy=True)
    v = pick(rng, [np.nan, np.inf, -np.inf, 1e39, -0.0, 1e-45, 2**63])
    if a.dtype.kind not in "fc":
        a = a.astype(np.float64)
    with np.errstate(all="ignore"):
        flat = a.reshape(-1)
        idx = rng.integers(0, max(flat.size, 1), size=int(rng.integers(1, max(flat.size, 2))))
        if flat.size:
            flat[idx] = v
        if rng.random() < 0.3:
            flat[:] = v
    cols[k] = a
    return cols, f"{k}={v}"


def d_empty(rng: Rng, cols: Table, fmt: str) -> tuple[Table | bytes, str]:
    kind = pick(rng, ["zero-rows", "zero-bytes", "no-columns", "one-empty", "header-only"])
    if kind == "zero-rows":
        return {k: np.asarray(v)[:0] for k, v in cols.items()}, kind
    if kind == "zero-bytes":
        return b"", kind
    if kind == "no-columns":
        return {}, kind
    if kind == "one-empty":
        cols = dict(cols)
        k = _col(rng, cols)
        cols[k] = np.asarray(cols[k])[:0]
        return cols, f"{kind}:{k}"
    return (",".join(cols) + "\n").encode(), kind


def d_rows(rng: Rng, cols: Table, fmt: str) -> tuple[Table, str]:
    cols = dict(cols)
    kind = pick(rng, ["mismatch", "one", "many", "label-short"])
    if kind == "mismatch":
        k = _col(rng, cols)
        cols[k] = np.asarray(cols[k])[:-3]
    elif kind == "one":
        cols = {k: np.asarray(v)[:1] for k, v in cols.items()}
    elif kind == "many":
        reps = 200
        cols = {k: np.concatenate([np.asarray(v)] * reps) for k, v in cols.items()}
    elif "label" in cols:
        cols["label"] = np.asarray(cols["label"])[:5]
    return cols, kind


def d_strings(rng: Rng, cols: Table, fmt: str) -> tuple[Table, str]:
    cols = dict(cols)
    strs = [k for k, v in cols.items() if np.asarray(v).dtype.kind in "USO"]
    k = pick(rng, strs) if strs else _col(rng, cols)
    a = np.asarray(cols[k]).astype(str).astype(object)
    v = pick(rng, ["unseen", "", " ", "x" * 20000, "\x00", "\x1b[31m", "\u00e9\u4e2d", "nan", "1.5", "None",
                   "small ", "SMALL", "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace")])
    flat = a.reshape(-1)
    if flat.size:
        flat[int(rng.integers(flat.size))] = v
    cols[k] = a.astype(str) if fmt in ("npz", "npy") else a
    return cols, f"{k}={v[:12]!r}"


def d_labels(rng: Rng, cols: Table, fmt: str) -> tuple[Table, str]:
    cols = dict(cols)
    key = "label" if "label" in cols else next((k for k in ("target", "diagnosis", "y") if k in cols), None)
    kind = pick(rng, ["drop", "strings", "nan", "float", "2d", "short", "negative", "huge"])
    if key is None:
        return cols, "no-label"
    a = np.asarray(cols[key])
    if kind == "drop":
        cols.pop(key)
    elif kind == "strings":
        cols[key] = np.asarray([f"c{v}" for v in a.reshape(-1)])
    elif kind == "nan":
        b = a.astype(float)
        b[:: max(len(b) // 3, 1)] = np.nan
        cols[key] = b
    elif kind == "float":
        cols[key] = a.astype(float) + 0.5 if a.dtype.kind in "fiub" else a
    elif kind == "2d":
        cols[key] = np.stack([a, a], axis=1)
    elif kind == "short":
        cols[key] = a[:2]
    elif kind == "negative":
        cols[key] = -np.abs(a.astype(np.int64)) - 1 if a.dtype.kind in "iub" else a
    else:
        cols[key] = np.full(a.shape, 2**62, np.int64)
    return cols, f"{kind}:{key}"


def d_object(rng: Rng, cols: Table, fmt: str) -> tuple[bytes, str]:
    """An .npz member saved with pickle (object dtype): never to be unpickled."""
    buf = io.BytesIO()
    k = _col(rng, cols)
    arrs = dict(cols)
    arrs[k] = np.asarray([{"a": 1}] * len(np.asarray(cols[k])), dtype=object)
    np.savez(buf, **arrs)
    return buf.getvalue(), k


def d_forged(rng: Rng, cols: Table, fmt: str) -> tuple[bytes, str]:
    """An .npz whose member header claims a huge array, or whose zip directory lies about sizes."""
    k = _col(rng, cols)
    a = np.ascontiguousarray(np.asarray(cols[k]))
    kind = pick(rng, ["header", "zip-size", "npy-header"])
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": np.lib.format.dtype_to_descr(a.dtype), "fortran_order": False,
                                                "shape": (2**40, 8)})
    member = (head.getvalue() if kind != "zip-size" else b"") + a.tobytes()
    if kind == "npy-header":
        return head.getvalue() + a.tobytes()[:64], kind
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, v in cols.items():
            if name == k:
                if kind == "zip-size":
                    b = io.BytesIO()
                    np.save(b, a)
                    member = b.getvalue()
                z.writestr(name + ".npy", member)
            else:
                b = io.BytesIO()
                v = np.asarray(v)
                np.save(b, v.astype(str) if v.dtype == object else v, allow_pickle=False)
                z.writestr(name + ".npy", b.getvalue())
    raw = bytearray(buf.getvalue())
    if kind == "zip-size":  # patch the central directory's uncompressed size of every member to 4 GiB - 1
        i = raw.find(b"PK\x01\x02")
        while i >= 0:
            raw[i + 24:i + 28] = (2**32 - 1).to_bytes(4, "little")
            i = raw.find(b"PK\x01\x02", i + 4)
    return bytes(raw), f"{kind}:{k}"


TABLE_MUTATIONS: dict[str, Callable] = {
    "data.columns": d_columns, "data.dtype": d_dtype, "data.shape": d_shape, "data.nan": d_nan,
    "data.empty": d_empty, "data.rows": d_rows, "data.strings": d_strings, "data.labels": d_labels,
}
RAW_DATA_MUTATIONS: dict[str, Callable] = {"data.object": d_object, "data.forged": d_forged}
DATA = (*TABLE_MUTATIONS, *RAW_DATA_MUTATIONS, "data.truncate", "data.bytes", "data.format")
OTHER_FORMATS = {"npz": ["csv", "parquet", "npy"], "npy": ["npz", "csv"], "csv": ["npz", "parquet"],
                 "parquet": ["csv", "npz"]}


# ====================================================================== YAML configs


def _paths(node, prefix=()) -> list[tuple]:
    """Every key path in a parsed YAML document (mappings by key, lists by index)."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((*prefix, i))
            out += _paths(v, (*prefix, i))
    return out


def _get(doc, path):
    for p in path:
        doc = doc[p]
    return doc


def _typo(rng: Rng, key: str) -> str:
    if not key:
        return "x"
    i = int(rng.integers(len(key)))
    kind = pick(rng, ["swap", "drop", "double", "upper", "dash", "space"])
    if kind == "swap" and len(key) > 1:
        i = min(i, len(key) - 2)
        return key[:i] + key[i + 1] + key[i] + key[i + 2:]
    if kind == "drop" and len(key) > 1:
        return key[:i] + key[i + 1:]
    if kind == "upper":
        return key.upper()
    if kind == "dash":
        return key.replace("_", "-") if "_" in key else key + "-"
    if kind == "space":
        return key + " "
    return key[:i] + key[i] + key[i:]


VALUES: list[Any] = [0, -1, 1, 7, 2**63, -(2**70), 0.5, 1e308, float("nan"), float("inf"), "", " ", "a" * 5000,
                     "\u00e9\u4e2d", "\x00", None, True, False, "true", "1e3", "~", [], {}, [1, "a", None],
                     {"a": {"b": 1}}, "../nope.onnx", "/", ".", "-1", "${HOME}", "<b>x</b>", "[red]x[/red]",
                     "\x1b[31m", "null", "CPUExecutionProvider"]
PATH_VALUES = ["nope.onnx", ".", "", "~/nope", "/nonexistent/x.onnx", "a\x00b", "a\nb", "x" * 5000, "/dev/null",
               "/", "../" * 40 + "x", "\u00e9\u4e2d.onnx", "nested/../../x"]
PATH_KEYS = {"path", "calibration", "run_dir", "factory", "transform", "model"}


def y_key(rng: Rng, doc: dict) -> tuple[Any, str]:
    maps = [p for p in _paths(doc) if isinstance(p[-1], str)]
    kind = pick(rng, ["typo", "typo", "delete", "unknown", "nonstring", "dup-typo"])
    if kind == "unknown" or not maps:
        target = _get(doc, pick(rng, [()] + [p for p in _paths(doc) if isinstance(_get(doc, p), dict)]))
        target[pick(rng, ["fuzz", "stage", "inputs_", "Name", "pth"])] = pick(rng, [1, "x", None])
        return doc, kind
    path = pick(rng, maps)
    parent = _get(doc, path[:-1])
    key = path[-1]
    if kind in ("typo", "dup-typo"):
        new = _typo(rng, key)
        items = list(parent.items())
        parent.clear()
        for k, v in items:
            if k == key:
                if kind == "dup-typo":
                    parent[k] = v
                parent[new] = v
            else:
                parent[k] = v
        return doc, f"{kind}:{'.'.join(map(str, path))}->{new}"
    if kind == "delete":
        del parent[key]
        return doc, f"delete:{'.'.join(map(str, path))}"
    parent[pick(rng, [1, None, True, 2.5])] = parent.pop(key)
    return doc, f"nonstring:{'.'.join(map(str, path))}"


def y_value(rng: Rng, doc: dict) -> tuple[Any, str]:
    leaves = [p for p in _paths(doc) if not isinstance(_get(doc, p), (dict, list))]
    if not leaves:
        return doc, "no-leaf"
    path = pick(rng, leaves)
    v = pick(rng, VALUES)
    _get(doc, path[:-1])[path[-1]] = v
    return doc, f"{'.'.join(map(str, path))}={str(v)[:20]!r}"


def y_type(rng: Rng, doc: dict) -> tuple[Any, str]:
    paths = _paths(doc)
    if rng.random() < 0.1 or not paths:
        return pick(rng, [["a", "b"], "just a string", 42, None]), "root"
    path = pick(rng, paths)
    cur = _get(doc, path)
    if isinstance(cur, dict):
        new = pick(rng, [list(cur), "x", 5, None])
    elif isinstance(cur, list):
        new = pick(rng, [{"a": 1}, "x", 5])
    else:
        new = pick(rng, [{"k": cur}, [cur], {}])
    _get(doc, path[:-1])[path[-1]] = new
    return doc, f"{'.'.join(map(str, path))}:{type(cur).__name__}->{type(new).__name__}"


def y_stages(rng: Rng, doc: dict) -> tuple[Any, str]:
    if not isinstance(doc, dict):
        return doc, "no-doc"
    stages = doc.get("stages")
    kind = pick(rng, ["empty", "null", "list", "reverse", "unknown-stage", "drop-convert", "option-list",
                      "unknown-option", "validate-only", "missing"])
    if kind == "empty":
        doc["stages"] = {}
    elif kind == "null":
        doc["stages"] = None
    elif kind == "list":
        doc["stages"] = list(stages or {"convert": {}})
    elif kind == "reverse" and isinstance(stages, dict):
        doc["stages"] = dict(reversed(list(stages.items())))
    elif kind == "unknown-stage":
        doc.setdefault("stages", {})["deploy"] = {}
    elif kind == "drop-convert" and isinstance(stages, dict):
        stages.pop("convert", None)
    elif kind == "option-list" and isinstance(stages, dict) and stages:
        stages[pick(rng, list(stages))] = [1, 2]
    elif kind == "unknown-option" and isinstance(stages, dict) and stages:
        stages[pick(rng, list(stages))] = {"fuzz_option": 1}
    elif kind == "validate-only":
        doc["stages"] = {"validate": {"against": pick(rng, ["previous", "source", "onnx-reference", "nope.onnx"])}}
    else:
        doc.pop("stages", None)
    return doc, kind


def y_path(rng: Rng, doc: dict) -> tuple[Any, str]:
    paths = [p for p in _paths(doc) if p and p[-1] in PATH_KEYS]
    v = pick(rng, PATH_VALUES)
    if not paths:
        doc.setdefault("data", {})
        paths = [("data", "path")]
    path = pick(rng, paths)
    parent = _get(doc, path[:-1])
    if not isinstance(parent, dict):
        return doc, "no-path"
    if path[-1] in ("factory", "transform", "model") and rng.random() < 0.5:
        v = v + ":fn"
    parent[path[-1]] = v
    return doc, f"{'.'.join(map(str, path))}={v[:20]!r}"


def y_inputs(rng: Rng, doc: dict) -> tuple[Any, str]:
    """The inputs[] specs, where config meets data: shapes, dtypes, columns, categories, names."""
    if not isinstance(doc, dict):
        return doc, "no-doc"
    specs = doc.get("inputs")
    if not isinstance(specs, list) or not specs or not isinstance(specs[0], dict):
        specs = doc["inputs"] = [{"name": pick(rng, ["x", "input", "f0", "nope"]), "dtype": "float32",
                                  "shape": ["batch", 4]}]
        return doc, "added"
    spec = pick(rng, [s for s in specs if isinstance(s, dict)] or [specs[0]])
    kind = pick(rng, ["shape", "shape", "dtype", "columns", "column", "categories", "range", "name", "drop", "dup"])
    if kind == "shape":
        spec["shape"] = pick(rng, [[], ["batch"], [0], [-1, 10], ["batch", 10**9], [1, 1, 1, 1, 1], ["batch", "n"],
                                   [None, 4], [24, 4], [2**40]])
    elif kind == "dtype":
        spec["dtype"] = pick(rng, ["float32", "float64", "float16", "int64", "int32", "int8", "uint8", "bool",
                                   "string"])
    elif kind == "columns":
        cols = spec.get("columns") or ["f0", "f1"]
        spec["columns"] = pick(rng, [[], cols[:1], cols + cols[:1], [*cols[:-1], "missing"], ["label"],
                                     [c.upper() for c in cols]])
    elif kind == "column":
        spec["column"] = pick(rng, ["label", "missing", "", "X", "target"])
    elif kind == "categories":
        spec["categories"] = pick(rng, [[], ["a"], [1, "a"], list(range(1000)), [None]])
    elif kind == "range":
        spec["low"], spec["high"] = pick(rng, [(1.0, 0.0), (-1e308, 1e308), (float("nan"), 1.0), (5.0, 5.0)])
    elif kind == "name":
        spec["name"] = pick(rng, ["nope", "", "label", "x y", spec.get("name", "x") + "_"])
    elif kind == "drop":
        specs.remove(spec)
    else:
        specs.append(copy.deepcopy(spec))
    return doc, f"{kind}:{spec.get('name')}={str(spec.get(kind, ''))[:30]}"


STRUCT_MUTATIONS: dict[str, Callable] = {"yaml.key": y_key, "yaml.value": y_value, "yaml.type": y_type,
                                         "yaml.stages": y_stages, "yaml.path": y_path,
                                         "yaml.inputs": y_inputs}


def t_indent(rng: Rng, text: str) -> tuple[str, str]:
    lines = text.split("\n")
    idx = [i for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith("#")]
    i = pick(rng, idx)
    ln = lines[i]
    body = ln.lstrip(" ")
    kind = pick(rng, ["more", "less", "tab", "zero", "block"])
    if kind == "more":
        lines[i] = " " * int(rng.integers(1, 5)) + ln
    elif kind == "less":
        lines[i] = " " * max(len(ln) - len(body) - int(rng.integers(1, 3)), 0) + body
    elif kind == "tab":
        lines[i] = "\t" + body
    elif kind == "zero":
        lines[i] = body
    else:
        j = min(i + int(rng.integers(1, 6)), len(lines))
        lines[i:j] = [" " + x for x in lines[i:j]]
    return "\n".join(lines), f"{kind}@{i + 1}"


def t_syntax(rng: Rng, text: str) -> tuple[str, str]:
    kind = pick(rng, ["anchor", "tag", "bracket", "dup-key", "multi-doc", "deep-list", "deep-map", "big", "colon",
                      "quote", "comment-only", "merge-key"])
    if kind == "anchor":
        return text.replace("source:", "source: &src", 1) + "\nextra: *src\n", kind
    if kind == "tag":
        return text + "\nname: !!python/object/apply:os.getcwd []\n", kind
    if kind == "bracket":
        return text.replace("{", "{{", 1) if "{" in text else text + "\nbad: [1, 2\n", kind
    if kind == "dup-key":
        return text + "\nname: duplicate\n", kind
    if kind == "multi-doc":
        return text + "\n---\nname: second\n", kind
    if kind == "deep-list":
        n = int(pick(rng, [100, 1000, 5000, 20000]))
        return text + "\nextra: " + "[" * n + "]" * n + "\n", f"{kind}:{n}"
    if kind == "deep-map":
        n = int(pick(rng, [100, 1000, 5000, 20000]))
        return text + "\nextra: " + "{a: " * n + "1" + "}" * n + "\n", f"{kind}:{n}"
    if kind == "big":
        return text + "#" + "x" * (1 << 20) + "\n", kind
    if kind == "colon":
        return text.replace(":", "", 1), kind
    if kind == "quote":
        return text.replace("name: ", 'name: "', 1), kind
    if kind == "comment-only":
        return "# nothing here\n", kind
    return text + "\n<<: {name: merged}\n", kind


def t_bytes(rng: Rng, text: str) -> tuple[bytes, str]:
    b = text.encode("utf-8")
    kind = pick(rng, ["raw", "raw", "invalid-utf8", "bom", "crlf", "nul", "utf16", "latin1"])
    if kind == "raw":
        return byte_mutation(rng, b)
    if kind == "invalid-utf8":
        i = int(rng.integers(0, len(b)))
        return b[:i] + b"\xff\xfe" + b[i:], kind
    if kind == "bom":
        return b"\xef\xbb\xbf" + b, kind
    if kind == "crlf":
        return b.replace(b"\n", b"\r\n"), kind
    if kind == "nul":
        i = int(rng.integers(0, len(b)))
        return b[:i] + b"\x00" + b[i:], kind
    if kind == "utf16":
        return text.encode("utf-16"), kind
    return (text + "# caf\u00e9\n").encode("latin-1", "replace"), kind


TEXT_MUTATIONS: dict[str, Callable] = {"yaml.indent": t_indent, "yaml.syntax": t_syntax, "yaml.bytes": t_bytes}
YAML = (*STRUCT_MUTATIONS, *TEXT_MUTATIONS)


def mutate_yaml(rng: Rng, mutation: str, text: str) -> tuple[bytes, str]:
    if mutation in TEXT_MUTATIONS:
        out, detail = TEXT_MUTATIONS[mutation](rng, text)
        return (out.encode("utf-8") if isinstance(out, str) else out), detail
    from bases import dump_yaml

    doc = yaml.safe_load(text)
    doc, detail = STRUCT_MUTATIONS[mutation](rng, copy.deepcopy(doc))
    return dump_yaml(doc).encode("utf-8"), detail
