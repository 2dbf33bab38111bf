"""examples/ci/ for real: the Makefile include (`make -f examples/ci/onnxforge.mk model|model-check|...`) and the
GitHub Actions workflow, whose `run:` steps are run in order as GitHub would (bash -eo pipefail, GITHUB_OUTPUT,
GITHUB_STEP_SUMMARY, `if:`, `${{ }}`) on a small pipeline; `uses:` steps are skipped (their paths are checked).
Also `make clean`, which must leave the venv alone.

The pipeline: a 2-layer MLP as an ONNX source (no framework import, seconds per run) → convert, validate,
quantize (dynamic: a decision recorded in pipeline.yaml.lock, so --locked has something to refuse), report.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "ci"
MK = EXAMPLES / "onnxforge.mk"
WORKFLOW = EXAMPLES / "github-actions.yml"
BIN = Path(sys.executable).parent          # the venv running the tests: its onnxforge
ONNXFORGE = BIN / "onnxforge"

PIPELINE = """name: model
source: {framework: onnx, path: mlp.onnx}
data: {path: data.npz}
stages:
  convert: {}
  validate: {}
  quantize: {mode: dynamic, max_accuracy_drop: null%s}
  report: {bench: false}
"""
# dynamic INT8 moves these logits by ~0.05: a 1e-6 budget fails the quantize check (exit 1), after which the
# report stage still runs
FAILING = ", max_error: {logits: 1.0e-6}"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "MAKE", "MFLAGS"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONWARNINGS="ignore", COLUMNS="200")
    return env


def make_workspace(dest: Path, failing: bool = False) -> Path:
    """A model repository: pipeline.yaml, the model and its data."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w1 = (rng.normal(size=(16, 64)) * 0.3).astype(np.float32)
    w2 = (rng.normal(size=(64, 3)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["logits"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), dest / "mlp.onnx")
    np.savez(dest / "data.npz", x=rng.normal(size=(200, 16)).astype(np.float32))
    (dest / "pipeline.yaml").write_text(PIPELINE % (FAILING if failing else ""))
    return dest


def make(ws: Path, *targets: str, **variables: str) -> subprocess.CompletedProcess:
    args = ["make", "--no-print-directory", "-f", str(MK), *targets, f"ONNXFORGE={ONNXFORGE}",
            *(f"{k}={v}" for k, v in variables.items())]
    return subprocess.run(args, cwd=ws, env=_env(), capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL)


# --- the Makefile include ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_makefile_include_builds_checks_reports_and_cleans(tmp_path):
    ws = make_workspace(tmp_path / "repo")
    r = make(ws, "model-check")                      # no lock yet: CI must refuse to measure
    assert r.returncode != 0 and "Error 1" in r.stderr, (r.stdout, r.stderr)
    assert "lock" in r.stderr
    r = make(ws, "model")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert (ws / "runs/model/report.md").is_file() and (ws / "pipeline.yaml.lock").is_file()
    assert "report: runs/model/report.md" in r.stdout
    r = make(ws, "model-check")                      # the lock now holds the decision: reused, no timing
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "--locked" in r.stdout
    r = make(ws, "model-report")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert (ws / "runs/model/report/report.md").is_file()
    r = make(ws, "model-clean")
    assert r.returncode == 0 and not (ws / "runs/model").exists(), (r.stdout, r.stderr)


def test_makefile_include_fails_on_a_failed_check(tmp_path):
    ws = make_workspace(tmp_path / "repo", failing=True)
    r = make(ws, "model")
    assert r.returncode == 2 and "Error 1" in r.stderr, (r.returncode, r.stdout, r.stderr)  # make 2, onnxforge 1
    assert "no model within budget" in r.stderr
    assert (ws / "runs/model/report.md").is_file()   # the report stage still ran: CI can post why


def test_makefile_include_variables(tmp_path):
    ws = make_workspace(tmp_path / "repo")
    (ws / "other.yaml").write_text((ws / "pipeline.yaml").read_text().replace("name: model", 'name: "other"  # x'))
    r = make(ws, "-n", "model", "model-clean", CONFIG="other.yaml", RUN_DIR="out")
    assert r.returncode == 0, r.stderr
    assert f"{ONNXFORGE} run other.yaml --run-dir out" in r.stdout and "rm -rf out/other" in r.stdout


# --- the GitHub Actions workflow -----------------------------------------------------------------------------------

EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


class Job:
    """Runs one job of a workflow the way the runner does, for the parts our workflow uses."""

    def __init__(self, workflow: dict, job: str, ws: Path, env: dict, event: str):
        self.wf, self.job, self.ws, self.event = workflow, workflow["jobs"][job], ws, event
        self.env = {**workflow.get("env", {}), **self.job.get("env", {}), **env}
        self.outputs: dict[str, dict] = {}
        self.failed = False
        self.log: list[tuple[str, str]] = []        # (step name, ran | skipped | failed | uses)
        self.summary = ws.parent / "step-summary.md"
        self.summary.write_text("")
        self.uses: list[dict] = []

    def value(self, expr: str) -> str:
        parts = expr.split(".")
        if parts[0] == "env":
            return str(self.env[parts[1]])
        if parts[0] == "steps" and parts[2] == "outputs":
            return self.outputs.get(parts[1], {}).get(parts[3], "")
        known = {"github.token": "fake-token", "github.event.pull_request.number": "7",
                 "github.event_name": self.event}
        if expr in known:
            return known[expr]
        raise AssertionError(f"the test does not know the expression ${{{{ {expr} }}}}: teach Job.value")

    def sub(self, text) -> str:
        return EXPR.sub(lambda m: self.value(m.group(1)), str(text))

    def condition(self, cond) -> bool:
        if cond is None:
            return not self.failed
        py = EXPR.sub(lambda m: m.group(1), str(cond))
        py = re.sub(r"[\w.]+\.[\w.]+|\w+\(\)", lambda m: self._atom(m.group(0)), py)
        py = py.replace("&&", " and ").replace("||", " or ").replace("!", " not ").replace(" not =", "!=")
        return bool(eval(py, {"__builtins__": {}}, {}))  # noqa: S307 (our own workflow file)

    def _atom(self, a: str) -> str:
        calls = {"always()": "True", "success()": str(not self.failed), "failure()": str(self.failed)}
        return calls[a] if a in calls else repr(self.value(a))

    def run(self, install_dry_run: bool = True) -> None:
        shell = ["bash", "--noprofile", "--norc", "-eo", "pipefail"]
        assert self.wf.get("defaults", {}).get("run", {}).get("shell") == "bash"
        for n, step in enumerate(self.job["steps"]):
            name = step.get("name") or step.get("uses") or f"step {n}"
            if not self.condition(step.get("if")):
                self.log.append((name, "skipped"))
                continue
            if "uses" in step:
                self.uses.append({"uses": step["uses"], "with": {k: self.sub(v) for k, v in step.get("with", {}).items()}})
                self.log.append((name, "uses"))
                continue
            script = self.sub(step["run"])
            if step.get("id") == "install" and install_dry_run:   # resolve the install from the checkout, install nothing
                script = script.replace("pip install", f"{sys.executable} -m pip install --dry-run --no-deps "
                                                       "--no-build-isolation --no-index")
            out = self.ws.parent / f"output-{n}"
            out.write_text("")
            env = {**_env(), **{k: self.sub(v) for k, v in {**self.env, **step.get("env", {})}.items()},
                   "GITHUB_OUTPUT": str(out), "GITHUB_STEP_SUMMARY": str(self.summary), "CI": "true",
                   "GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(self.ws)}
            env["PATH"] = f"{self.ws.parent / 'bin'}{os.pathsep}{env['PATH']}"
            p = subprocess.run([*shell, "-c", script], cwd=self.ws, env=env, capture_output=True, text=True,
                               timeout=900, stdin=subprocess.DEVNULL)
            if "id" in step:
                self.outputs[step["id"]] = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
            self.log.append((name, "ran" if p.returncode == 0 else f"failed {p.returncode}"))
            self.last = p
            if p.returncode:
                self.failed = True


def fake_gh(bin_dir: Path) -> Path:
    """`gh pr comment PR --body-file F [--edit-last]`: records the call, checks the body file."""
    bin_dir.mkdir(exist_ok=True)
    log = bin_dir / "gh.log"
    (bin_dir / "gh").write_text(f"""#!/bin/bash
echo "$@" >> {log}
[ "$1 $2" = "pr comment" ] || exit 2
while [ $# -gt 0 ]; do [ "$1" = --body-file ] && {{ [ -s "$2" ] || exit 3; }}; shift; done
""")
    (bin_dir / "gh").chmod(0o755)
    return log


def run_workflow(tmp_path: Path, *, failing=False, lock=True, event="pull_request") -> tuple[Job, Path]:
    ws = make_workspace(tmp_path / "repo", failing=failing)
    if lock:   # the user ran the pipeline once and committed the lock
        r = subprocess.run([str(ONNXFORGE), "run", "pipeline.yaml"], cwd=ws, env=_env(), capture_output=True,
                           text=True, timeout=900)
        assert r.returncode == (1 if failing else 0), r.stderr
        assert (ws / "pipeline.yaml.lock").is_file()
        shutil.rmtree(ws / "runs")   # a fresh clone has no run folder
    log = fake_gh(tmp_path / "bin")
    wf = yaml.safe_load(WORKFLOW.read_text())
    job = Job(wf, "model", ws, {"ONNXFORGE_SRC": str(ROOT)}, event)
    job.run()
    return job, log


@pytest.mark.slow
def test_workflow_passes_posts_the_report_and_uploads_the_run(tmp_path):
    job, gh_log = run_workflow(tmp_path)
    assert not job.failed, (job.log, job.last.stdout, job.last.stderr)
    assert [s for s, what in job.log if what == "skipped"] == []
    assert job.outputs["model"]["exit_code"] == "0" and job.outputs["model"]["report"] == "runs/model/report.md"
    report = (job.ws / "runs/model/report.md").read_text()
    assert report.strip() and report in job.summary.read_text()
    assert "--body-file runs/model/report.md" in gh_log.read_text()
    (setup_python,) = [u for u in job.uses if u["uses"].startswith("actions/setup-python")]
    assert setup_python["with"]["python-version"] == "3.11" and setup_python["with"]["cache"] == "pip"
    assert Path(setup_python["with"]["cache-dependency-path"]).is_file()
    (upload,) = [u for u in job.uses if u["uses"].startswith("actions/upload-artifact")]
    for path in upload["with"]["path"].split():
        assert (job.ws / path).exists(), path
    result = yaml.safe_load((job.ws / "result.json").read_text())
    assert result["ok"] and result["result"]["verdict"] == "pass"


def test_workflow_fails_the_job_on_a_failed_check_after_posting_why(tmp_path):
    job, gh_log = run_workflow(tmp_path, failing=True, event="push")
    assert job.failed and job.log[-1] == ("Fail the job when a check failed", "failed 1"), job.log
    assert job.outputs["model"]["exit_code"] == "1"
    summary = job.summary.read_text()
    assert "no model within budget" in summary               # the failed stage's reason, in the job summary
    assert ("Report → pull-request comment", "skipped") in job.log and not gh_log.exists()   # a push: no PR


def test_workflow_fails_without_a_committed_lock(tmp_path):
    job, _ = run_workflow(tmp_path, lock=False)
    assert job.failed and job.outputs["model"]["exit_code"] == "1", job.log
    summary = job.summary.read_text()
    assert "no report" in summary and "lock" in summary


def test_workflow_install_step_resolves_from_the_checkout():
    """The install step, run with --dry-run (nothing installed): pip finds onnxforge in the checkout with those
    extras under its constraints — `pip install onnxforge[...]` would find nothing (not on PyPI)."""
    wf = yaml.safe_load(WORKFLOW.read_text())
    (step,) = [s for s in wf["jobs"]["model"]["steps"] if s.get("id") == "install"]
    env = {**_env(), **wf["env"], "ONNXFORGE_SRC": str(ROOT)}
    extras = set(__import__("tomllib").loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert set(env["ONNXFORGE_EXTRAS"].split(",")) <= extras
    cmd = step["run"].replace("pip install", f"{sys.executable} -m pip install --dry-run --no-deps "
                                             "--no-build-isolation --no-index")
    p = subprocess.run(["bash", "-eo", "pipefail", "-c", cmd], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0 and "Would install onnxforge" in p.stdout, (p.stdout, p.stderr)


# --- make clean ----------------------------------------------------------------------------------------------------

def test_make_clean_leaves_the_venv_alone(tmp_path):
    shutil.copyfile(ROOT / "Makefile", tmp_path / "Makefile")
    keep = [".venv/lib/python3.11/site-packages/x/__pycache__", ".git/hooks/__pycache__", "cache/corpus/m/__pycache__"]
    gone = ["onnxforge/__pycache__", "tests/fuzz/__pycache__", "runs/demo"]
    for d in keep + gone:
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "a.cpython-311.pyc").write_bytes(b"x")
    env = {**_env(), "ONNXFORGE_CORPUS": "cache/corpus"}
    p = subprocess.run(["make", "clean"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert [d for d in keep if not (tmp_path / d).is_dir()] == []
    assert [d for d in gone if (tmp_path / d).exists()] == []
