"""Decisions are recorded, not re-rolled (issue #14): the noise-aware comparison rule (paired rounds, an interval,
a ±5 % band, a fixed preference order inside it), require_faster, the lock file beside the config (reuse,
--remeasure, --locked, stale entries, no lock without a config) and run-folder hygiene (stage folders numbered by
the config's full order, stale folders removed after --until, runs/NAME/report.md)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from conftest import assert_one_line_error, run_cli
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from onnx_models import linear, save, write_data

from onnxforge import timing

# ------------------------------------------------------------------ the rule, on constructed paired rounds


def rounds(ratios: list[float], base: float = 1.0) -> tuple[list[float], list[float]]:
    """Per-round times of a baseline and a candidate whose per-round ratio base/cand is `ratios`."""
    return [base] * len(ratios), [base / r for r in ratios]


def test_interval_outside_the_band_decides_inside_it_is_the_same_speed():
    # tight rounds well above / below 1: faster / slower
    assert timing.paired(*rounds([1.30, 1.32, 1.28, 1.31, 1.29])).verdict() == "faster"
    assert timing.paired(*rounds([0.70, 0.72, 0.69, 0.71, 0.70])).verdict() == "slower"
    # a 3 % gain, however tight, is inside the ±5 % band: the same speed
    assert timing.paired(*rounds([1.03, 1.03, 1.03, 1.03, 1.03])).verdict() == "same"
    # a 20 % mean gain from noisy rounds (one round 2× either way): the interval straddles the band → same
    noisy = timing.paired(*rounds([2.0, 0.6, 1.4, 0.9, 1.5]))
    assert noisy.low < 0.95 < 1.05 < noisy.high and noisy.verdict() == "same"
    # the ratio is the geometric mean of the per-round ratios; the interval a t-interval on their logs
    p = timing.paired(*rounds([1.1, 1.2, 1.3]))
    logs = np.log([1.1, 1.2, 1.3])
    half = 4.303 * logs.std(ddof=1) / math.sqrt(3)
    assert p.ratio == pytest.approx(math.exp(logs.mean()))
    assert (p.low, p.high) == pytest.approx((math.exp(logs.mean() - half), math.exp(logs.mean() + half)))
    # one round: no spread to estimate, the interval is ×÷1.15
    one = timing.paired([1.0], [0.5])
    assert one.verdict() == "faster" and one.low == pytest.approx(2 / 1.15)
    # a bar other than 1 (min_speedup): 1.3× is "slower" than a 2× bar, "same" as a 1.3× bar
    tight = timing.paired(*rounds([1.30, 1.31, 1.29, 1.30]))
    assert tight.verdict(2.0) == "slower" and tight.verdict(1.3) == "same"


def test_rank_same_speed_falls_to_the_preference_order_measurably_faster_wins():
    # per-round times of three candidates: a and b within noise of each other, c measurably slower than both
    times = {"a": [1.00, 1.10, 0.95, 1.05, 1.00], "b": [0.97, 1.12, 0.96, 1.01, 1.02], "c": [1.6, 1.7, 1.5, 1.65, 1.6]}

    def faster(x: str, y: str) -> bool:
        return timing.paired(times[y], times[x]).verdict() == "faster"

    pref = {"a": (False, 9, 500, 0), "b": (False, 7, 400, 1), "c": (False, 5, 100, 2)}
    # b is nominally faster than a by 1 %, a nominally by... neither is measurably faster: preference decides (b:
    # fewer nodes), c has the best preference key but is measurably slower than both, so it comes last
    assert timing.rank(["a", "b", "c"], faster, pref.__getitem__) == ["b", "a", "c"]
    pref["a"] = (False, 7, 400, 0)  # now a and b tie on ops, nodes and bytes: list order decides
    assert timing.rank(["a", "b", "c"], faster, pref.__getitem__) == ["a", "b", "c"]
    pref["a"] = (True, 7, 400, 0)  # contrib ops lose to standard ops at the same speed
    assert timing.rank(["a", "b", "c"], faster, pref.__getitem__) == ["b", "a", "c"]
    # and the same rounds reordered give the same ranking (nothing depends on which was measured first)
    assert timing.rank(["c", "b", "a"], faster, pref.__getitem__) == ["b", "a", "c"]


# ------------------------------------------------------------------ a model INT8 makes clearly slower


def chain(path: Path, layers: int = 48) -> Path:
    """`layers` tiny 8×8 MatMuls in a row: dynamic INT8 turns each into DynamicQuantizeLinear + MatMulInteger + casts,
    several times the work of the float MatMul (measured ≈ 0.55× at batch 1)."""
    rng = np.random.default_rng(0)
    nodes, inits, cur = [], [], "x"
    for i in range(layers):
        inits.append(nh.from_array((rng.normal(size=(8, 8)) / 3).astype(np.float32), f"W{i}"))
        nodes.append(h.make_node("MatMul", [cur, f"W{i}"], [f"h{i}"]))
        cur = f"h{i}"
    nodes.append(h.make_node("Identity", [cur], ["y"]))
    g = h.make_graph(nodes, "chain", [h.make_tensor_value_info("x", T.FLOAT, ["batch", 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["batch", 8])], inits)
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), str(path))
    np.savez(path.with_suffix(".npz"), x=rng.normal(size=(64, 8)).astype(np.float32))
    return path


SLOW = ["--mode", "dynamic", "--set", "max_accuracy_drop=null", "--set", "batch_sizes=[1]", "--set",
        "latency_rounds=7"]


def test_require_faster_fails_a_measurably_slower_int8_model_a_named_mode_ships_it_warned(tmp_path):
    model = chain(tmp_path / "chain.onnx")
    out = tmp_path / "out" / "q.onnx"
    res = run_cli("quantize", model, "-o", out, "--data", model.with_suffix(".npz"), *SLOW, "--require-faster")
    line = assert_one_line_error(res, 1)
    assert line.startswith("check failed: quantize: dynamic s8 per-tensor is measurably slower than its float input")
    assert "require_faster" in line and not out.exists() and not out.parent.exists()
    # without it, the mode asked for ships, warned, with the figures in the summary
    res = run_cli("quantize", model, "-o", out, "--data", model.with_suffix(".npz"), *SLOW, "--json")
    assert res.code == 0, res.stderr
    s = res.json()["result"]["summary"]
    assert s["speed"]["batch1"]["verdict"] == "slower" and s["speed"]["batch1"]["interval"][1] < 0.95
    assert any(w.startswith("shipping an INT8 model slower than float") for w in s["warnings"])
    assert s["decision"]["source"] == "measured" and "lock" not in s["decision"]
    # a loose model without a config: no lock anywhere (nothing written beside the model or the output)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["chain.npz", "chain.onnx", "q.onnx",
                                                                          "q.quantize.json"]


def test_require_faster_judges_the_locked_figures_without_remeasuring(tmp_path):
    """The lock records the figures; --require-faster judges them (toggling it keeps the lock), --locked passes."""
    model = chain(tmp_path / "chain.onnx")
    cfg = write(tmp_path / "q.yaml", {"name": "q", "source": {"framework": "onnx", "path": "chain.onnx"},
                                      "data": {"path": "chain.npz"},
                                      "stages": {"quantize": {"mode": "dynamic", "max_accuracy_drop": None,
                                                              "batch_sizes": [1], "latency_rounds": 5}}})
    res = run_cli("run", cfg, "--json")
    assert res.code == 0, res.stderr
    lock = tmp_path / "q.yaml.lock"
    text = lock.read_text()
    entry = yaml.safe_load(text)["decisions"]["quantize"]
    assert entry["decision"]["speed"]["batch1"]["verdict"] == "slower"
    res = run_cli("quantize", "--config", cfg, "--locked", "--require-faster")
    line = [ln for ln in res.stderr.splitlines() if "measurably slower" in ln]
    assert res.code == 1 and line and "from the lock" in line[0], res.stderr
    assert lock.read_text() == text  # --locked never writes the lock
    assert model.is_file()


# ------------------------------------------------------------------ the lock beside the config


def write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


STAGES = {"convert": {}, "validate": {"against": "source"},
          "optimize": {"latency_rounds": 1},
          "quantize": {"mode": "dynamic", "max_accuracy_drop": None, "latency_rounds": 1},
          "report": {"bench": False, "formats": ["json", "md"]}}


@pytest.fixture
def project(tmp_path) -> Path:
    save(linear(), tmp_path / "m.onnx")
    write_data(tmp_path / "data.npz", rows=64)
    write(tmp_path / "p.yaml", {"name": "p", "run_dir": "runs", "source": {"framework": "onnx", "path": "m.onnx"},
                                "data": {"path": "data.npz", "labels": "label"}, "stages": STAGES})
    return tmp_path


def test_lock_reused_remeasured_locked_and_stale_entries_dropped(project):
    cfg, run, lock = project / "p.yaml", project / "runs/p", project / "p.yaml.lock"
    assert run_cli("run", cfg).code == 0
    doc = yaml.safe_load(lock.read_text())
    assert doc["format"] == 1 and set(doc["decisions"]) == {"optimize", "quantize"}
    q = doc["decisions"]["quantize"]
    assert set(q["inputs"]) == {"stage", "input", "options", "data", "onnxforge", "upstream"}
    assert q["inputs"]["input"] == sha(run / "03-optimize/model.onnx")  # keyed by the stage's input model
    assert q["decision"]["chosen"] == "dynamic s8 per-tensor" and "rule" in q["decision"]
    assert "/" not in json.dumps(q["inputs"])  # hashes and a version: no machine paths
    first = {s["name"]: s for s in manifest(run)["stages"]}
    assert first["quantize"]["summary"]["decision"]["source"] == "measured"
    text, model = lock.read_text(), sha(run / "04-quantize/model.onnx")

    res = run_cli("run", cfg, "--force", "--json")  # --force reruns the stages and still reuses the lock
    assert res.code == 0, res.stderr
    st = {s["name"]: s for s in manifest(run)["stages"]}
    assert st["quantize"]["status"] == "ran" and st["quantize"]["summary"]["decision"]["source"] == "lock"
    assert st["optimize"]["summary"]["decision"]["source"] == "lock"
    assert st["quantize"]["summary"]["candidates"] == first["quantize"]["summary"]["candidates"]  # the figures
    assert sha(run / "04-quantize/model.onnx") == model and lock.read_text() == text

    assert run_cli("run", cfg, "--locked").code == 0  # nothing would be measured
    res = run_cli("run", cfg, "--remeasure")
    assert res.code == 0, res.stderr
    st = {s["name"]: s for s in manifest(run)["stages"]}
    assert st["quantize"]["status"] == "ran" and st["quantize"]["summary"]["decision"]["source"] == "measured"

    # the stage's options change: --locked refuses before anything runs, naming the stage and why
    raw = yaml.safe_load(cfg.read_text())
    raw["stages"]["quantize"]["per_channel"] = True
    write(cfg, raw)
    before = {p: sha(p) for p in run.rglob("*") if p.is_file()}
    res = run_cli("run", cfg, "--locked")
    line = assert_one_line_error(res, 1)
    assert "quantize: the stage's options changed since the lock was written" in line and "--remeasure" in line
    assert {p: sha(p) for p in run.rglob("*") if p.is_file()} == before  # nothing written

    # optimize leaves the config: its entry is dropped when the lock is rewritten
    del raw["stages"]["optimize"]
    write(cfg, raw)
    assert run_cli("run", cfg).code == 0
    assert set(yaml.safe_load(lock.read_text())["decisions"]) == {"quantize"}


def test_locked_without_a_config_is_bad_input(project, tmp_path):
    res = run_cli("quantize", project / "m.onnx", "-o", tmp_path / "x.onnx", "--mode", "dynamic", "--locked",
                  "--data", project / "data.npz")
    assert "--locked needs --config" in assert_one_line_error(res, 2)
    assert not (tmp_path / "x.onnx").exists()


# ------------------------------------------------------------------ run-folder hygiene


def test_stage_folders_numbered_by_the_config_order_stale_ones_removed_report_beside_them(project):
    cfg, run = project / "p.yaml", project / "runs/p"
    # a single-stage command writes the folder a full run writes: 04-quantize, not 03 (validate is skipped)
    res = run_cli("quantize", "--config", cfg)
    assert res.code == 0, res.stderr
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["01-convert", "03-optimize", "04-quantize"]
    assert run_cli("run", cfg).code == 0
    names = sorted(p.name for p in run.iterdir())
    assert names == ["01-convert", "02-validate", "03-optimize", "04-quantize", "05-report", "manifest.json",
                     "report.json", "report.md"]
    # runs/NAME/report.md is a copy of the report stage's, so CI does not depend on the stage count
    assert (run / "report.md").read_bytes() == (run / "05-report/report.md").read_bytes()
    # --until optimize: the later stages' folders and the report copies of the earlier run are gone; a folder that
    # is not a stage folder of ours stays
    (run / "notes").mkdir()
    (run / "07-custom").mkdir()
    assert run_cli("run", cfg, "--until", "optimize").code == 0
    assert sorted(p.name for p in run.iterdir()) == ["01-convert", "02-validate", "03-optimize", "07-custom",
                                                     "manifest.json", "notes"]
    assert [s["dir"] for s in manifest(run)["stages"]] == ["01-convert", "02-validate", "03-optimize"]


def test_sizes_are_the_files_as_written_and_a_larger_file_says_larger(project):
    cfg, run = project / "p.yaml", project / "runs/p"
    res = run_cli("run", cfg, "--until", "quantize")
    assert res.code == 0, res.stderr
    st = {s["name"]: s for s in manifest(run)["stages"]}
    opt, q = st["optimize"]["summary"], st["quantize"]["summary"]
    assert opt["after"]["file_bytes"] == (run / "03-optimize/model.onnx").stat().st_size
    assert opt["before"]["file_bytes"] == (run / "01-convert/model.onnx").stat().st_size
    assert q["after"]["file_bytes"] == (run / "04-quantize/model.onnx").stat().st_size
    # this 4×3 MatMul grows when quantized (quantization nodes outweigh 12 weights): the console says larger
    grew = q["after"]["file_bytes"] / q["before"]["file_bytes"]
    assert grew > 1
    assert f"{grew:.2f}× larger" in res.stdout + res.stderr and "smaller" not in res.stdout + res.stderr
