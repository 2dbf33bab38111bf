"""The optimize passes. Each reads one .onnx file and writes another; the stage checks and measures each result.

- simplify: onnxslim (constant folding, dead-node and common-subexpression elimination, standard-op fusions)
- fusion: onnxruntime.transformers.optimizer for transformer graphs (SkipLayerNormalization, Attention, ... —
  com.microsoft contrib ops, ORT only)
- ort-<level>: onnxruntime's own graph optimizer, saved with optimized_model_filepath (basic keeps standard ops;
  extended/all add contrib ops such as FusedConv/FusedGemm; all also adds hardware-specific layouts)
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

# Domains a non-ORT runtime understands: standard ONNX and ONNX-ML.
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")


def contrib_ops(path: Path) -> dict[str, int]:
    """Ops outside the standard domains (e.g. com.microsoft::FusedGemm), with counts."""
    import onnx

    from onnxforge.summary import all_nodes

    m = onnx.load(str(path), load_external_data=False)
    return dict(Counter(f"{n.domain}::{n.op_type}" for n in all_nodes(m.graph) if n.domain not in STANDARD_DOMAINS))


def simplify(src: Path, dst: Path) -> dict:
    import onnxslim

    from onnxforge.artifact import save_model
    from onnxforge.runtime import quiet

    with quiet():
        model = onnxslim.slim(str(src))
    save_model(model, dst, run_check=False)
    return {}


def detect_transformer(path: Path) -> str | None:
    """'bert' for a graph with attention (MatMul → Softmax → MatMul) and layer normalization, else None."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    ops = Counter(n.op_type for n in m.graph.node)
    has_norm = ops["LayerNormalization"] or ops["SkipLayerNormalization"] or (ops["ReduceMean"] and ops["Sqrt"])
    return "bert" if ops["Softmax"] and ops["MatMul"] >= 2 and has_norm else None


def fuse_transformer(src: Path, dst: Path, model_type: str, num_heads: int = 0, hidden_size: int = 0) -> dict:
    """Transformer fusion whatever the exporter (onnxforge.stages.optimize.attention): onnxscript's ort_fusions for dynamo
    graphs, onnxruntime.transformers' for TorchScript graphs — the route that fuses the most attention wins. The
    info carries `fused` (counts), `route`, `routes` and `contrib_before`/`contrib_after` histograms."""
    from onnxforge.stages.optimize import attention

    return attention.fuse(src, dst, model_type, num_heads, hidden_size)


def ort_level(src: Path, dst: Path, level: str) -> dict:
    from onnxforge import runtime

    runtime.session(Path(src), level=level, threads=1, optimized_path=dst)
    return {"level": level}
