"""Speed verdicts optimize and quantize act on, driven by recorded figures (timing itself is noise on a shared
machine): optimize warns (exit 0) when it ships a model measurably slower than its input; quantize auto leaves every
candidate measurably slower at some batch size out of its ranking; the "optimistic budget" warning is for a static
choice only. Real models and onnxruntime throughout; only the timing figures are recorded, not measured. Stages
run in-process through the Python API the CLI wraps (run_pipeline): no CLI process start-up, the file stays fast."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from onnx_models import linear, save, write_data

from onnxforge import timing
from onnxforge.config import load_config
from onnxforge.errors import CheckFailed
from onnxforge.pipeline import run_pipeline

# figures recorded by a real run (sweep 4: fusion-bert on a dynamo-exported nn.TransformerEncoder, and quantize auto
# on a TorchScript one): what the decisions below are fed instead of a fresh, noisy measurement
SLOWER = {"batch1": {"ratio": 0.87, "interval": [0.869, 0.876], "rounds": 3, "verdict": "slower"},
          "batch64": {"ratio": 0.81, "interval": [0.78, 0.84], "rounds": 3, "verdict": "slower"}}
SAME = {"batch1": {"ratio": 0.97, "interval": [0.85, 1.1], "rounds": 3, "verdict": "same"}}
AUTO = {  # label → speed per batch size; the first is slower at batch 1 only
    "static QDQ u8s8 per-tensor": {"batch1": [0.6675, 0.5286, 0.8429], "batch64": [0.7498, 0.5873, 0.9573]},
    "static QDQ u8s8 per-channel": {"batch1": [0.627, 0.3482, 1.129], "batch64": [0.5843, 0.268, 1.274]},
    "dynamic s8 per-tensor": {"batch1": [1.131, 1.007, 1.271], "batch64": [0.8254, 0.4198, 1.623]},
    "dynamic s8 per-channel": {"batch1": [1.284, 0.857, 1.923], "batch64": [0.8437, 0.5459, 1.304]},
}


@pytest.fixture
def project(tmp_path) -> Path:
    save(linear(), tmp_path / "m.onnx")
    write_data(tmp_path / "d.npz", rows=64)
    return tmp_path


def config(project: Path, stage: dict, name: str = "v") -> Path:
    cfg = {"name": name, "run_dir": "runs", "source": {"framework": "onnx", "path": "m.onnx"},
           "data": {"path": "d.npz", "labels": "label"}, "stages": stage}
    path = project / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run(cfg: Path, **kw) -> dict:
    """The config's last stage's manifest entry (status, summary)."""
    return run_pipeline(load_config(cfg), force=True, **kw)["stages"][-1]


def set_locked_speed(lock: Path, stage: str, speed: dict) -> None:
    """Replace the figures a lock recorded (the key stays: the entry still matches the inputs)."""
    doc = yaml.safe_load(lock.read_text())
    doc["decisions"][stage]["decision"]["speed"] = speed
    lock.write_text(yaml.safe_dump(doc))


# ------------------------------------------------------------------ optimize: a slower result is said aloud


def test_optimize_warns_exit_0_when_the_recorded_verdict_is_slower(project):
    """README: optimize does not slow a model unasked. min_pass_speedup 0 (the default) rejects no pass for speed,
    so a shipped model measurably slower than its input gets a warning with the figures and the fixes — in the
    summary and optimize.json — and exit 0 (require_faster is what fails CI)."""
    cfg = config(project, {"optimize": {"latency_rounds": 1, "batch_sizes": [1], "timing_budget_s": 1}})
    run(cfg)
    lock = project / "v.yaml.lock"
    set_locked_speed(lock, "optimize", SLOWER)
    s = run(cfg, lock="locked")["summary"]  # no exception: exit 0
    assert s["decision"]["source"] == "lock" and s["decision"]["speed"] == "slower"
    warn = [w for w in s["warnings"] if w.startswith("shipping an optimized model slower than its input")]
    assert len(warn) == 1, s["warnings"]
    assert "0.87× (0.87–0.88) at batch1" in warn[0] and "from the lock" in warn[0]
    assert "min_pass_speedup: 0.95" in warn[0] and "portable: true" in warn[0] and "level: basic" in warn[0]
    side = project / "runs/v/01-optimize/optimize.json"
    assert warn[0] in yaml.safe_load(side.read_text())["warnings"]  # the report JSON carries it too
    # the same speed: nothing to warn about
    set_locked_speed(lock, "optimize", SAME)
    s = run(cfg, lock="locked")["summary"]
    assert not any("slower than its input" in w for w in s["warnings"])


def test_optimize_slower_warning_names_the_fix_that_applies():
    from onnxforge.stages.optimize.stage import OptimizeOptions, slower_warning

    assert slower_warning(SAME, OptimizeOptions(), ["onnxslim"], False) is None
    w = slower_warning(SLOWER, OptimizeOptions(), ["onnxslim", "fusion-bert", "ort-extended"], False)
    assert "0.81× (0.78–0.84) at batch64; measured" in w and "fusion: off for fusion-bert" in w
    # passes already timed (min_pass_speedup set) and none measured slower alone; portable: no portable hint
    w = slower_warning(SLOWER, OptimizeOptions(min_pass_speedup=0.95, portable=True), ["ort-basic"], True)
    assert "no single pass was measured slower than 0.95×" in w and "min_pass_speedup: 0.95" not in w
    assert "level: none for ort-basic" in w and "portable: true" not in w


# ------------------------------------------------------------------ quantize auto: slower candidates not ranked


def recorded_candidates() -> list[dict]:
    return [{"label": lab, "status": "measured",
             "speed": {b: {"ratio": r, "interval": [lo, hi], "rounds": 3,
                           "verdict": timing.Paired(r, lo, hi, 3).verdict()} for b, (r, lo, hi) in spd.items()}}
            for lab, spd in AUTO.items()]


def test_auto_screens_out_every_candidate_slower_at_some_batch_size():
    """Not only those tried before the choice: a slower candidate ranked below the chosen one used to stay
    `measured` and in `decision.ranked`."""
    from onnxforge.stages.quantize.stage import rank_candidates

    live = recorded_candidates()
    order = {c["label"]: i for i, c in enumerate(live)}
    never = lambda a, b: False  # noqa: E731 — no candidate measurably faster than another: preference decides
    ranked, slow = rank_candidates(live, never, order.__getitem__, lambda s: timing.overall(s, 1.0) == "slower")
    assert slow == ["static QDQ u8s8 per-tensor"] and ranked == list(AUTO)[1:]
    c = live[0]
    assert c["status"] == "rejected" and c["reason"].startswith("slower than float (0.67× (0.53–0.84) at batch1")
    assert all(c["status"] == "measured" for c in live[1:])
    # the gate off (allow_slower: true): nothing is screened out
    ranked, slow = rank_candidates(recorded_candidates(), never, order.__getitem__, lambda s: False)
    assert slow == [] and ranked == list(AUTO)


def test_auto_ranks_no_candidate_that_is_slower_than_the_bar(project):
    """End to end, deterministic: at min_speedup 100 every candidate is measurably slower than the bar, so none is
    ranked, each is rejected with its figures, and the stage fails (exit 1) naming the fix."""
    cands = [{"mode": "dynamic"}, {"mode": "dynamic", "per_channel": True}]
    cfg = config(project, {"quantize": {"candidates": cands, "min_speedup": 100, "max_accuracy_drop": None,
                                        "latency_rounds": 1, "batch_sizes": [1]}})
    with pytest.raises(CheckFailed) as e:  # exit 1
        run(cfg)
    assert "allow_slower: true" in str(e.value)
    st = e.value.result["stages"][-1]
    s = st["summary"]
    assert s["decision"]["ranked"] == [] and s["decision"]["chosen"] is None and st.get("model") is None
    assert [c["status"] for c in s["candidates"]] == ["rejected", "rejected"]
    assert all(c["reason"].startswith("slower than float") for c in s["candidates"])


# ------------------------------------------------------------------ quantize auto: the optimistic-budget warning


@pytest.mark.parametrize("mode, optimistic", [("dynamic", False), ("static", True)])
def test_auto_warns_of_an_optimistic_budget_only_when_it_chooses_static(project, mode, optimistic):
    """data.path is both calibration and evaluation data: only a static model was calibrated on the rows its budget
    is checked on. allow_slower with one candidate makes the choice independent of timing."""
    cfg = config(project, {"quantize": {"candidates": [{"mode": mode}], "allow_slower": True, "latency_rounds": 1,
                                        "batch_sizes": [1]}})
    s = run(cfg)["summary"]
    assert s["config"]["mode"] == mode
    assert any("calibration data itself (optimistic)" in w for w in s["warnings"]) is optimistic, s["warnings"]
