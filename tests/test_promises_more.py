"""Issue #21, continued: promises the README makes that had no test failing when they break.

- a missing execution provider is exit 2 naming the installed ones (issue #15); with runtime.allow_fallback it
  falls back to CPU with a warning, and the manifest and report record the provider that ran;
- regression metrics (MAE, RMSE, R²) in validate and the report equal sklearn.metrics on the same rows;
- optimize rejects a pass that grows the stored tensors, naming the growth (max_size_growth: null accepts it);
- quantize: max_accuracy_drop drives the fallback (tight → float nodes or exit 1 with no model, loose → all INT8);
  nothing to quantize is exit 2 naming the ops INT8 covers; fp16 warns about weights clipped to ±65504;
- predict: a bad value in a later chunk leaves no file at the final path, no temporary file, an old file intact;
- report.md stays under 60,000 characters with a truncation note, report.json keeps every figure; a run without
  data still reports, and says what it could not measure;
- a pickle / joblib / full torch pickle whose __reduce__ would create a marker file is refused (exit 2) and the
  marker does not exist; with trust_pickle the same file does run (positive control).

Every expected figure is computed here (xgboost, sklearn.metrics, onnxruntime, onnx), never read back from onnxforge.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from conftest import FIXTURES, assert_one_line_error, run_cli
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

DIABETES = FIXTURES / "data" / "diabetes_test.npz"
XGB = FIXTURES / "tabular" / "diabetes_xgb.ubj"


def write_yaml(path: Path, cfg: dict) -> Path:
    path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    return path


def model(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:
    g = h.make_graph(nodes, "g", inputs, outputs, list(inits))
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], producer_name="tests")


def ort_outputs(path: Path, feeds: dict) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


# ------------------------------------------------------------------ 1 + 2: provider fallback, regression metrics


@pytest.fixture(scope="module")
def reg_run(tmp_path_factory) -> dict:
    """An XGBoost regressor run (convert → validate → report, no latency) asking for CUDA, which is not here, with
    fallback allowed. Run with PYTHONWARNINGS=ignore: that hides third-party warnings, never onnxforge's own from
    the --json envelope."""
    d = tmp_path_factory.mktemp("reg")
    cfg = write_yaml(d / "reg.yaml", {
        "name": "reg", "run_dir": "runs",
        "source": {"framework": "xgboost", "path": str(XGB), "task": "regressor"},
        "inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", 10], "column": "x"}],
        "outputs": ["prediction"], "data": {"path": str(DIABETES), "labels": "target"},
        "runtime": {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"], "allow_fallback": True},
        "stages": {"convert": {}, "validate": {}, "report": {"bench": False}}})
    env = dict(os.environ, PYTHONWARNINGS="ignore", COLUMNS="200")
    p = subprocess.run([sys.executable, "-m", "onnxforge", "run", cfg, "--json"], cwd=d, env=env, capture_output=True,
                       text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr[-3000:]
    run = d / "runs" / "reg"
    return {"dir": run, "stderr": p.stderr, "envelope": json.loads(p.stdout),
            "manifest": json.loads((run / "manifest.json").read_text()),
            "report": json.loads((run / "report.json").read_text())}


def test_missing_provider_falls_back_to_cpu_with_a_warning_and_the_manifest_records_what_ran(reg_run):
    assert "CUDAExecutionProvider" not in ort.get_available_providers()  # the premise: no GPU provider here
    said = [w for w in reg_run["envelope"]["warnings"] if "CUDAExecutionProvider" in w]
    assert said and "not available" in said[0] and "allow_fallback" in said[0], reg_run["envelope"]["warnings"]
    stages = {s["name"]: s for s in reg_run["manifest"]["stages"]}
    assert [s["verdict"] for s in stages.values()] == ["pass", "pass", "info"]
    # what onnxruntime really ran: the session a plain CPU request builds
    ran = ort.InferenceSession(str(reg_run["dir"] / "01-convert/model.onnx"),
                               providers=["CPUExecutionProvider"]).get_providers()
    assert stages["validate"]["summary"]["structural"]["providers"] == ran
    assert "CUDAExecutionProvider" not in json.dumps(stages["validate"]["summary"])
    assert {a["provider"] for a in reg_run["report"]["artifacts"]} == {ran[0]}


def test_missing_provider_without_allow_fallback_is_exit_2_and_leaves_no_run(tmp_path):
    """Issue #15: no silent fallback. The same run without allow_fallback stops with one line naming the
    installed providers and the package that brings CUDA, and leaves no run folder."""
    cfg = write_yaml(tmp_path / "reg.yaml", {
        "name": "reg", "run_dir": "runs",
        "source": {"framework": "xgboost", "path": str(XGB), "task": "regressor"},
        "inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", 10], "column": "x"}],
        "outputs": ["prediction"], "data": {"path": str(DIABETES), "labels": "target"},
        "runtime": {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]},
        "stages": {"convert": {}, "validate": {}, "report": {"bench": False}}})
    line = assert_one_line_error(run_cli("run", cfg, cwd=tmp_path), 2)
    assert "CUDAExecutionProvider is not available" in line and "onnxruntime-gpu" in line, line
    assert "installed: " + ", ".join(ort.get_available_providers()) in line, line
    assert not (tmp_path / "runs" / "reg").exists()


def _sk_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    return {"mae": mean_absolute_error(y, pred), "rmse": float(np.sqrt(mean_squared_error(y, pred))),
            "r2": r2_score(y, pred)}


def test_regression_metrics_equal_sklearn_on_the_same_rows(reg_run):
    import xgboost as xgb

    with np.load(DIABETES) as z:
        x, y = z["x"].astype(np.float32), z["target"].astype(np.float64)
    booster = xgb.Booster(model_file=str(XGB))
    native = booster.predict(xgb.DMatrix(x)).astype(np.float64).reshape(-1)
    onnx_pred = ort_outputs(reg_run["dir"] / "01-convert/model.onnx", {"input": x})["prediction"].astype(
        np.float64).reshape(-1)
    want_native, want_onnx = _sk_metrics(y, native), _sk_metrics(y, onnx_pred)
    assert want_native["r2"] != pytest.approx(want_native["mae"])  # distinct figures: a swap would show
    validation = json.loads((reg_run["dir"] / "02-validate/validation.json").read_text())
    val, rep = validation["metrics"], reg_run["report"]
    (art,) = rep["artifacts"]
    assert rep["data"]["rows"] == validation["rows"] == len(y)
    for got in (val["candidate"], art["metrics"]):
        for k, v in want_onnx.items():
            assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), (k, got)
    for got in (val["reference"], rep["native"]["metrics"]):
        for k, v in want_native.items():
            assert got[k] == pytest.approx(v, rel=1e-6), (k, got)


# ------------------------------------------------------------------ 3: optimize rejects size growth


def _tiled(path: Path) -> Path:
    """y = x @ Tile(row, [256, 1]): 1 KiB stored, but every constant-folding pass materializes a 256 KiB weight."""
    row = np.random.default_rng(0).normal(size=(1, 256)).astype(np.float32)
    m = model([h.make_node("Tile", ["row", "reps"], ["W"]), h.make_node("MatMul", ["x", "W"], ["y"])],
              [h.make_tensor_value_info("x", T.FLOAT, ["batch", 256])],
              [h.make_tensor_value_info("y", T.FLOAT, ["batch", 256])],
              [nh.from_array(row, "row"), nh.from_array(np.array([256, 1], np.int64), "reps")])
    onnx.save(m, str(path))
    np.savez(path.with_suffix(".npz"), x=np.random.default_rng(1).normal(size=(8, 256)).astype(np.float32))
    return path


def _stored_bytes(path: Path) -> int:
    m = onnx.load(str(path))
    return sum(nh.to_array(t).nbytes for t in m.graph.initializer)


def test_optimize_rejects_a_pass_that_grows_the_stored_tensors(tmp_path):
    src = _tiled(tmp_path / "tiled.onnx")
    common = ["--data", src.with_suffix(".npz"), "--set", "latency_rounds=1", "--set", "min_pass_speedup=0", "--json"]
    res = run_cli("optimize", src, "-o", tmp_path / "o.onnx", *common, cwd=tmp_path)
    assert res.code == 0, res.stderr
    s = res.json()["result"]["summary"]
    assert s["passes"] and s["applied"] == []
    for p in s["passes"]:
        assert p["status"] == "rejected" and p["reason"].startswith("grows the stored tensors"), p
        assert "max_size_growth: null accepts it" in p["reason"]
    assert _stored_bytes(tmp_path / "o.onnx") == _stored_bytes(src) < 4096
    # the same passes accepted without the limit: they really materialize the 256 KiB weight
    res = run_cli("optimize", src, "-o", tmp_path / "n.onnx", *common, "--set", "max_size_growth=null", cwd=tmp_path)
    assert res.code == 0, res.stderr
    assert res.json()["result"]["summary"]["applied"]
    assert _stored_bytes(tmp_path / "n.onnx") >= 256 * 256 * 4


# ------------------------------------------------------------------ 4: quantize budgets, nothing to quantize, fp16


@pytest.fixture(scope="module")
def qmodels(tmp_path_factory) -> dict[str, Path]:
    """x[16] → mm1 (benign 16×16) → mm2 (16×4 with one weight of 100 among ~0.05s: per-tensor INT8 rounds the rest
    to zero) → label. Labels are the float model's own argmax, so float accuracy is 1."""
    d = tmp_path_factory.mktemp("q")
    rng = np.random.default_rng(0)
    w1 = (rng.normal(size=(16, 16)) * 0.3).astype(np.float32)
    w2 = (rng.normal(size=(16, 4)) * 0.05).astype(np.float32)
    w2[0, 0] = 100.0
    outs = [h.make_tensor_value_info("y", T.FLOAT, ["batch", 4]), h.make_tensor_value_info("label", T.INT64, ["batch"])]
    x_in = [h.make_tensor_value_info("x", T.FLOAT, ["batch", 16])]
    two = model([h.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"), h.make_node("MatMul", ["h", "W2"], ["y"],
                 name="mm2"), h.make_node("ArgMax", ["y"], ["label"], axis=1, keepdims=0)], x_in, outs,
                [nh.from_array(w1, "W1"), nh.from_array(w2, "W2")])
    onnx.save(two, str(d / "two.onnx"))
    x = rng.normal(size=(200, 16)).astype(np.float32)
    np.savez(d / "two.npz", x=x, label=ort_outputs(d / "two.onnx", {"x": x})["label"])
    relu = model([h.make_node("Relu", ["x"], ["r"]), h.make_node("Add", ["r", "x"], ["y"])], x_in,
                 [h.make_tensor_value_info("y", T.FLOAT, ["batch", 16])])
    onnx.save(relu, str(d / "relu.onnx"))
    big = np.full((16, 4), 0.01, np.float32)
    big[0, 0] = 1e6
    onnx.save(model([h.make_node("MatMul", ["x", "W"], ["y"])], x_in, [h.make_tensor_value_info(
        "y", T.FLOAT, ["batch", 4])], [nh.from_array(big, "W")]), str(d / "big.onnx"))
    return {"two": d / "two.onnx", "data": d / "two.npz", "relu": d / "relu.onnx", "big": d / "big.onnx"}


