"""FP16 through onnxruntime.transformers.float16, with chosen ops and nodes kept in float32."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from onnxforge.stages.quantize.int8 import NodeInfo, detach_passthrough, restore_outputs

# Nodes that never hold float math worth converting (shape plumbing and casts)
_SKIP = {"Shape", "Cast", "Constant", "ConstantOfShape", "Identity", "Gather", "Unsqueeze", "Squeeze", "Concat",
         "Reshape", "Range", "Size", "NonZero"}


def targets(nodes: list[NodeInfo], op_block_list: list[str]) -> list[NodeInfo]:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    blocked = set(DEFAULT_OP_BLOCK_LIST) | set(op_block_list)
    return [n for n in nodes if n.op_type not in blocked and n.op_type not in _SKIP]


@dataclass
class Fp16Builder:
    src: Path
    work: Path
    keep_io_types: bool = True
    op_block_list: list[str] = field(default_factory=list)
    _n: int = field(default=0, init=False)

    def build(self, exclude: list[str]) -> Path:
        import onnx
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
        from onnxruntime.transformers.onnx_model import OnnxModel

        from onnxforge.artifact import save_model
        from onnxforge.runtime import quiet

        self._n += 1
        model = onnx.load(str(self.src))
        outputs = detach_passthrough(model)  # an output that is an input would become a cycle of Casts
        with quiet():
            m = convert_float_to_float16(model, keep_io_types=self.keep_io_types,
                                         op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(self.op_block_list),
                                         node_block_list=list(exclude))
            # the converter appends its Cast nodes at the end of the graph: restore topological order
            om = OnnxModel(m)
            om.topological_sort()
        if outputs is not None:
            restore_outputs(om.model, outputs)
        return save_model(om.model, self.work / f"fp16-{self._n}.onnx", run_check=False)


def has_fp16_weights(path: Path) -> bool:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer)


FP16_MAX = 65504.0


def clipped(src: Path, out: Path) -> list[str]:
    """Weights the fp16 model stores as float16 whose float32 source holds finite values beyond float16's range
    (±65504): onnxruntime's converter clips them to ±65504 (it only logs it), so outputs can change silently.
    One line per tensor: name, how many values, the largest magnitude."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    half = {t.name for t in onnx.load(str(out), load_external_data=False).graph.initializer
            if t.data_type == onnx.TensorProto.FLOAT16}
    found = []
    for t in onnx.load(str(src)).graph.initializer:
        if t.name in half and t.data_type == onnx.TensorProto.FLOAT:
            a = np.abs(numpy_helper.to_array(t))
            big = a[np.isfinite(a) & (a > FP16_MAX)]
            if big.size:
                found.append(f"{t.name} ({big.size} values, max |v| {float(big.max()):.3g})")
    return found
