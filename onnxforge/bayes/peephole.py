"""Node-level cleanups of an exported predictive graph that neither the torch exporter nor onnxscript's optimizer
makes. At one row onnxruntime spends most of a call in per-node overhead (~0.4-0.8 µs each, more than the math on a
few hundred floats), so each node dropped is time saved. Every rule keeps the computed values bit-identical:
- a RandomNormalLike whose only consumer multiplies it by a constant positive number takes that number into its
  `scale` and `mean` (the generator already computes mean + scale·z; a scale must stay positive);
- a Transpose of a tensor with one non-unit dimension, read only by Reshape(·, [-1]), is dropped (the order of its
  elements does not change: NonZero of a flat mask is (1, n), torch's nonzero transposes it to (n, 1));
- Reshape(x, [-1]) of an x that is already 1-D (by onnx shape inference) is x;
- a chain of Reshape/Squeeze/Unsqueeze/Flatten/Identity that ends in its start's shape (by onnx shape inference,
  symbolic dimensions by name) is its start: element order never changes along such a chain (the lowering's
  (rows, 1, S) view of a (rows, S) MatMul squeezed back, two nodes in every GLM); a Gather of index 0 along a
  length-1 axis 0 counts as such a view (torch's .item() of a run-time size);
- Concat of one tensor with constant fills (a constant of one value broadcast by Expand/Unsqueeze/Reshape) is one
  Pad per side, or one Pad where both sides fill with the same value.
Nodes nothing reads any more are then dropped, and so are initializers nothing reads.
"""

from __future__ import annotations

import numpy as np

SHAPE_ONLY = ("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity")


def simplify(model) -> int:
    """Apply the rules (in the main graph and the If branches) until none applies; returns the nodes removed."""
    import onnx

    removed = 0
    while True:
        inferred = onnx.shape_inference.infer_shapes(model)
        n = _walk(model.graph, inferred.graph, {})
        if not n:
            _drop_unread(model.graph)
            return removed
        removed += n


