"""Artifacts leak nothing about the machine that built them, and files honour the user's umask."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONFIGS, ROOT


def run_with_umask(mask: int, *args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxforge", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=600, preexec_fn=lambda: os.umask(mask))


@pytest.mark.parametrize("config", ["pymc_linear", "torch_mlp"])
def test_exported_models_hold_no_machine_paths(tmp_path, config):
    """torch's exporter stamps every node with a stack trace of absolute source paths; the PyMC export goes
    through the same exporter, so both must come out without them."""
    res = run_with_umask(0o022, "run", CONFIGS / f"{config}.yaml", "--until", "convert", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    model = next((tmp_path / "runs").glob("*/01-convert/model.onnx")).read_bytes()
    for leak in (str(ROOT), str(Path(sys.executable).parent.parent), "site-packages", "stack_trace"):
        assert leak.encode() not in model, leak


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_written_files_honour_the_umask(tmp_path, mask):
    res = run_with_umask(mask, "run", CONFIGS / "sklearn_forest.yaml", "--until", "convert", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    run = tmp_path / "runs/sklearn-forest"
    for path in (run / "manifest.json", run / "01-convert/model.onnx"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
