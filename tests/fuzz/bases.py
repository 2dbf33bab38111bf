"""What the fuzzer starts from: tiny ONNX models built with onnx.helper, data files that fit them, and pipeline
configs (one generated around a tiny model, the repo's configs/*.yaml copied with the fixtures they name).

Everything here is deterministic: a base model's bytes depend only on its name, a data table on (name, rows).
"""

from __future__ import annotations

import functools
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
ROWS = 24

# configs whose `run` is fast after the first import (convert + validate of a small tree model): the `run` cases.
RUN_CONFIGS = ("sklearn_forest", "sklearn_pipeline", "xgboost_classifier", "xgboost_pipeline", "xgboost_regressor",
               "lightgbm_classifier", "lightgbm_regressor")
# every config: `config check` reads them without importing a framework, so torch/keras/pymc ones are cheap there.
ALL_CONFIGS = tuple(sorted(p.stem for p in CONFIGS.glob("*.yaml")))

MODELS = ("mlp", "conv", "branch", "tab")
# which data formats a base model's inputs can be read from without a config
FORMATS = {"mlp": ("npz", "npy"), "conv": ("npz", "npy"), "branch": ("npz",), "tab": ("csv", "parquet", "npz")}
BANDS = ("small", "medium", "large")


def _w(rng, *shape) -> np.ndarray:
    return rng.normal(size=shape).astype(np.float32)


def _model(nodes, name, inputs, outputs, inits, ml: bool = False) -> onnx.ModelProto:
    g = h.make_graph(nodes, name, inputs, outputs, inits)
    ops = [h.make_opsetid("", 17)] + ([h.make_opsetid("ai.onnx.ml", 3)] if ml else [])
    m = h.make_model(g, opset_imports=ops, producer_name="fuzz")
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def mlp() -> onnx.ModelProto:
    """x [batch, 4] → Gemm → Relu → Gemm → y [batch, 3], label = argmax(y)."""
    rng = np.random.default_rng(1)
    nodes = [h.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1"), h.make_node("Relu", ["h"], ["r"], name="relu"),
             h.make_node("Gemm", ["r", "W2", "b2"], ["y"], name="fc2"),
             h.make_node("ArgMax", ["y"], ["label"], axis=1, keepdims=0, name="argmax")]
    return _model(nodes, "mlp", [h.make_tensor_value_info("x", T.FLOAT, ["batch", 4])],
                  [h.make_tensor_value_info("y", T.FLOAT, ["batch", 3]),
                   h.make_tensor_value_info("label", T.INT64, ["batch"])],
                  [nh.from_array(_w(rng, 4, 8), "W1"), nh.from_array(_w(rng, 8), "b1"),
                   nh.from_array(_w(rng, 8, 3), "W2"), nh.from_array(_w(rng, 3), "b2")])


