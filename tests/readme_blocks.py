"""The README's shell blocks, parsed and run for real (tests/test_readme.py; `make readme-test`).

Which blocks run
    Every fenced block labelled ``bash``, ``sh``, ``shell`` or ``console`` is a shell block. Every fence must carry
    a label (``text`` for output, ``yaml``, ``python``, ...) so no command can hide in an unlabelled block. In a
    ``bash`` block each logical line (``\\`` continuations joined, comment-only and blank lines dropped) is one
    command; in a ``console`` block the lines starting with ``$ `` are the commands and the other lines are the
    output they print (compared, whitespace-insensitively, with what the command printed; a trailing ``(exit N)``
    on the output says the exit code).

How they chain
    All blocks run in document order in ONE scratch folder: a copy of the checkout's configs, fixtures, corpus
    recipe, Makefile, pyproject.toml and constraints.txt, with a ``.venv`` whose entries link to the project's venv
    (``make`` there sees it installed and never reinstalls). ``PATH`` starts with that ``.venv/bin``, so ``make``
    targets and ``onnxforge`` are the venv's. A file a block writes (``cnn.onnx``, ``runs/demo``) is there for the
    blocks after it. Shell variables live within one block (each block is one ``bash`` process).

Directives: HTML comments directly above the fence (stack several, one per line)
    ``<!-- readme-test: skip reason="needs a GPU" -->``              the whole block is reported as skipped
    ``<!-- readme-test: skip-cmd="make test" reason="..." -->``       commands starting with that text are not run
    ``<!-- readme-test: exit=1 -->``                                  the block's last command must exit 1
    ``<!-- readme-test: setup="joblib_model" -->``                    make stand-ins for the user's own files first
    ``<!-- readme-test: env="GITHUB_STEP_SUMMARY=summary.md" -->``  environment for the block (paths: in the scratch)
    ``<!-- readme-test: slow -->``                                    only with ONNXFORGE_README_ALL=1 (make readme-test)
    ``<!-- readme-test: timeout=900 -->``                             seconds for the block (default 600)
    Every command that is not the block's last must exit 0; the last one must exit ``exit=`` (default 0).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHELL_LANGS = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)\s*$")
DIRECTIVE = re.compile(r"^\s*<!--\s*readme-test:(.*?)-->\s*$")
HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
KEYS = {"skip", "skip-cmd", "reason", "exit", "setup", "env", "slow", "timeout"}
SKIP_ALL_REASON = "runs the suite itself / long; CI runs it separately"


class ReadmeError(ValueError):
    """The README's markup is wrong (an unknown directive key, a directive without a reason, ...)."""


@dataclass
class Command:
    text: str            # one logical line, continuations joined with a newline kept
    line: int            # README line it starts on
    skip: str | None = None
    expect_output: str | None = None   # console blocks: the printed lines that follow the command


@dataclass
class Block:
    line: int                 # README line of the opening fence
    lang: str
    body: str
    section: str
    directives: list[dict] = field(default_factory=list)

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-")[:40]
        return f"L{self.line}-{slug or 'top'}"

    def get(self, key: str, default=None):
        for d in self.directives:
            if key in d:
                return d[key]
        return default

    @property
    def skip_reason(self) -> str | None:
        for d in self.directives:
            if "skip" in d:
                return d["reason"]
        return None

    @property
    def slow(self) -> bool:
        return any("slow" in d for d in self.directives)

    @property
    def timeout(self) -> int:
        return int(self.get("timeout", 600))

    @property
    def setups(self) -> list[str]:
        return [s for d in self.directives if "setup" in d for s in d["setup"].split(",") if s]

    @property
    def env(self) -> dict:
        out = {}
        for d in self.directives:
            for pair in shlex.split(d.get("env", "")):
                k, eq, v = pair.partition("=")
                if not eq:
                    raise ReadmeError(f"README.md:{self.line}: env= takes NAME=VALUE pairs")
                out[k] = v
        return out

    @property
    def expected_exit(self) -> int:
        marker = self.get("exit")
        annotated = {int(m) for c in self.commands if c.expect_output
                     for m in re.findall(r"\(exit (\d+)\)\s*$", c.expect_output)}
        if marker is not None and annotated and annotated != {int(marker)}:
            raise ReadmeError(f"README.md:{self.line}: exit={marker} but the output says (exit {annotated})")
        if marker is not None:
            return int(marker)
        return annotated.pop() if annotated else 0

    @property
    def commands(self) -> list[Command]:
        cmds = parse_console(self) if self.lang == "console" else parse_bash(self)
        skips = [(d["skip-cmd"], d["reason"]) for d in self.directives if "skip-cmd" in d]
        for prefix, _ in skips:
            if not any(c.text.startswith(prefix) for c in cmds):
                raise ReadmeError(f"README.md:{self.line}: skip-cmd={prefix!r} matches no command of the block")
        for c in cmds:
            for prefix, reason in skips:
                if c.text.startswith(prefix):
                    c.skip = reason
        return cmds


