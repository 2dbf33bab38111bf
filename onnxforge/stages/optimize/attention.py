"""Transformer fusion whatever the exporter wrote.

onnxruntime.transformers' fusions expect the TorchScript exporter's graph shape; torch's dynamo exporter (the
default) writes attention differently (scaled_dot_product_attention decomposed with the scale split over Q and K,
the mask as a 4-D additive bias), and those fusions then find SkipLayerNormalization and BiasGelu only. onnxscript's
`ort_fusions` (written for the dynamo exporter's output) fuses the same graph into com.microsoft Attention. So this
pass runs the routes that apply, keeps the one that fuses the most attention (then: fewest nodes) and reports what
each did:

- `onnxscript`: onnxscript.rewriter.ort_fusions.optimize_for_ort (dynamo graphs), then onnxruntime.transformers'
  own fusions on its output (EmbedLayerNormalization and whatever onnxscript left)
- `onnxruntime`: onnxruntime.transformers.optimizer, Python fusions only (opt_level 0: TorchScript graphs)
- `onnxruntime+basic`: the same after onnxruntime's basic constant folding (opt_level 1: TorchScript graphs whose
  attention scale is computed from shapes, as transformers' sdpa path writes it)

After the chosen route, `simplify_attention_masks` feeds a padding mask straight into the fused Attention nodes
(`mask_index`, int32 [batch, seq]) instead of the 4-D additive bias the exporter built from it — but only after
running that bias subgraph on probe masks and finding exactly "0 where the mask is 1, ≤ -1e4 where it is 0".

The optimize stage still gates the result (checker, load, numerics against the pass input), like every pass.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
ATTENTION_OPS = ("Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention")
# a masked position's additive bias must be at least this negative (onnxruntime's mask_filter_value: -10000)
_MASKED = -1e4


def contrib_histogram(model) -> dict[str, int]:
    """Ops outside the standard domains (the fused ones), `domain::op` → count, sorted by name."""
    c = Counter(f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in STANDARD_DOMAINS)
    return dict(sorted(c.items()))


def _attention_count(model) -> int:
    return sum(1 for n in model.graph.node if n.domain == "com.microsoft" and n.op_type in ATTENTION_OPS)


# ------------------------------------------------------------------ routes


def _route_onnxscript(src: Path, dst: Path, model_type: str, num_heads: int, hidden_size: int) -> dict:
    import onnx
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model = ir.load(str(src))
    model, counts = optimize_for_ort(model)
    mid = dst.with_name(dst.stem + "-onnxscript.onnx")
    ir.save(model, str(mid))
    # onnxruntime's fusions after it: EmbedLayerNormalization, and anything onnxscript has no rule for
    try:
        info = _route_ort(mid, dst, model_type, num_heads, hidden_size, 0)
    except Exception:  # onnxscript's result stands alone
        m = onnx.load(str(mid))
        onnx.save(m, str(dst))
        info = {"fused": {}}
    mid.unlink(missing_ok=True)
    return {"onnxscript": {k: v for k, v in counts.items() if v}, "onnxruntime": info["fused"]}


def _route_ort(src: Path, dst: Path, model_type: str, num_heads: int, hidden_size: int, opt_level: int) -> dict:
    from onnxruntime.transformers import optimizer

    om = optimizer.optimize_model(str(src), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size,
                                  opt_level=opt_level)
    fused = {k: v for k, v in (om.get_fused_operator_statistics() or {}).items() if v}
    om.save_model_to_file(str(dst))
    return {"fused": fused}


# tried in this order; the first that fuses every attention block (one per Softmax) ends the search
ROUTES = {
    "onnxscript": lambda s, d, t, h, w: _route_onnxscript(s, d, t, h, w),
    "onnxruntime+basic": lambda s, d, t, h, w: _route_ort(s, d, t, h, w, 1),
    "onnxruntime": lambda s, d, t, h, w: _route_ort(s, d, t, h, w, 0),
}


def fuse(src: Path, dst: Path, model_type: str = "bert", num_heads: int = 0, hidden_size: int = 0,
         routes: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The optimize stage's fusion pass: every route in `routes` (default: all) on `src`, the best written to
    `dst`, attention masks simplified. Returns the pass info: the chosen route, per route its node count,
    attention ops and fused-op histogram (or why it failed), and the contrib-op histogram before and after."""
    import contextlib
    import io
    import logging

    import onnx

    from onnxforge.runtime import quiet

    src, dst = Path(src), Path(dst)
    before = onnx.load(str(src), load_external_data=False)
    softmax = sum(1 for n in before.graph.node if n.op_type == "Softmax")
    tried: dict[str, dict] = {}
    best: tuple | None = None
    for name in routes or tuple(ROUTES):
        out = dst.with_name(f"{dst.stem}-{name.replace('+', '-')}.onnx")
        try:
            # onnxruntime.transformers prints to stdout and logs warnings; onnxscript logs too
            with quiet(), contextlib.redirect_stdout(io.StringIO()):
                logging.disable(logging.WARNING)
                try:
                    info = ROUTES[name](src, out, model_type, num_heads, hidden_size)
                finally:
                    logging.disable(logging.NOTSET)
            m = onnx.load(str(out), load_external_data=False)
        except Exception as e:  # a route that cannot handle the graph is reported, not fatal
            tried[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"}
            out.unlink(missing_ok=True)
            continue
        rec = {"nodes": len(m.graph.node), "attention": _attention_count(m), "contrib_ops": contrib_histogram(m),
               **info}
        tried[name] = rec
        key = (-rec["attention"], rec["nodes"])
        if best is None or key < best[0]:
            if best is not None:
                best[2].unlink(missing_ok=True)
            best = (key, name, out, m)
        else:
            out.unlink(missing_ok=True)
        if softmax and rec["attention"] >= softmax:
            break
    if best is None:
        raise RuntimeError("no fusion route handled the graph: " + "; ".join(f"{k}: {v['error']}"
                                                                         for k, v in tried.items()))
    _, name, out, model = best
    masks = simplify_attention_masks(model)
    embed = fuse_embed_layer_norm(model)
    from onnxforge.artifact import save_model

    save_model(model, dst, run_check=False)
    out.unlink(missing_ok=True)
    return {"model_type": model_type, "route": name, "routes": tried, "masks_simplified": masks,
            "embed_layer_norm": embed,
            "fused": _fused_summary(tried[name]), "nodes_before": len(before.graph.node),
            "nodes_after": len(model.graph.node), "contrib_before": contrib_histogram(before),
            "contrib_after": contrib_histogram(model)}


def _fused_summary(rec: dict) -> dict[str, int]:
    """The route's own fusion counts, onnxscript's and onnxruntime's merged (what `fused` meant before)."""
    out: Counter = Counter()
    for k in ("fused", "onnxscript", "onnxruntime"):
        out.update(rec.get(k) or {})
    return dict(sorted(out.items()))


# ------------------------------------------------------------------ attention masks


def _producers(graph) -> dict[str, Any]:
    return {o: n for n in graph.node for o in n.output if o}


def _data_inputs(tensor: str, producers: dict, graph_inputs: set[str]) -> set[str] | None:
    """Graph inputs whose *values* reach `tensor` (through Shape only their shape does: not counted). None when
    the subgraph reads anything but initializers, constants and graph inputs (it cannot, but be safe)."""
    seen, stack, found = set(), [tensor], set()
    while stack:
        t = stack.pop()
        if not t or t in seen:
            continue
        seen.add(t)
        if t in graph_inputs:
            found.add(t)
            continue
        n = producers.get(t)
        if n is None:
            continue  # an initializer
        if n.op_type in ("Shape", "Size"):
            continue
        if n.domain not in STANDARD_DOMAINS:
            return None
        stack.extend(n.input)
    return found


def _probe_masks(seq: int = 6) -> np.ndarray:
    """Right padding, no padding, left padding, a hole: what the bias must turn into 0 / very negative."""
    m = np.ones((4, seq), dtype=np.int64)
    m[0, 3:] = 0
    m[2, :2] = 0
    m[3, 2] = 0
    return m


def simplify_attention_masks(model) -> int:
    """Where a com.microsoft Attention node takes its mask as a 4-D additive `attention_bias` computed from one
    2-D graph input (HF's extended attention mask: Unsqueeze → Expand → Cast → Sub → Where), feed that input to
    `mask_index` as int32 instead and drop the bias subgraph. Done only when running the subgraph on probe masks
    gives exactly 0 for kept and ≤ -1e4 for masked keys (for every query row). Returns how many nodes it rewired;
    `model` is changed in place."""
    import onnx
    from onnx import helper

    g = model.graph
    producers = _producers(g)
    inits = {t.name for t in g.initializer}
    inputs = {i.name: i for i in g.input if i.name not in inits}
    todo: dict[str, list] = {}  # bias tensor → attention nodes
    mask_of: dict[str, str] = {}
    for n in g.node:
        if n.domain != "com.microsoft" or n.op_type != "Attention" or len(n.input) < 6 or not n.input[5]:
            continue
        if n.input[3] or (len(n.input) > 4 and n.input[4]):  # has a mask_index or past state already
            continue
        src = _data_inputs(n.input[5], producers, set(inputs))
        if not src or len(src) != 1:
            continue
        (name,) = src
        vi = inputs[name]
        if len(vi.type.tensor_type.shape.dim) != 2:
            continue
        todo.setdefault(n.input[5], []).append(n)
        mask_of[n.input[5]] = name
    if not todo:
        return 0
    ok = _verify_bias(model, mask_of, inputs)
    rewired = 0
    casts: dict[str, str] = {}
    new_nodes = []
    for bias, nodes in todo.items():
        if not ok.get(bias):
            continue
        mask = mask_of[bias]
        if mask not in casts:
            casts[mask] = f"{mask}_mask_index_int32"
            new_nodes.append(helper.make_node("Cast", [mask], [casts[mask]], name=f"{mask}_to_mask_index",
                                              to=onnx.TensorProto.INT32))
        for n in nodes:
            ins = list(n.input)
            ins[3], ins[5] = casts[mask], ""
            while ins and not ins[-1]:
                ins.pop()
            del n.input[:]
            n.input.extend(ins)
            rewired += 1
    if rewired:
        for i, c in enumerate(new_nodes):
            g.node.insert(i, c)
        _drop_dead(g)
    return rewired


def _verify_bias(model, mask_of: dict[str, str], inputs: dict) -> dict[str, bool]:
    """Run the bias subgraphs on probe masks: the bias's mask input gets the probe, every other input [batch, seq]
    zeros (a valid token id, segment 0). Inputs not of rank 2: nothing verified."""
    import onnx
    import onnxruntime as ort
    from onnx import helper
    from onnx.helper import tensor_dtype_to_np_dtype

    biases = list(mask_of)
    if any(len(vi.type.tensor_type.shape.dim) != 2 for vi in inputs.values()):
        return {}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.extend(helper.make_empty_tensor_value_info(b) for b in biases)
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception:
        return {}
    masks = _probe_masks()
    result: dict[str, bool] = {}
    for mask_name in sorted(set(mask_of.values())):
        mine = [b for b in biases if mask_of[b] == mask_name]
        feeds = {k: (masks if k == mask_name else np.zeros_like(masks)).astype(
            tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)) for k, vi in inputs.items()}
        try:
            outs = sess.run(mine, feeds)
        except Exception:
            continue
        for b, arr in zip(mine, outs, strict=True):
            result[b] = _is_padding_bias(np.asarray(arr, dtype=np.float64), masks)
    return result


