"""The gate every optimize pass goes through before its output counts: declared domains trimmed to the ones used,
the full onnx.checker, then onnxruntime must load it. A failure is a `Rejected` with a one-line reason — the stage
reports it and goes on with the best valid model it has; nothing here is fatal to the stage.

Also here: the one repair a pass may get. onnxruntime's extended level fuses LayerNormalization into graphs of any
opset, but the op only exists from opset 17: the output then fails the checker ("No Op registered for
LayerNormalization with domain_version of 13"). `needed_opset` reads that failure and `upgrade` converts the
pass's *input* with onnx's version converter (its adapters keep the semantics), so the pass can be run again on a
model where its fusion is valid ONNX. The rerun is gated like any pass, numerics included.
"""

from __future__ import annotations

import re
from pathlib import Path

from onnxforge.errors import one_line
from onnxforge.summary import all_nodes

# opset_import entries onnx always resolves (the default domain); never dropped even with no node using them
_DEFAULT = ("", "ai.onnx")


class Rejected(Exception):
    """A pass output that must not be used; str() is the reason shown to the user."""


def used_domains(model) -> set[str]:
    """Domains a node of the graph (subgraphs included) or of a model-local function uses, plus the functions'
    own domains (a call to a function is a node in its domain)."""
    used = {n.domain for n in all_nodes(model.graph)}
    for f in model.functions:
        used |= {n.domain for n in f.node}
        used |= {o.domain for o in f.opset_import}
    return {"" if d == "ai.onnx" else d for d in used}


def prune_opsets(model) -> list[str]:
    """Declare exactly the domains the nodes and functions use: drop the others (onnxruntime writes every domain
    it knows: training, nchwc, aten, …), and declare at version 1 a contrib domain a node uses undeclared
    (onnxruntime.transformers' fusions write com.microsoft nodes without importing the domain; onnxruntime runs
    them, onnx.checker refuses them). The default domain stays. Returns the dropped domains."""
    used = used_domains(model)
    declared = {"" if o.domain == "ai.onnx" else o.domain for o in model.opset_import}
    keep = [(o.domain, o.version) for o in model.opset_import if o.domain in _DEFAULT or o.domain in used]
    dropped = [o.domain for o in model.opset_import if o.domain not in _DEFAULT and o.domain not in used]
    missing = sorted(d for d in used - declared if d.startswith("com.microsoft"))
    if dropped or missing:
        del model.opset_import[:]
        for d, v in keep + [(d, 1) for d in missing]:
            model.opset_import.add(domain=d, version=v)
    return dropped


def tidy(path: Path) -> list[str]:
    """prune_opsets on a file in place (external data references are left as they are)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    before = [(o.domain, o.version) for o in m.opset_import]
    dropped = prune_opsets(m)
    if [(o.domain, o.version) for o in m.opset_import] != before:
        onnx.save(m, str(path))
    return dropped


def checker_error(path: Path) -> str | None:
    """onnx.checker (full check, by path so external data resolves) — the first line of its complaint, or None."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        return one_line(e)[:300] or type(e).__name__
    return None


def loads(path: Path):
    """An onnxruntime session on the file (optimizations off: what the pass wrote), or Rejected."""
    from onnxforge import runtime

    try:
        return runtime.session(Path(path), level="disable", threads=1)
    except Exception as e:
        raise Rejected(f"onnxruntime cannot load it: {one_line(e)[:200] or type(e).__name__}") from None


_NO_OP = re.compile(r"No Op registered for (\w+) with domain_version of (\d+)")


def needed_opset(error: str, path: Path) -> int | None:
    """For a checker failure "No Op registered for OP with domain_version of N" on a standard op that exists from
    a later opset: that opset (LayerNormalization → 17). None for anything else."""
    import onnx

    m = _NO_OP.search(error or "")
    if not m:
        return None
    op, declared = m.group(1), int(m.group(2))
    model = onnx.load(str(path), load_external_data=False)
    if not any(n.op_type == op and n.domain in _DEFAULT for n in all_nodes(model.graph)):
        return None  # the op is in another domain: not ours to fix
    since = [s.since_version for s in onnx.defs.get_all_schemas_with_history() if s.name == op and s.domain in _DEFAULT]
    later = [v for v in since if v > declared]
    if not later or min(later) > onnx.defs.onnx_opset_version():
        return None
    return min(later)


def upgrade(src: Path, dst: Path, version: int) -> Path:
    """src converted to `version` of the default domain by onnx's version converter, checked; Rejected if the
    converter cannot (custom domains, ops without adapters) or its output fails the checker."""
    import onnx
    from onnx import version_converter

    from onnxforge.artifact import save_model

    try:
        m = version_converter.convert_version(onnx.load(str(src)), version)
    except Exception as e:
        raise Rejected(f"onnx's version converter cannot take the model to opset {version} "
                       f"({one_line(e)[:160] or type(e).__name__})") from None
    save_model(m, dst, run_check=False)
    err = checker_error(dst)
    if err:
        raise Rejected(f"the model converted to opset {version} fails onnx.checker: {err}")
    return dst
