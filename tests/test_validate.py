"""validate: every check can fail — perturbed weights, broken structure, an inverted random op — and passes
when the artifact is right. The smallest passing tolerance is exact on a crafted pair."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import assert_one_line_error
from onnx_models import bernoulli_draws, broken, linear, save, write_data

from onnxforge.artifact import stamp
from onnxforge.compare import compare, distribution


@pytest.fixture
def models(tmp_path: Path) -> Path:
    save(linear(), tmp_path / "base.onnx")
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    w[2, 1] += 0.05  # one perturbed weight
    save(linear(w, b), tmp_path / "perturbed.onnx")
    write_data(tmp_path / "data.npz")
    return tmp_path


def test_perturbed_weight_fails_naming_the_output(models, cli):
    res = cli("validate", models / "perturbed.onnx", "--against", models / "base.onnx", "--data",
              models / "data.npz", "--json")
    assert res.code == 1, res.stderr
    assert "validation failed for y" in res.stderr and "Traceback" not in res.stderr
    result = res.json()["result"]["summary"]
    assert result["failing"] == ["y"]
    y = [c for c in result["comparisons"] if c["output"] == "y"]
    assert {c["batch"] for c in y} == {1, 40} and not any(c["pass"] for c in y)
    # the figure reported is the real one: recompute the worst abs error independently
    x = np.load(models / "data.npz")["x"]
    expected = np.abs(x[:, 2] * 0.05).max()
    assert y[-1]["max_abs"] == pytest.approx(expected, rel=1e-4)
    assert y[-1]["worst"]["index"][1] == 1


def test_matching_optimized_model_passes(models, cli):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(models / "optimized.onnx")
    ort.InferenceSession(str(models / "base.onnx"), so, providers=["CPUExecutionProvider"])
    res = cli("validate", models / "optimized.onnx", "--against", models / "base.onnx", "--data",
              models / "data.npz", "--labels", "label", "--json")
    assert res.code == 0, res.stderr
    result = res.json()["result"]["summary"]
    assert all(c["pass"] for c in result["comparisons"])
    assert result["metrics"]["candidate"]["accuracy"] == 1.0
    assert result["metrics"]["candidate"]["top1_agreement"] == 1.0


def test_bernoulli_op_fails_distributional_check(tmp_path, cli):
    np.savez(tmp_path / "p.npz", p=np.linspace(0.05, 0.95, 12).astype(np.float32))
    save(bernoulli_draws(use_bernoulli=True), tmp_path / "bern.onnx")
    res = cli("validate", tmp_path / "bern.onnx", "--against", "onnx-reference", "--data", tmp_path / "p.npz",
              "--json")
    assert res.code == 1, res.stderr
    dist = res.json()["result"]["summary"]["comparisons"][0]
    assert dist["kind"] == "distribution" and dist["output"] == "draws" and not dist["pass"]
    assert dist["max_z"] > 10


def test_uniform_less_than_p_passes_distributional_check(tmp_path, cli):
    np.savez(tmp_path / "p.npz", p=np.linspace(0.05, 0.95, 12).astype(np.float32))
    save(bernoulli_draws(use_bernoulli=False), tmp_path / "good.onnx")
    res = cli("validate", tmp_path / "good.onnx", "--against", "onnx-reference", "--data", tmp_path / "p.npz",
              "--json")
    assert res.code == 0, res.stderr
    assert res.json()["result"]["summary"]["comparisons"][0]["pass"]


def test_distribution_check_against_intended_probabilities():
    rng = np.random.default_rng(0)
    p = np.linspace(0.05, 0.95, 30)
    intended = (rng.random((30, 4000)) < p[:, None]).astype(float)
    inverted = (rng.random((30, 4000)) < 1 - p[:, None]).astype(float)
    fair = (rng.random((30, 4000)) < p[:, None]).astype(float)
    assert not distribution("draws", intended, inverted)["pass"]
    assert distribution("draws", intended, fair)["pass"]


def test_structurally_broken_model_exit_2_for_users_exit_1_for_ours(tmp_path, cli):
    write_data(tmp_path / "data.npz")
    save(broken(), tmp_path / "theirs.onnx")
    line = assert_one_line_error(cli("validate", tmp_path / "theirs.onnx", "--data", tmp_path / "data.npz"), 2)
    assert "onnx.checker failed" in line
    ours = broken()
    stamp(ours, version="0.1.0")
    save(ours, tmp_path / "ours.onnx")
    res = cli("validate", tmp_path / "ours.onnx", "--data", tmp_path / "data.npz")
    assert res.code == 1 and "onnx.checker failed" in res.stderr, res.stderr


def test_smallest_passing_tolerance_is_exact():
    ref = np.array([1.0, 2.0, 4.0, -8.0], dtype=np.float32)
    got = np.array([1.1, 2.0, 4.4, -8.2], dtype=np.float32)
    c = compare("y", ref, got, rtol=0.0, atol=0.0)
    assert not c["pass"] and c["mismatches"] == 3
    assert c["min_atol"] == pytest.approx(0.4, rel=1e-5)  # the largest |diff|
    assert c["min_rtol"] == pytest.approx(0.1, rel=1e-5)  # 0.1/1 and 0.4/4 both need 10 %
    assert c["worst"]["index"] == [2]
    assert compare("y", ref, got, rtol=0.0, atol=c["min_atol"] * 1.0001)["pass"]
    assert not compare("y", ref, got, rtol=0.0, atol=c["min_atol"] * 0.999)["pass"]
    assert compare("y", ref, got, rtol=c["min_rtol"] * 1.0001, atol=0.0)["pass"]
    assert not compare("y", ref, got, rtol=c["min_rtol"] * 0.99, atol=0.0)["pass"]
    # at a given rtol the needed atol shrinks accordingly: |d| - rtol*|ref|
    c2 = compare("y", ref, got, rtol=0.05, atol=0.0)
    assert c2["min_atol"] == pytest.approx(max(0.1 - 0.05, 0.4 - 0.2, 0.2 - 0.4, 0), rel=1e-5)


def test_smallest_tolerance_is_printed(models, cli):
    res = cli("validate", models / "perturbed.onnx", "--against", models / "base.onnx", "--data",
              models / "data.npz", "--rtol", "0", "--atol", "0")
    assert res.code == 1
    assert "needs atol≥" in res.stderr and "min atol" in res.stdout


def test_nan_and_labels():
    ref = np.array([1.0, np.nan, 3.0])
    assert compare("y", ref, np.array([1.0, np.nan, 3.0]), 0, 0)["pass"]
    c = compare("y", ref, np.array([1.0, 2.0, 3.0]), 0, 0)
    assert not c["pass"] and c["nan_mismatch"] == 1
    lab = compare("label", np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4]), 0, 0)
    assert lab["kind"] == "label" and lab["flips"] == 1 and lab["worst"] == {"index": [2], "ref": 3, "got": 0}
    shp = compare("y", np.zeros((2, 3)), np.zeros((3, 2)), 0, 0)
    assert not shp["pass"] and "shape" in shp["reason"]


def test_per_output_override_and_flip_budget(models, cli):
    cfg = models / "v.yaml"
    cfg.write_text(json.dumps({
        "name": "v", "run_dir": "runs", "source": {"framework": "onnx", "path": "base.onnx"},
        "data": {"path": "data.npz", "labels": "label"},
        "stages": {"validate": {"against": "base.onnx", "outputs": {"y": {"atol": 1.0}, "label": {"max_flip_rate": 1}}}},
    }))
    assert cli("validate", models / "perturbed.onnx", "--config", cfg).code == 0
    cfg.write_text(cfg.read_text().replace('"atol": 1.0', '"atol": 0.0001'))
    res = cli("validate", models / "perturbed.onnx", "--config", cfg)
    assert res.code == 1 and "validation failed for y" in res.stderr


def test_synthetic_inputs_need_permission(models, cli):
    line = assert_one_line_error(cli("validate", models / "base.onnx"))
    assert "data.synthetic" in line
    res = cli("validate", models / "base.onnx", "--synthetic", "--json")
    assert res.code == 0 and res.json()["result"]["summary"]["data"] == "synthetic"


def test_pipeline_records_failed_validation(models, cli):
    (models / "p.yaml").write_text(
        "name: v\nrun_dir: runs\nsource: {framework: onnx, path: perturbed.onnx}\ndata: {path: data.npz}\n"
        "stages:\n  convert: {}\n  validate: {against: base.onnx}\n")
    res = cli("run", models / "p.yaml")
    assert res.code == 1
    manifest = json.loads((models / "runs/v/manifest.json").read_text())
    stage = manifest["stages"][1]
    assert manifest["verdict"] == "fail" and stage["verdict"] == "fail" and stage["summary"]["failing"] == ["y"]
    assert json.loads((models / "runs/v/02-validate/validation.json").read_text())["verdict"] == "fail"
    assert onnx.load(str(models / "runs/v/01-convert/model.onnx"))  # the convert artifact still stands


def test_distribution_check_is_calibrated_at_few_reference_draws():
    """Two samples of one distribution must pass (the band promises < 1 false fail in 10,000 runs) also when the
    reference has few draws (pm.sample_posterior_predictive over a thinned posterior): a normal band around a tail
    quantile failed ~5 % of such runs at 100 reference draws; the exact beta-binomial band and a t critical value
    for the mean do not. A shift of one sd still fails."""
    rng = np.random.default_rng(0)
    for nr in (30, 100):
        fails = [not distribution("d", rng.normal(size=(40, nr)), rng.normal(size=(40, 500)))["pass"]
                 for _ in range(200)]
        assert sum(fails) == 0, (nr, sum(fails))
        counts = rng.poisson(2.5, size=(40, nr)).astype(float), rng.poisson(2.5, size=(40, 500)).astype(float)
        assert distribution("d", *counts)["pass"]
        assert not distribution("d", rng.normal(size=(40, nr)), rng.normal(size=(40, 500)) + 1.0)["pass"]


@pytest.mark.parametrize(("ref_draws", "why"), [(1, "at least 20"), (5, "at least 20"), (50, "NaN/inf")])
def test_distribution_check_cannot_pass_on_nothing(ref_draws, why):
    """One reference draw gave a NaN statistic, and NaN > band is False: it passed draws shifted by 100 sd."""
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(40, ref_draws))
    got = rng.normal(size=(40, 500)) + (100.0 if ref_draws < 20 else 0.0)
    if why == "NaN/inf":
        got[3, 7] = np.inf
    res = distribution("draws", ref, got)
    assert not res["pass"] and why in res["reason"], res


@pytest.mark.parametrize("key, value, needle", [
    ("outputs", {"yy": {"atol": 1.0}}, "validate.outputs names 'yy', but perturbed.onnx has no such output (did you "
                                       "mean 'y'?)"),
    ("stochastic", ["lable"], "validate.stochastic names 'lable', but perturbed.onnx has no such output (did you "
                              "mean 'label'?)"),
])
def test_a_tolerance_for_an_output_the_model_lacks_is_refused(models, cli, key, value, needle):
    """A typo'd name under outputs: (or stochastic:) was ignored without a word: with `yy: {atol: 1.0}` the
    perturbed model failed at the default tolerance, the user believing atol 1 applied."""
    cfg = models / "v.yaml"
    cfg.write_text(json.dumps({
        "name": "v", "run_dir": "runs", "source": {"framework": "onnx", "path": "base.onnx"},
        "data": {"path": "data.npz", "labels": "label"},
        "stages": {"validate": {"against": "base.onnx", key: value}},
    }))
    line = assert_one_line_error(cli("validate", models / "perturbed.onnx", "--config", cfg))
    assert needle in line and "its outputs are y, label" in line, line