def _ranks(graph) -> dict[str, list]:
    """name → dims (an int, a symbolic dimension's name, or None where unknown) of every typed tensor."""
    out = {}
    for vi in [*graph.value_info, *graph.input, *graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    return out


def _walk(graph, inferred, outer: dict) -> int:
    """One rule applied in `graph` or, if none applies there, in an If/Loop/Scan body of it (outer: the
    constants of the enclosing graphs, which a body may read)."""
    from onnx import AttributeProto, numpy_helper

    consts = {**outer, **{i.name: numpy_helper.to_array(i) for i in graph.initializer}}
    if _pass(graph, _ranks(inferred), consts):
        return 1
    for n, m in zip(graph.node, inferred.node, strict=True):
        for a, b in zip(n.attribute, m.attribute, strict=True):
            pairs = [(a.g, b.g)] if a.type == AttributeProto.GRAPH else list(zip(a.graphs, b.graphs, strict=True))
            for g, ig in pairs:
                if _walk(g, ig, consts):
                    return 1
    return 0


def _pass(graph, dims: dict, consts: dict) -> int:
    from onnx import helper, numpy_helper

    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    users: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    kept = {o.name for o in graph.output} | _subgraph_reads(graph)

    def shape_only(node) -> bool:
        """A node that only relabels its input's shape; a Gather of index 0 along a length-1 axis 0 is a Squeeze
        (torch's .item() of a size: Reshape [-1], Gather 0, Reshape [1])."""
        if node.op_type in SHAPE_ONLY:
            return True
        if node.op_type != "Gather" or any(a.name == "axis" and a.i != 0 for a in node.attribute):
            return False
        index = consts.get(node.input[1])
        return index is not None and index.ndim == 0 and int(index) in (0, -1) and (
            dims.get(node.input[0]) or [None])[0] == 1

    def flat(node) -> bool:
        shape = consts.get(node.input[1]) if len(node.input) > 1 else None
        return node.op_type == "Reshape" and shape is not None and shape.tolist() == [-1]

    made = {o: n for n in graph.node for o in n.output}
    for n in list(graph.node):
        out = n.output[0] if n.output else None
        if out is None or out in kept:
            continue
        if n.op_type == "RandomNormalLike" and len(users.get(out, [])) == 1:
            mul = users[out][0]
            other = [i for i in mul.input if i != out]
            k = consts.get(other[0]) if mul.op_type == "Mul" and len(other) == 1 else None
            if k is not None and k.size == 1 and k.ndim == 0 and float(k) > 0:
                attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
                for name, default in (("scale", 1.0), ("mean", 0.0)):
                    value = float(np.float32(attrs.get(name, default)) * np.float32(k))
                    _set(n, name, value)
                n.output[0] = mul.output[0]  # the generator now yields what the Mul did
                graph.node.remove(mul)
                return 1
        if (n.op_type == "Transpose" and _one_long(dims.get(n.input[0]))
                and users.get(out) and all(flat(u) for u in users[out])):
            _alias(graph, n.input[0], out, n)
            return 1
        if flat(n) and len(dims.get(n.input[0]) or [0, 0]) == 1:
            _alias(graph, n.input[0], out, n)
            return 1
        if n.op_type == "Concat" and _to_pad(graph, n, dims, consts, made):
            _drop_dead(graph, kept)
            return 1
        want = dims.get(out)
        if shape_only(n) and want is not None and None not in want:
            start = n.input[0]
            while True:
                if dims.get(start) == want:
                    _alias(graph, start, out, n)
                    _drop_dead(graph, kept)
                    return 1
                p = made.get(start)
                if p is None or not shape_only(p):
                    break
                start = p.input[0]
    return 0


def _to_pad(graph, concat, dims: dict, consts: dict, made: dict) -> bool:
    """Concat(fill, x[, fill]) → Pad(x) where each fill is a constant of one value broadcast by Expand/Unsqueeze/
    Reshape (PyTensor's concatenate([zeros((n, 1)), eta]) of a reference category: Shape, Concat, Expand,
    Unsqueeze, Concat, Expand at run time, then the Concat — one Pad)."""
    from onnx import helper, numpy_helper

    def fill(name):
        while name not in consts:
            p = made.get(name)
            if p is None or p.op_type not in ("Expand", *SHAPE_ONLY):
                return None
            name = p.input[0]
        v = consts[name]
        return v.reshape(-1)[0] if v.size and np.all(v == v.reshape(-1)[0]) else None

    rank = len(dims.get(concat.output[0]) or [])
    axis = next((a.i for a in concat.attribute if a.name == "axis"), 0) % max(rank, 1)
    parts = [(i, fill(i)) for i in concat.input]
    loose = [k for k, (_, f) in enumerate(parts) if f is None]
    if not rank or len(loose) != 1 or len(parts) < 2:
        return False
    k = loose[0]
    side = [(dims.get(i) or [None] * rank)[axis] for i, _ in parts]
    if not all(isinstance(z, int) for j, z in enumerate(side) if j != k):
        return False
    sides = [(parts[:k], 0), (parts[k + 1:], rank)]  # one Pad per side; one for both where the values agree
    if any(len({float(f) for _, f in ps}) > 1 for ps, _ in sides):
        return False
    if all(ps for ps, _ in sides) and float(parts[0][1]) == float(parts[-1][1]):
        sides = [(parts[:k] + parts[k + 1:], None)]
    out, x = concat.output[0], parts[k][0]
    at = list(graph.node).index(concat)
    graph.node.remove(concat)
    for j, (ps, offset) in enumerate(s for s in sides if s[0]):
        pads = np.zeros(2 * rank, np.int64)
        if offset is None:
            pads[axis], pads[rank + axis] = sum(side[:k]), sum(side[k + 1:])
        else:
            pads[offset + axis] = sum(side[:k]) if offset == 0 else sum(side[k + 1:])
        name = f"{out}__pad{j}"
        graph.initializer.extend([numpy_helper.from_array(pads, f"{name}_pads"),
                                  numpy_helper.from_array(np.asarray(ps[0][1]), f"{name}_fill")])
        last = j == sum(1 for s in sides if s[0]) - 1
        graph.node.insert(at + j, helper.make_node("Pad", [x, f"{name}_pads", f"{name}_fill"],
                                                   [out if last else name], name=name, mode="constant"))
        x = name
    return True


def _drop_dead(graph, kept: set[str]) -> None:
    """Nodes nothing reads any more (the start of a chain that was aliased away, a Pad's former fill)."""
    while True:
        read = {i for n in graph.node for i in n.input} | kept
        dead = [n for n in graph.node if not any(o in read for o in n.output)]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)


def _one_long(shape) -> bool:
    return shape is not None and sum(d != 1 for d in shape) <= 1


def _set(node, name: str, value: float) -> None:
    from onnx import helper

    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def _alias(graph, keep: str, drop: str, node) -> None:
    """Remove `node` and read `keep` wherever its output `drop` was read."""
    graph.node.remove(node)
    for n in graph.node:
        for j, i in enumerate(n.input):
            if i == drop:
                n.input[j] = keep


def _subgraph_reads(graph) -> set[str]:
    """Names read inside If/Loop/Scan bodies (outer-scope reads): left alone."""
    from onnxforge.summary import all_nodes

    bodies = [g for n in graph.node for a in n.attribute for g in ([a.g] if a.HasField("g") else [*a.graphs])]
    return {i for g in bodies for m in all_nodes(g) for i in m.input}


def _drop_unread(graph) -> None:
    """Initializers no node reads any more (a folded Mul's constant): onnxruntime warns about each."""
    read = _subgraph_reads(graph) | {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for init in [i for i in graph.initializer if i.name not in read]:
        graph.initializer.remove(init)
