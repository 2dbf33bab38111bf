"""SmoothQuant-style activation smoothing before dynamic INT8 of MatMuls (Xiao et al., 2023).

Why: a transformer's activations carry a few outlier channels (LayerNorm outputs, GELU outputs) tens of times larger
than the rest. Dynamic INT8 quantizes an activation with one scale per tensor, so those channels decide the step
and every other channel is rounded to a handful of levels. Weights are quantized per output column and do not care
how their rows are scaled. Smoothing moves the difficulty from the activation to the weight, exactly in float:

    X · W = (X / s) · (diag(s) · W),    s_j = max|X_j|^α / max|W_j|^(1−α)   (per input channel j)

with max|X_j| from sample rows (the rows the quantize stage already holds) and max|W_j| over row j of every weight
the tensor X feeds. The weights are stored pre-multiplied; the 1/s goes where it costs nothing when it can:

- X is the output of com.microsoft Attention and feeds only MatMuls: into the V columns of Attention's weight and
  bias (attention output channel j is a convex combination of V channel j);
- X is the output of LayerNormalization / SkipLayerNormalization (output 0) and feeds only smoothable MatMuls:
  into its gamma and beta;
- otherwise (GELU outputs; a LayerNorm output that is also the residual, as in every BERT layer): an explicit
  `Mul` by 1/s on the MatMuls' branch only — one elementwise op per smoothed tensor.

The float model is numerically the same (checked by `apply` callers: `max_float_change`); only what INT8 sees
changes. Deterministic: the statistics come from one onnxruntime run on the given rows, the transform is pure numpy
in float64 stored as float32, and new names derive from the tensors they smooth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SMOOTHABLE = ("MatMul", "Attention")  # Attention: com.microsoft, weight [hidden, 3·hidden] at input 1
LAYER_NORMS = ("LayerNormalization", "SkipLayerNormalization")
S_CLIP = (1e-4, 1e4)
ALPHAS = (0.5, 0.65, 0.8, 0.9)  # alpha "auto": the candidates per tensor (SmoothQuant's 0.5 and stronger migration)
GAIN = 0.1  # alpha "auto": smooth a tensor only when the emulated INT8 error falls by at least this fraction
SAMPLE_ROWS = 4096  # alpha "auto": activation rows kept per tensor for the emulation


@dataclass
class SmoothReport:
    alpha: float | str
    tensors: list[dict] = field(default_factory=list)  # per smoothed activation: where 1/s went, consumers, range

    @property
    def muls(self) -> int:
        return sum(t["folded_into"] == "Mul" for t in self.tensors)

    def as_dict(self) -> dict:
        return {"alpha": self.alpha, "smoothed": len(self.tensors), "explicit_muls": self.muls,
                "folded": len(self.tensors) - self.muls,
                "tensors": self.tensors}


def _weight_input(node, inits) -> str | None:
    """The constant 2-D weight a smoothable node multiplies its input 0 by, or None."""
    if node.op_type == "MatMul" and node.domain in ("", "ai.onnx"):
        w = node.input[1] if len(node.input) > 1 else ""
    elif node.op_type == "Attention" and node.domain == "com.microsoft":
        w = node.input[1] if len(node.input) > 1 else ""
    else:
        return None
    t = inits.get(w)
    return w if t is not None and len(t.dims) == 2 and t.data_type == 1 else None


def groups(model, skip: set[str] | frozenset = frozenset()) -> dict[str, list]:
    """Activation tensor → the smoothable nodes (constant 2-D float weight) that read it as input 0. A tensor that is
    a graph input, an initializer, or whose readers include an excluded node is left alone."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    out: dict[str, list] = {}
    for n in g.node:
        if _weight_input(n, inits) is not None and n.input[0] not in inits:
            out.setdefault(n.input[0], []).append(n)
    graph_inputs = {i.name for i in g.input}
    return {x: ns for x, ns in out.items() if x not in graph_inputs and not any(n.name in skip for n in ns)}


