"""The Keras frontend's second export path: freeze the model first, then convert the frozen graph with tf2onnx.

Why it exists (measured on Keras 3.15 / TF 2.21 / tf2onnx 1.17): `model.export(format="onnx")` traces the model
inside Keras's ExportArchive, and tensors a layer holds as plain constants (an adapted `Normalization`'s mean and
variance, a lookup layer's default value and table handle) stay captured placeholders that tf2onnx turns into extra
graph *inputs*. Tracing `model(x, training=False)` in our own `tf.function` and freezing it the way
`tf2onnx.convert.from_keras` does (`tf_loader.from_trackable`: variables and captured constants become `Const`,
hash tables are read out of the model's trackables) folds them back in, and — unlike a bare
`convert_variables_to_constants_v2` — keeps while loops unlowered, so LSTM/GRU still convert.

Two TF ops tf2onnx 1.17 has no conversion for get one here (tf2onnx's own custom-op-handler API):
- `Bucketize` (Keras `Discretization`): count of boundaries ≤ x = ReduceSum(Cast(x[..., None] >= boundaries)).
- `LookupTableFindV2` with int64 keys and values (Keras `IntegerLookup`): ai.onnx.ml `LabelEncoder`; string keys or
  values go to tf2onnx's own `CategoryMapper` conversion.

Not a registered frontend (the leading underscore keeps the registry from importing it); imports TF lazily.
"""

from __future__ import annotations

import contextlib
import re

import numpy as np

ONNX_OPS: frozenset[tuple[str, str]] | None = None


def _tables_handler(tables):
    """LookupTableFindV2 → tf2onnx's CategoryMapper for string↔int64 tables, LabelEncoder for int64→int64."""
    from onnx import TensorProto
    from tf2onnx import constants, utils
    from tf2onnx.custom_opsets.onnx_ml import LookupTableFind

    def handler(ctx, node, name, args):
        table = node.inputs[0]
        while table.type == "Identity":
            table = table.inputs[0]
        key_t, val_t = ctx.get_dtype(node.input[1]), ctx.get_dtype(node.output[0])
        if TensorProto.STRING in (key_t, val_t):
            return LookupTableFind.version_8(ctx, node, initialized_tables=tables)
        shared = table.get_attr_value("shared_name")
        utils.make_sure(shared in tables, "lookup table %s of node %s: contents not found in the model", shared,
                        node.name)
        utils.make_sure(key_t == TensorProto.INT64 and val_t == TensorProto.INT64,
                        "lookup table of node %s maps %s to %s; only string and int64 tables convert", node.name,
                        TensorProto.DataType.Name(key_t), TensorProto.DataType.Name(val_t))
        default = node.inputs[2]
        utils.make_sure(default.is_const(), "the default value of lookup node %s is not a constant", node.name)
        keys, values = tables[shared]
        shape = ctx.get_shape(node.input[1])
        out, inp = list(node.output), node.input[1]
        ctx.remove_node(node.name)
        ctx.make_node("LabelEncoder", [inp], outputs=out, name=node.name, domain=constants.AI_ONNX_ML_DOMAIN,
                      attr={"keys_int64s": [int(k) for k in np.asarray(keys).ravel()],
                            "values_int64s": [int(v) for v in np.asarray(values).ravel()],
                            "default_int64": int(default.get_tensor_value())},
                      shapes=[shape], dtypes=[TensorProto.INT64])
        if not ctx.find_output_consumers(table.output[0]):
            ctx.remove_node(table.name)

    return handler


def _bucketize(ctx, node, name, args):
    """TF Bucketize(x, boundaries) = number of boundaries ≤ x, as int32."""
    from onnx import TensorProto

    bounds = np.asarray(node.get_attr_value("boundaries"), dtype=np.float32)
    x = node.input[0]
    if ctx.get_dtype(x) != TensorProto.FLOAT:  # TF compares ints and doubles against float boundaries
        x = ctx.make_node("Cast", [x], attr={"to": TensorProto.FLOAT}).output[0]
    axis = ctx.make_const(f"{name}__axis", np.array([-1], dtype=np.int64)).output[0]
    col = ctx.make_node("Unsqueeze", [x, axis]).output[0]
    ge = ctx.make_node("GreaterOrEqual", [col, ctx.make_const(f"{name}__bounds", bounds).output[0]]).output[0]
    hits = ctx.make_node("Cast", [ge], attr={"to": TensorProto.INT32}).output[0]
    node.type = "ReduceSum"
    del node.attr["boundaries"]
    ctx.replace_inputs(node, [hits, axis])
    node.set_attr("keepdims", 0)