def parse_directive(text: str, line: int) -> dict:
    out: dict = {}
    for tok in shlex.split(text):
        key, eq, value = tok.partition("=")
        if key not in KEYS:
            raise ReadmeError(f"README.md:{line}: unknown readme-test key {key!r} (known: {', '.join(sorted(KEYS))})")
        out[key] = value if eq else True
    if ("skip" in out or "skip-cmd" in out) and not out.get("reason"):
        raise ReadmeError(f"README.md:{line}: a skip needs reason=\"...\"")
    if "exit" in out and not str(out["exit"]).isdigit():
        raise ReadmeError(f"README.md:{line}: exit= takes a number")
    return out


def parse(text: str | None = None) -> tuple[list[Block], list[tuple[int, str]]]:
    """Every fenced block of the README → (blocks, unlabelled fences as (line, first body line))."""
    lines = (README.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks, unlabelled = [], []
    section, i = "", 0
    while i < len(lines):
        h = HEADING.match(lines[i])
        if h:
            section = h.group(2).strip()
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        start = i
        j = i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence) and lines[j].strip().strip(fence[0]) == ""):
            j += 1
        body = "\n".join(ln[len(indent):] if ln.startswith(indent) else ln for ln in lines[i + 1:j])
        directives, k = [], start - 1
        while k >= 0 and DIRECTIVE.match(lines[k]):
            directives.insert(0, parse_directive(DIRECTIVE.match(lines[k]).group(1), k + 1))
            k -= 1
        if not lang:
            unlabelled.append((start + 1, body.splitlines()[0] if body else ""))
        elif directives and lang not in SHELL_LANGS:
            raise ReadmeError(f"README.md:{start + 1}: readme-test directives above a {lang!r} block")
        blocks.append(Block(start + 1, lang, body, section, directives))
        i = j + 1
    return blocks, unlabelled


def shell_blocks(text: str | None = None) -> list[Block]:
    return [b for b in parse(text)[0] if b.lang in SHELL_LANGS]


def _logical_lines(body: str, first_line: int):
    buf, start = [], None
    for n, raw in enumerate(body.splitlines()):
        if start is None:
            start = first_line + n
        buf.append(raw)
        if raw.rstrip().endswith("\\"):
            continue
        yield start, "\n".join(buf)
        buf, start = [], None
    if buf:
        yield start, "\n".join(buf)


def parse_bash(block: Block) -> list[Command]:
    cmds = []
    for line, text in _logical_lines(block.body, block.line + 1):
        if not text.strip() or text.strip().startswith("#"):
            continue
        cmds.append(Command(text.strip(), line))
    return cmds


def parse_console(block: Block) -> list[Command]:
    cmds: list[Command] = []
    cont = False
    for n, raw in enumerate(block.body.splitlines()):
        line = block.line + 1 + n
        if cont:
            cmds[-1].text += "\n" + raw
            cont = raw.rstrip().endswith("\\")
        elif raw.startswith("$ "):
            cmds.append(Command(raw[2:].strip(), line))
            cont = raw.rstrip().endswith("\\")
        elif cmds:
            cmds[-1].expect_output = ((cmds[-1].expect_output or "") + "\n" + raw).strip("\n")
        elif raw.strip():
            raise ReadmeError(f"README.md:{line}: a console block starts with output, not a '$ ' command")
    if not cmds:
        raise ReadmeError(f"README.md:{block.line}: a console block with no '$ ' command")
    return cmds


def normalize_output(text: str) -> str:
    text = re.sub(r"\(exit \d+\)\s*$", "", text.strip())
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------------------------
# the scratch folder

COPY_DIRS = ("configs", "fixtures", "corpus", "tests/fuzz")
COPY_FILES = ("Makefile", "pyproject.toml", "constraints.txt")


def project_venv() -> Path:
    """The venv these tests run in (the README's `.venv`)."""
    if sys.prefix == sys.base_prefix:
        raise RuntimeError("run the README tests with the project's venv python (.venv/bin/python)")
    return Path(sys.prefix)


