"""Model inputs for the corpus: from the shipped test data where there is some, else from the manifest's hints
(the `--shape` / `--value` a user would give). Seeded, so every run feeds the same arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs a caller feeds: IR-3 models also list their initializers as inputs."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _pb(path: Path) -> np.ndarray:
    t = onnx.TensorProto()
    t.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(t)


def from_testdata(model: onnx.ModelProto, testdata: Path) -> tuple[dict, dict]:
    """(inputs, reference outputs) by name from test_data_set_N/{input,output}_K.pb."""
    def pbs(kind: str, names: list[str]) -> dict:
        files = sorted(testdata.glob(f"{kind}_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
        return {n: _pb(f) for n, f in zip(names, files, strict=False)}

    return pbs("input", [i.name for i in model.graph.input]), pbs("output", [o.name for o in model.graph.output])


def from_hints(model: onnx.ModelProto, shape: dict, value: dict, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in real_inputs(model):
        tt = vi.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        dims = shape.get(vi.name)
        if dims is None:
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            if any(d is None or d <= 0 for d in dims):
                raise ValueError(f"input {vi.name!r} has symbolic dims {dims}: give a shape hint in the manifest")
        v = value.get(vi.name)
        if isinstance(v, (int, float)):
            arr = np.full(dims, v)
        else:
            lo, hi = (float(x) for x in v.split("..")) if isinstance(v, str) else (0.0, 1.0)
            if np.issubdtype(dtype, np.integer):
                arr = rng.integers(int(lo), int(hi) + 1, size=dims)
            elif dtype == np.bool_:
                arr = rng.random(dims) < 0.5
            else:
                arr = rng.uniform(lo, hi, size=dims)
        feeds[vi.name] = np.asarray(arr).astype(dtype)
    return feeds