def _quantize(qmodels, src: Path, out: Path, *args):
    return run_cli("quantize", src, "-o", out, "--data", qmodels["data"], "--labels", "label", "--set",
                   "allow_slower=true", "--set", "latency_rounds=1", "--set", "batch_sizes=[1]", *args, cwd=out.parent)


def _accuracy(path: Path, qmodels) -> float:
    with np.load(qmodels["data"]) as z:
        return float((ort_outputs(path, {"x": z["x"]})["label"] == z["label"]).mean())


@pytest.mark.parametrize("budget", ["0.0", "0.02", "1.0"])
def test_max_accuracy_drop_drives_the_int8_fallback(qmodels, tmp_path, budget):
    out = tmp_path / "q.onnx"
    res = _quantize(qmodels, qmodels["two"], out, "--mode", "dynamic", "--set", f"max_accuracy_drop={budget}",
                    "--json")
    if budget == "0.0":  # even with mm2 float one row flips, and keeping mm1 float too leaves nothing quantized
        assert res.code == 1, res.stderr
        assert "no model within budget" in res.json()["error"] and "max_accuracy_drop" in res.json()["error"]
        assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []
        return
    assert res.code == 0, res.stderr
    s = res.json()["result"]["summary"]
    acc = _accuracy(out, qmodels)
    assert 1.0 - acc <= float(budget) + 1e-9  # the shipped model meets the budget, measured here
    int8 = {t.name for t in onnx.load(str(out)).graph.initializer if t.data_type == T.INT8}
    if budget == "0.02":  # over budget fully quantized: the sensitive mm2 is kept float, mm1 stays INT8
        assert [n["node"] for n in s["float_nodes"]] == ["mm2"]
        assert s["float_nodes"][0]["reason"].startswith("keeping it in float: accuracy drop")
        assert any(n.startswith("W1") for n in int8) and not any(n.startswith("W2") for n in int8), int8
        assert s["accuracy_drop"] == pytest.approx(1.0 - acc)
    else:  # a loose budget ships every MatMul INT8, with the drop a tight one would have refused
        assert s["float_nodes"] == [] and 1.0 - acc > 0.02
        assert any(n.startswith("W1") for n in int8) and any(n.startswith("W2") for n in int8), int8


