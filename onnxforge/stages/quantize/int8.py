"""INT8 through onnxruntime.quantization: pre-processing, then static (QDQ/QOperator) or dynamic quantization of
one candidate configuration, with any set of nodes kept in float (the accuracy-budget fallback rebuilds often, so
calibration ranges are computed once and cached)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onnxforge.runtime import quiet
from onnxforge.stages.quantize import weight_only

# Dynamic quantization turns Conv into ConvInteger, which the ORT CPU provider cannot run: Conv never goes to the
# dynamic quantizer; its weights (and GRU/RNN's, which it does not know) are stored weight-only instead.
DYNAMIC_OPS = ("MatMul", "Attention", "LSTM", "EmbedLayerNormalization")
DYNAMIC_REFUSED = ("Conv", "ConvTranspose")
# Activations the QDQ quantizer folds into the preceding node (Conv → Relu becomes one quantized output)
FUSED_ACTIVATIONS = ("Relu", "Clip")


@dataclass(frozen=True)
class Int8Config:
    mode: str  # static | dynamic
    quant_format: str = "QDQ"  # QDQ | QOperator (static only)
    per_channel: bool = False
    reduce_range: bool = False
    activation_type: str = "QUInt8"  # static only; dynamic activations are always uint8
    weight_type: str = "QInt8"
    op_types: tuple[str, ...] | None = None

    @property
    def label(self) -> str:
        if self.mode == "dynamic":
            parts = ["dynamic", "s8" if self.weight_type == "QInt8" else "u8"]
        else:
            a = "u8" if self.activation_type == "QUInt8" else "s8"
            w = "s8" if self.weight_type == "QInt8" else "u8"
            parts = ["static", self.quant_format, f"{a}{w}"]
        parts.append("per-channel" if self.per_channel else "per-tensor")
        if self.reduce_range:
            parts.append("reduce-range")
        if self.op_types:
            parts.append("ops=" + ",".join(self.op_types))
        return " ".join(parts)

    def as_dict(self) -> dict:
        d = {"mode": self.mode, "per_channel": self.per_channel, "reduce_range": self.reduce_range,
             "weight_type": self.weight_type, "op_types": list(self.op_types) if self.op_types else None}
        if self.mode == "static":
            d |= {"quant_format": self.quant_format, "activation_type": self.activation_type}
        return d


@dataclass(frozen=True)
class NodeInfo:
    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    scope: str = ""  # "" in the main graph; else the body holding it, e.g. "If_2.then_branch"


def preprocess(src: Path, dst: Path) -> str:
    """ORT's quantization pre-processing (shape inference + basic graph optimization), which makes more nodes
    quantizable. Symbolic shape inference runs only when plain ONNX shape inference leaves tensors without a
    shape (it imports torch: seconds). Falls back to the model as is. Unnamed nodes get names, since
    nodes_to_exclude addresses nodes by name. Returns what was done."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from onnxforge.stages.quantize.sandbox import contained

    src, dst = Path(src).resolve(), Path(dst).resolve()
    status = "ok (onnx shape inference)"
    # ORT's optimizer wraps float16 weights in Casts to float32 (its CPU kernels are float32): the weights would
    # no longer feed their ops directly, and nothing would be quantized
    skip_opt = _has_fp16_weights(src)
    with quiet(), contained(dst.parent):
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True, skip_optimization=skip_opt)
            if _unshaped(dst):
                try:
                    quant_pre_process(str(src), str(dst), skip_optimization=skip_opt)
                    status = "ok (symbolic shape inference)"
                except Exception as e:
                    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True, skip_optimization=skip_opt)
                    status = f"ok (symbolic shape inference failed: {type(e).__name__})"
        except Exception as e:
            shutil.copyfile(src, dst)
            status = f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    name_nodes(dst)
    return status


def _has_fp16_weights(path: Path) -> bool:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return any(t.data_type == onnx.TensorProto.FLOAT16 for t in weight_only.all_initializers(m.graph))


def _unshaped(path: Path) -> bool:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    known = {v.name for v in (*m.graph.value_info, *m.graph.output) if v.type.tensor_type.HasField("shape")}
    return any(o and o not in known for n in m.graph.node for o in n.output)


