"""Start-up stays light: `import onnxforge.cli`, `--help`, `inspect` and `config schema` (which imports every
frontend and stage module) import no ML framework — read from `python -X importtime`, as bench/bench_cli.py does."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import ROOT

# heavy at start-up: the frameworks, plus the runtime and plotting libraries no start-up path needs
NEVER = ("torch", "tensorflow", "keras", "pymc", "pytensor", "sklearn", "onnxruntime", "matplotlib", "pandas",
         "xgboost", "lightgbm", "skl2onnx", "onnxmltools", "tf2onnx", "onnxscript", "arviz", "numba", "jax")


@pytest.fixture(scope="module")
def bench_cli():
    spec = importlib.util.spec_from_file_location("bench_cli", ROOT / "bench" / "bench_cli.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny(bench_cli, tmp_path_factory):
    return bench_cli.tiny_model(tmp_path_factory.mktemp("tiny"))


def test_importtime_parser_sees_imports(bench_cli):
    """The detector itself can fail: a process that imports numpy is reported as importing numpy."""
    found = bench_cli.import_times(["-c", "import numpy.linalg"])
    assert "numpy" in found and found["numpy"] > 0
    assert bench_cli.heavy(found, ("numpy", "torch")) == ["numpy"]


@pytest.mark.parametrize("label", ["import onnxforge.cli", "onnxforge --version", "onnxforge --help",
                                   "onnxforge config schema", "onnxforge inspect tiny.onnx"])
def test_start_up_imports_no_framework(bench_cli, tiny, label):
    args = dict(bench_cli.commands(tiny))[label]
    found = bench_cli.import_times(args, cwd=ROOT)
    assert "onnxforge" in found  # the command really loaded the package
    assert bench_cli.heavy(found, NEVER) == [], f"{label} imports {bench_cli.heavy(found, NEVER)}"


def test_help_does_not_even_import_onnx(bench_cli, tiny):
    for label in ("import onnxforge.cli", "onnxforge --help"):
        found = bench_cli.import_times(dict(bench_cli.commands(tiny))[label], cwd=ROOT)
        assert bench_cli.heavy(found, ("onnx", "numpy")) == [], label


def test_wall_times_are_interleaved_and_a_failing_command_is_no_figure(bench_cli, monkeypatch):
    """Every round starts each command once, order reversed on odd rounds (after one untimed run of each); a
    command that exits non-zero stops the bench instead of becoming a figure."""
    import subprocess

    started: list[str] = []

    def fake_run(cmd, **kw):
        started.append(cmd[-1])
        return subprocess.CompletedProcess(cmd, 1 if cmd[-1] == "broken" else 0, b"", b"boom")

    monkeypatch.setattr(bench_cli.subprocess, "run", fake_run)
    walls = bench_cli.wall_ms_interleaved({"a": ["python", "a"], "b": ["python", "b"]}, runs=3)
    assert started == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then rounds A B, B A, A B
    assert [len(v) for v in walls.values()] == [3, 3]
    with pytest.raises(RuntimeError, match="exited 1"):
        bench_cli.wall_ms_interleaved({"ok": ["python", "ok"], "bad": ["python", "broken"]}, runs=2)