def test_nothing_to_quantize_is_exit_2_naming_the_ops(qmodels, tmp_path):
    out = tmp_path / "q.onnx"
    line = assert_one_line_error(_quantize(qmodels, qmodels["relu"], out, "--mode", "dynamic"))
    assert "no configuration quantizes anything" in line
    assert all(op in line for op in ("Conv", "MatMul", "Gemm", "LSTM")), line
    assert not out.exists()


def test_fp16_warns_about_weights_clipped_to_its_range(qmodels, tmp_path):
    res = _quantize(qmodels, qmodels["big"], tmp_path / "f.onnx", "--mode", "fp16", "--json")
    assert res.code == 0, res.stderr
    w = [x for x in res.json()["result"]["summary"]["warnings"] if "65504" in x]
    assert w and "W (1 values, max |v| 1e+06)" in w[0], res.json()["result"]["summary"]["warnings"]
    # independently: the stored float16 weight really was clipped
    (t,) = onnx.load(str(tmp_path / "f.onnx")).graph.initializer
    assert t.data_type == T.FLOAT16 and float(nh.to_array(t).max()) == 65504.0
    # a model whose weights fit float16 gets no such warning
    res = _quantize(qmodels, qmodels["two"], tmp_path / "g.onnx", "--mode", "fp16", "--json")
    assert res.code == 0 and not [x for x in res.json()["result"]["summary"]["warnings"] if "65504" in x]