def name_nodes(path: Path) -> None:
    """Name every node, If/Loop/Scan bodies included, so that nodes_to_exclude can address each one: onnxruntime's
    quantizer matches it by name in bodies too, so a body node that is unnamed or repeats a name taken elsewhere
    is renamed after its body (deterministic: main graph first, then bodies depth-first). Main-graph names are kept
    as they are (a lock or the user's nodes_to_exclude may name them)."""
    import onnx

    from onnxforge.artifact import save_model

    m = onnx.load(str(path))
    used = {n.name for n in m.graph.node if n.name}
    changed = False
    for i, n in enumerate(m.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in used:
                name += "_"
            n.name = name
            used.add(name)
            changed = True

    def bodies(graph) -> None:
        nonlocal changed
        for n in graph.node:
            for scope, g in _bodies(n):
                for i, b in enumerate(g.node):
                    if not b.name or b.name in used:
                        name = f"{scope}/{b.op_type}_{i}"
                        while name in used:
                            name += "_"
                        b.name = name
                        changed = True
                    used.add(b.name)
                bodies(g)

    bodies(m.graph)
    if changed:
        save_model(m, path, run_check=False)


def _bodies(node):
    """(scope, graph) for each If/Loop/Scan body of `node`: scope is "<node>.<attribute>" ([k] for lists)."""
    for a in node.attribute:
        if a.HasField("g"):
            yield f"{node.name}.{a.name}", a.g
        for k, g in enumerate(a.graphs):
            yield f"{node.name}.{a.name}[{k}]", g


def graph_nodes(path: Path, nested: bool = False) -> list[NodeInfo]:
    """The model's nodes in order; `nested`: each followed by the nodes of its If/Loop/Scan bodies (with `scope`)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    out: list[NodeInfo] = []

    def walk(graph, scope: str) -> None:
        for n in graph.node:
            out.append(NodeInfo(n.name, n.op_type, tuple(n.input), tuple(n.output), scope))
            if nested:
                for inner, g in _bodies(n):
                    walk(g, inner)

    walk(m.graph, "")
    return out


def quantizes_bodies(path: Path) -> bool:
    """Whether the dynamic quantizer runs with EnableSubgraph on this model (not with float16 weights: it puts
    DynamicQuantizeLinear, float32 only, on float16 tensors in bodies)."""
    return not _has_fp16_weights(path)


def effective_op_types(cfg: Int8Config) -> tuple[str, ...] | None:
    if cfg.op_types:
        return tuple(cfg.op_types)
    # None: every op ORT can quantize statically
    return DYNAMIC_OPS + weight_only.DEFAULT_OPS if cfg.mode == "dynamic" else None


def weight_only_ops(cfg: Int8Config) -> tuple[str, ...]:
    """The op types whose float weights are stored weight-only after onnxruntime's quantizer ran."""
    ops = effective_op_types(cfg)
    return tuple(o for o in weight_only.DEFAULT_OPS + ("MatMul", "Gemm") if ops is None or o in ops
                 or (o == "Gemm" and "MatMul" in ops))


def targets(nodes: list[NodeInfo], cfg: Int8Config, bodies: bool = True) -> list[NodeInfo]:
    """The nodes this configuration can quantize: the candidates for staying float. Pass-through ops count too —
    in QDQ form their activations are quantized, and that can be where the error comes from. Nodes inside
    If/Loop/Scan bodies (`scope`) count only where something quantizes them: the dynamic quantizer when `bodies`
    (quantizes_bodies), weight-only INT8 always; static QDQ/QOperator leave bodies float."""
    from onnxruntime.quantization import registry

    ops = effective_op_types(cfg)
    if ops is None:
        reg = registry.QDQRegistry if cfg.quant_format == "QDQ" else registry.QLinearOpsRegistry
        ops = tuple(reg)
    if cfg.mode == "dynamic":
        ops = tuple(o for o in ops if o in registry.IntegerOpsRegistry and o not in DYNAMIC_REFUSED)
        if "MatMul" in ops:
            ops += ("Gemm",)  # the dynamic quantizer rewrites Gemm as MatMul (+ Add) first
    wo = weight_only_ops(cfg)
    ops = tuple(ops) + tuple(o for o in wo if o not in ops)
    # static builds never hold float16 weights (refused up front): weight-only MatMul/Gemm never happens there
    inner = ops if cfg.mode == "dynamic" and bodies else tuple(
        o for o in wo if cfg.mode == "dynamic" or o in weight_only.DEFAULT_OPS)
    return [n for n in nodes if n.op_type in (inner if n.scope else ops)]


class CalibrationFeeds:
    """Rows for calibration served in small batches, rewound for every calibration run."""

    def __init__(self, feeds: dict[str, np.ndarray], batch: int = 16):
        import hashlib

        self.feeds, self.batch = feeds, batch
        self.whole = frozenset(getattr(feeds, "whole", ()))  # inputs without a batch axis: fed whole, never sliced
        h = hashlib.sha1()
        for k in sorted(feeds):
            h.update(k.encode())
            h.update(np.ascontiguousarray(feeds[k]).tobytes())
        self.digest = h.hexdigest()[:12]

    def reader(self):
        from onnxruntime.quantization import CalibrationDataReader

        feeds, batch, whole = self.feeds, self.batch, self.whole
        n = len(next(v for k, v in feeds.items() if k not in whole)) if set(feeds) - whole else 1

        class _Reader(CalibrationDataReader):
            def __init__(self):
                self._it = iter(range(0, n, batch))

            def get_next(self):
                i = next(self._it, None)
                return None if i is None else {k: v if k in whole else v[i : i + batch] for k, v in feeds.items()}

        return _Reader()


@dataclass
class Int8Builder:
    """Builds the quantized model of one configuration with a given set of nodes left in float."""

    pre: Path
    work: Path
    cfg: Int8Config
    calibration: CalibrationFeeds | None = None
    calibrate_method: str = "MinMax"
    percentile: float = 99.999
    tag: str = "c"
    _n: int = field(default=0, init=False)
    _src: tuple | None = field(default=None, init=False)
    _fp16: list | None = field(default=None, init=False)
    weight_only: list = field(default_factory=list, init=False)

    def build(self, exclude: list[str]) -> Path:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )

        from onnxforge.stages.quantize.sandbox import contained

        self._n += 1
        out = (self.work / f"{self.tag}-{self._n}.onnx").resolve()
        src, outputs = self._source()
        ops = effective_op_types(self.cfg)
        ops = list(ops) if ops else None
        wt = getattr(QuantType, self.cfg.weight_type)
        with quiet(), contained(self.work):
            if self.cfg.mode == "dynamic":
                from onnxruntime.quantization.registry import IntegerOpsRegistry

                # float16 weights: onnxruntime's dynamic quantizer emits float32 math around them (the model
                # fails to load), so those nodes are left to the weight-only pass
                dyn = [o for o in ops if o in IntegerOpsRegistry and o not in DYNAMIC_REFUSED]
                skip = [x for n in list(exclude) + self._fp16_nodes() for x in (n, f"{n}_MatMul")]
                quantize_dynamic(str(src), str(out), op_types_to_quantize=dyn, per_channel=self.cfg.per_channel,
                                 reduce_range=self.cfg.reduce_range, weight_type=wt, nodes_to_exclude=skip,
                                 # EnableSubgraph: Gemm/MatMul inside If/Loop/Scan bodies too — not with float16
                                 # weights: it puts DynamicQuantizeLinear (float32 only) on fp16 tensors there
                                 extra_options={"MatMulConstBOnly": True,
                                                "EnableSubgraph": quantizes_bodies(src)})
            else:
                # calibration ranges depend on the method and op types only: compute once, reuse for every rebuild
                key = f"{self.pre.stem}-{self.calibration.digest}-{self.calibrate_method}-{'_'.join(ops or ['all'])}"
                cache = self.work / f"calib-{key}.json"
                extra = {"CalibPercentile": self.percentile} if self.calibrate_method == "Percentile" else {}
                quantize_static(
                    str(src), str(out),
                    calibration_data_reader=None if cache.is_file() else self.calibration.reader(),
                    quant_format=getattr(QuantFormat, self.cfg.quant_format), op_types_to_quantize=ops,
                    per_channel=self.cfg.per_channel, reduce_range=self.cfg.reduce_range,
                    activation_type=getattr(QuantType, self.cfg.activation_type), weight_type=wt,
                    nodes_to_exclude=list(exclude),
                    calibrate_method=getattr(CalibrationMethod, self.calibrate_method),
                    extra_options=extra, calibration_cache_path=str(cache))
        import onnx

        from onnxforge.artifact import save_model
        from onnxforge.stages.quantize.graph_order import sort_graph

        m = onnx.load(str(out))
        # what onnxruntime left float: Conv/GRU/RNN weights, float16 MatMul/Gemm weights → weight-only int8
        self.weight_only = weight_only.quantize_weights(m, weight_only_ops(self.cfg), exclude)
        sort_graph(m.graph)
        if outputs is not None:
            restore_outputs(m, outputs)
        save_model(m, out, run_check=False)
        return out

    def _fp16_nodes(self) -> list[str]:
        if self._fp16 is None:
            import onnx

            m = onnx.load(str(self._source()[0]))
            self._fp16 = weight_only.fp16_weight_nodes(m)
        return self._fp16

    def _source(self):
        """(model to quantize, the outputs to declare again afterwards or None): the pre-processed model without
        its pass-through outputs, written once."""
        if self._src is None:
            import onnx

            from onnxforge.artifact import save_model

            m = onnx.load(str(self.pre))
            outputs = detach_passthrough(m)
            if outputs is None:
                self._src = (self.pre, None)
            else:
                self._src = (save_model(m, self.work / f"{self.pre.stem}-no-passthrough.onnx", run_check=False),
                             outputs)
        return self._src


