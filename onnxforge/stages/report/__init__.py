"""The report: collect figures for every artifact of a run (or loose .onnx files), then render them as terminal
tables, report.json (schema in onnxforge/schemas/report.schema.json), report.md and a self-contained report.html.
options.py holds ReportOptions, build.py the entry point (`build_report`, `load_schema`, re-exported here lazily),
stage.py the pipeline stage; collect.py gathers the figures, terminal/markdown/html/plots render them."""

from __future__ import annotations

import importlib

_EXPORTS = {"build_report": "build", "load_schema": "build", "FORMATS": "build", "ReportOptions": "options"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
