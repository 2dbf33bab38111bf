"""Issue #15: execution providers never fall back silently.

A provider that is not installed is exit 2 naming the installed ones and the package that brings it; with
allow_fallback the run goes on and every figure records the provider that really ran it (the session's own
get_providers(), computed here with onnxruntime). The CUDA/TensorRT paths run only where onnxruntime has them.
"""

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

from onnxforge import runtime

AVAILABLE = ort.get_available_providers()
NO_CUDA = "CUDAExecutionProvider" not in AVAILABLE
NO_TRT = "TensorrtExecutionProvider" not in AVAILABLE
WHY_NO_GPU = f"onnxruntime here has no GPU provider (installed: {', '.join(AVAILABLE)}); needs onnxruntime-gpu + a GPU"


def _mlp(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = nh.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w")
    g = h.make_graph([h.make_node("MatMul", ["x", "w"], ["y"])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, ["n", 4])], [h.make_tensor_value_info("y", T.FLOAT, ["n", 3])],
                     [w])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], producer_name="tests")
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("prov")
    _mlp(d / "m.onnx")
    np.save(d / "x.npy", np.random.default_rng(1).normal(size=(32, 4)).astype(np.float32))
    return d / "m.onnx"


@pytest.mark.skipif(not NO_CUDA, reason="CUDA is installed here: the missing-provider premise does not hold")
@pytest.mark.parametrize("cmd", ["validate", "bench", "report", "optimize", "quantize"])
def test_missing_provider_is_exit_2_naming_installed_and_the_package(model, tmp_path, cmd):
    out = tmp_path / "out.onnx"
    args = {"validate": ["validate", model, "--against", "onnx-reference", "--data", model.parent / "x.npy"],
            "bench": ["bench", model, "--runs", "3", "--batch", "1"],
            "report": ["report", model, "--out", tmp_path / "rep"],
            "optimize": ["optimize", model, "-o", out, "--data", model.parent / "x.npy"],
            "quantize": ["quantize", model, "-o", out, "--data", model.parent / "x.npy"]}[cmd]
    res = run_cli(*args, "--providers", "cuda", cwd=tmp_path)
    line = assert_one_line_error(res, 2)
    assert "CUDAExecutionProvider is not available" in line
    assert "installed: " + ", ".join(AVAILABLE) in line and "onnxruntime-gpu" in line, line
    assert not out.exists() and not (tmp_path / "rep").exists()  # nothing left behind


def test_unknown_provider_name_is_exit_2_and_says_what_is_installed(model, tmp_path):
    line = assert_one_line_error(run_cli("bench", model, "--runs", "3", "--providers", "NoSuchExecutionProvider",
                                         cwd=tmp_path), 2)
    assert "NoSuchExecutionProvider is not available" in line and "CPUExecutionProvider" in line, line


@pytest.mark.skipif(not NO_CUDA, reason="CUDA is installed here: a fallback would not happen")
def test_fallback_allowed_bench_rows_record_the_provider_that_ran(model, tmp_path):
    res = run_cli("bench", model, "--runs", "3", "--batch", "1", "--providers", "cuda,cpu", "--allow-fallback",
                  "--json", cwd=tmp_path)
    assert res.code == 0, res.stderr
    env = res.json()
    ran = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_providers()[0]
    assert [r["provider"] for r in env["result"]["results"]] == [ran]
    assert any("CUDAExecutionProvider is not available" in w for w in env["warnings"]), env["warnings"]


@pytest.mark.skipif(not NO_CUDA, reason="CUDA is installed here: a fallback would not happen")
def test_fallback_allowed_report_names_cpu_as_what_ran(model, tmp_path):
    res = run_cli("report", model, "--out", tmp_path / "rep", "--formats", "json", "--providers", "cuda",
                  "--allow-fallback", cwd=tmp_path)
    assert res.code == 0, res.stderr
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    (art,) = rep["artifacts"]
    assert art["provider"] == "CPUExecutionProvider"
    assert rep["latency"]["rows"] and {r["provider"] for r in rep["latency"]["rows"]} == {"CPUExecutionProvider"}


def test_the_yaml_policy_reaches_every_session_built_from_it():
    from onnxforge.config import RuntimeConfig

    strict = RuntimeConfig(providers=["CUDAExecutionProvider"])
    loose = RuntimeConfig(providers=["CUDAExecutionProvider"], allow_fallback=True)
    m = h.make_model(h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g",
                                  [h.make_tensor_value_info("x", T.FLOAT, [2])], [h.make_tensor_value_info("y", T.FLOAT, [2])]),
                     opset_imports=[h.make_opsetid("", 17)])
    if NO_CUDA:
        from onnxforge.errors import UserError

        with pytest.raises(UserError, match="onnxruntime-gpu"):
            runtime.session(m, provider_list=strict.providers)
        with pytest.warns(UserWarning, match="not available"):
            sess = runtime.session(m, provider_list=loose.providers)
        assert runtime.ran_on(sess) == "CPUExecutionProvider"
    assert strict.model_dump()["providers"] == ["CUDAExecutionProvider"]  # still a plain list in the manifest


def test_short_names_parse_to_onnxruntime_names():
    assert runtime.parse(["cuda,TensorRT", "cpu"]) == ["CUDAExecutionProvider", "TensorrtExecutionProvider",
                                                       "CPUExecutionProvider"]


