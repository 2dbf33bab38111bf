"""Sweep 5 item 9: the prune stage's messages and goal are true. A bad `finetune:` names prune.finetune (not the
user's fine source.factory); the budget failure gives the drop and max_accuracy_drop in one unit; `goal: size` is
judged on the file and its weights against the input (mask-only pruning, which can never shrink a dense ONNX file,
is refused up front). The digits MLP fixture, pruned for real and run in onnxruntime; convert runs once and is
reused by every run of the module (same config folder, same inputs)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import FIXTURES, ROOT, assert_one_line_error, run_cli
from sklearn.metrics import accuracy_score

HOOK = '''
def finetune(model, data):
    return model


def helper():
    return None
'''


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("prune_msgs")
    (d / "hooks").mkdir()
    (d / "hooks/tune.py").write_text(HOOK)
    res = run_cli("run", _cfg(d, {"ratio": 0.5}), "--until", "convert", cwd=d)  # the runs below reuse it
    assert res.code == 0, res.stderr[-2000:]
    return d


def _cfg(d: Path, prune: dict) -> Path:
    # the TorchScript exporter: a second per export instead of the dynamo exporter's several
    cfg = {"name": "p", "run_dir": "runs",
           "source": {"framework": "torch", "factory": str(ROOT / "fixtures/torch_models.py") + ":digits_mlp",
                      "trust_code": True, "path": str(FIXTURES / "torch/digits_mlp.pt"), "exporter": "torchscript"},
           "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 64]}],
           "data": {"path": str(FIXTURES / "data/digits_test.npz"), "labels": "label"},
           "stages": {"convert": {"opset": 18}, "prune": {"batch_sizes": [1], "rounds": 1} | prune}}
    (d / "p.yaml").write_text(json.dumps(cfg))
    return d / "p.yaml"


def _prune_summary(d: Path) -> dict:
    (st,) = [s for s in json.loads((d / "runs/p/manifest.json").read_text())["stages"] if s["name"] == "prune"]
    return st["summary"]


def _accuracy(path: Path) -> float:
    with np.load(FIXTURES / "data/digits_test.npz") as z:
        x, y = z["x"].astype(np.float32), z["label"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return accuracy_score(y, sess.run(None, {"x": x})[0].argmax(1))


def test_a_missing_finetune_function_names_prune_finetune(work, tmp_path):
    # cwd elsewhere: the hook file is found relative to the YAML, like source.factory
    line = assert_one_line_error(run_cli("run", _cfg(work, {"ratio": 0.3, "finetune": "hooks/tune.py:no_such_fn"}),
                                         cwd=tmp_path), 2)
    assert "prune.finetune" in line and "source.factory" not in line, line
    assert "no function 'no_such_fn'" in line and "finetune, helper" in line, line


def test_a_missing_finetune_file_names_prune_finetune(work):
    line = assert_one_line_error(run_cli("run", _cfg(work, {"ratio": 0.3, "finetune": "nope.py:finetune"}),
                                         cwd=work), 2)
    assert line.count("prune.finetune") == 1 and "source.factory" not in line and "nope.py not found" in line, line


def test_a_finetune_reference_without_a_function_is_refused_by_config_check(work):
    line = assert_one_line_error(run_cli("config", "check", _cfg(work, {"ratio": 0.3, "finetune": "hooks/tune.py"}),
                                         cwd=work), 2)
    assert "prune.finetune" in line and "file.py:function" in line, line


def test_the_budget_failure_gives_drop_and_budget_in_one_unit(work):
    res = run_cli("run", _cfg(work, {"ratios": {"Linear": 0.95}, "max_accuracy_drop": 0.01}), cwd=work)
    assert res.code == 1, res.stderr[-2000:]
    m = re.search(r"accuracy drop ([\d.]+) \(([\d.]+) pt\) exceeds max_accuracy_drop ([\d.]+) \(([\d.]+) pt\)",
                  res.stderr)
    assert m, res.stderr
    drop, drop_pt, limit, limit_pt = map(float, m.groups())
    assert limit == 0.01 and limit_pt == pytest.approx(1.0)
    assert drop_pt == pytest.approx(drop * 100, abs=0.01) and drop > limit
    before = _accuracy(work / "runs/p/01-convert/model.onnx")
    assert drop == pytest.approx(_prune_summary(work)["accuracy_drop"], abs=1e-4)
    assert drop < before  # a fraction of accuracy, not points
    assert not (work / "runs/p/02-prune/model.onnx").exists()


def test_mask_only_pruning_for_size_is_refused_up_front(work):
    line = assert_one_line_error(run_cli("config", "check", _cfg(work, {"ratio": 0.5, "method": "unstructured",
                                                                         "goal": "size"}), cwd=work), 2)
    assert "does not shrink" in line and "method: structured" in line, line


def test_goal_size_fails_when_nothing_was_removed(work):
    # the MLP has no Conv: nothing is pruned; the re-exported file is a few hundred bytes smaller all the same
    # (metadata), so the verdict must look at the weights too
    res = run_cli("run", _cfg(work, {"ratios": {"Conv": 0.5}, "goal": "size"}), cwd=work)
    assert res.code == 1, res.stderr[-2000:]
    assert "goal size not met" in res.stderr and "no channel was removed" in res.stderr, res.stderr
    s = _prune_summary(work)
    assert s["verdict"] == "fail" and s["weight_bytes_after"] == s["weight_bytes_before"]
    assert not (work / "runs/p/02-prune/model.onnx").exists()


def test_goal_size_passes_with_a_smaller_file_and_smaller_weights(work):
    res = run_cli("run", _cfg(work, {"ratio": 0.5, "goal": "size", "max_accuracy_drop": 1.0}), cwd=work)
    assert res.code == 0, res.stderr[-2000:]
    before, after = work / "runs/p/01-convert/model.onnx", work / "runs/p/02-prune/model.onnx"
    s = _prune_summary(work)
    assert s["bytes_before"] == before.stat().st_size and s["bytes_after"] == after.stat().st_size
    assert s["bytes_after"] < s["bytes_before"]
    dims = {t.name: list(t.dims) for t in onnx.load(str(after)).graph.initializer}
    assert sum(int(np.prod(v)) * 4 for v in dims.values()) == s["weight_bytes_after"] < s["weight_bytes_before"]