def export_checked(model, signature, opset: int, plain_failure: str | None, plain_flaws: dict | None):
    """The frozen export where model.export failed or left flaws; a UserError (exit 2) naming the layer and the
    reason where the frozen export is not clean either."""
    from onnxforge.errors import UserError
    from onnxforge.frontends._export import first_line, quiet

    try:
        with quiet(), stable_merge():
            proto = export_frozen(model, signature, opset)
    except Exception as e:
        if plain_failure:
            raise UserError(f"Keras ONNX export failed ({plain_failure}) — check the input spec and that the "
                            "model's layers have ONNX equivalents") from None
        raise UserError(f"the Keras ONNX export {describe(plain_flaws or {}, model)}, and exporting the frozen "
                        f"model failed ({first_line(e)}) — check that the model's layers have ONNX equivalents"
                        ) from None
    left = flaws(proto, model, len(signature))
    if left:
        raise UserError(refusal(left, model))
    why = f"model.export failed ({plain_failure})" if plain_failure else f"model.export {describe(plain_flaws, model, brief=True)}"
    meta = proto.metadata_props.add()
    meta.key, meta.value = "onnxforge.keras.export", f"frozen, then tf2onnx: {why}"
    return proto


def _struct(model, attr: str):
    return getattr(model, attr, None)


def model_inputs(model, xs):
    """Positional tensors (in model.inputs order) in the structure the model was built with: a dict for a
    Functional model built on a dict of inputs (model.inputs is that dict flattened, i.e. in key order)."""
    struct = _struct(model, "_inputs_struct")
    if isinstance(struct, dict) and len(struct) == len(xs):
        return dict(zip(dict_keys(struct), xs, strict=True))
    return list(xs)


def model_outputs(out):
    """A model's outputs as a list in model.outputs order: a dict of outputs flattened the way Keras flattens it
    (by key), which is not the order of model.output_names."""
    import keras

    return keras.tree.flatten(out) if isinstance(out, dict) else out


def dict_keys(struct: dict) -> list[str]:
    """A dict's keys in the order keras.tree.flatten puts its values."""
    import keras

    return [str(k) for k in keras.tree.flatten({k: str(k) for k in struct})]


def export_frozen(model, signature, opset: int):
    """ONNX ModelProto of `model(inputs, training=False)` traced for `signature` (a list of tf.TensorSpec), with
    every variable and captured constant frozen and lookup tables read from the model. Its graph inputs are the
    signature's, named as tf2onnx names them (`x:0`); the caller renames them."""
    # Keras's numpy-2 fixes for tf2onnx (as model.export applies them); _convert_common is the step tf2onnx's
    # from_keras and from_function share (tf2onnx 1.17 is pinned)
    import tensorflow as tf
    from keras.src.export.tf2onnx_lib import patch_tf2onnx
    from tf2onnx import tf_loader
    from tf2onnx.convert import _convert_common

    patch_tf2onnx()
    single = len(signature) == 1

    def call(*xs):
        out = model(xs[0] if single else model_inputs(model, xs), training=False)
        return model_outputs(out)

    fn = tf.function(call, autograph=False)
    concrete = fn.get_concrete_function(*signature)
    ins = [t.name for t in concrete.inputs[: len(signature)]]
    outs = [t.name for t in concrete.outputs if t.dtype != tf.resource]
    with tf.device("/cpu:0"):
        frozen, tables = tf_loader.from_trackable(model, concrete, ins, outs, False)
        # a hash table exports its entries in hash order: sort them, so the same vocabulary gives the same bytes
        tables = {n: (np.asarray(k)[np.argsort(k, kind="stable")], np.asarray(v)[np.argsort(k, kind="stable")])
                  for n, (k, v) in tables.items()}
        handlers = {"Bucketize": (_bucketize, []), "LookupTableFindV2": (_tables_handler(tables), [])}
        proto, _ = _convert_common(frozen, name=model.name, continue_on_error=True, opset=opset, input_names=ins,
                                   output_names=outs, initialized_tables=tables, custom_op_handlers=handlers)
    _output_shapes(proto, model)
    canonical_order(proto.graph)
    return proto


