"""Regressions from the seeded fuzz harness (tests/fuzz/): valid-but-unusual models that passed the admission gate
and then broke downstream code (exit 3). Each model is crafted with onnx.helper and run through the real CLI: a
model onnxforge can handle exits 0 with a correct result, one it cannot is refused in one line (exit 2).

Fuzz reproducers: 649-run-model.opset, 878-quantize-model.io, 1216-run-model.outputs, 2038-validate-model.dims,
1741-run-model.inputs, 2921-optimize-model.inputs, 290-quantize-model.outputs (a RuntimeWarning)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import assert_one_line_error, run_cli
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from onnx_models import linear, linear_labels, save, write_data

# the cheapest settings of the stages that time things (the timings are not what these tests check)
FAST_OPT = ["--set", "min_pass_speedup=0", "--set", "latency_rounds=1", "--set", "batch_sizes=[1]",
            "--set", "rows=16"]
FAST_Q = ["--set", "allow_slower=true", "--set", "latency_rounds=1", "--set", "batch_sizes=[1]",
          "--set", "calibration_rows=16", "--set", "eval_rows=16"]


def _x(path: Path) -> np.ndarray:
    return np.load(path)["x"]


# ------------------------------------------------------------------ 8: a domain imported twice (649-run-model.opset)


@pytest.mark.parametrize("command", ["inspect", "quantize"])
def test_default_domain_imported_at_two_versions_is_refused(tmp_path, command):
    """onnx.checker and onnxruntime accept a domain listed twice (each picks an entry): at two versions the
    model's opset is ambiguous, refused at the gate."""
    m = linear()
    m.opset_import.append(h.make_opsetid("ai.onnx", 11))
    model = save(m, tmp_path / "m.onnx")
    args = (["inspect", model] if command == "inspect" else
            ["quantize", model, "-o", tmp_path / "q.onnx", "--mode", "dynamic", *FAST_Q])
    line = assert_one_line_error(run_cli(*args, cwd=tmp_path), 2)
    assert "m.onnx" in line and "opset_import" in line and "ai.onnx" in line and "17, 11" in line, line
    assert "one opset_import entry per domain" in line, line
    assert not (tmp_path / "q.onnx").exists()


def test_default_domain_imported_twice_at_one_version_quantizes(tmp_path):
    """skl2onnx writes both "" and "ai.onnx" at one version: unambiguous, admitted. onnxruntime's quantizer failed
    on it ("Failed to find proper ai.onnx domain", exit 3, fuzz 649): quantize works on a merged copy."""
    m = linear()
    m.opset_import.append(h.make_opsetid("ai.onnx", 17))
    model = save(m, tmp_path / "m.onnx")
    before = model.read_bytes()
    res = run_cli("quantize", model, "-o", tmp_path / "q.onnx", "--mode", "dynamic", *FAST_Q, cwd=tmp_path)
    assert res.code == 0, res.stderr
    assert model.read_bytes() == before
    onnx.checker.check_model(onnx.load(tmp_path / "q.onnx"), full_check=True)


# ------------------------------------------------------------------ 9: an output that is an input (878-quantize-model.io)


@pytest.mark.parametrize("mode", ["fp16", "dynamic", "static"])
def test_output_that_is_also_an_input_quantizes(tmp_path, mode):
    """y, label and x itself as outputs (x passed through, valid ONNX). The fp16 converter and the QDQ quantizer
    rewrote the output x into a node writing x: "Graph is not a DAG", exit 3."""
    m = linear()
    m.graph.output.append(h.make_tensor_value_info("x", T.FLOAT, ["batch", 4]))
    model = save(m, tmp_path / "m.onnx")
    data = write_data(tmp_path / "d.npz")
    out = tmp_path / "q.onnx"
    res = run_cli("quantize", model, "-o", out, "--data", data, "--mode", mode, *FAST_Q, cwd=tmp_path)
    assert res.code == 0, res.stderr
    q = onnx.load(str(out))
    onnx.checker.check_model(q, full_check=True)
    assert [o.name for o in q.graph.output] == ["y", "label", "x"]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = _x(data)
    y, label, x_out = sess.run(None, {"x": x})
    assert x_out.dtype == np.float32 and np.array_equal(x_out, x)  # passed through untouched
    assert (label == linear_labels(x)).mean() >= 0.9
    ops = {n.op_type for n in q.graph.node}
    if mode == "fp16":
        assert any(t.data_type == T.FLOAT16 for t in q.graph.initializer)
    else:
        assert ("MatMulInteger" if mode == "dynamic" else "QuantizeLinear") in ops, ops