def activation_ranges(model, names: list[str], feeds: dict[str, np.ndarray], chunk: int = 16,
                      keep_rows: int = 0) -> dict[str, np.ndarray]:
    """max |x| per last-axis channel of each named tensor, over all rows of `feeds` (run in chunks of rows). With
    `keep_rows`, also the activations themselves (flattened to [rows·positions, channels], at most keep_rows of
    them, evenly spaced) under `name + "#rows"`."""
    import onnx
    from onnx import helper

    from onnxforge import runtime

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for x in names:
        if x not in have:
            m.graph.output.append(helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None))
    sess = runtime.session(m.SerializeToString())
    rows = int(next(iter(feeds.values())).shape[0])
    acc: dict[str, np.ndarray] = {}
    kept: dict[str, list] = {}
    for i in range(0, rows, chunk):
        part = {k: np.asarray(v)[i:i + chunk] for k, v in feeds.items()}
        got = runtime.run(sess, part, user_inputs=False)
        for x in names:
            flat = np.asarray(got[x], dtype=np.float32).reshape(-1, np.shape(got[x])[-1])
            a = np.abs(flat).max(axis=0).astype(np.float64)
            acc[x] = a if x not in acc else np.maximum(acc[x], a)
            if keep_rows:
                kept.setdefault(x, []).append(flat)
    for x, parts in kept.items():
        flat = np.concatenate(parts)
        if len(flat) > keep_rows:
            flat = flat[np.linspace(0, len(flat) - 1, keep_rows).round().astype(int)]
        acc[x + "#rows"] = flat
    return acc