@contextlib.contextmanager
def stable_merge():
    """tf2onnx's optimizers with merge_duplication made deterministic, for any conversion inside (model.export's
    too: it takes no optimizers argument, so tf2onnx's table is swapped for the call). merge_duplication keeps the
    first of equal nodes in graph order, and that order follows tf2onnx's counters, whose values follow set
    iteration order (the hash seed): the same model kept 'bincount/minlength:0' one run and
    'bincount/maxlength:0' the next. Here equal nodes are ranked by name without counters first."""
    from tf2onnx import optimizer
    from tf2onnx.optimizer.merge_duplicated_nodes_optimizer import MergeDuplicatedNodesOptimizer

    class StableMerge(MergeDuplicatedNodesOptimizer):
        def _del_nodes_if_duplicated(self, nodes_group, graph):
            ranked = sorted(nodes_group, key=lambda n: (_COUNTER.sub("", n.name), n.name))
            return super()._del_nodes_if_duplicated(ranked, graph)

    table = optimizer._get_optimizers()
    saved = table.get("merge_duplication")
    if saved is not None:
        table["merge_duplication"] = StableMerge
    try:
        yield
    finally:
        if saved is not None:
            table["merge_duplication"] = saved


_COUNTER = re.compile(r"__\d+|\d{9,}")  # tf2onnx counters; object ids in its einsum names


def canonical_order(graph, *, top: bool = True) -> None:
    """Put the nodes in an order that does not depend on tf2onnx's counters. tf2onnx sorts nodes by name, and the
    names of the nodes it inserts carry a global counter whose values follow set iteration order (so the hash
    seed): the same model gave different node orders. Here: Kahn's algorithm, ready nodes taken by name without
    counters, op type, then a digest of the node and everything it depends on (attributes, initializer values,
    graph input names). The frontend then renumbers the counters by first use (keras._canonical)."""
    import hashlib

    if not top:  # only the bodies of Loop/If/Scan nodes
        for _, sub in _subgraphs(graph):
            canonical_order(sub)
        return
    producer = {o: n for n in graph.node for o in n.output}
    inits = {t.name: hashlib.sha1(t.SerializePartialToString().replace(t.name.encode(), b"")).hexdigest()
             for t in graph.initializer}
    digest: dict[int, str] = {}

    def sig(node) -> str:
        key = id(node)
        if key not in digest:
            parts = [node.domain, node.op_type]
            for a in sorted(node.attribute, key=lambda a: a.name):
                parts.append(a.name + (a.SerializeToString().hex() if not (a.HasField("g") or a.graphs) else "g"))
            for x in node.input:
                if x in producer:
                    parts.append(sig(producer[x]) + f":{list(producer[x].output).index(x)}")
                else:  # an initializer's value, or a graph input / outer-scope value by name without counter
                    parts.append(inits.get(x, "in:" + _COUNTER.sub("", x)))
            digest[key] = hashlib.sha1("|".join(parts).encode()).hexdigest()
        return digest[key]

    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * len(graph.node) + 100))
    try:
        for n in graph.node:
            sig(n)
    finally:
        sys.setrecursionlimit(limit)
    nodes = list(graph.node)
    waiting = {id(n): sum(1 for x in n.input if x in producer) for n in nodes}
    users: dict[str, list] = {}
    for n in nodes:
        for x in n.input:
            if x in producer:
                users.setdefault(x, []).append(n)
    key = {id(n): (_COUNTER.sub("", n.name), n.op_type, digest[id(n)]) for n in nodes}
    ready = sorted((n for n in nodes if waiting[id(n)] == 0), key=lambda n: key[id(n)])
    order = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for o in n.output:
            for u in users.get(o, []):
                waiting[id(u)] -= 1
                if waiting[id(u)] == 0:
                    ready.append(u)
        ready.sort(key=lambda n: key[id(n)])
    if len(order) != len(nodes):  # a cycle or a name produced twice: leave tf2onnx's order
        return
    copies = [type(n)() for n in order]
    for c, n in zip(copies, order, strict=True):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)
    for _, sub in _subgraphs(graph):
        canonical_order(sub)