# ------------------------------------------------------------------ 10: a zero-width output (1216-run-model.outputs)


def _zero_width() -> onnx.ModelProto:
    """linear() plus y_empty = y[:, 0:0], an output of shape [batch, 0]."""
    m = linear()
    m.graph.initializer.extend([nh.from_array(np.array([0], np.int64), "s0"),
                                nh.from_array(np.array([1], np.int64), "ax1")])
    m.graph.node.append(h.make_node("Slice", ["y", "s0", "s0", "ax1"], ["y_empty"]))
    m.graph.output.append(h.make_tensor_value_info("y_empty", T.FLOAT, ["batch", 0]))
    return m


def test_zero_width_output_optimizes_and_quantizes(tmp_path):
    """optimize took the max of |after - before| over an empty array ("zero-size array to reduction operation
    maximum", exit 3)."""
    model = save(_zero_width(), tmp_path / "m.onnx")
    data = write_data(tmp_path / "d.npz")
    opt = tmp_path / "o.onnx"
    res = run_cli("optimize", model, "-o", opt, "--data", data, "--level", "basic", *FAST_OPT, cwd=tmp_path)
    assert res.code == 0, res.stderr
    q = tmp_path / "q.onnx"
    res = run_cli("quantize", opt, "-o", q, "--data", data, "--labels", "label", "--mode", "dynamic",
                  "--max-accuracy-drop", "1", *FAST_Q, cwd=tmp_path)
    assert res.code == 0, res.stderr
    for path in (opt, q):
        y, label, empty = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {"x": _x(data)})
        assert empty.shape == (40, 0) and y.shape == (40, 3)


# ------------------------------------------------------------------ 11: dim_value -1 (2038-validate-model.dims)


def test_minus_one_batch_dim_is_dynamic(tmp_path):
    """x declared [-1, 4] (real third-party files have -1 dims; onnxruntime reads it as dynamic). validate took
    -1 for a pinned batch size and batched the rows into nothing ("need at least one array to concatenate")."""
    m = linear()
    d0 = m.graph.input[0].type.tensor_type.shape.dim[0]
    d0.Clear()
    d0.dim_value = -1
    model = save(m, tmp_path / "m.onnx")
    data = write_data(tmp_path / "d.npz")
    res = run_cli("validate", model, "--data", data, "--against", "onnx-reference", "--json", cwd=tmp_path)
    assert res.code == 0, res.stderr
    r = res.json()["result"]["summary"]
    assert r["verdict"] == "pass" and r["rows"] == 40
    assert {c["batch"] for c in r["comparisons"]} == {1, 40}  # the default batch sizes [1, all rows]
    res = run_cli("quantize", model, "-o", tmp_path / "q.onnx", "--data", data, "--mode", "dynamic", *FAST_Q,
                  cwd=tmp_path)
    assert res.code == 0, res.stderr


# ------------------------------------------------------------------ 12: batch pinned to 1 (1741-run-model.inputs)


def test_batch_pinned_to_one_validates_every_row(tmp_path):
    """x declared [1, 4] with 40 rows of data: validate scored batch 1 on batch1_rows (16) rows only, left the
    all-rows outputs unset, and the metrics read None ("'NoneType' object is not subscriptable")."""
    m = linear()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    model = save(m, tmp_path / "m.onnx")
    data = write_data(tmp_path / "d.npz")
    res = run_cli("validate", model, "--data", data, "--labels", "label", "--json", cwd=tmp_path)
    assert res.code == 0, res.stderr
    r = res.json()["result"]["summary"]
    assert r["verdict"] == "pass" and r["rows"] == 40
    assert {c["batch"] for c in r["comparisons"]} == {1}
    assert all(c["total"] in (40, 120) for c in r["comparisons"])  # every row: label [40], y [40, 3]
    assert r["metrics"]["candidate"]["accuracy"] == pytest.approx(1.0)


