"""What is inside an ONNX file: IO, opsets, ops histogram, parameters, sizes, metadata. Imports onnx only."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from onnxforge.data import ONNX_TO_DTYPE


def _dims(vi) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in vi.type.tensor_type.shape.dim]


def _io(vi) -> dict:
    t = vi.type
    if t.HasField("tensor_type"):
        return {"name": vi.name, "dtype": ONNX_TO_DTYPE.get(t.tensor_type.elem_type, str(t.tensor_type.elem_type)),
                "shape": _dims(vi)}
    return {"name": vi.name, "dtype": t.WhichOneof("value"), "shape": None}


def all_nodes(graph):
    """Every node of a graph, If/Loop/Scan bodies included (depth first)."""
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.HasField("g"):
                yield from all_nodes(a.g)
            for g in a.graphs:
                yield from all_nodes(g)


def summarize(model, path: str | Path | None = None) -> dict:
    """A JSON-able summary of a loaded ModelProto (external data must be loaded for parameter counts)."""
    import numpy as np
    from onnx import numpy_helper

    from onnxforge.artifact import file_size

    inits = model.graph.initializer
    init_names = {i.name for i in inits}
    params = 0
    init_bytes = 0
    for t in inits:
        n = int(np.prod(t.dims)) if len(t.dims) else 1
        params += n
        init_bytes += numpy_helper.to_array(t).nbytes if t.data_location != 1 else n * 4
    ops = Counter((f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type)
                  for n in all_nodes(model.graph))
    return {
        "path": str(path) if path else None,
        "file_bytes": file_size(path) if path and Path(path).is_file() else model.ByteSize(),
        "ir_version": model.ir_version,
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [_io(i) for i in model.graph.input if i.name not in init_names],
        "outputs": [_io(o) for o in model.graph.output],
        "nodes": sum(ops.values()),
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "params": params,
        "initializer_bytes": init_bytes,
        "metadata": {p.key: p.value for p in model.metadata_props},
    }


def inspect_file(path: str | Path) -> dict:
    """Summary of a user's file, after the admission gate (a damaged or invalid model is refused, exit 2, rather
    than half-described) — without its onnxruntime step: inspect stays light (no onnxruntime import, see
    tests/test_bench_cli.py) and describes models meant for other runtimes (custom-domain ops) too."""
    from onnxforge.admission import admit

    return summarize(admit(path, session=False, normalize=False).model, path)  # the file as it is