# ------------------------------------------------------------------ 5: predict atomicity on a later chunk


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".npz"])
def test_predict_failing_in_a_later_chunk_leaves_no_output(tmp_path, suffix):
    from onnx_models import linear, save

    save(linear(), tmp_path / "m.onnx")
    x = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    df = pd.DataFrame(x, columns=["x_0", "x_1", "x_2", "x_3"]).astype(object)
    df.iloc[80, 2] = "oops"  # row 80: chunk 5 of 10-row chunks; chunks 1–4 score fine
    df.to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / f"y{suffix}"
    args = ("predict", tmp_path / "m.onnx", "--input", tmp_path / "in.csv", "--output", out, "--chunk-rows", "10",
            "--columns", "x=x_0,x_1,x_2,x_3")
    line = assert_one_line_error(run_cli(*args, cwd=tmp_path))
    assert "'oops' in column 'x_2', row 80" in line, line  # the row in the file, not in its chunk
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "m.onnx"]  # no file, no temporary residue
    # an existing output is left as it was
    out.write_bytes(b"previous scores")
    assert "row 80" in assert_one_line_error(run_cli(*args, cwd=tmp_path))
    assert out.read_bytes() == b"previous scores"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.csv", "m.onnx", out.name])


# ------------------------------------------------------------------ 6: report truncation, report without data


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> dict:
    """A model with 400 outputs (out_i = x · (i + 1)): its validation table is far longer than a CI comment."""
    d = tmp_path_factory.mktemp("wide")
    n = 400
    m = model([h.make_node("Mul", ["x", f"c{i}"], [f"out_{i:04d}"]) for i in range(n)],
              [h.make_tensor_value_info("x", T.FLOAT, ["batch", 4])],
              [h.make_tensor_value_info(f"out_{i:04d}", T.FLOAT, ["batch", 4]) for i in range(n)],
              [nh.from_array(np.array([i + 1.0], np.float32), f"c{i}") for i in range(n)])
    onnx.save(m, str(d / "wide.onnx"))
    np.savez(d / "d.npz", x=np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32))
    base = {"run_dir": "runs", "source": {"framework": "onnx", "path": "wide.onnx"}}
    write_yaml(d / "wide.yaml", base | {"name": "wide", "data": {"path": "d.npz"},
                                        "stages": {"convert": {}, "validate": {}, "report": {"bench": False}}})
    write_yaml(d / "nodata.yaml", base | {"name": "nodata", "stages": {"convert": {}, "report": {"bench": False}}})
    return {"dir": d, "n": n}