def test_batch_size_1_only_still_scores_every_row(tmp_path):
    """batch_sizes: [1] scores a sample one row at a time; the metrics still need the outputs of every row."""
    model = save(linear(), tmp_path / "m.onnx")
    data = write_data(tmp_path / "d.npz")
    res = run_cli("validate", model, "--data", data, "--labels", "label", "--set", "batch_sizes=[1]", "--json",
                  cwd=tmp_path)
    assert res.code == 0, res.stderr
    r = res.json()["result"]["summary"]
    assert r["verdict"] == "pass" and r["metrics"]["candidate"]["accuracy"] == pytest.approx(1.0)


# ------------------------------------------------------------------ 13: inputs that do not fit (2921-optimize-model.inputs)


def _symbolic_conv() -> onnx.ModelProto:
    """[n, c, h, w] (every dim symbolic) → Conv 3×3 → Flatten → Gemm [64, 10]: only an 8×8 image fits the Gemm."""
    rng = np.random.default_rng(2)
    nodes = [h.make_node("Conv", ["input", "CW", "CB"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv"),
             h.make_node("Flatten", ["c"], ["f"], axis=1, name="flatten"),
             h.make_node("Gemm", ["f", "W", "b"], ["logits"], name="fc")]
    g = h.make_graph(nodes, "conv", [h.make_tensor_value_info("input", T.FLOAT, ["n", "c", "h", "w"])],
                     [h.make_tensor_value_info("logits", T.FLOAT, ["n", 10])],
                     [nh.from_array(rng.normal(size=(1, 1, 3, 3)).astype(np.float32), "CW"),
                      nh.from_array(rng.normal(size=1).astype(np.float32), "CB"),
                      nh.from_array(rng.normal(size=(64, 10)).astype(np.float32), "W"),
                      nh.from_array(rng.normal(size=10).astype(np.float32), "b")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], producer_name="tests")


@pytest.mark.parametrize("command", ["optimize", "validate", "quantize-static", "quantize-fp16", "bench"])
def test_synthesized_inputs_that_do_not_fit_are_exit_2(tmp_path, command):
    """Symbolic dims are synthesized as 1: the Gemm then gets K=1, and onnxruntime's INVALID_ARGUMENT mid-run was
    exit 3 (inside optimize's reference run, validate's reference, onnxruntime's calibrator, the timing loops)."""
    model = save(_symbolic_conv(), tmp_path / "m.onnx")
    out = tmp_path / "out.onnx"
    args = {"optimize": ["optimize", model, "-o", out, "--synthetic", *FAST_OPT],
            "validate": ["validate", model, "--synthetic"],
            "quantize-static": ["quantize", model, "-o", out, "--mode", "static", "--set",
                                "allow_synthetic_calibration=true", *FAST_Q],
            "quantize-fp16": ["quantize", model, "-o", out, "--mode", "fp16", *FAST_Q],
            "bench": ["bench", model, "--batch", "1", "--runs", "1"]}[command]
    line = assert_one_line_error(run_cli(*args, cwd=tmp_path), 2)
    # the input model probes sizes for the symbolic dims; none fits this Gemm: name the input and the fix
    assert "'input'" in line and "c, h, w" in line and "--shape input=" in line, line
    assert "sequential_executor" not in line and ".cc:" not in line, line  # onnxruntime's source locations cut
    assert not out.exists()


@pytest.mark.parametrize("command", ["optimize", "validate", "bench"])
def test_shape_flag_resolves_symbolic_dims(tmp_path, command):
    """--shape gives the dims the model leaves symbolic (dim 0 stays the batch axis): the same model runs."""
    model = save(_symbolic_conv(), tmp_path / "m.onnx")
    out = tmp_path / "out.onnx"
    args = {"optimize": ["optimize", model, "-o", out, "--synthetic", *FAST_OPT],
            "validate": ["validate", model, "--synthetic"],
            "bench": ["bench", model, "--batch", "1", "--runs", "1"]}[command]
    r = run_cli(*args, "--shape", "input=1,1,8,8", "--json", cwd=tmp_path)
    assert r.code == 0, r.stderr[-600:]
    if command != "bench":
        fed = json.loads(r.stdout)["result"]["summary"]["synthesized_inputs"]
        assert fed[0]["name"] == "input" and fed[0]["shape"][1:] == [1, 8, 8], fed


def test_data_that_fits_runs_the_symbolic_model(tmp_path):
    """The same model with real 8×8 images: exit 0 (the refusal above is about the inputs, not the model)."""
    model = save(_symbolic_conv(), tmp_path / "m.onnx")
    x = np.random.default_rng(0).normal(size=(24, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", input=x)
    res = run_cli("optimize", model, "-o", tmp_path / "o.onnx", "--data", tmp_path / "d.npz", *FAST_OPT,
                  cwd=tmp_path)
    assert res.code == 0, res.stderr


# ------------------------------------------------------------------ compare: inf/nan handled without warnings (290)


def test_compare_of_infinite_outputs_warns_nothing():
    """An output of ±inf (y / 0) in both models: compare counts inf agreement itself; computing inf - inf for the
    masked-out elements raised 'invalid value encountered in subtract'."""
    from onnxforge.compare import compare

    ref = np.array([[np.inf, -np.inf, 1.0, np.nan], [2.0, np.inf, 3.0, 0.0]], np.float32)
    got = ref.copy()
    got[1, 1] = -np.inf  # one sign flip: a mismatch
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = compare("y", ref, ref.copy(), 1e-4, 1e-5)
        diff = compare("y", ref, got, 1e-4, 1e-5)
        huge = compare("y", np.array([1e308, -1e308]), np.array([-1e308, 1e308]), 0.0, 0.0)  # |d| overflows
    assert same["pass"] and same["mismatches"] == 0 and same["max_abs"] == 0.0
    assert not diff["pass"] and diff["inf_mismatch"] == 1 and diff["nan_mismatch"] == 0
    assert not huge["pass"]


# ------------------------------------------------------------------ make fuzz, 10,000 cases: 5472, 5972, 8622


def test_scalar_output_is_compared_where_all_rows_run_at_once(tmp_path):
    """An output with no batch axis (the mean of y) cannot be concatenated across batches (exit 3 in validate at
    batch 1); it is compared on the one-batch run, per-row outputs at every batch size."""
    m = linear()
    m.graph.node.append(h.make_node("ReduceMean", ["y"], ["y_mean"], keepdims=0))
    m.graph.output.append(h.make_tensor_value_info("y_mean", T.FLOAT, []))
    model = save(m, tmp_path / "m.onnx")
    data = write_data(tmp_path / "d.npz")
    res = run_cli("validate", model, "--data", data, "--against", "onnx-reference", "--json", cwd=tmp_path)
    assert res.code == 0, res.stderr
    compared = {(c["output"], c["batch"]) for c in res.json()["result"]["summary"]["comparisons"]}
    rows = len(_x(data))
    assert ("y_mean", rows) in compared and ("y_mean", 1) not in compared and ("y", 1) in compared


def test_nonfinite_weights_refuse_int8_but_not_fp16(tmp_path):
    w = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    w[1, 2] = np.inf
    model = save(linear(w=w), tmp_path / "m.onnx")
    data = write_data(tmp_path / "d.npz")
    line = assert_one_line_error(run_cli("quantize", model, "-o", tmp_path / "q.onnx", "--mode", "static",
                                         "--data", data, *FAST_Q, cwd=tmp_path))
    assert "NaN or ±inf" in line and "--mode fp16" in line, line
    assert not (tmp_path / "q.onnx").exists()
