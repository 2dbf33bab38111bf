"""`run` and `report` after something went wrong, found by sweep 5: a failed convert is the run's exit code and
message, with its run folder and a report (the report stage used to mask it as exit 2 and delete the folder); a
float64 Pipeline(SimpleImputer, ...) converts (skl2onnx's double Imputer does not load in onnxruntime); a stage's
message never names a scratch path it removed; `report RUN` refuses an artifact whose bytes are not the ones the
manifest recorded (it showed the stage's old pass beside a 4.7 error); `report --out FILE`, `--formats ''` and a
folder given as a model are one-line exit 2 (were exit 3, exit 0 writing nothing, 'model not found')."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from conftest import assert_one_line_error
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

skio = pytest.importorskip("skops.io")


def _config(tmp: Path, stages: dict, inputs: list, data: dict, source: dict | None = None) -> Path:
    cfg = {"name": "r", "source": source or {"framework": "sklearn", "path": "m.skops"}, "inputs": inputs,
           "data": data, "stages": stages}
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tmp / "c.yaml"


# ------------------------------------------------------------------ a failed convert in a run with a report


def test_a_failed_convert_decides_the_run_and_still_gets_its_report(tmp_path, cli):
    """validate's tolerances (atol 0) are the ones convert checks against: float32 Ridge differs by ~1e-5, so
    convert fails its own check (exit 1) and writes no model; the report stage then reports that failure."""
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    X, y = load_diabetes(return_X_y=True)
    X = X[:, :3]
    skio.dump(Ridge().fit(X, y), tmp_path / "m.skops")
    np.savez(tmp_path / "d.npz", input=X.astype(np.float32), target=y)
    cfg = _config(tmp_path, {"convert": {}, "validate": {"rtol": 0, "atol": 0}, "report": {"bench": False}},
                  [{"name": "input", "dtype": "float32", "shape": ["batch", 3]}],
                  {"path": "d.npz", "labels": "target"})
    res = cli("run", cfg, "--json", cwd=tmp_path)
    env = json.loads(res.stdout)
    assert res.code == 1 and env["exit_code"] == 1, (res.code, env.get("error"))  # was 2: the report's refusal
    assert env["error"].startswith("stage convert failed: convert: output 'variable' differs"), env["error"]
    run = tmp_path / "runs" / "r"
    man = json.loads((run / "manifest.json").read_text())  # the evidence stays (the folder was deleted)
    assert man["verdict"] == "fail"
    status = {s["name"]: (s["status"], s["verdict"]) for s in man["stages"]}
    assert status == {"convert": ("ran", "fail"), "validate": ("skipped", "skip"), "report": ("ran", "info")}
    md = (run / "report.md").read_text().splitlines()
    assert md[0] == "## onnxforge report: r — ❌ fail"
    assert any(ln.startswith("**convert failed:** convert: output") for ln in md[:6]), md[:6]
    rep = json.loads((run / "report.json").read_text())
    assert rep["verdict"] == "fail" and rep["artifacts"] == [] and rep["latency"] is None
    assert "No model artifact" in (run / "report.html").read_text()
    # `report RUN` on that folder reports it too (was exit 2: 'the run has no model artifact yet')
    again = cli("report", run, "--formats", "md", "--json", cwd=tmp_path)
    assert again.code == 0, again.stderr
    assert "**convert failed:**" in (run / "report" / "report.md").read_text()


# ------------------------------------------------------------------ float64 SimpleImputer pipelines


def test_a_float64_imputer_pipeline_converts_and_matches_predict(tmp_path, cli):
    """Pipeline(SimpleImputer, Ridge) on float64 inputs (as fitted on a pandas frame), NaN in the data and one
    column never observed (scikit-learn drops it): convert + validate pass, the artifact loads in onnxruntime and
    gives predict's values (the Imputer in double was NOT_IMPLEMENTED in onnxruntime, a check failure)."""
    import onnxruntime as ort
    import pandas as pd
    from sklearn.datasets import load_diabetes
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline

    X, y = load_diabetes(return_X_y=True, as_frame=True)
    X = X[["age", "bmi", "bp"]].copy()
    X.iloc[::5, 1] = np.nan
    X["empty"] = np.nan
    with pytest.warns(UserWarning):  # scikit-learn: 'Skipping features without any observed values'
        p = Pipeline([("imp", SimpleImputer(strategy="median")), ("m", Ridge())]).fit(X, y)
    skio.dump(p, tmp_path / "m.skops")
    pd.concat([X, y.rename("target")], axis=1).to_csv(tmp_path / "d.csv", index=False)
    cols = ["age", "bmi", "bp", "empty"]
    cfg = _config(tmp_path, {"convert": {}, "validate": {}},
                  [{"name": "input", "dtype": "float64", "shape": ["batch", 4], "columns": cols}],
                  {"path": "d.csv", "labels": "target"})
    res = cli("run", cfg, "--json", cwd=tmp_path)
    assert res.code == 0, json.loads(res.stdout).get("error")
    model = tmp_path / "runs" / "r" / "01-convert" / "model.onnx"
    assert not any(n.op_type == "Imputer" for n in onnx.load(model).graph.node)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": X[cols].to_numpy(np.float64)})[0].ravel()
    with pytest.warns(UserWarning):  # the same skipped column, at predict
        want = p.predict(X)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)


