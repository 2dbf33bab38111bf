"""Small ONNX graphs built with onnx.helper for foundation and validate tests (weights from a seeded RNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh


def linear(w: np.ndarray | None = None, b: np.ndarray | None = None, opset: int = 17) -> onnx.ModelProto:
    """y = x @ W + b, x: [batch, 4] → y: [batch, 3]; plus label = argmax(y)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32) if w is None else w
    b = rng.normal(size=3).astype(np.float32) if b is None else b
    g = h.make_graph(
        [h.make_node("MatMul", ["x", "W"], ["y0"]), h.make_node("Add", ["y0", "b"], ["y"]),
         h.make_node("ArgMax", ["y"], ["label"], axis=1, keepdims=0)],
        "linear",
        [h.make_tensor_value_info("x", T.FLOAT, ["batch", 4])],
        [h.make_tensor_value_info("y", T.FLOAT, ["batch", 3]), h.make_tensor_value_info("label", T.INT64, ["batch"])],
        [nh.from_array(w, "W"), nh.from_array(b, "b")],
    )
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], producer_name="tests")


def bernoulli_draws(n_draws: int = 4000, use_bernoulli: bool = True) -> onnx.ModelProto:
    """draws[r, k] ~ Bernoulli(p[r]); either the ONNX Bernoulli op or RandomUniformLike < p."""
    init = [h.make_tensor("ax", T.INT64, [1], [1]), h.make_tensor("k", T.INT64, [1], [n_draws])]
    nodes = [h.make_node("Unsqueeze", ["p", "ax"], ["p2"]), h.make_node("Shape", ["p"], ["n"]),
             h.make_node("Concat", ["n", "k"], ["shape"], axis=0), h.make_node("Expand", ["p2", "shape"], ["pe"])]
    if use_bernoulli:
        nodes.append(h.make_node("Bernoulli", ["pe"], ["draws"], dtype=T.FLOAT))
    else:
        nodes += [h.make_node("RandomUniformLike", ["pe"], ["u"]), h.make_node("Less", ["u", "pe"], ["lt"]),
                  h.make_node("Cast", ["lt"], ["draws"], to=T.FLOAT)]
    g = h.make_graph(nodes, "bern", [h.make_tensor_value_info("p", T.FLOAT, ["rows"])],
                     [h.make_tensor_value_info("draws", T.FLOAT, ["rows", n_draws])], init)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], producer_name="tests")
    m.metadata_props.add(key="onnxforge.stochastic_outputs", value='["draws"]')
    return m


def broken() -> onnx.ModelProto:
    """Parses as protobuf but fails onnx.checker: a node reads a tensor nothing produces."""
    g = h.make_graph([h.make_node("Relu", ["nowhere"], ["y"])], "broken",
                     [h.make_tensor_value_info("x", T.FLOAT, ["batch", 4])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["batch", 4])])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def write_data(path: Path, rows: int = 40, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    np.savez(path, x=x, label=linear_labels(x))
    return path


def linear_labels(x: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    return (x @ w + b).argmax(1)


PIPELINE = """\
name: {name}
run_dir: runs
source:
  framework: onnx
  path: {model}
data:
  path: {data}
  labels: label
stages:
  convert: {{}}
  validate:
    batch_sizes: [1, 0]
"""