def conv() -> onnx.ModelProto:
    """input [batch, 1, 8, 8] → Conv → Relu → MaxPool → Flatten → Gemm → logits [batch, 10]."""
    rng = np.random.default_rng(2)
    nodes = [h.make_node("Conv", ["input", "CW", "CB"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv"),
             h.make_node("Relu", ["c"], ["r"], name="relu"),
             h.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             h.make_node("Flatten", ["p"], ["f"], axis=1, name="flatten"),
             h.make_node("Gemm", ["f", "W", "b"], ["logits"], name="fc")]
    return _model(nodes, "conv", [h.make_tensor_value_info("input", T.FLOAT, ["batch", 1, 8, 8])],
                  [h.make_tensor_value_info("logits", T.FLOAT, ["batch", 10])],
                  [nh.from_array(_w(rng, 4, 1, 3, 3), "CW"), nh.from_array(_w(rng, 4), "CB"),
                   nh.from_array(_w(rng, 64, 10), "W"), nh.from_array(_w(rng, 10), "b")])


def branch() -> onnx.ModelProto:
    """x [batch, 4]; If(width of x > 2) then 2x else x - 1 (row-independent: the condition reads the shape, not the
    values); → MatMul → y [batch, 2]. The branches read outer-scope names."""
    rng = np.random.default_rng(3)
    then_g = h.make_graph([h.make_node("Mul", ["x", "two"], ["t"], name="then_mul")], "then", [],
                          [h.make_tensor_value_info("t", T.FLOAT, ["batch", 4])])
    else_g = h.make_graph([h.make_node("Sub", ["x", "one"], ["e"], name="else_sub")], "else", [],
                          [h.make_tensor_value_info("e", T.FLOAT, ["batch", 4])])
    nodes = [h.make_node("Shape", ["x"], ["shape"], name="shape"),
             h.make_node("Gather", ["shape", "axis1"], ["width"], axis=0, name="width"),
             h.make_node("Greater", ["width", "two_i"], ["cond"], name="gt"),
             h.make_node("If", ["cond"], ["z"], then_branch=then_g, else_branch=else_g, name="if"),
             h.make_node("MatMul", ["z", "W"], ["y"], name="mm")]
    return _model(nodes, "branch", [h.make_tensor_value_info("x", T.FLOAT, ["batch", 4])],
                  [h.make_tensor_value_info("y", T.FLOAT, ["batch", 2])],
                  [nh.from_array(np.int64(1), "axis1"), nh.from_array(np.int64(2), "two_i"),
                   nh.from_array(np.float32(1), "one"), nh.from_array(np.float32(2), "two"),
                   nh.from_array(_w(rng, 4, 2), "W")])


def tab() -> onnx.ModelProto:
    """Four float columns and a string column (LabelEncoder in the graph) → Concat → Gemm → y, label."""
    rng = np.random.default_rng(4)
    feats = [f"f{i}" for i in range(4)]
    nodes = [h.make_node("LabelEncoder", ["band"], ["band_i"], domain="ai.onnx.ml", keys_strings=list(BANDS),
                         values_int64s=[0, 1, 2], default_int64=-1, name="encode"),
             h.make_node("Cast", ["band_i"], ["band_f"], to=T.FLOAT, name="cast"),
             h.make_node("Concat", [*feats, "band_f"], ["z"], axis=1, name="concat"),
             h.make_node("Gemm", ["z", "W", "b"], ["y"], name="fc"),
             h.make_node("ArgMax", ["y"], ["label"], axis=1, keepdims=0, name="argmax")]
    inputs = [h.make_tensor_value_info(f, T.FLOAT, ["batch", 1]) for f in feats]
    inputs.append(h.make_tensor_value_info("band", T.STRING, ["batch", 1]))
    return _model(nodes, "tab", inputs,
                  [h.make_tensor_value_info("y", T.FLOAT, ["batch", 2]),
                   h.make_tensor_value_info("label", T.INT64, ["batch"])],
                  [nh.from_array(_w(rng, 5, 2), "W"), nh.from_array(_w(rng, 2), "b")], ml=True)


BUILDERS = {"mlp": mlp, "conv": conv, "branch": branch, "tab": tab}


@functools.cache
def model_bytes(name: str) -> bytes:
    return BUILDERS[name]().SerializeToString()


def model(name: str) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.ParseFromString(model_bytes(name))
    return m


def table(name: str, rows: int = ROWS) -> dict[str, np.ndarray]:
    """Columns that feed base model `name` (plus `label`), as 1-D arrays for tab and as tensors otherwise."""
    rng = np.random.default_rng(100 + MODELS.index(name))
    if name == "tab":
        cols: dict[str, np.ndarray] = {f"f{i}": rng.normal(size=rows).astype(np.float32) for i in range(4)}
        cols["band"] = np.asarray(BANDS)[rng.integers(0, 3, rows)]
        cols["label"] = rng.integers(0, 2, rows)
        return cols
    if name == "conv":
        return {"input": rng.normal(size=(rows, 1, 8, 8)).astype(np.float32), "label": rng.integers(0, 10, rows)}
    classes = 3 if name == "mlp" else 2
    return {"x": rng.normal(size=(rows, 4)).astype(np.float32), "label": rng.integers(0, classes, rows)}


def write_table(path: Path, cols: dict[str, np.ndarray], fmt: str) -> None:
    """Write columns as .npz/.npy/.csv/.parquet (.npy: the first column alone). In a .csv/.parquet, a column
    shorter than the others is padded with empty cells (nulls) and a multi-dimensional one holds a list per row,
    which is what such a file looks like when it comes from elsewhere."""
    if fmt == "npz":
        with open(path, "wb") as f:
            np.savez(f, **cols)
        return
    if fmt == "npy":
        with open(path, "wb") as f:
            np.save(f, next(iter(cols.values())) if cols else np.zeros((0,), np.float32))
        return
    import pandas as pd

    arrays = {k: np.asarray(v).reshape(1) if np.ndim(v) == 0 else np.asarray(v) for k, v in cols.items()}
    n = max((len(a) for a in arrays.values()), default=0)
    if all(a.ndim == 1 and len(a) == n for a in arrays.values()):
        df = pd.DataFrame(arrays)
    else:
        df = pd.DataFrame({k: [r.tolist() if a.ndim > 1 else r for r in a] + [None] * (n - len(a))
                           for k, a in arrays.items()})
    if fmt == "csv":
        df.to_csv(path, index=False)
        return
    try:
        df.to_parquet(path, index=False)
    except Exception:  # arrow cannot type it (nested strings, mixed objects): as text
        df.astype(str).to_parquet(path, index=False)


def read_table(path: Path) -> tuple[dict[str, np.ndarray], str]:
    """A fixture data file as columns, and its format."""
    fmt = path.suffix.lstrip(".").lower()
    if fmt == "npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}, fmt
    import pandas as pd

    df = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    return {str(c): df[c].to_numpy() for c in df.columns}, fmt


# ------------------------------------------------------------------ configs


def onnx_config(model_file: str, data_file: str | None, labels: bool) -> dict:
    """A pipeline around a loose .onnx: every stage a tiny model finishes in well under a second."""
    cfg: dict = {"name": "fuzz-onnx", "source": {"framework": "onnx", "path": model_file}}
    if data_file:
        cfg["data"] = {"path": data_file, **({"labels": "label"} if labels else {})}
    else:
        cfg["data"] = {"synthetic": True, "synthetic_rows": 16}
    cfg["stages"] = {
        "convert": {},
        "validate": {"batch1_rows": 4},
        "optimize": {"level": "basic", "min_pass_speedup": 0, "pass_timing_rounds": 1, "latency_rounds": 1,
                     "batch_sizes": [1], "rows": 16, "allow_synthetic": data_file is None},
        "quantize": {"mode": "dynamic", "allow_slower": True, "latency_rounds": 1, "batch_sizes": [1],
                     "max_accuracy_drop": 1.0, "eval_rows": 16, "calibration_rows": 16,
                     "allow_synthetic_calibration": data_file is None},
    }
    return cfg


_FIXTURE_REF = re.compile(r"\.\./fixtures/[A-Za-z0-9_./-]+")


def copy_config(name: str, dest: Path) -> tuple[Path, list[Path]]:
    """configs/NAME.yaml copied to dest/configs/ with the fixture files it names mirrored under dest/fixtures/
    (so its relative paths hold) and `run_dir` rewritten to the case's output folder by the caller. Returns the
    config path and the data files it names (what data mutations target)."""
    src = CONFIGS / f"{name}.yaml"
    text = src.read_text()
    (dest / "configs").mkdir(parents=True, exist_ok=True)
    data_files = []
    for ref in sorted(set(_FIXTURE_REF.findall(text))):
        rel = ref.removeprefix("../")
        f = ROOT / rel
        if f.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest / rel)
            if f.parent.name == "data":
                data_files.append(dest / rel)
    cfg = dest / "configs" / f"{name}.yaml"
    cfg.write_text(text)
    return cfg, data_files


def dump_yaml(obj) -> str:
    return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, default_flow_style=None, width=120)
