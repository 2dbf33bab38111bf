"""Reruns are byte-identical while the machine is busy (issue #14): the demo pipeline (configs/demo.yaml, copied into
tmp with its fixture paths resolved, so its lock lands in tmp) run three times up to quantize while another process
spins on a core gives the same artifacts every time — the INT8 candidate chosen in auto mode and the speed verdicts
come from the lock written by the first run. `--locked` passes while nothing changed and fails (exit 1, before
anything is written) once the source model changes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS, FIXTURES, run_cli


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("demo")
    cfg = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    weights = d / "digits_cnn.pt"  # a copy: the test changes it later
    weights.write_bytes((FIXTURES / "torch/digits_cnn.pt").read_bytes())
    factory, _, fn = cfg["source"]["factory"].rpartition(":")
    cfg["source"].update(factory=f"{(CONFIGS / factory).resolve()}:{fn}", path=weights.name)
    for k in ("path", "calibration"):
        cfg["data"][k] = str((CONFIGS / cfg["data"][k]).resolve())
    (d / "demo.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return d


def artifacts(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): sha(p) for p in sorted(run.rglob("*.onnx"))}


@pytest.mark.slow
def test_three_runs_under_cpu_load_give_byte_identical_artifacts_and_locked_refuses_a_changed_model(demo):
    cfg, run, lock = demo / "demo.yaml", demo / "runs/demo", demo / "demo.yaml.lock"
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # another process keeps a core busy
    try:
        seen, sides = [], []
        for i in range(3):
            res = run_cli("run", cfg, "--until", "quantize", *(["--force"] if i else []), cwd=demo,
                          fresh=True)  # fresh processes: a hash-seed dependence must show
            assert res.code == 0, res.stderr + res.stdout
            seen.append(artifacts(run))
            sides.append(sha(run / "04-quantize/quantize.json"))
    finally:
        spinner.kill()
        spinner.wait()
    assert set(seen[0]) == {"01-convert/model.onnx", "03-optimize/model.onnx", "04-quantize/model.onnx"}
    assert seen[0] == seen[1] == seen[2]
    assert sides[1] == sides[2]  # from the lock: even the quantize summary with its figures is the same
    text = lock.read_text()
    assert text.startswith("# onnxforge lock for demo.yaml")
    doc = yaml.safe_load(text)
    assert set(doc["decisions"]) == {"optimize", "quantize"}
    assert doc["decisions"]["quantize"]["decision"]["chosen"]

    # CI: --locked passes while nothing changed (and does not rewrite the lock) ...
    res = run_cli("run", cfg, "--until", "quantize", "--locked", cwd=demo)
    assert res.code == 0, res.stderr
    assert lock.read_text() == text
    # ... and refuses once the model changes, before anything is written, naming the stage and the fix
    subprocess.run([sys.executable, "-c", "import sys, torch; p = sys.argv[1]; sd = torch.load(p, weights_only=True); "
                    "k = next(iter(sd)); sd[k] = sd[k] + 0.01; torch.save(sd, p)", str(demo / "digits_cnn.pt")],
                   check=True, capture_output=True)
    before = {p: sha(p) for p in run.rglob("*") if p.is_file()}
    res = run_cli("run", cfg, "--until", "quantize", "--locked", cwd=demo)
    assert res.code == 1, res.stderr
    assert "optimize: the input model changed since the lock was written" in res.stderr
    assert "quantize: the input model changed since the lock was written" in res.stderr
    assert "--remeasure" in res.stderr and "Traceback" not in res.stderr
    assert {p: sha(p) for p in run.rglob("*") if p.is_file()} == before and lock.read_text() == text
