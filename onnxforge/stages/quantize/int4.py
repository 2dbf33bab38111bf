"""INT4 weight-only: MatMul weights stored block-wise in 4 bits (com.microsoft MatMulNBits), written by
onnxruntime's own MatMulNBitsQuantizer. Activations stay float; each block of `block_size` weights along K shares
one scale (and a zero point unless symmetric). The stage holds the result to the same budget as INT8 (accuracy
drop, or output fidelity for token models) and keeps the MatMuls that break it float."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from onnxforge.config import StrictModel


class Int4Options(StrictModel):
    block_size: Literal[16, 32, 64, 128, 256] = Field(32, description="weights per scale along K (smaller: more "
                                                      "accurate, larger file); onnxruntime takes a power of 2 ≥ 16")
    symmetric: bool = Field(True, description="signed 4-bit weights without zero points (smaller); false adds a "
                            "zero point per block (asymmetric ranges, usually more accurate)")
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        4, description="onnxruntime's compute type for MatMulNBits on CPU: 0 unset (fp32), 1 fp32, 2 fp16, 3 bf16, "
                       "4 int8 (activations quantized per block at run time: fastest on CPUs with VNNI/AVX2)")


@dataclass(frozen=True)
class Int4Config:
    block_size: int
    symmetric: bool
    accuracy_level: int

    @property
    def label(self) -> str:
        return f"int4 b{self.block_size} {'sym' if self.symmetric else 'asym'} acc{self.accuracy_level}"

    def as_dict(self) -> dict:
        return {"mode": "int4", **asdict(self)}


def config(o: Int4Options) -> Int4Config:
    return Int4Config(o.block_size, o.symmetric, o.accuracy_level)


def targets(nodes, model) -> list:
    """MatMul nodes whose B is a stored 2-D float weight: what MatMulNBits replaces (the fallback's candidates)."""
    import onnx

    weights = {t.name for t in model.graph.initializer if len(t.dims) == 2 and t.data_type == onnx.TensorProto.FLOAT}
    return [n for n in nodes if n.op_type == "MatMul" and len(n.inputs) > 1 and n.inputs[1] in weights]


@dataclass
class Int4Builder:
    src: Path
    work: Path
    cfg: Int4Config
    tag: str = "int4"  # file name prefix: builders sharing a work folder must not overwrite each other's models
    _n: int = 0

    def build(self, exclude: list[str]) -> Path:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        from onnxforge.artifact import save_model
        from onnxforge.runtime import quiet

        self._n += 1
        q = MatMulNBitsQuantizer(onnx.load(str(self.src)), bits=4, block_size=self.cfg.block_size,
                                 is_symmetric=self.cfg.symmetric, accuracy_level=self.cfg.accuracy_level,
                                 nodes_to_exclude=list(exclude), op_types_to_quantize=("MatMul",))
        with quiet():
            q.process()
        return save_model(q.model.model, self.work / f"{self.tag}-{self._n}.onnx", run_check=False)


def has_nbits(path: Path) -> bool:
    """Whether any MatMul was turned into MatMulNBits (False: nothing left in 4 bits)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return any(n.op_type == "MatMulNBits" for n in m.graph.node)