def _fake_dynamic(x: np.ndarray) -> np.ndarray:
    """onnxruntime's DynamicQuantizeLinear round trip: uint8, asymmetric, one scale for the tensor (range ∋ 0)."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if hi - lo <= 0:
        return x
    sc = (hi - lo) / 255.0
    zp = np.clip(np.round(-lo / sc), 0, 255)
    return (np.clip(np.round(x / sc) + zp, 0, 255) - zp) * sc


def _fake_weight(w: np.ndarray, qmax: float) -> np.ndarray:
    """Symmetric int8 per output column (onnxruntime's per-channel QInt8 weights)."""
    a = np.abs(w).max(axis=0)
    sc = np.where(a > 0, a / qmax, 1.0)
    return np.clip(np.round(w / sc), -qmax, qmax) * sc


ROW_METRIC = "mean"


def emulated_error(x: np.ndarray, w: np.ndarray, s: np.ndarray | None, qmax: float = 127.0) -> float:
    """The relative error per row (token) of Q(x/s)·Q(diag(s)·w) against x·w, with dynamic uint8 activations and
    per-column int8 weights, averaged over rows: every token counts alike (a Frobenius norm over the whole tensor
    would let a few large tokens decide, and smoothing can trade their error for the small tokens')."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    ref = x @ w
    if s is None:
        got = _fake_dynamic(x) @ _fake_weight(w, qmax)
    else:
        got = _fake_dynamic(x / s) @ _fake_weight(w * s[:, None], qmax)
    e = np.linalg.norm(got - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-30)
    if ROW_METRIC == "max":
        return float(e.max())
    if ROW_METRIC == "p99":
        return float(np.percentile(e, 99))
    if ROW_METRIC == "fro":
        return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))
    return float(e.mean())


def scales(x_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """s_j = max|X_j|^α / max|W_j|^(1−α), 1 where either is 0, clipped to S_CLIP."""
    x, w = np.asarray(x_max, np.float64), np.asarray(w_max, np.float64)
    ok = (x > 0) & (w > 0)
    s = np.ones_like(x)
    s[ok] = x[ok] ** alpha / w[ok] ** (1.0 - alpha)
    return np.clip(s, *S_CLIP)


def apply(model, feeds: dict[str, np.ndarray], alpha: float | str = "auto", skip: set[str] | frozenset = frozenset(),
          ranges: dict[str, np.ndarray] | None = None, reduce_range: bool = False, gain: float = GAIN,
          sample_rows: int = SAMPLE_ROWS):
    """A smoothed copy of `model` (onnx.ModelProto) and what was done. `alpha`: one migration strength for every
    tensor, or "auto": per tensor, the α of ALPHAS — or no smoothing — whose emulated INT8 error of X·W on the
    sample rows is smallest (`emulated_error`; smoothing only when it cuts that error by at least `gain`). `skip`:
    node names whose inputs stay as they are. `ranges`: activation_ranges already measured."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    grp = groups(m, set(skip))
    auto = alpha == "auto"
    if ranges is None:
        ranges = activation_ranges(m, sorted(grp), feeds, keep_rows=sample_rows if auto else 0)
    qmax = 63.0 if reduce_range else 127.0
    inits = {t.name: t for t in g.initializer}
    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    producer = {o: n for n in g.node for o in n.output if o}
    outputs = {o.name for o in g.output}
    init_uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            if i in inits:
                init_uses[i] = init_uses.get(i, 0) + 1
    report = SmoothReport(alpha)
    new_inits: dict[str, np.ndarray] = {}
    insert: list[tuple[int, object]] = []

    def arr(name):
        return new_inits[name] if name in new_inits else numpy_helper.to_array(inits[name]).astype(np.float64)

    def own(name: str, node, slot: int) -> str:
        """A weight `node` may rewrite alone: copied under a new name when something else reads it too."""
        if init_uses.get(name, 0) <= 1 or name in new_inits:
            return name
        fresh = f"{name}__smooth_{node.name}"
        new_inits[fresh] = arr(name)
        node.input[slot] = fresh
        init_uses[name] -= 1
        return fresh

    for x in sorted(grp):
        nodes = grp[x]
        if x not in ranges:
            continue
        w_max = np.max([np.abs(arr(n.input[1])).max(axis=1) for n in nodes], axis=0)
        x_max = ranges[x]
        if x_max.shape != w_max.shape:
            continue
        chosen, errs = alpha, {}
        if auto:
            xs = ranges[x + "#rows"]
            wcat = np.concatenate([arr(n.input[1]) for n in nodes], axis=1)
            errs = {"none": emulated_error(xs, wcat, None, qmax)}
            for a in ALPHAS:
                errs[a] = emulated_error(xs, wcat, scales(x_max, w_max, a), qmax)
            chosen = min(ALPHAS, key=lambda a: (errs[a], a))
            if errs[chosen] > errs["none"] * (1.0 - gain):
                continue
        s = scales(x_max, w_max, float(chosen))
        if np.allclose(s, 1.0):
            continue
        for n in nodes:
            w = own(n.input[1], n, 1)
            new_inits[w] = arr(w) * s[:, None]
        p = producer.get(x)
        others = [r for r in readers.get(x, []) if r not in nodes]
        where = "Mul"
        if not others and x not in outputs and p is not None:
            where = _fold(p, x, s, arr, own, new_inits)
        if where == "Mul":
            inv = f"{x}__smooth_inv_s"
            y = f"{x}__smoothed"
            new_inits[inv] = 1.0 / s
            mul = helper.make_node("Mul", [x, inv], [y], name=f"{x}__smooth_mul")
            for n in nodes:
                n.input[0] = y
            pos = next(i for i, nn in enumerate(g.node) if nn is nodes[0]) if p is None else \
                next(i for i, nn in enumerate(g.node) if nn is p) + 1
            insert.append((pos, mul))
        report.tensors.append({"tensor": x, "readers": [n.name for n in nodes], "folded_into": where,
                               "alpha": chosen, **({"emulated_error": {"none": round(errs["none"], 5),
                                                                        "smoothed": round(errs[chosen], 5)}}
                                                  if errs else {}),
                               "channels": int(s.size), "x_max": float(x_max.max()),
                               "s_min": float(s.min()), "s_max": float(s.max())})
    for pos, node in sorted(insert, key=lambda t: -t[0]):
        g.node.insert(pos, node)
    for name, a in new_inits.items():
        t = numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)
        if name in inits:
            inits[name].CopyFrom(t)
        else:
            g.initializer.append(t)
    return m, report


