"""Figures validate and report show, checked against the source framework on real conversions:
- a classifier fitted on float classes with holes (3.0, 7.0): its native 'label' is float64, the ONNX label int64 —
  accuracy, agreement and label flips must match sklearn.metrics on sklearn's own predictions;
- an output holding NaN where its reference does not: no tolerance passes it, and no error table may call it exact.
Expected values come from sklearn.metrics / numpy on the frameworks' own outputs, never from onnxforge's."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli


@pytest.fixture(scope="module")
def float_classes(tmp_path_factory):
    """breast_cancer, LogisticRegression fitted on y in {3.0, 7.0}: convert → validate → report (no bench)."""
    import skops.io as sio
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    d = tmp_path_factory.mktemp("float_classes")
    x, y = load_breast_cancer(return_X_y=True)
    y = np.array([3.0, 7.0])[y]
    xtr, xte, ytr, yte = train_test_split(x.astype(np.float32), y, random_state=0)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(xtr, ytr)
    sio.dump(model, d / "m.skops")
    np.savez(d / "test.npz", input=xte, target=yte)
    (d / "c.yaml").write_text(
        "name: fc\nsource: {framework: sklearn, path: m.skops}\n"
        f"inputs:\n  - {{name: input, dtype: float32, shape: [batch, {x.shape[1]}]}}\n"
        "data: {path: test.npz, labels: target}\n"
        "stages:\n  convert: {}\n  validate: {}\n  report: {bench: false}\n")
    r = run_cli("run", d / "c.yaml", cwd=d)
    assert r.code == 0, r.stderr
    return d, model, xte, yte


def test_float_classes_accuracy_and_agreement_match_sklearn(float_classes):
    import onnxruntime as ort
    from sklearn.metrics import accuracy_score

    d, model, x, y = float_classes
    native = model.predict(x)
    assert native.dtype == np.float64  # the trap: float classes
    onnx_label = ort.InferenceSession(str(d / "runs/fc/01-convert/model.onnx")).run(["label"], {"input": x})[0]
    rep = json.loads((d / "runs/fc/report.json").read_text())
    assert rep["native"]["metrics"]["accuracy"] == pytest.approx(accuracy_score(y, native))
    art = rep["artifacts"][0]
    assert art["metrics"]["accuracy"] == pytest.approx(accuracy_score(y, onnx_label.astype(np.float64)))
    agree = accuracy_score(native, onnx_label.astype(np.float64))  # rows where both predict the same class
    assert art["metrics"]["top1_agreement"] == pytest.approx(agree)
    assert art["metric_deltas"]["accuracy"] == pytest.approx(
        accuracy_score(y, onnx_label.astype(np.float64)) - accuracy_score(y, native))
    flips = next(e for e in rep["errors"] if e["output"] == "label")["flips"]
    assert flips == int((native != onnx_label.astype(np.float64)).sum())
    val = rep["validations"][0]["metrics"]
    assert val["candidate"]["top1_agreement"] == pytest.approx(agree)
    assert val["reference"]["accuracy"] == pytest.approx(accuracy_score(y, native))
    md = (d / "runs/fc/report.md").read_text()
    assert f"agree {agree:.4g}" in md and f"{flips} flips" in md


def _nan_models(d):
    import onnx
    from onnx import TensorProto, helper

    for name, nodes in (("ref", [helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Sqrt", ["a"], ["y"])]),
                        ("nan", [helper.make_node("Sqrt", ["x"], ["y"])])):
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.save(m, d / f"{name}.onnx")
    x = np.random.default_rng(0).random((40, 3)).astype(np.float32) + 0.1
    x[5, 1] = -1.0  # sqrt(-1) is NaN in one model, 1 in the other
    np.savez(d / "data.npz", x=x)
    return x


def test_nan_output_fails_at_every_tolerance(tmp_path):
    x = _nan_models(tmp_path)
    r = run_cli("validate", "nan.onnx", "--against", "ref.onnx", "--data", "data.npz", "--json", cwd=tmp_path)
    assert r.code == 1
    doc = json.loads(r.stdout)
    for c in doc["result"]["summary"]["comparisons"]:
        assert c["nan_mismatch"] == int((x[: c["shape"][0]] < 0).sum())  # sqrt of a negative is NaN
        assert c["min_atol"] is None and c["min_rtol"] is None  # inf: no tolerance would pass, not 0
    assert "NaN" in doc["error"] and "needs atol≥0" not in doc["error"]


def test_nan_output_not_called_exact_in_any_view(tmp_path):
    x = _nan_models(tmp_path)
    r = run_cli("report", "ref.onnx", "nan.onnx", "--data", "data.npz", "--no-bench", "--out", "rep", cwd=tmp_path)
    assert r.code == 0, r.stderr
    with np.errstate(invalid="ignore"):
        got, ref = np.sqrt(x), np.sqrt(np.abs(x))
    exact, nan_differ = int((got == ref).sum()), int((np.isnan(got) != np.isnan(ref)).sum())
    rep = json.loads((tmp_path / "rep/report.json").read_text())
    e = rep["errors"][0]
    assert (e["zeros"], e["nonfinite_mismatch"], e["elements"]) == (exact, nan_differ, x.size)
    cell = f"{exact}/{x.size} exact; {nan_differ} NaN/inf differ"
    assert cell in (tmp_path / "rep/report.md").read_text()
    assert f"{exact}/{x.size}; {nan_differ} NaN/inf differ" in (tmp_path / "rep/report.html").read_text()
    assert f"{nan_differ} NaN/inf differ" in r.stdout + r.stderr