def test_a_stage_message_never_names_a_scratch_path_it_removed(tmp_path):
    """convert checks its model in stage_dir/.convert-*/ and removes that folder when the check fails: the message
    names the stage's unsaved model instead (it named a path that no longer existed)."""
    from onnxforge.pipeline import unsaved

    stage = tmp_path / "runs" / "r" / "01-convert"
    stage.mkdir(parents=True)
    (stage / "model.onnx").write_bytes(b"x")
    gone = stage / ".convert-abc123" / "model.onnx"
    msg = f"{gone}: onnxruntime 1.32.0 cannot load it (NOT_IMPLEMENTED: Imputer(1)); kept {stage / 'model.onnx'}"
    out = unsaved(msg, stage, "convert")
    assert ".convert-abc123" not in out and str(tmp_path / "runs") in out  # an existing file stays named
    assert out.startswith("convert's new model.onnx (not written): onnxruntime 1.32.0 cannot load it")


# ------------------------------------------------------------------ report RUN and a replaced artifact


def _mlp(path: Path, op: str) -> None:
    rng = np.random.default_rng(0)
    g = h.make_graph([h.make_node("MatMul", ["x", "W"], ["h"]), h.make_node(op, ["h"], ["y"])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, ["n", 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["n", 4])],
                     [nh.from_array(rng.normal(size=(8, 4)).astype(np.float32), "W")])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), path)


def test_report_refuses_an_artifact_the_manifest_did_not_record(tmp_path, cli):
    """02-optimize/model.onnx replaced by another model after the run: the report showed the stage's recorded
    validate pass and verdict pass beside a recomputed error of 4.7. Now exit 2 naming the file and the fix; a rerun
    (the changed output makes its stage run again) makes the folder reportable again."""
    _mlp(tmp_path / "src.onnx", "Relu")
    _mlp(tmp_path / "other.onnx", "Sigmoid")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(1).normal(size=(64, 8)).astype(np.float32))
    cfg = _config(tmp_path, {"convert": {}, "optimize": {}, "validate": {"against": "previous"}}, [],
                  {"path": "d.npz"}, source={"framework": "onnx", "path": "src.onnx"})
    assert cli("run", cfg, cwd=tmp_path).code == 0
    run = tmp_path / "runs" / "r"
    (tmp_path / "other.onnx").replace(run / "02-optimize" / "model.onnx")
    res = cli("report", run, "--no-bench", "--data", "d.npz", "--json", cwd=tmp_path)
    line = assert_one_line_error(res)
    assert "02-optimize/model.onnx: no longer matches the sha256 manifest.json recorded for stage optimize" in line
    assert "rerun the stages" in line and not (run / "report").exists()
    assert cli("run", cfg, cwd=tmp_path).code == 0
    res = cli("report", run, "--no-bench", "--data", "d.npz", "--json", cwd=tmp_path)
    assert res.code == 0, res.stderr
    rep = json.loads(res.stdout)["result"]
    assert rep["verdict"] == "pass" and max(e["max_abs"] for e in rep["errors"]) < 1e-4


# ------------------------------------------------------------------ report's arguments


def test_report_out_formats_and_a_folder_model_are_one_line_user_errors(tmp_path, cli):
    _mlp(tmp_path / "m.onnx", "Relu")
    (tmp_path / "taken").write_text("x")
    line = assert_one_line_error(cli("report", "m.onnx", "--no-bench", "--out", "taken", cwd=tmp_path))  # was 3
    assert "--out taken is a file — give a folder" in line and (tmp_path / "taken").read_text() == "x"
    line = assert_one_line_error(cli("report", "m.onnx", "--no-bench", "--out", "taken/rep", cwd=tmp_path))
    assert "is inside taken, which is not a folder" in line
    for empty in ("", " , "):  # exit 0 with an empty folder before
        line = assert_one_line_error(cli("report", "m.onnx", "--no-bench", "--formats", empty, "--out", "rep",
                                         cwd=tmp_path))
        assert line.startswith("error: --formats: empty — give one or more of json, md, html")
    assert not (tmp_path / "rep").exists()
    (tmp_path / "models").mkdir()
    line = assert_one_line_error(cli("report", "m.onnx", "models", "--no-bench", cwd=tmp_path))
    assert "models is a folder" in line
    for cmd in (("predict", "models", "--input", "x.csv", "--output", "y.csv"), ("inspect", "models")):
        line = assert_one_line_error(cli(*cmd, cwd=tmp_path))  # was 'model not found: models'
        assert "models is a folder, not a model file — give the model file itself" in line, line