def _is_padding_bias(bias: np.ndarray, mask: np.ndarray) -> bool:
    """bias broadcasts to [batch, heads, query, key] and is 0 at kept keys, ≤ -1e4 at masked ones."""
    if bias.ndim != 4 or bias.shape[0] not in (1, mask.shape[0]) or bias.shape[-1] != mask.shape[1]:
        return False
    want_keep = np.broadcast_to(mask[:, None, None, :] != 0, (mask.shape[0], *bias.shape[1:]))
    b = np.broadcast_to(bias, want_keep.shape)
    return bool(np.all(np.abs(b[want_keep]) <= 1e-6) and np.all(b[~want_keep] <= _MASKED))


def _drop_dead(graph) -> None:
    """Remove nodes nothing reads (graph outputs count as read), repeatedly."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output if o)]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)


# ------------------------------------------------------------------ embeddings


def _gather_leaves(tensor: str, producers: dict, depth: int = 0) -> list | None:
    """The Gather nodes an Add tree sums into `tensor` (word + segment + position embeddings), or None."""
    n = producers.get(tensor)
    if n is None or depth > 3:
        return None
    if n.op_type == "Gather" and n.domain in STANDARD_DOMAINS:
        return [n]
    if n.op_type == "Add" and n.domain in STANDARD_DOMAINS:
        a, b = (_gather_leaves(t, producers, depth + 1) for t in n.input)
        return a + b if a is not None and b is not None else None
    return None


def _position_indices(model, index: str, graph_inputs: dict) -> bool:
    """Whether `index` (a position Gather's indices, computed from constants and the inputs' shapes) is 0…S-1 for
    sequence lengths 5 and 9."""
    import onnx
    import onnxruntime as ort
    from onnx import helper
    from onnx.helper import tensor_dtype_to_np_dtype

    if any(len(vi.type.tensor_type.shape.dim) != 2 for vi in graph_inputs.values()):
        return False
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.append(helper.make_empty_tensor_value_info(index))
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        for seq in (5, 9):
            feeds = {k: np.zeros((2, seq), dtype=tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
                     for k, vi in graph_inputs.items()}
            got = np.asarray(sess.run([index], feeds)[0])
            if got.shape[-1] != seq or not (got.reshape(-1, seq) == np.arange(seq)).all():
                return False
    except Exception:
        return False
    return True


def fuse_embed_layer_norm(model) -> int:
    """LayerNormalization(word[ids] + segment[type_ids] + position[0…S-1]) → com.microsoft EmbedLayerNormalization
    (int32 ids: two Casts), for the dynamo exporter's BERT embeddings, which onnxruntime.transformers does not
    match. The position indices are checked to be 0…S-1 by running their subgraph at two lengths. Returns the
    number of fusions; `model` is changed in place."""
    import onnx
    from onnx import helper

    g = model.graph
    producers = _producers(g)
    inits = {t.name: t for t in g.initializer}
    inputs = {i.name: i for i in g.input if i.name not in inits}
    done = 0
    for ln in list(g.node):
        if ln.op_type != "LayerNormalization" or ln.domain not in STANDARD_DOMAINS or len(ln.input) < 3:
            continue
        axis = next((a.i for a in ln.attribute if a.name == "axis"), -1)
        if axis != -1 or ln.input[1] not in inits or ln.input[2] not in inits:
            continue
        leaves = _gather_leaves(ln.input[0], producers)
        if not leaves or len(leaves) not in (2, 3):
            continue
        if any(n.input[0] not in inits or len(inits[n.input[0]].dims) != 2 or
               next((a.i for a in n.attribute if a.name == "axis"), 0) != 0 for n in leaves):
            continue
        direct = [n for n in leaves if n.input[1] in inputs]
        position = [n for n in leaves if n.input[1] not in inputs]
        if len(position) != 1 or not 1 <= len(direct) <= 2:
            continue
        word = max(direct, key=lambda n: inits[n.input[0]].dims[0])
        segment = next((n for n in direct if n is not word), None)
        if not _position_indices(model, position[0].input[1], inputs):
            continue
        casts = []
        for n in (word, segment):
            if n is None:
                casts.append("")
                continue
            src = n.input[1]
            if inputs[src].type.tensor_type.elem_type == onnx.TensorProto.INT32:
                casts.append(src)
                continue
            out = f"{src}_int32"
            if not any(out in x.output for x in g.node):
                g.node.insert(0, helper.make_node("Cast", [src], [out], name=f"{src}_to_int32",
                                                  to=onnx.TensorProto.INT32))
            casts.append(out)
        eps = next((a.f for a in ln.attribute if a.name == "epsilon"), 1e-5)
        fused = helper.make_node(
            "EmbedLayerNormalization",
            [casts[0], casts[1], word.input[0], position[0].input[0], segment.input[0] if segment else "",
             ln.input[1], ln.input[2]],
            # mask_index is a required output of the schema (unused: Attention gets the 2-D mask itself)
            [ln.output[0], f"{ln.output[0]}_unused_mask_index"], name=f"EmbedLayerNormalization_{done}",
            domain="com.microsoft", epsilon=eps)
        g.node.insert(list(g.node).index(ln), fused)
        g.node.remove(ln)
        done += 1
    if done:
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        _drop_dead(g)
    return done
