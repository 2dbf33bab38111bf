"""Issue #15: `onnxforge compile --target openvino` — the IR that OpenVINO's own runtime loads here gives the ONNX
model's outputs (onnxruntime computes the expected values in this file), FP16 weights halve the file, a check that
fails is exit 1 with nothing left at the output path, and both runtimes are timed in the same run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import assert_one_line_error, run_cli
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

ov = pytest.importorskip("openvino", reason="onnxforge[openvino] not installed: pip install 'onnxforge[openvino]'")


def small_cnn(path: Path) -> Path:
    """Conv(1→8, 3×3) → Relu → Flatten → Gemm(8·6·6 → 10): a digits-sized CNN, checked before it is written."""
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.normal(0, 0.3, (8, 1, 3, 3)).astype(np.float32), "cw"),
             nh.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "cb"),
             nh.from_array(rng.normal(0, 0.1, (10, 288)).astype(np.float32), "gw"),
             nh.from_array(rng.normal(0, 0.1, 10).astype(np.float32), "gb")]
    nodes = [h.make_node("Conv", ["input", "cw", "cb"], ["c"]), h.make_node("Relu", ["c"], ["r"]),
             h.make_node("Flatten", ["r"], ["f"]), h.make_node("Gemm", ["f", "gw", "gb"], ["logits"], transB=1)]
    g = h.make_graph(nodes, "cnn", [h.make_tensor_value_info("input", T.FLOAT, ["batch", 1, 8, 8])],
                     [h.make_tensor_value_info("logits", T.FLOAT, ["batch", 10])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], producer_name="tests")
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, path)
    return path


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("ov")
    x = np.random.default_rng(1).uniform(0, 1, (40, 1, 8, 8)).astype(np.float32)
    np.save(d / "x.npy", x)
    return small_cnn(d / "cnn.onnx"), d / "x.npy"


def _ov_outputs(xml: Path, x: np.ndarray) -> np.ndarray:
    core = ov.Core()
    compiled = core.compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled.create_infer_request().infer({"input": x})[compiled.outputs[0]]


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_openvino_ir_matches_onnxruntime_and_is_timed_in_the_same_run(cnn, tmp_path):
    model, xs = cnn
    res = run_cli("compile", model, "--target", "openvino", "-o", tmp_path / "ir", "--data", xs, "--json",
                  cwd=tmp_path)
    assert res.code == 0, res.stderr
    s = res.json()["result"]
    assert sorted(p.name for p in (tmp_path / "ir").iterdir()) == ["model.bin", "model.xml"]
    x = np.load(xs)
    np.testing.assert_allclose(_ov_outputs(tmp_path / "ir" / "model.xml", x), _ort(model, x), rtol=1e-4, atol=1e-5)
    assert s["outputs"]["logits"]["pass"] and s["outputs"]["logits"]["total"] == x.size // 64 * 10
    lat = s["latency"]["batch1"]
    assert lat["onnxruntime_p50_ms"] > 0 and lat["openvino_p50_ms"] > 0 and lat["speedup"]["rounds"] == 3
    assert s["reference_provider"] == "CPUExecutionProvider" and s["target_threads"] == 1


def test_fp16_weights_halve_the_ir_and_stay_within_fp16_tolerance(cnn, tmp_path):
    model, xs = cnn
    res = run_cli("compile", model, "--target", "openvino", "--weights", "fp16", "-o", tmp_path / "ir16",
                  "--data", xs, "--json", cwd=tmp_path)
    assert res.code == 0, res.stderr
    weights = sum(t.size for t in [nh.to_array(i) for i in onnx.load(str(model)).graph.initializer]) * 4
    assert (tmp_path / "ir16" / "model.bin").stat().st_size < 0.55 * weights
    x = np.load(xs)
    np.testing.assert_allclose(_ov_outputs(tmp_path / "ir16" / "model.xml", x), _ort(model, x), rtol=1e-2, atol=1e-3)


def test_a_failed_check_is_exit_1_and_leaves_nothing(cnn, tmp_path):
    model, xs = cnn
    res = run_cli("compile", model, "--target", "openvino", "--weights", "fp16", "--rtol", "0", "--atol", "0",
                  "-o", tmp_path / "ir", "--data", xs, cwd=tmp_path)
    line = assert_one_line_error(res, 1)
    assert "logits differs from onnxruntime" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no IR, no scratch folder


def test_unknown_target_is_exit_2(cnn, tmp_path):
    model, xs = cnn
    line = assert_one_line_error(run_cli("compile", model, "--target", "tensorrt-engine", "-o", tmp_path / "x",
                                         "--data", xs, cwd=tmp_path), 2)
    assert "openvino" in line and "ort-mobile" in line, line


def test_compile_stage_in_a_pipeline_records_the_check(cnn, tmp_path):
    model, xs = cnn
    cfg = tmp_path / "p.yaml"
    cfg.write_text(json.dumps({"name": "ov", "source": {"framework": "onnx", "path": str(model)},
                               "data": {"path": str(xs)},
                               "stages": {"compile": {"target": "openvino", "openvino": {"weights": "fp16"}}}}))
    res = run_cli("run", cfg, cwd=tmp_path)
    assert res.code == 0, res.stderr
    (st,) = [s for s in json.loads((tmp_path / "runs" / "ov" / "manifest.json").read_text())["stages"]
             if s["name"] == "compile"]
    assert st["verdict"] == "pass" and st["summary"]["outputs"]["logits"]["pass"]
    ir = next((tmp_path / "runs" / "ov").rglob("model.xml"))
    x = np.load(xs)
    np.testing.assert_allclose(_ov_outputs(ir, x), _ort(model, x), rtol=1e-2, atol=1e-3)