def test_tensorrt_options_fp16_and_an_engine_cache_only_under_the_folder_given(tmp_path):
    off = runtime.provider_options("TensorrtExecutionProvider")
    assert off["trt_fp16_enable"] == "true" and not any("cache" in k for k in off)  # nothing written unasked
    on = runtime.provider_options("TensorrtExecutionProvider", {"TensorrtExecutionProvider": {"device_id": 1}},
                                  tmp_path)
    assert on["trt_engine_cache_enable"] == "true" and on["device_id"] == "1"
    assert Path(on["trt_engine_cache_path"]).parent == tmp_path
    assert runtime.provider_options("CPUExecutionProvider") == {}


@pytest.mark.skipif(NO_CUDA, reason=WHY_NO_GPU)
def test_cuda_session_with_io_binding_matches_cpu(model):
    x = np.load(model.parent / "x.npy")
    cpu = runtime.run(runtime.session(model), {"x": x})
    sess = runtime.session(model, provider_list=["CUDAExecutionProvider"])
    assert runtime.ran_on(sess) == "CUDAExecutionProvider"
    got = runtime.device_run(sess, {"x": x})
    np.testing.assert_allclose(got["y"], cpu["y"], rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(NO_TRT, reason=WHY_NO_GPU.replace("GPU provider", "TensorRT provider") + " and TensorRT")
def test_tensorrt_fp16_engine_is_cached_in_the_folder_given(model, tmp_path):
    x = np.load(model.parent / "x.npy")
    cpu = runtime.run(runtime.session(model), {"x": x})
    from onnxforge.runtime import Providers

    sess = runtime.session(model, provider_list=Providers(["TensorrtExecutionProvider"], cache_dir=tmp_path))
    assert runtime.ran_on(sess) == "TensorrtExecutionProvider"
    got = runtime.device_run(sess, {"x": x})
    np.testing.assert_allclose(got["y"], cpu["y"], rtol=1e-2, atol=1e-2)  # fp16 engine
    assert any((tmp_path / "trt_cache").iterdir())


@pytest.mark.skipif(not NO_CUDA, reason="CUDA is installed here: the missing-provider premise does not hold")
def test_a_pipeline_stage_own_sessions_ask_for_the_yaml_providers(model, tmp_path):
    """`onnxforge run` with runtime.providers: an ONNX source whose only stage is optimize — the sessions optimize
    builds for its own checks ask for CUDA too: exit 2 without allow_fallback, and the run goes on with it."""
    def cfg(fallback: bool) -> Path:
        p = tmp_path / f"p{int(fallback)}.yaml"
        p.write_text(f"name: prov{int(fallback)}\nsource: {{framework: onnx, path: {model}}}\n"
                     f"data: {{path: {model.parent / 'x.npy'}}}\n"
                     f"runtime: {{providers: [CUDAExecutionProvider], allow_fallback: {str(fallback).lower()}}}\n"
                     "stages:\n  optimize: {}\n")
        return p

    line = assert_one_line_error(run_cli("run", cfg(False), cwd=tmp_path), 2)
    assert "CUDAExecutionProvider is not available" in line, line
    assert not (tmp_path / "runs" / "prov0").exists()
    ok = run_cli("run", cfg(True), cwd=tmp_path)
    assert ok.code == 0, ok.stderr[-2000:]


@pytest.mark.skipif(not NO_CUDA, reason="CUDA is installed here: the missing-provider premise does not hold")
def test_predict_asks_for_the_providers_in_every_engine(model, tmp_path):
    """predict --providers: exit 2 naming the package before anything is written, for the single-file path and
    the process pool; with --allow-fallback both score on CPU what onnxruntime computes."""
    import pandas as pd

    x = np.load(model.parent / "x.npy")
    src = tmp_path / "rows.parquet"
    pd.DataFrame({"x": list(x)}).to_parquet(src)  # one [4] vector per row: the columns flag stacks nothing here
    table = tmp_path / "cols.csv"
    pd.DataFrame(x, columns=["a", "b", "c", "d"]).to_csv(table, index=False)
    flags = ["--columns", "x=a,b,c,d"]
    for out in (tmp_path / "one.parquet", tmp_path / "parts"):
        res = run_cli("predict", model, "--input", table, "--output", out, *flags, "--providers", "cuda",
                      cwd=tmp_path)
        line = assert_one_line_error(res, 2)
        assert "CUDAExecutionProvider is not available" in line and "onnxruntime-gpu" in line, line
        assert not out.exists()
        ok = run_cli("predict", model, "--input", table, "--output", out, *flags, "--providers", "cuda",
                     "--allow-fallback", cwd=tmp_path)
        assert ok.code == 0, ok.stderr[-2000:]
        got = pd.read_parquet(out)[["y_0", "y_1", "y_2"]].to_numpy()
        want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not NO_CUDA, reason="CUDA is installed here: the missing-provider premise does not hold")
def test_serve_asks_for_the_providers_and_reports_what_runs(model, tmp_path):
    from serve_http_server import Served

    res = run_cli("serve", model, "--port", "0", "--providers", "cuda", cwd=tmp_path)
    line = assert_one_line_error(res, 2)
    assert "CUDAExecutionProvider is not available" in line and "onnxruntime-gpu" in line, line
    with Served(model, "--providers", "cuda", "--allow-fallback") as server:
        status, doc = server.json("GET", "/models")
        assert status == 200 and [v["provider"] for v in doc["versions"]] == ["CPUExecutionProvider"], doc
