"""The package layout (issue #19): the README's architecture tree is the code's tree, no module shadows a
standard-library name, the top-level modules never import a room (stages, frontends, bayes, score, serve), and the
public names the README documents keep working after the move."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PKG = ROOT / "onnxforge"
ROOMS = ("onnxforge.stages", "onnxforge.frontends", "onnxforge.bayes", "onnxforge.score", "onnxforge.serve")


def readme_tree(text: str) -> set[str]:
    """Every module and folder the README's architecture block names, as paths under onnxforge/. A folder line may
    name its modules after it (and on the deeper-indented lines that continue it); a module line may hold several
    module names and nothing else, or one name and a description."""
    block = text.split("## Architecture", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    lines = block.splitlines()
    assert lines[0] == "onnxforge/", lines[0]
    found: set[str] = set()
    stack: list[str] = []  # folder per indent level below onnxforge/
    inline_dir: tuple[int, str] | None = None  # (indent, folder) of the last folder line that listed modules
    for line in lines[1:]:
        indent = len(line) - len(line.lstrip(" "))
        tokens = [t.strip(";,:()") for t in line.split()]
        mods = [t for t in tokens if t.endswith(".py")]
        if inline_dir and indent > inline_dir[0] + 2 and tokens:
            found.update(f"{inline_dir[1]}/{m}" for m in mods)  # continuation of a folder's module list
            continue
        level = indent // 2 - 1
        stack = stack[:level]
        here = "/".join(stack)
        head = tokens[0]
        if head.endswith("/"):
            folder = f"{here}/{head[:-1]}".lstrip("/")
            found.add(folder + "/")
            stack.append(head[:-1])
            found.update(f"{folder}/{m}" for m in mods)
            inline_dir = (indent, folder) if mods else None
        else:
            names = mods if len(mods) == len(tokens) else [head]
            found.update(f"{here}/{n}".lstrip("/") for n in names)
            inline_dir = None
    return found


def code_tree() -> set[str]:
    found = set()
    for p in PKG.rglob("*"):
        rel = p.relative_to(PKG).as_posix()
        if "__pycache__" in rel:
            continue
        if p.is_dir():
            found.add(rel + "/")
        elif p.suffix == ".py" and not (p.name == "__init__.py" and p.parent != PKG):
            found.add(rel)
    return found


def test_readme_architecture_tree_is_the_code():
    listed = readme_tree((ROOT / "README.md").read_text())
    code = code_tree()
    assert not code - listed, f"in the code, missing from README's Architecture tree: {sorted(code - listed)}"
    assert not listed - code, f"in README's Architecture tree, not in the code: {sorted(listed - code)}"


def test_tree_parser_sees_a_missing_module():
    text = (ROOT / "README.md").read_text().replace("    convert.py           source", "    convert2.py          source")
    assert "stages/convert2.py" in readme_tree(text) and "stages/convert.py" not in readme_tree(text)


def test_no_module_shadows_the_standard_library():
    shadows = sorted(p.relative_to(ROOT).as_posix() for p in PKG.rglob("*.py")
                     if p.stem in sys.stdlib_module_names)
    assert not shadows, shadows


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_top_level_modules_import_no_room():
    """Arrows run down: cli.py may call into every room; the shared top-level modules never import one (the
    registry finds rooms by name at run time)."""
    bad = {}
    for p in sorted(PKG.glob("*.py")):
        if p.name == "cli.py":
            continue
        up = sorted(m for m in _imports(p) if m.startswith(ROOMS))
        if up:
            bad[p.name] = up
    assert not bad, bad


def test_report_options_break_the_circle():
    """The report's options live in their own module: the builder and the stage import them, not each other."""
    rep = PKG / "stages" / "report"
    assert "onnxforge.stages.report.stage" not in _imports(rep / "build.py")
    assert "onnxforge.stages.report.build" not in {m for m in _imports(rep / "options.py")}
    assert "onnxforge.stages.report.options.ReportOptions" in _imports(rep / "stage.py")


def test_documented_names_still_import_and_stay_cheap():
    code = """
import sys
import onnxforge.score, onnxforge.serve, onnxforge.stages.report
assert "numpy" not in sys.modules and "onnxruntime" not in sys.modules, "package import pulled in numpy/ORT"
from onnxforge.score import Predictor, BoundCall, predict_file, reseed
from onnxforge.serve import Predictor as P2
from onnxforge.stages.report import build_report, load_schema, ReportOptions
from onnxforge.summary import inspect_file
assert P2 is Predictor and load_schema()["title"]
from onnxforge import registry
registry.load_plugins()
assert {"convert", "optimize", "quantize", "report", "validate"} <= set(registry.STAGES), sorted(registry.STAGES)
try:
    import onnxforge.inspect
except ModuleNotFoundError:
    pass
else:
    raise AssertionError("onnxforge.inspect still exists")
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]


def test_stage_packages_register_from_their_stage_module():
    """A stage with helpers is a package; the registry imports its stage.py (so a stage's helpers can be imported
    on their own without registering anything twice)."""
    for name in ("quantize", "optimize", "report"):
        d = PKG / "stages" / name
        assert (d / "stage.py").is_file() and (d / "__init__.py").is_file(), d
        assert re.search(r"@register_stage\(\"" + name, (d / "stage.py").read_text()), name


def test_rooms_import_each_other_one_way_only():
    """Between the capability rooms (each stage, score, serve) an arrow runs one way: quantize may reuse optimize's
    latency and input helpers, but then optimize must not import quantize (shared helpers live at the top level)."""

    def room(mod: str) -> str | None:
        p = mod.split(".")
        if p[:2] == ["onnxforge", "stages"] and len(p) > 2:
            return "stages." + p[2]
        return p[1] if p[0] == "onnxforge" and len(p) > 1 and p[1] in ("score", "serve") else None

    arrows = set()
    for f in PKG.rglob("*.py"):
        here = room(".".join(("onnxforge", *f.relative_to(PKG).with_suffix("").parts)))
        for m in _imports(f):
            there = room(m)
            if here and there and there != here:
                arrows.add((here, there))
    both = sorted({tuple(sorted(a)) for a in arrows if a[::-1] in arrows})
    assert not both, f"rooms importing each other: {both}"
