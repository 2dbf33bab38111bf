"""optimize: ORT offline levels, onnxslim and transformer fusion on the digits CNN/MLP and a transformer block,
each pass checked against its input (a pass beyond tolerance is rejected and the stage goes on), portable mode
without contrib ops, and quantize → optimize in one pipeline."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import assert_one_line_error, run_cli
from test_quantize import TEST, export_torch, run_model, write_config

STANDARD = ("", "ai.onnx", "ai.onnx.ml")


def domains(path: Path) -> Counter:
    return Counter(n.domain for n in onnx.load(str(path)).graph.node)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "cnn": export_torch("digits_cnn", "digits_cnn.pt", (2, 1, 8, 8), "input", d / "cnn.onnx"),
        "mlp": export_torch("digits_mlp", "digits_mlp.pt", (2, 64), "x", d / "mlp.onnx"),
        "block": export_torch("transformer_block", None, (2, 16, 64), "x", d / "block_ts.onnx", dynamo=False),
    }


@pytest.fixture(scope="module")
def feeds() -> dict[str, dict]:
    te = np.load(TEST)
    x = np.random.default_rng(0).standard_normal((32, 16, 64)).astype(np.float32)
    return {"cnn": {"input": te["input"]}, "mlp": {"x": te["x"]}, "block": {"x": x}}


def optimize(model: Path, out: Path, *args, timed: bool = False) -> dict:
    """Run the stage; pass timing (hardware-dependent) is off unless `timed` — its own test forces the outcome."""
    data = ["--set", "allow_synthetic=true"] if "block" in model.name else ["--data", TEST]
    timing = [] if timed else ["--set", "min_pass_speedup=0"]
    res = run_cli("optimize", model, "-o", out, *data, "--set", "latency_rounds=1", *timing, *args, "--json")
    assert res.code == 0, res.stderr
    return res.json()["result"]["summary"]


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_default_applies_ort_extended_and_keeps_results(models, feeds, name, tmp_path):
    out = tmp_path / "o.onnx"
    s = optimize(models[name], out)
    assert s["applied"] == ["onnxslim", "ort-extended"] and s["rejected"] == []
    assert s["after"]["nodes"] < s["before"]["nodes"]  # Conv/Gemm + Relu fused
    assert "com.microsoft" in domains(out)  # extended: ORT-only contrib ops, reported as such
    assert s["contrib_ops"] and all(k.startswith("com.microsoft::") for k in s["contrib_ops"])
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    f = feeds[name]
    np.testing.assert_allclose(run_model(out, f), run_model(models[name], f), rtol=1e-4, atol=1e-4)
    for p in s["passes"]:
        assert p["status"] == "applied" and set(p["p50_ms_raw"]) == {"batch1", "batch64"}
        assert sum(p["ops_after"].values()) == p["nodes_after"]
    assert set(s["before"]["p50_ms"]) == {"batch1", "batch64"}


@pytest.mark.parametrize("name", ["cnn", "mlp", "block"])
def test_portable_emits_no_contrib_ops(models, feeds, name, tmp_path):
    out = tmp_path / "p.onnx"
    s = optimize(models[name], out, "--portable")
    assert set(domains(out)) <= set(STANDARD), domains(out)
    assert s["contrib_ops"] == {} and [p["pass"] for p in s["passes"]] == ["onnxslim", "ort-basic"]
    for p in s["passes"]:  # block: ORT basic adds a Transpose (30 → 31 nodes), rejected for that reason only
        if name == "block" and p["pass"] == "ort-basic":
            assert p["status"] == "rejected" and p["reason"] == f"adds nodes ({p['nodes_before']} → {p['nodes_after']})"
            assert p["nodes_after"] > p["nodes_before"] == len(onnx.load(str(out)).graph.node), p  # what shipped
        else:
            assert p["status"] == "applied", p
    assert not any(p["pass"].startswith("fusion") for p in s["passes"])
    assert s["after"]["nodes"] <= s["before"]["nodes"]
    np.testing.assert_allclose(run_model(out, feeds[name]), run_model(models[name], feeds[name]), rtol=1e-4,
                               atol=1e-4)


def test_transformer_fusion_on_the_torchscript_block(models, feeds, tmp_path):
    out = tmp_path / "f.onnx"
    s = optimize(models["block"], out)
    fusion = next(p for p in s["passes"] if p["pass"].startswith("fusion"))
    assert fusion["pass"] == "fusion-bert" and fusion["status"] == "applied"  # detected, not configured
    assert fusion["info"]["fused"].get("SkipLayerNormalization") == 1
    ops = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    assert ops["SkipLayerNormalization"] == 1 and ops["BiasGelu"] == 1
    assert s["before"]["nodes"] > 60 and s["after"]["nodes"] <= 25  # 71 → 23 measured
    np.testing.assert_allclose(run_model(out, feeds["block"]), run_model(models["block"], feeds["block"]),
                               rtol=1e-3, atol=1e-4)


def test_a_pass_beyond_tolerance_is_rejected_and_the_stage_goes_on(models, feeds, tmp_path):
    """Fusion and ORT's kernels round differently (~1e-7): at zero tolerance those passes must be rejected,
    reported, and left out, while the exact onnxslim pass is kept."""
    out = tmp_path / "r.onnx"
    s = optimize(models["block"], out, "--set", "rtol=0", "--set", "atol=0")
    assert s["applied"] == ["onnxslim"]
    assert "fusion-bert" in s["rejected"] and "ort-extended" in s["rejected"]
    for p in s["passes"]:
        if p["status"] == "rejected":
            assert "beyond tolerance" in p["reason"] and p["comparison"]["logits"]["max_abs"] > 0
    assert any("rejected" in w for w in s["warnings"])
    # the output is the last accepted pass: bit-identical results, no contrib ops
    np.testing.assert_array_equal(run_model(out, feeds["block"]), run_model(models["block"], feeds["block"]))
    assert set(domains(out)) <= set(STANDARD)


def test_a_pass_slower_than_its_input_is_rejected(models, feeds, tmp_path):
    """Each pass is timed against its input (paired rounds): with a 5× speedup required, none qualifies, every
    pass is rejected as slower, and the stage still writes its (unchanged) input."""
    out = tmp_path / "s.onnx"
    s = optimize(models["mlp"], out, "--set", "min_pass_speedup=5", "--set", "pass_timing_rounds=2", timed=True)
    assert s["applied"] == [] and s["rejected"] == ["onnxslim", "ort-extended"]
    for p in s["passes"]:
        assert p["reason"].startswith("slower than its input") and set(p["speedup"]) == {"batch1", "batch64"}
        assert all(0.2 < v < 5 for v in p["speedup"].values())
    assert s["after"]["nodes"] == s["before"]["nodes"]
    np.testing.assert_array_equal(run_model(out, feeds["mlp"]), run_model(models["mlp"], feeds["mlp"]))


def test_refusals(models, tmp_path):
    res = run_cli("optimize", models["cnn"], "-o", tmp_path / "x.onnx")
    assert "allow_synthetic" in assert_one_line_error(res, 2)
    ort_only = tmp_path / "ext.onnx"
    optimize(models["cnn"], ort_only)
    res = run_cli("optimize", ort_only, "-o", tmp_path / "y.onnx", "--portable", "--data", TEST)
    assert "non-standard ops" in assert_one_line_error(res, 2)
    res = run_cli("optimize", models["cnn"], "-o", tmp_path / "z.onnx", "--data", TEST, "--set", "fusion=bertt")
    assert "unknown model type" in assert_one_line_error(res, 2)
    assert not any((tmp_path / n).exists() for n in ("x.onnx", "y.onnx", "z.onnx"))


def test_quantize_then_optimize_pipeline(models, feeds, tmp_path):
    """Static INT8 then ORT extended: QDQ pairs become integer kernels, results move by at most a few
    quantization steps, and held-out accuracy stays within a point of the float model."""
    cfg = write_config(tmp_path / "p.yaml", models["cnn"], {
        "quantize": {"mode": "static", "allow_slower": True, "latency_rounds": 1},
        "optimize": {"latency_rounds": 1, "min_pass_speedup": 0}}, name="qo")
    res = run_cli("run", cfg, "--json")
    assert res.code == 0, res.stderr
    man = res.json()["result"]
    q, o = man["stages"]
    assert o["summary"]["applied"][-1] == "ort-extended"
    out = tmp_path / "runs/qo" / man["final_model"]
    ops = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    assert ops["QLinearConv"] == 2 and o["summary"]["after"]["nodes"] < q["summary"]["after"]["nodes"]
    te = np.load(TEST)
    acc = lambda p: (run_model(p, {"input": te["input"]}).argmax(1) == te["label"]).mean()  # noqa: E731
    assert acc(models["cnn"]) - acc(out) <= 0.01


def test_example_configs_parse():
    from conftest import ROOT

    from onnxforge.config import load_config

    paths = sorted((ROOT / "configs").glob("optimize_*.yaml"))
    assert paths
    for p in paths:
        assert "optimize" in load_config(p).stages.order