def detach_passthrough(model) -> list | None:
    """Remove the graph outputs that are graph inputs as well (the input passed through unchanged, which is valid
    ONNX): onnxruntime's quantizers and fp16 converter rewrite such an output into a node that writes the input's
    own name, a cycle ("Graph is not a DAG"). Returns the original outputs for restore_outputs, or None when there
    is no such output (the model is untouched)."""
    import onnx

    inputs = {i.name for i in model.graph.input}
    if not any(o.name in inputs for o in model.graph.output):
        return None
    original = [onnx.ValueInfoProto() for _ in model.graph.output]
    for vi, o in zip(original, model.graph.output, strict=True):
        vi.CopyFrom(o)
    kept = [vi for vi in original if vi.name not in inputs]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    return original


def restore_outputs(model, original: list) -> None:
    """Declare `original` outputs again, in their order: computed ones as the converted model declares them,
    pass-through ones typed as the converted model's input of that name."""
    import onnx

    have = {o.name: o for o in model.graph.output}
    have |= {i.name: i for i in model.graph.input if i.name not in have}
    restored = [onnx.ValueInfoProto() for _ in original]
    for vi, o in zip(restored, original, strict=True):
        vi.CopyFrom(have.get(o.name, o))
    del model.graph.output[:]
    model.graph.output.extend(restored)


def has_int8_weights(path: Path) -> bool:
    """Whether any weight is still stored in 8 bits (False: the configuration quantized nothing that matters)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return any(t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(t.dims) > 0
               for t in weight_only.all_initializers(m.graph))  # If/Loop/Scan bodies hold weights too


def static_fp16_refusal(model, name: str) -> str | None:
    """Static INT8 on a float16 model (float16 weights or inputs): onnxruntime's static quantizer writes float32
    scales around float16 tensors (an invalid model). The exit-2 line naming the mode that works, or None."""
    import onnx

    half = onnx.TensorProto.FLOAT16
    weights = [t.name for t in weight_only.all_initializers(model.graph) if t.data_type == half and len(t.dims) > 1]
    inputs = [i.name for i in model.graph.input if i.type.tensor_type.elem_type == half]
    if not weights and not inputs:
        return None
    what = (f"{len(weights)} float16 weight(s) ({', '.join(weights[:3])}{', …' if len(weights) > 3 else ''})"
            if weights else f"float16 input(s) {', '.join(inputs[:3])}")
    return (f"quantize: static INT8 does not take float16 models, and {name} has {what} — use --mode dynamic "
            "(weight-only INT8 for float16 MatMul/Gemm weights), or quantize the float32 model with --mode static")
