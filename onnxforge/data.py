"""Sample, calibration and evaluation data: .npy .npz .csv .parquet, mapped onto model inputs by name.

Synthetic inputs are made from the input spec only when the caller says the user allowed it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from onnxforge.errors import UserError

NP_DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16, "int64": np.int64,
             "int32": np.int32, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_, "string": np.str_}
ONNX_TO_DTYPE = {1: "float32", 11: "float64", 10: "float16", 7: "int64", 6: "int32", 3: "int8", 2: "uint8",
                 9: "bool", 8: "string"}
SUFFIXES = (".npy", ".npz", ".csv", ".parquet")


def load_table(path: str | Path) -> dict[str, np.ndarray]:
    """Read a data file into named columns/arrays. Never unpickles (object arrays are refused)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path} — check the path")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return {"": np.load(path, allow_pickle=False)}
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if suffix in (".csv", ".parquet"):
            import pandas as pd

            df = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
            return {str(c): _column(df[c]) for c in df.columns}
    except UserError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise UserError(f"{path}: holds pickled object arrays, which onnxforge never loads — save strings "
                            "as fixed-width unicode (arr.astype(str))") from None
        raise UserError(f"{path}: cannot read data ({e})") from None
    except Exception as e:
        raise UserError(f"{path}: cannot read data ({type(e).__name__}: {e})") from None
    raise UserError(f"{path}: unsupported data format '{suffix}' — use one of {', '.join(SUFFIXES)}")


def _column(series) -> np.ndarray:
    arr = series.to_numpy()
    if arr.dtype == object:
        return arr.astype(str)
    return arr


def cast(arr: np.ndarray, dtype: str, name: str) -> np.ndarray:
    target = NP_DTYPES[dtype]
    if dtype == "string":
        return np.asarray(arr).astype(str).astype(object)
    if arr.dtype.kind in "US" and dtype != "string":
        raise UserError(f"input '{name}' expects {dtype} but the data holds strings — fix the input dtype or column")
    return np.ascontiguousarray(arr, dtype=target)


def _fit_rank(arr: np.ndarray, shape: list, name: str) -> np.ndarray:
    if not shape or arr.ndim == len(shape):
        return arr
    if arr.ndim + 1 == len(shape) and shape[-1] == 1:
        return arr.reshape(*arr.shape, 1)
    if arr.ndim == 2 and len(shape) > 2 and all(isinstance(d, int) for d in shape[1:]):
        want = int(np.prod(shape[1:]))
        if arr.shape[1] == want:  # flattened images, e.g. digits rows → [N, 1, 8, 8]
            return arr.reshape(arr.shape[0], *shape[1:])
    raise UserError(f"input '{name}': data has shape {list(arr.shape)} but the input spec says {shape} — "
                    "fix the input spec or the data")


def feeds_from_table(table: dict[str, np.ndarray], specs, rows: int | None = None) -> dict[str, np.ndarray]:
    """Pick each input's array from the table by `column`/`columns`/name, cast and shape it to the spec."""
    feeds = {}
    for spec in specs:
        if spec.columns:
            missing = [c for c in spec.columns if c not in table]
            if missing:
                raise UserError(f"input '{spec.name}': columns {missing} not in the data — available: "
                                f"{', '.join(sorted(table))[:200]}")
            arr = np.stack([np.asarray(table[c]) for c in spec.columns], axis=1)
        else:
            key = spec.column or spec.name
            if key not in table:
                if len(specs) == 1 and len(table) == 1:
                    key = next(iter(table))
                elif len(specs) == 1 and "X" in table:
                    key = "X"
                else:
                    raise UserError(f"input '{spec.name}': no '{key}' in the data — available: "
                                    f"{', '.join(sorted(k or '<array>' for k in table))[:200]}; set inputs[].column")
            arr = np.asarray(table[key])
        arr = _fit_rank(arr, spec.shape, spec.name)
        feeds[spec.name] = cast(arr, spec.dtype, spec.name)
    n = {len(v) for v in feeds.values()}
    if len(n) > 1:
        raise UserError(f"inputs have different row counts {sorted(n)} — all inputs must share the batch dim")
    if rows:
        feeds = {k: v[:rows] for k, v in feeds.items()}
    return feeds


def synthesize(specs, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs made from the spec alone: uniform in [low, high), categories drawn from the listed levels."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        shape = [rows if (i == 0 and not isinstance(d, int)) else (d if isinstance(d, int) else 1)
                 for i, d in enumerate(spec.shape or ["batch"])]
        if spec.categories:
            arr = np.asarray(spec.categories)[rng.integers(0, len(spec.categories), size=shape)]
        elif spec.dtype == "string":
            raise UserError(f"input '{spec.name}' is a string input: list its categories to synthesize data")
        elif spec.dtype == "bool":
            arr = rng.random(shape) < 0.5
        elif spec.dtype.startswith(("int", "uint")):
            arr = rng.integers(int(spec.low), max(int(spec.high), int(spec.low) + 1), size=shape)
        else:
            arr = rng.uniform(spec.low, spec.high, size=shape)
        feeds[spec.name] = cast(arr, spec.dtype, spec.name)
    return feeds


def specs_from_model(model) -> list:
    """Input specs read off an ONNX graph (initializers that are also inputs are skipped)."""
    from onnxforge.config import TensorSpec

    inits = {i.name for i in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
        specs.append(TensorSpec(name=inp.name, dtype=ONNX_TO_DTYPE.get(tt.elem_type, "float32"), shape=dims))
    return specs


def fixed_batch(model) -> int | None:
    """The batch size a model's inputs pin (an int first dim shared by every input), or None when it is free."""
    inits = {i.name for i in model.graph.initializer}
    dims = set()
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        shape = inp.type.tensor_type.shape.dim
        dims.add(shape[0].dim_value if shape and shape[0].HasField("dim_value") else None)
    return dims.pop() if len(dims) == 1 and None not in dims else None


def tile_rows(feeds: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """Exactly n rows per input: the first n, or the data repeated when it has fewer rows than n."""
    out = {}
    for k, v in feeds.items():
        v = np.asarray(v)
        idx = np.arange(n) % max(len(v), 1)
        out[k] = np.ascontiguousarray(v[idx])
    return out


def n_rows(feeds: dict[str, np.ndarray]) -> int:
    return len(next(iter(feeds.values()))) if feeds else 0


def batches(feeds: dict[str, np.ndarray], size: int) -> Iterator[dict[str, np.ndarray]]:
    n = n_rows(feeds)
    for i in range(0, n, size):
        yield {k: v[i : i + size] for k, v in feeds.items()}


def take(feeds: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    return {k: v[:n] for k, v in feeds.items()}