def make_scratch(dest: Path, venv: Path | None = None) -> Path:
    """A working copy for the README's commands: configs, fixtures, corpus recipe, Makefile, and a `.venv` whose
    entries link to the project's venv, with its own fresh install stamp (so `make` never reinstalls into the
    shared venv from here)."""
    venv = venv or project_venv()
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for d in COPY_DIRS:
        if (ROOT / d).is_dir():
            shutil.copytree(ROOT / d, dest / d, ignore=ignore, dirs_exist_ok=True)
    for f in COPY_FILES:
        shutil.copyfile(ROOT / f, dest / f)
    sv = dest / ".venv"
    sv.mkdir(exist_ok=True)
    for entry in venv.iterdir():
        if entry.name != ".installed" and not (sv / entry.name).exists():
            (sv / entry.name).symlink_to(entry)
    stamp = sv / ".installed"
    stamp.touch()
    later = time.time() + 1
    os.utime(stamp, (later, later))
    return dest


GUARD = """#!/bin/sh
echo "readme-test: '$(basename "$0")' here would install into the project's shared .venv — mark the block skip" >&2
exit 99
"""


def scratch_env(scratch: Path, extra: dict | None = None) -> dict:
    """PATH: a guard folder (pip there would install into the shared venv), then the scratch .venv/bin."""
    guard = scratch.with_name(scratch.name + ".guard")
    guard.mkdir(exist_ok=True)
    for name in ("pip", "pip3", "pip3.11"):
        (guard / name).write_text(GUARD)
        (guard / name).chmod(0o755)
    env = dict(os.environ)
    for k in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
        env.pop(k, None)
    env.update(PATH=os.pathsep.join([str(guard), str(scratch / ".venv" / "bin"), env.get("PATH", "")]),
               VIRTUAL_ENV=str(scratch / ".venv"),
               PYTHONDONTWRITEBYTECODE="1", PYTHONWARNINGS="ignore", COLUMNS="200", CI="true")
    env.update(extra or {})
    return env


# ---------------------------------------------------------------------------------------------------------------
# stand-ins for the user's own files (setup="name"), built from the checkout's fixtures

def _setup_joblib_model(d: Path) -> None:
    """model.joblib: the fixture forest, as a user's own joblib pickle."""
    import joblib
    import skops.io as sio

    path = ROOT / "fixtures/tabular/cancer_forest.skops"
    joblib.dump(sio.load(path, trusted=sio.get_untrusted_types(file=path)), d / "model.joblib")


