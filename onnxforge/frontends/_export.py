"""Helpers the exporting frontends share: silencing framework chatter, one-line reasons from exporter errors,
and naming an exported graph's dynamic dims after the config.

Not a registered frontend (the leading underscore keeps the registry from importing it as one); stdlib only.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import warnings


@contextlib.contextmanager
def quiet():
    """Silence a framework's chatter (prints, C++ logs, warnings) down to the file descriptors: the CLI's stdout
    carries JSON and its stderr a one-line error, and exporters print progress to both."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def first_line(e: BaseException) -> str:
    """The first line of the innermost cause: exporters wrap the real reason in generic 'step 1/3' errors."""
    seen = 0
    while e.__cause__ is not None and seen < 10:
        e, seen = e.__cause__, seen + 1
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(e).__name__}: {line}"[:300]


def name_dims(model, specs, *, batch_major_outputs: bool = False) -> None:
    """Give dynamic dims the config's names (exporters invent 's31', 'unk__6'), everywhere the symbol appears.
    With batch_major_outputs, an output's own symbolic dim 0 becomes the first input's batch name too."""
    by_name = {i.name: i for i in model.graph.input}
    mapping: dict[str, str] = {}
    for s in specs:
        vi = by_name.get(s.name)
        if vi is None:
            continue
        for d, want in zip(vi.type.tensor_type.shape.dim, s.shape, strict=False):
            if isinstance(want, str) and d.HasField("dim_param") and d.dim_param != want:
                mapping.setdefault(d.dim_param, want)
    first = specs[0].shape[0] if specs and specs[0].shape else None
    if batch_major_outputs and isinstance(first, str):
        for o in model.graph.output:
            dims = o.type.tensor_type.shape.dim
            if dims and dims[0].HasField("dim_param"):
                mapping.setdefault(dims[0].dim_param, first)
    for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in mapping:
                d.dim_param = mapping[d.dim_param]


def strip_provenance(model) -> None:
    """Drop what depends on where the exporting code lives (torch's per-node stack traces hold absolute paths;
    doc strings), so an artifact leaks no machine paths and the same config gives the same bytes anywhere."""

    def clean(nodes):
        for node in nodes:
            node.doc_string = ""
            keep = [(p.key, p.value) for p in node.metadata_props if not p.key.endswith("stack_trace")]
            del node.metadata_props[:]
            for k, v in keep:
                e = node.metadata_props.add()
                e.key, e.value = k, v
            for a in node.attribute:
                if a.HasField("g"):
                    clean(a.g.node)
                for g in a.graphs:
                    clean(g.node)

    model.doc_string = ""
    clean(model.graph.node)
    for fn in model.functions:
        clean(fn.node)
