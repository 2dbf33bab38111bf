"""Issue #15: `onnxforge compile --target ort-mobile` — onnxruntime's own converter writes the .ort file and the
required-operators config; the .ort loads in onnxruntime as ORT format and gives the ONNX model's outputs
(computed here with onnxruntime on the .onnx)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from conftest import run_cli
from test_targets_openvino import small_cnn


def test_ort_file_loads_and_matches_and_lists_its_operators(tmp_path):
    model = small_cnn(tmp_path / "cnn.onnx")
    x = np.random.default_rng(2).uniform(0, 1, (24, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    res = run_cli("compile", model, "--target", "ort-mobile", "-o", tmp_path / "mobile", "--data", tmp_path / "x.npy",
                  "--json", cwd=tmp_path)
    assert res.code == 0, res.stderr
    s = res.json()["result"]
    out = tmp_path / "mobile"
    assert sorted(p.name for p in out.iterdir()) == ["model.ort", "required_operators.config"]
    assert (out / "model.ort").read_bytes()[4:8] == b"ORTM"  # the flatbuffer's file identifier, not ONNX protobuf
    so = ort.SessionOptions()
    so.add_session_config_entry("session.load_model_format", "ORT")
    got = ort.InferenceSession(str(out / "model.ort"), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    ops = " ".join(s["required_operators"])
    for op in {n.op_type for n in onnx.load(str(model)).graph.node} - {"Relu", "Flatten", "Conv", "Gemm"}:
        assert op in ops
    assert "Conv" in ops and "Gemm" in ops  # fused (FusedConv/FusedGemm) or plain, but present
    assert s["outputs"]["logits"]["pass"] and s["bytes"]["model.ort"] == (out / "model.ort").stat().st_size
    assert s["latency"]["batch1"]["ort-mobile_p50_ms"] > 0


def test_required_operators_config_names_no_machine_path_and_reruns_identically(tmp_path):
    """onnxruntime's tool writes the absolute path of the model it read into the config's header (our scratch
    folder): a machine path in a shipped file, different every run. The config keeps the file name only."""
    model = small_cnn(tmp_path / "cnn.onnx")
    np.save(tmp_path / "x.npy", np.random.default_rng(2).uniform(0, 1, (8, 1, 8, 8)).astype(np.float32))
    texts = []
    for name in ("a", "b"):
        res = run_cli("compile", model, "--target", "ort-mobile", "-o", tmp_path / name, "--data", tmp_path / "x.npy",
                      cwd=tmp_path)
        assert res.code == 0, res.stderr
        texts.append((tmp_path / name / "required_operators.config").read_text())
    assert texts[0] == texts[1], texts
    assert str(tmp_path) not in texts[0] and "/tmp" not in texts[0] and "# - model.ort" in texts[0], texts[0]
