"""Issue #21: promises the README makes, each with a test that fails when the promise breaks.

- validate's `max_flip_rate` budget on a classifier whose labels really flip (counted here with onnxruntime);
- after a failed check later stages are skipped except `report`, which still runs and is never cached; exit 1;
- exit 3 through the real exception path: a third-party stage registered through the `onnxforge.plugins`
  entry-point group (a dist-info folder on PYTHONPATH) raises; one line without --debug, a traceback with it;
- validate's `against: previous`, per-output `skip` and `max_rows` change what is compared, not just the exit code.

Every expected figure is computed here independently (numpy / onnxruntime), never read back from onnxforge alone.
The pipeline cache and byte-identical reruns are in test_cache_promises.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli
from onnx_models import linear, save, write_data


def _base_weights() -> tuple[np.ndarray, np.ndarray]:
    """The W and b linear() draws by default (same RNG, same order)."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)


def ort_run(model: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of `model` on x, onnxruntime with graph optimizations off (the independent reference)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"x": x}), strict=True))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_yaml(path: Path, cfg: dict) -> Path:
    path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    return path


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def statuses(run: Path) -> list[tuple[str, str, str]]:
    return [(s["name"], s["status"], s["verdict"]) for s in manifest(run)["stages"]]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    save(linear(), tmp_path / "base.onnx")
    write_data(tmp_path / "data.npz")
    return tmp_path


# ------------------------------------------------------------------ max_flip_rate


def test_flip_budget_fails_above_the_counted_flip_rate_and_passes_at_it(project):
    w, b = _base_weights()
    b[2] += 0.5  # moves the class-2 boundary: some evaluation rows change label
    save(linear(w, b), project / "flipped.onnx")
    x = np.load(project / "data.npz")["x"]
    flips = int((ort_run(project / "flipped.onnx", x)["label"] != ort_run(project / "base.onnx", x)["label"]).sum())
    assert 0 < flips < len(x), flips  # the perturbation really flips some labels, not all (6 of 40 here)
    rate = flips / len(x)

    def validate(budget: float | None):
        label = {} if budget is None else {"max_flip_rate": budget}
        write_yaml(project / "v.yaml", {
            "name": "v", "run_dir": "runs", "source": {"framework": "onnx", "path": "base.onnx"},
            "data": {"path": "data.npz"},
            "stages": {"validate": {"against": "base.onnx", "batch_sizes": [0],
                                    "outputs": {"y": {"atol": 100.0}, "label": label}}}})
        return run_cli("validate", project / "flipped.onnx", "--config", project / "v.yaml", "--json")

    for budget in (None, rate - 0.5 / len(x)):  # the default budget (0), and just under the real rate, fail
        res = validate(budget)
        assert res.code == 1, (budget, res.stderr)
        result = res.json()["result"]["summary"]
        assert result["failing"] == ["label"], (budget, result["failing"])
        (lab,) = [c for c in result["comparisons"] if c["output"] == "label"]
        assert (lab["flips"], lab["total"], lab["pass"]) == (flips, len(x), False)
        assert lab["flip_rate"] == pytest.approx(rate)
    res = validate(rate)  # the budget is an upper bound: a rate equal to it passes
    assert res.code == 0, res.stderr
    (lab,) = [c for c in res.json()["result"]["summary"]["comparisons"] if c["output"] == "label"]
    assert lab["flips"] == flips and lab["pass"]


# ------------------------------------------------------------------ a failed check: skip all but report, exit 1


def test_failed_check_skips_later_stages_but_report_runs_and_is_never_cached(project):
    w, b = _base_weights()
    w[2, 1] += 0.05
    save(linear(w, b), project / "perturbed.onnx")
    cfg = {"name": "f", "run_dir": "runs", "source": {"framework": "onnx", "path": "perturbed.onnx"},
           "data": {"path": "data.npz", "labels": "label"},
           "stages": {"convert": {}, "validate": {"against": "base.onnx"},
                      "optimize": {"min_pass_speedup": 0, "latency_rounds": 1},
                      "report": {"bench": False, "formats": ["json"]}}}
    write_yaml(project / "p.yaml", cfg)
    run = project / "runs/f"
    res = run_cli("run", project / "p.yaml")
    assert res.code == 1, res.stderr
    assert "stage validate failed" in res.stderr and "Traceback" not in res.stderr
    assert statuses(run) == [("convert", "ran", "pass"), ("validate", "ran", "fail"),
                             ("optimize", "skipped", "skip"), ("report", "ran", "info")]
    m = manifest(run)
    assert m["verdict"] == "fail" and m["final_model"] == "01-convert/model.onnx"
    assert not (run / "03-optimize").exists()
    rep = m["stages"][3]
    assert rep["outputs"] == {"04-report/report.json": sha(run / "04-report/report.json")}
    assert rep["summary"]["run_verdict"] == "fail"
    # passing runs: the second has every other stage cached, and report still runs
    cfg["stages"]["validate"] = {"against": "base.onnx", "atol": 1.0}
    write_yaml(project / "p.yaml", cfg)
    for expect in ("ran", "cached"):
        res = run_cli("run", project / "p.yaml")
        assert res.code == 0, res.stderr
        assert statuses(run) == [("convert", "cached", "pass"), ("validate", expect, "pass"),
                                 ("optimize", expect, "pass"), ("report", "ran", "info")]


