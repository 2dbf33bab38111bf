from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cli_zygote
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
CONFIGS = ROOT / "configs"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


def _cli_env() -> dict:
    return dict(os.environ, PYTHONWARNINGS="ignore", COLUMNS="200")


_BASE_ENV = _cli_env()  # the zygote's: the env a call gets unless a test changes it


def run_cli(*args, cwd: Path | None = None, timeout: int = 600, fresh: bool = False) -> Result:
    """Run the real CLI in its own process: real exit codes, real stdout/stderr separation, its own env and cwd.
    A process forked from the zygote (tests/cli_zygote.py, frameworks already imported) unless `fresh`,
    ONNXFORGE_TEST_FRESH=1 or an env the fork can't reproduce asks for `python -m onnxforge` from scratch;
    tests of rerun determinism need fresh (forked children share the zygote's hash seed)."""
    env = _cli_env()
    if not fresh and os.environ.get("ONNXFORGE_TEST_FRESH") != "1":
        got = cli_zygote.run([str(a) for a in args], env, os.path.abspath(cwd or ROOT), timeout, _BASE_ENV, str(ROOT))
        if got is not None:
            return Result(*got)
    p = subprocess.run([sys.executable, "-m", "onnxforge", *map(str, args)], cwd=cwd or ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return Result(p.returncode, p.stdout, p.stderr)


def pytest_sessionfinish(session):
    cli_zygote.shutdown()


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


def run_examples(cases, workdir: Path) -> dict:
    """`onnxforge run` of each example config (convert + validate) once, into a scratch folder:
    case → (case, result, run folder, sha256 of the converted model or None)."""
    import hashlib

    out = {}
    for case in cases:
        res = run_cli("run", CONFIGS / f"{case}.yaml", "--until", "validate", "--json", cwd=workdir)
        run = workdir / "runs" / case.replace("_", "-")
        model = run / "01-convert/model.onnx"
        digest = hashlib.sha256(model.read_bytes()).hexdigest() if res.code == 0 else None
        out[case] = (case, res, run, digest)
    return out


def example_runs(cases, name: str):
    """The module fixtures a test file of example configs uses: `workdir` (one scratch folder), `runs` (every
    case run once, see run_examples) and `ran` (parametrized over the cases). Assign them at module level:
    `workdir, runs, ran = example_runs(CASES, "keras")`."""

    @pytest.fixture(scope="module")
    def workdir(tmp_path_factory) -> Path:
        return tmp_path_factory.mktemp(name)

    @pytest.fixture(scope="module")
    def runs(workdir) -> dict:
        return run_examples(cases, workdir)

    @pytest.fixture(params=sorted(cases))
    def ran(request, runs):
        return runs[request.param]

    return workdir, runs, ran


def assert_one_line_error(res: Result, code: int = 2) -> str:
    assert res.code == code, (res.code, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0]