def _subgraphs(graph):
    """(node, body) for every graph attribute of the graph's own nodes (Loop/If/Scan bodies), not deeper."""
    for node in graph.node:
        for a in node.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield node, sub


_GENERATED = re.compile(r"^(.*?)__(\d+)((?::\d+)?)$")  # tf2onnx's counters: 'Transpose__58:0', 'const_axes__11'


def canonical_name(name: str, inits: set[str], ids: dict[str, str]) -> str | None:
    """The stable name of a tf2onnx-generated `name` (None for a name tf2onnx did not number): its counter
    renumbered by first use (`ids`, shared across a graph and its bodies), generated constants called 'const__N'."""
    m = _GENERATED.match(name)
    if not m:
        return None
    key = f"{m.group(1)}__{m.group(2)}"
    if key not in ids:
        ids[key] = f"{'const' if name in inits else m.group(1)}__{len(ids) + 1}"
    return ids[key] + m.group(3)


def canonical_subgraphs(graph, mapping: dict[str, str], ids: dict[str, str]) -> None:
    """Carry keras._canonical into Loop/If/Scan bodies: references to outer values follow the outer renaming
    (`mapping`), and the bodies' own generated names (nodes, values, initializers, body inputs and outputs) are
    renumbered by first use, continuing the outer numbering (`ids`). tf2onnx numbers them in set order too (an
    LSTM/GRU while body: 'axes_const__521' one run, 'axes_const__513' the next)."""
    for _, sub in _subgraphs(graph):
        local = dict(mapping)
        inits = {t.name for t in sub.initializer}

        def visit(name: str, local=local, inits=inits) -> None:
            if name not in local and (new := canonical_name(name, inits, ids)) is not None:
                local[name] = new

        for vi in sub.input:
            visit(vi.name)
        for node in sub.node:
            for x in [*node.input, *node.output, node.name]:
                visit(x)
        for name in [*(t.name for t in sub.initializer), *(o.name for o in sub.output)]:
            visit(name)
        for vi in [*sub.input, *sub.output, *sub.value_info]:
            vi.name = local.get(vi.name, vi.name)
        for t in sub.initializer:
            t.name = local.get(t.name, t.name)
        for node in sub.node:
            node.input[:] = [local.get(x, x) for x in node.input]
            node.output[:] = [local.get(x, x) for x in node.output]
            node.name = local.get(node.name, node.name)
        canonical_subgraphs(sub, local, ids)


def _output_shapes(proto, model) -> None:
    """Give outputs tf2onnx left without a shape (a lookup's result: 'missing output shape for Identity:0', which
    onnx.checker refuses) the rank and dims Keras knows for them."""
    for k, (out, kt) in enumerate(zip(proto.graph.output, model.outputs, strict=False)):
        tt = out.type.tensor_type
        if tt.HasField("shape") or kt.shape is None:
            continue
        tt.shape.SetInParent()
        for i, d in enumerate(kt.shape):
            if d is None:
                tt.shape.dim.add().dim_param = f"unk__{900 + 10 * k + i}"
            else:
                tt.shape.dim.add().dim_value = int(d)


def _schemas() -> frozenset[tuple[str, str]]:
    global ONNX_OPS
    if ONNX_OPS is None:
        import onnx

        ONNX_OPS = frozenset((d.domain or "", d.name) for d in onnx.defs.get_all_schemas_with_history())
    return ONNX_OPS