def _fold(p, x: str, s: np.ndarray, arr, own, new_inits) -> str:
    """Put 1/s into the producer of x where that is exact and free; 'Mul' when it is not."""
    if p.op_type in LAYER_NORMS and p.output[0] == x and len(p.input) >= 3:
        gi, bi = (1, 2) if p.op_type == "LayerNormalization" else (2, 3)
        names = [p.input[gi]] + ([p.input[bi]] if len(p.input) > bi and p.input[bi] else [])
        try:
            vals = [arr(n) for n in names]
        except KeyError:
            return "Mul"  # gamma/beta not stored tensors
        if any(v.shape != s.shape for v in vals) or (p.op_type == "LayerNormalization" and _axis(p) != -1):
            return "Mul"
        for slot, n in zip((gi, bi), names, strict=False):
            n2 = own(n, p, slot)
            new_inits[n2] = arr(n2) / s
        return p.op_type
    if p.op_type == "Attention" and p.domain == "com.microsoft" and p.output[0] == x and len(p.input) >= 3:
        try:
            w, b = arr(p.input[1]), arr(p.input[2])
        except KeyError:
            return "Mul"
        hidden = s.size
        qkv = _qkv(p, w.shape[1])
        if qkv is None or qkv[2] != hidden or b.shape != (w.shape[1],):
            return "Mul"
        v0 = qkv[0] + qkv[1]
        wn, bn = own(p.input[1], p, 1), own(p.input[2], p, 2)
        w2, b2 = arr(wn), arr(bn)
        w2[:, v0:v0 + hidden] /= s[None, :]
        b2[v0:v0 + hidden] /= s
        new_inits[wn], new_inits[bn] = w2, b2
        return "Attention (V columns)"
    return "Mul"


def _axis(node) -> int:
    for a in node.attribute:
        if a.name == "axis":
            return int(a.i)
    return -1


