"""The one JSON document every command prints on stdout under --json (schema: onnxforge/schemas/envelope.schema.json).

    {"ok": bool, "exit_code": int, "command": "quantize", "result": {...} | null, "warnings": [str, ...],
     "error": "one line"}            # "error" only when ok is false

`result` is the command's object: the manifest for `run`, {stage, verdict, model, summary} for the stage commands
(convert, validate, quantize, optimize), the report / inspection / scoring / timing object for report, inspect,
predict and bench, {name, framework, stages, runs_code, trust_pickle} for `config check`, the pipeline JSON Schema
for `config schema`. On exit 1 it still holds what the check produced; on exit 2 and 3 it is null.
"""

from __future__ import annotations

import json
import math
import warnings as _warnings
from typing import Any

from onnxforge.errors import one_line

SCHEMA_ID = "https://onnxforge.dev/schemas/envelope.schema.json"
SCHEMA_FILE = "schemas/envelope.schema.json"
STAGE_COMMANDS = ("convert", "validate", "quantize", "optimize")
COMMANDS = ("run", *STAGE_COMMANDS, "inspect", "predict", "report", "bench", "compile", "serve", "config check",
            "config schema")
MAX_WARNING_CHARS = 500


def stage_result(stage: str, verdict: str | None, model: Any, summary: dict | None) -> dict:
    """The `result` of a stage command, the same shape for every stage and every exit code."""
    return {"stage": stage, "verdict": verdict, "model": None if model is None else str(model),
            "summary": summary if isinstance(summary, dict) else {}}


def stage_result_from(stage: str, found: Any) -> dict:
    """A stage command's result from what CheckFailed carried: a stage summary, or (config mode) a manifest."""
    if isinstance(found, dict) and isinstance(found.get("stages"), list):
        entry = next((s for s in found["stages"] if s.get("name") == stage), None) or {}
        return stage_result(stage, entry.get("verdict", "fail"), None, entry.get("summary"))
    return stage_result(stage, "fail", None, found if isinstance(found, dict) else {})


def warning_line(w: _warnings.WarningMessage) -> str:
    text = one_line(f"{w.category.__name__}: {w.message}")
    return text if len(text) <= MAX_WARNING_CHARS else text[: MAX_WARNING_CHARS - 3] + "..."


def collect_warnings(result: Any, caught: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Python warnings raised while the command ran, then the `warnings` lists the result carries: its own, a
    stage result's summary's, and (for a run) every stage summary's, prefixed with the stage name. Deduplicated,
    in order, one line each."""
    lines = list(caught)
    if isinstance(result, dict):
        lines += _strings(result.get("warnings"))
        if isinstance(result.get("summary"), dict):
            lines += _strings(result["summary"].get("warnings"))
        stages = result.get("stages") if isinstance(result.get("stages"), list) else []
        for s in stages:
            if isinstance(s, dict) and isinstance(s.get("summary"), dict):
                lines += [f"{s.get('name')}: {w}" for w in _strings(s["summary"].get("warnings"))]
    out: list[str] = []
    for line in lines:
        line = one_line(line)
        if line and line not in out:
            out.append(line)
    return out


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def envelope(command: str, exit_code: int, result: Any = None, error: str | None = None,
             warnings: list[str] | tuple[str, ...] = ()) -> dict:
    result = finite(result) if isinstance(result, dict) else None
    doc: dict[str, Any] = {"ok": exit_code == 0, "exit_code": exit_code, "command": command, "result": result,
                           "warnings": collect_warnings(result, warnings)}
    if exit_code != 0:
        doc["error"] = one_line(error or f"exit {exit_code}") or f"exit {exit_code}"
    return doc


def finite(obj: Any) -> Any:
    """JSON has no NaN or Infinity (jq and most parsers reject them): non-finite floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def dumps(doc: Any) -> str:
    return json.dumps(finite(doc), indent=2, default=str, allow_nan=False)


def schema() -> dict:
    """The JSON Schema of the envelope (package data)."""
    from importlib.resources import files

    return json.loads(files("onnxforge").joinpath(SCHEMA_FILE).read_text())