# ------------------------------------------------------------------ exit 3 through a real plugin


PLUGIN = '''\
from pydantic import BaseModel

from onnxforge.registry import register_stage


class ExplodeOptions(BaseModel):
    pass


@register_stage("explode", ExplodeOptions, produces_model=False, help="a third-party stage with a bug")
def run_explode(ctx, opts):
    raise RuntimeError("plugin stage exploded at row 7")
'''


def test_unexpected_exception_in_a_plugin_stage_is_exit_3_one_line(project, monkeypatch):
    plug = project / "plugins"
    (plug / "explode_plugin-0.1.dist-info").mkdir(parents=True)
    (plug / "explode_plugin.py").write_text(PLUGIN)
    (plug / "explode_plugin-0.1.dist-info/METADATA").write_text("Metadata-Version: 2.1\nName: explode-plugin\n"
                                                                  "Version: 0.1\n")
    (plug / "explode_plugin-0.1.dist-info/entry_points.txt").write_text("[onnxforge.plugins]\n"
                                                                          "explode = explode_plugin\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(plug), *filter(None, [os.environ.get("PYTHONPATH")])]))
    write_yaml(project / "p.yaml", {"name": "x", "run_dir": "runs", "source": {"framework": "onnx",
                                                                               "path": "base.onnx"},
                                    "data": {"path": "data.npz"}, "stages": {"convert": {}, "explode": {}}})

    line = assert_one_line_error(run_cli("run", project / "p.yaml"), 3)
    assert line == ("internal error: RuntimeError: plugin stage exploded at row 7 — rerun with --debug for the "
                    "traceback"), line

    res = run_cli("run", project / "p.yaml", "--json")
    assert res.code == 3 and "Traceback" not in res.stderr + res.stdout
    assert res.json() == {"ok": False, "exit_code": 3, "command": "run", "result": None, "warnings": [],
                          "error": "RuntimeError: plugin stage exploded at row 7"}

    res = run_cli("run", project / "p.yaml", "--debug")
    assert res.code == 3
    # the plugin's own frame, by its code line (rich shortens long tmp paths, so not by file name)
    assert "Traceback" in res.stderr and "run_explode" in res.stderr
    assert 'raise RuntimeError("plugin stage exploded at row 7")' in res.stderr
    assert res.stderr.rstrip().endswith("rerun with --debug for the traceback")
    assert "Traceback" not in res.stdout


# ------------------------------------------------------------------ validate options that change the comparison


def test_against_previous_compares_with_the_model_the_stage_started_from(project):
    """`previous` is the model the current one was made from — neither the current model itself nor the source:
    1. convert → fp16 quantize → validate: the fp16 model against the float32 convert output, off by the fp16
       error (a model compared with itself would pass);
    2. convert → fp16 quantize → optimize → validate: the optimized model against the fp16 model it was made from,
       exact (against the float32 source or convert output the same check would fail by the fp16 error)."""
    stages = {"convert": {}, "quantize": {"mode": "fp16", "allow_slower": True, "max_accuracy_drop": None},
              "optimize": {"min_pass_speedup": 0, "latency_rounds": 1},
              "validate": {"against": "previous", "rtol": 0, "atol": 0, "batch_sizes": [0]}}
    run = project / "runs/p"
    x = np.load(project / "data.npz")["x"]

    def run_with(names: list[str]) -> tuple[int, dict]:
        write_yaml(project / "p.yaml", {"name": "p", "run_dir": "runs", "data": {"path": "data.npz"},
                                        "source": {"framework": "onnx", "path": "base.onnx"},
                                        "stages": {n: stages[n] for n in names}})
        res = run_cli("run", project / "p.yaml")
        v = json.loads((run / f"{len(names):02d}-validate/validation.json").read_text())
        assert v["against"] == "previous" and "Traceback" not in res.stderr, res.stderr
        (y,) = [c for c in v["comparisons"] if c["output"] == "y"]
        return res.code, y

    def max_abs(a: Path, b: Path) -> float:
        return float(np.abs(ort_run(a, x)["y"] - ort_run(b, x)["y"]).max())

    code, y = run_with(["convert", "quantize", "validate"])
    fp16_error = max_abs(run / "02-quantize/model.onnx", run / "01-convert/model.onnx")
    assert fp16_error > 1e-4
    assert code == 1 and not y["pass"] and y["max_abs"] == pytest.approx(fp16_error, rel=1e-6)

    code, y = run_with(["convert", "quantize", "optimize", "validate"])
    assert manifest(run)["stages"][2]["inputs"] == {"02-quantize/model.onnx": sha(run / "02-quantize/model.onnx")}
    assert max_abs(run / "03-optimize/model.onnx", run / "02-quantize/model.onnx") == 0.0
    assert max_abs(run / "03-optimize/model.onnx", project / "base.onnx") > 1e-4  # the source: would fail
    assert code == 0 and y["pass"] and y["max_abs"] == 0.0


def test_skip_leaves_an_output_uncompared(project):
    w, b = _base_weights()
    w[2, 1] += 0.05  # y moves; the argmax labels do not (checked below)
    save(linear(w, b), project / "perturbed.onnx")
    x = np.load(project / "data.npz")["x"]
    got, ref = ort_run(project / "perturbed.onnx", x), ort_run(project / "base.onnx", x)
    assert np.abs(got["y"] - ref["y"]).max() > 1e-3 and (got["label"] == ref["label"]).all()

    def validate(outputs: dict):
        write_yaml(project / "v.yaml", {"name": "v", "source": {"framework": "onnx", "path": "base.onnx"},
                                        "data": {"path": "data.npz"},
                                        "stages": {"validate": {"against": "base.onnx", "outputs": outputs}}})
        return run_cli("validate", project / "perturbed.onnx", "--config", project / "v.yaml", "--json")

    res = validate({})
    assert res.code == 1 and res.json()["result"]["summary"]["failing"] == ["y"], res.stderr
    res = validate({"y": {"skip": True}})
    assert res.code == 0, res.stderr
    comps = res.json()["result"]["summary"]["comparisons"]
    assert {c["output"] for c in comps} == {"label"} and all(c["pass"] for c in comps)  # label still compared


def test_max_rows_limits_the_rows_compared(project):
    """Rows 0-9 have x[:, 2] = 0, where the perturbed weight w[2, 1] has no effect; from row 10 on it shows."""
    w, b = _base_weights()
    w[2, 1] += 0.05
    save(linear(w, b), project / "perturbed.onnx")
    x = np.random.default_rng(3).normal(size=(30, 4)).astype(np.float32)
    x[:10, 2] = 0.0
    np.savez(project / "data.npz", x=x, label=np.zeros(30, dtype=np.int64))
    got, ref = ort_run(project / "perturbed.onnx", x)["y"], ort_run(project / "base.onnx", x)["y"]
    diff = np.abs(got - ref).max(axis=1)
    assert (diff[:10] == 0).all() and (diff[10:] > 1e-3).all()

    def validate(max_rows: int | None):
        opts = {"against": "base.onnx", "batch_sizes": [0], "rtol": 0, "atol": 0}
        if max_rows is not None:
            opts["max_rows"] = max_rows
        write_yaml(project / "v.yaml", {"name": "v", "source": {"framework": "onnx", "path": "base.onnx"},
                                        "data": {"path": "data.npz", "labels": "label"},
                                        "stages": {"validate": opts}})
        return run_cli("validate", project / "perturbed.onnx", "--config", project / "v.yaml", "--json")

    res = validate(10)
    assert res.code == 0, res.stderr
    result = res.json()["result"]["summary"]
    assert result["rows"] == 10
    assert {(c["output"], c["batch"]) for c in result["comparisons"]} == {("y", 10), ("label", 10)}
    assert [c["total"] for c in result["comparisons"] if c["output"] == "label"] == [10]
    assert result["metrics"]["candidate"]["accuracy"] == pytest.approx(float((got[:10].argmax(1) == 0).mean()))
    res = validate(11)  # one row more reaches a perturbed row
    assert res.code == 1 and res.json()["result"]["summary"]["failing"] == ["y"], res.stderr
    assert res.json()["result"]["summary"]["rows"] == 11