def _setup_torch_pt2(d: Path) -> None:
    """cnn.pt2: the fixture CNN as a torch.export program with a dynamic batch."""
    import torch

    sys.path.insert(0, str(ROOT))
    try:
        from fixtures.torch_models import digits_cnn
    finally:
        sys.path.remove(str(ROOT))
    net = digits_cnn()
    net.load_state_dict(torch.load(ROOT / "fixtures/torch/digits_cnn.pt", weights_only=True))
    net.eval()
    batch = torch.export.Dim("batch", min=1)
    prog = torch.export.export(net, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(prog, d / "cnn.pt2")


def _setup_features_model(d: Path) -> None:
    """any.onnx (one input `features` [N, 3] → `score`) and rows.csv with columns age, income, tenure."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.array([[0.01], [0.00002], [0.1]], np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["features", "w"], ["score"])], "any",
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n", 1])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), d / "any.onnx")
    rng = np.random.default_rng(0)
    rows = ["age,income,tenure"] + [f"{rng.integers(18, 90)},{rng.integers(10, 200) * 1000},{rng.integers(0, 30)}"
                                    for _ in range(200)]
    (d / "rows.csv").write_text("\n".join(rows) + "\n")


def _setup_hier_rows(d: Path) -> None:
    """scores.parquet: rows to score for the pymc-hier artifact (x, group), from its test split."""
    import numpy as np
    import pandas as pd

    z = np.load(ROOT / "fixtures/data/pymc_hier.npz", allow_pickle=False)
    pd.DataFrame({"x": z["x"].astype("float32"), "group": z["group"].astype(str)}).to_parquet(d / "scores.parquet")


SETUPS = {
    "joblib_model": _setup_joblib_model,
    "torch_pt2": _setup_torch_pt2,
    "features_model": _setup_features_model,
    "hier_rows": _setup_hier_rows,
}


# ---------------------------------------------------------------------------------------------------------------
# running a block

@dataclass
class BlockResult:
    ok: bool
    message: str
    seconds: float
    ran: list[str]
    skipped: list[tuple[str, str]]
    stdout: str = ""
    stderr: str = ""
    times: list[tuple[str, float]] = field(default_factory=list)   # (command, seconds), commands that finished


def _times(path: Path, runnable: list[Command]) -> list[tuple[str, float]]:
    try:
        marks = [float(line.split()[1]) for line in path.read_text().splitlines()]
    except (OSError, ValueError, IndexError):
        return []
    return [(runnable[i].text.splitlines()[0], round(marks[i + 1] - marks[i], 2)) for i in range(len(marks) - 1)]


def block_script(block: Block, status_file: Path, out_file: Path) -> tuple[str, list[Command]]:
    """One bash script for the block: every command in order, each checked for its exit code and timed."""
    cmds = block.commands
    runnable = [c for c in cmds if c.skip is None]
    want_last = block.expected_exit
    times = shlex.quote(str(status_file) + ".times")
    out = ["set -o pipefail", "__rt_n=0; __rt_fail=0; : > " + times,
           f"trap 'echo \"$__rt_n $? $__rt_fail\" > {shlex.quote(str(status_file))}' EXIT"]
    for n, c in enumerate(runnable, 1):
        want = want_last if n == len(runnable) else 0
        out.append(f"__rt_n={n}; echo \"{n} $EPOCHREALTIME\" >> {times}")
        if c.expect_output is not None:
            out.append(f"{{ {c.text}\n}} 2>&1 | tee -a {shlex.quote(str(out_file))}")
        else:
            out.append(c.text)
        out.append(f"__rt_rc=$?; if [ $__rt_rc -ne {want} ]; then __rt_fail=1; "
                   f"echo \"readme-test: README.md:{c.line}: exit $__rt_rc, expected {want}\" >&2; exit $__rt_rc; fi")
    out.append(f"echo \"end $EPOCHREALTIME\" >> {times}")
    out.append("exit $__rt_rc")  # the block's status is its last command's
    return "\n".join(out) + "\n", runnable


def run_block(block: Block, scratch: Path, env: dict | None = None) -> BlockResult:
    t0 = time.perf_counter()
    skipped = [(c.text, c.skip) for c in block.commands if c.skip is not None]
    for name in block.setups:
        if name not in SETUPS:
            raise ReadmeError(f"README.md:{block.line}: unknown setup {name!r} (known: {', '.join(SETUPS)})")
        SETUPS[name](scratch)
    status, out_file = scratch.with_name(scratch.name + ".status"), scratch.with_name(scratch.name + ".out")
    status.unlink(missing_ok=True)
    out_file.unlink(missing_ok=True)
    script, runnable = block_script(block, status, out_file)
    if not runnable:
        return BlockResult(True, "every command skipped", 0.0, [], skipped)
    env = scratch_env(scratch, block.env) if env is None else dict(env, **block.env)
    try:
        p = subprocess.run(["bash", "--noprofile", "--norc", "-c", script], cwd=scratch, env=env,
                           capture_output=True, text=True, timeout=block.timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        return BlockResult(False, f"README.md:{block.line}: timed out after {block.timeout}s", time.perf_counter() - t0,
                           [c.text for c in runnable], skipped, str(e.stdout or ""), str(e.stderr or ""))
    secs = time.perf_counter() - t0
    ran = [c.text for c in runnable]
    try:
        n, rc, failed = (int(x) for x in status.read_text().split())
    except (OSError, ValueError):
        return BlockResult(False, f"README.md:{block.line}: the block's shell ended without a status (rc {p.returncode})",
                           secs, ran, skipped, p.stdout, p.stderr)
    if failed or n != len(runnable) or rc != block.expected_exit:
        c = runnable[max(n, 1) - 1]
        want = block.expected_exit if n == len(runnable) else 0
        msg = (f"README.md:{c.line}: `{c.text.splitlines()[0]}` exited {rc}, expected exit {want}"
               + ("" if failed or n == len(runnable) else f" (the block ended at command {n} of {len(runnable)})"))
        return BlockResult(False, msg, secs, ran, skipped, p.stdout, p.stderr)
    printed = out_file.read_text() if out_file.exists() else ""
    took = _times(Path(str(status) + ".times"), runnable)
    for c in runnable:
        if c.expect_output is not None:
            want = normalize_output(c.expect_output)
            if want not in normalize_output(printed):
                return BlockResult(False, f"README.md:{c.line}: the output differs from the README's.\n"
                                          f"README: {want}\nprinted: {normalize_output(printed)}",
                                   secs, ran, skipped, p.stdout, p.stderr)
    return BlockResult(True, "ok", secs, ran, skipped, p.stdout, p.stderr, took)
