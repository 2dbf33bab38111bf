"""README.md is the user's manual and "every shell block in it runs": this runs them (see tests/readme_blocks.py).

All shell blocks run in document order in one scratch copy of the checkout's configs and fixtures, with the venv's
`make`/`onnxforge` first on PATH. A block or command marked `<!-- readme-test: skip ... reason="..." -->` is reported
as skipped with its reason; blocks marked `slow` run only with ONNXFORGE_README_ALL=1 (`make readme-test`).
Run the whole file: a block may use what an earlier block wrote.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import readme_blocks as rb

ALL = os.environ.get("ONNXFORGE_README_ALL") == "1"


def _items():
    out = []
    for b in rb.shell_blocks():
        out.append(pytest.param(b, None, id=b.id))
        for c in b.commands:
            if c.skip is not None:
                out.append(pytest.param(b, c, id=f"{b.id}:{c.text.split('#')[0].strip()}"))
    return out


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    try:
        venv = rb.project_venv()
    except RuntimeError as e:
        pytest.skip(str(e))
    return rb.make_scratch(tmp_path_factory.mktemp("readme") / "work", venv)


@pytest.mark.slow  # every README block end to end: minutes in all
@pytest.mark.parametrize(("block", "skipped_cmd"), _items())
def test_readme_block(block: rb.Block, skipped_cmd: rb.Command | None, scratch: Path):
    if skipped_cmd is not None:
        pytest.skip(f"README.md:{skipped_cmd.line}: `{skipped_cmd.text.split('#')[0].strip()}`: {skipped_cmd.skip}")
    if block.skip_reason:
        pytest.skip(f"README.md:{block.line}: {block.skip_reason}")
    if block.slow and not ALL:
        pytest.skip(f"README.md:{block.line}: slow — `make readme-test` runs it")
    res = rb.run_block(block, scratch)
    assert res.ok, f"{res.message}\n--- stdout (tail)\n{res.stdout[-3000:]}\n--- stderr (tail)\n{res.stderr[-3000:]}"


def test_every_fence_is_labelled():
    """An unlabelled fence could hide commands from the test: shell blocks say bash/console, output says text."""
    _, unlabelled = rb.parse()
    assert not unlabelled, "label these fences (bash/console for commands, text for output): " + "; ".join(
        f"README.md:{line}: {first[:60]!r}" for line, first in unlabelled)


def test_pip_install_lines_install_what_exists():
    """`pip install` lines cannot run here (network): each argument must be a pinned `name==version` or this checkout
    (`.` with extras that pyproject.toml defines), and `-c FILE` must exist — onnxforge is not on the index."""
    root = rb.ROOT
    extras = set(tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    seen = 0
    for b in rb.shell_blocks():
        for c in b.commands:
            words = c.text.split("#")[0].split()
            if words[:2] != ["pip", "install"] and words[1:3] != ["-m", "pip"]:
                continue
            seen += 1
            if "# extras:" in c.text:   # the list the README gives is the one pyproject.toml defines
                listed = set(c.text.split("# extras:")[1].split())
                assert listed == extras - {"dev"}, f"README.md:{c.line}: extras listed {sorted(listed)}, " \
                                                   f"pyproject.toml has {sorted(extras - {'dev'})}"
            args = iter(words[words.index("install") + 1:])
            for a in args:
                a = a.strip("'\"")
                if a in ("-c", "--constraint", "-r"):
                    assert (root / next(args)).is_file(), f"README.md:{c.line}: {c.text}"
                elif a.startswith("-"):
                    continue
                elif a.startswith("."):
                    path, _, ex = a.partition("[")
                    assert (root / path / "pyproject.toml").is_file(), f"README.md:{c.line}: {a}"
                    unknown = set(ex.rstrip("]").split(",")) - extras - {""}
                    assert not unknown, f"README.md:{c.line}: unknown extras {unknown} (pyproject: {sorted(extras)})"
                    # pip itself, offline, installing nothing: the checkout builds and resolves under the constraints
                    p = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps",
                                        "--no-build-isolation", "--no-index", "-c", "constraints.txt", a],
                                       cwd=root, capture_output=True, text=True, timeout=300)
                    assert p.returncode == 0 and "Would install onnxforge" in p.stdout, (p.stdout, p.stderr)
                else:
                    assert "==" in a, f"README.md:{c.line}: {a!r} is neither pinned nor this checkout"
    assert seen, "the README shows no pip install line"


# --- the machinery itself: each of these would let a broken README through if it failed ------------------------

DOC = """# T
## One
<!-- readme-test: skip-cmd="echo skipped" reason="not here" -->
```bash
echo one > one.txt
echo skipped
```
## Two
<!-- readme-test: exit=3 -->
```sh
test -f one.txt   # written by the block above
bash -c 'exit 3'
```
```console
$ echo hello \\
    world; exit 2
hello world
(exit 2)
```
"""


def test_parser_and_runner_chain_skip_and_exit(tmp_path):
    blocks = rb.shell_blocks(DOC)
    assert [b.lang for b in blocks] == ["bash", "sh", "console"]
    assert [c.skip for c in blocks[0].commands] == [None, "not here"]
    assert blocks[1].expected_exit == 3 and blocks[2].expected_exit == 2
    for b in blocks:
        res = rb.run_block(b, tmp_path, env=dict(os.environ))
        assert res.ok, res.message
    assert (tmp_path / "one.txt").read_text() == "one\n"


@pytest.mark.parametrize(("doc", "why"), [
    ("```bash\nfalse\ntrue\n```\n", "exited 1"),                                     # a failing middle command
    ("<!-- readme-test: exit=1 -->\n```bash\ntrue\n```\n", "expected exit 1"),        # documented failure passes
    ("```bash\nexit 4\ntrue\n```\n", "exited 4"),                                    # an early exit
    ("```console\n$ echo hi; exit 2\nbye\n(exit 2)\n```\n", "output differs"),        # output not as shown
    ("```console\n$ true\nok\n(exit 2)\n```\n", "exited 0"),                          # exit not as shown
])
def test_runner_fails_when_the_readme_is_wrong(tmp_path, doc, why):
    (block,) = rb.shell_blocks(doc)
    res = rb.run_block(block, tmp_path, env=dict(os.environ))
    assert not res.ok and why in res.message, res.message


@pytest.mark.parametrize("doc", [
    '<!-- readme-test: skp reason="x" -->\n```bash\ntrue\n```\n',        # a typo'd key
    "<!-- readme-test: skip -->\n```bash\ntrue\n```\n",                  # a skip without a reason
    '<!-- readme-test: skip-cmd="make x" reason="y" -->\n```bash\ntrue\n```\n',   # skip-cmd matching nothing
])
def test_bad_directives_are_refused(doc):
    with pytest.raises(rb.ReadmeError):
        for b in rb.shell_blocks(doc):
            b.commands  # noqa: B018