def _qkv(node, width: int) -> tuple[int, int, int] | None:
    for a in node.attribute:
        if a.name == "qkv_hidden_sizes":
            v = tuple(int(i) for i in a.ints)
            return v if len(v) == 3 and sum(v) == width else None
    return (width // 3,) * 3 if width % 3 == 0 else None


def smooth_file(src: Path, dst: Path, feeds: dict[str, np.ndarray], alpha: float | str = "auto",
                skip: set[str] | frozenset = frozenset(), reduce_range: bool = False) -> tuple[Path, SmoothReport]:
    import onnx

    from onnxforge.artifact import save_model

    m, rep = apply(onnx.load(str(src)), feeds, alpha, skip, reduce_range=reduce_range)
    return save_model(m, Path(dst), run_check=False), rep


def max_float_change(a: Path, b: Path, feeds: dict[str, np.ndarray]) -> float:
    """Largest |a − b| relative to max |a| over the float outputs of two models on `feeds`: smoothing must leave the
    float model the same (≈ 1e-6)."""
    from onnxforge import runtime

    ra = runtime.run(runtime.session(Path(a)), feeds, user_inputs=False)
    rb = runtime.run(runtime.session(Path(b)), feeds, user_inputs=False)
    worst = 0.0
    for k, v in ra.items():
        v = np.asarray(v)
        if v.dtype.kind != "f":
            continue
        d = np.abs(np.asarray(rb[k], np.float64) - v).max(initial=0.0) / max(np.abs(v).max(initial=0.0), 1e-12)
        worst = max(worst, float(d))
    return worst


def plain_attention(model) -> list[str]:
    """Drop `qkv_hidden_sizes` from com.microsoft Attention nodes whose Q, K and V sizes are equal (the attribute
    then says what its absence says: the weight split in three equal parts). onnxruntime's dynamic quantizer
    leaves any Attention carrying the attribute float ("QAttention for varied q,k,v sizes" is not implemented) —
    fusions write it always. In place; returns the nodes changed."""
    changed = []
    for n in model.graph.node:
        if n.op_type != "Attention" or n.domain != "com.microsoft":
            continue
        for i, a in enumerate(n.attribute):
            if a.name == "qkv_hidden_sizes" and len(a.ints) == 3 and len(set(a.ints)) == 1:
                del n.attribute[i]
                changed.append(n.name)
                break
    return changed


# ------------------------------------------------------------------ the quantize stage's use: before keeping float

ALPHA = 0.5  # measured on all-MiniLM-L6-v2: 0.5 generalizes to held-out sentences; "auto" (per-tensor α by emulated
# error, up to 0.9) fitted the sample rows and lost held-out fidelity (min cosine 0.88 vs 0.96 all quantized)
FLOAT_TOLERANCE = 1e-4  # smoothing is exact in float: a larger relative change means the rewrite is wrong


def prepare(src: Path, dst: Path, feeds: dict[str, np.ndarray], alpha: float | str = ALPHA,
            reduce_range: bool = False) -> tuple[Path | None, dict]:
    """The model to quantize instead of `src`: Attention nodes made quantizable (`plain_attention`), activations
    smoothed (`apply`) on `feeds`, checker-clean, and equal to `src` in float on `feeds` (relative change ≤
    FLOAT_TOLERANCE). (None, why) when there is nothing to smooth or a check fails — then quantize `src`."""
    import onnx

    from onnxforge.artifact import save_model

    m = onnx.load(str(src))
    plain = plain_attention(m)
    sm, rep = apply(m, feeds, alpha, reduce_range=reduce_range)
    info = {"alpha": alpha, "attention_quantizable": plain, **{k: v for k, v in rep.as_dict().items()
                                                                if k != "alpha"}}
    if not rep.tensors and not plain:
        return None, info | {"skipped": "no activation worth smoothing"}
    path = save_model(sm, Path(dst), run_check=False)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # noqa: BLE001 — a rewrite the checker refuses is not used
        return None, info | {"skipped": f"checker: {type(e).__name__}: {str(e)[:160]}"}
    change = max_float_change(Path(src), path, feeds)
    info["float_change"] = change
    if not change <= FLOAT_TOLERANCE:
        return None, info | {"skipped": f"float outputs changed by {change:.2g} (relative) — not exact"}
    return path, info


def keep_float_search_smoothed(src: Path, work: Path, cfg, check, feeds: dict[str, np.ndarray],
                               start: list[str] | None = None, *, alpha: float | str = ALPHA, alive=None,
                               calibration=None, tag: str = "smooth"):
    """fidelity.keep_float_search on the smoothed model (`prepare`), MatMuls as the nodes that may stay float,
    with per-channel weights whatever `cfg` says: smoothing rescales weight rows, and one scale per weight tensor
    would then be set by its largest row (SmoothQuant assumes per-channel weights). Returns (SearchResult or None
    when smoothing did not apply, smoothing info)."""
    from dataclasses import replace

    from onnxforge.stages.quantize import fidelity, int8

    cfg = replace(cfg, per_channel=True)

    path, info = prepare(src, Path(work) / f"{tag}-smoothed.onnx", feeds, alpha, reduce_range=cfg.reduce_range)
    if path is None:
        return None, info
    int8.name_nodes(path)
    builder = int8.Int8Builder(path, Path(work), cfg, calibration, tag=tag)
    mm = [t for t in int8.targets(int8.graph_nodes(path, nested=True), cfg, int8.quantizes_bodies(path))
          if t.op_type == "MatMul"]
    sr = fidelity.keep_float_search(builder.build, check, mm, list(start or []), method="emulate", float_path=path,
                                    alive=alive)
    sr.method = f"smoothquant α={alpha} + {sr.method}"
    info["config"] = cfg.as_dict()
    return sr, info