def test_long_report_md_is_truncated_with_a_note_and_json_keeps_everything(wide):
    res = run_cli("run", wide["dir"] / "wide.yaml", cwd=wide["dir"])
    assert res.code == 0, res.stderr[-2000:]
    run = wide["dir"] / "runs" / "wide"
    md = (run / "report.md").read_text(encoding="utf-8")
    assert len(md) <= 60_000, len(md)  # the README: stays under 60,000 characters, note included
    assert md.rstrip().endswith("_… truncated; see report.json for every figure._")
    shown = [ln for ln in md.splitlines() if ln.startswith("| validate |")]
    rep = json.loads((run / "report.json").read_text())
    (val,) = rep["validations"]
    assert {c["output"] for c in val["comparisons"]} == {f"out_{i:04d}" for i in range(wide["n"])}
    assert 0 < len(shown) < len(val["comparisons"])  # really cut: some comparison rows are only in report.json


def test_report_without_data_says_what_it_could_not_measure(wide):
    res = run_cli("run", wide["dir"] / "nodata.yaml", cwd=wide["dir"])
    assert res.code == 0, res.stderr[-2000:]
    run = wide["dir"] / "runs" / "nodata"
    rep = json.loads((run / "report.json").read_text())
    note = [n for n in rep["notes"] if n.startswith("no data file")]
    assert note and "synthetic inputs" in note[0] and "no accuracy" in note[0], rep["notes"]
    assert rep["data"]["labels"] is None and "synthetic" in rep["data"]["eval"]
    (art,) = rep["artifacts"]
    assert "accuracy" not in (art.get("metrics") or {}) and "r2" not in (art.get("metrics") or {})
    for name in ("report.md", "report.html"):
        assert "no data file" in (run / name).read_text(encoding="utf-8")


# ------------------------------------------------------------------ 8: a side-effecting pickle runs nothing


class _Touch:
    """Unpickling calls open(marker, "w"): the file appears if (and only if) the pickle is loaded."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil(path: Path, marker: Path) -> Path:
    if path.suffix == ".joblib":
        import joblib

        joblib.dump(_Touch(marker), path)
    elif path.suffix == ".pt":
        import torch

        torch.save({"model": _Touch(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(_Touch(marker)))
    return path


@pytest.mark.parametrize(("framework", "name"), [("sklearn", "m.pkl"), ("sklearn", "m.joblib"), ("xgboost", "m.pkl"),
                                                 ("lightgbm", "m.joblib"), ("torch", "m.pt")])
def test_side_effecting_pickle_is_refused_and_nothing_ran(tmp_path, framework, name):
    marker = tmp_path / "PWNED"
    evil = _evil(tmp_path / name, marker)
    res = run_cli("convert", "--framework", framework, "-m", evil, "-o", tmp_path / "out.onnx", cwd=tmp_path)
    line = assert_one_line_error(res)
    assert name in line and "trust_pickle: true" in line, line
    assert not marker.exists() and not (tmp_path / "out.onnx").exists()


def test_side_effecting_pickle_runs_once_trusted(tmp_path):
    """Positive control: the payload is live — with the opt-in it runs (and then is no model: exit 2)."""
    marker = tmp_path / "PWNED"
    evil = _evil(tmp_path / "m.pkl", marker)
    res = run_cli("convert", "--framework", "sklearn", "-m", evil, "-o", tmp_path / "out.onnx", "--source-opt",
                  "trust_pickle=true", cwd=tmp_path)
    assert marker.exists()
    assert res.code == 2 and not (tmp_path / "out.onnx").exists()