def foreign_nodes(model) -> list:
    """Nodes (also inside Loop/If/Scan bodies) that are no ONNX operator: TF ops tf2onnx could not convert and
    left in the graph as they were (`Bucketize`, `StringToHashBucketFast`, a `LookupTableFindV2` without its
    table)."""
    known = _schemas()
    out, stack = [], [model.graph]
    while stack:
        g = stack.pop()
        for node in g.node:
            if (node.domain or "", node.op_type) not in known:
                out.append(node)
            for a in node.attribute:
                stack.extend([a.g] if a.HasField("g") else [])
                stack.extend(a.graphs)
    return out


def flaws(proto, model, n_inputs: int) -> dict:
    """What makes an export unusable although tf2onnx returned it: graph inputs beyond the Keras model's own
    (captured constants; tf2onnx lists them after the real inputs) and nodes that are no ONNX operator.
    Empty when the export is clean."""
    inits = {t.name for t in proto.graph.initializer}
    extra = [i.name for i in proto.graph.input if i.name not in inits][n_inputs:]
    foreign = [(n.op_type, n.name) for n in foreign_nodes(proto)]
    return {k: v for k, v in (("extra", extra), ("foreign", foreign)) if v}


def _layers_named(names, model) -> str:
    """"layer 'a' (A)" / "layers 'a' (A), 'b' (B)" for the layers the graph names belong to; '' for none."""
    found = sorted({w for w in (layer_of(n, model) for n in names) if w})
    return f"{'layer' if len(found) == 1 else 'layers'} {', '.join(found)}" if found else ""


def describe(found: dict, model, *, brief: bool = False) -> str:
    """One clause for flaws(): 'produced extra graph inputs a/Sub/y:0, a/Sqrt/x:0 that the Keras model does not
    have (constants of layer 'normalization' (Normalization))'; brief: counts instead of the graph names."""
    parts = []
    if found.get("extra"):
        where = _layers_named(found["extra"], model)
        n = len(found["extra"])
        names = f"{n} extra graph input{'s' if n > 1 else ''}" if brief else \
            f"extra graph inputs {', '.join(found['extra'])}"
        parts.append(f"produced {names} that the Keras model does not have"
                     + (f" (constants of {where})" if where else ""))
    if found.get("foreign"):
        ops = sorted({op for op, _ in found["foreign"]})
        parts.append(f"left TensorFlow ops {', '.join(ops)} unconverted")
    return " and ".join(parts)


def refusal(found: dict, model) -> str:
    """The one-line reason an export that still has flaws after freezing is refused (exit 2)."""
    import tf2onnx

    tool = f"tf2onnx {tf2onnx.__version__}"
    if found.get("foreign"):
        by_layer: dict[str, set[str]] = {}
        for op, name in found["foreign"]:
            by_layer.setdefault(layer_of(name, model) or "", set()).add(op)
        items = [f"{w or 'outside any layer'} (TensorFlow op{'s' if len(ops) > 1 else ''} {', '.join(sorted(ops))})"
                 for w, ops in sorted(by_layer.items())]
        n_ops = sum(map(len, by_layer.values()))
        return (f"{'layer' if len(items) == 1 else 'layers'} {'; '.join(items)} cannot be exported to ONNX: {tool} "
                f"has no conversion for {'it' if n_ops == 1 else 'them'} — apply that preprocessing outside the model "
                "(in the input pipeline) and convert the rest, or replace the layer")
    return (f"the export {describe(found, model)}, also after freezing the model — those values are not "
            "yours to feed: make them weights or constants of the layer (or report it with the model)")


def layer_of(tensor_name: str, model) -> str | None:
    """The Keras layer a graph value belongs to, read off its name scope ('functional_1/normalization_1/Sub/y:0'
    → "'normalization' (Normalization)"); None when no scope names a layer."""
    layers = {}
    for layer in _all_layers(model):
        layers.setdefault(layer.name, layer)
    for part in tensor_name.split("/"):
        for cand in (part, re.sub(r"_\d+$", "", part)):
            if cand in layers and layers[cand] is not model:
                return f"'{cand}' ({type(layers[cand]).__name__})"
    return None


def _all_layers(model):
    stack = list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop(0)
        yield layer
        stack.extend(getattr(layer, "layers", []) or [])
