"""Hardware targets: one module per target (openvino, ort-mobile), registered by name like stages — an options
model plus a run function that writes the target's files and a loader that scores them, so every target is
validated against the ONNX artifact with the usual tolerances and timed beside onnxruntime (targets/check.py)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

TARGETS: dict[str, TargetSpec] = {}
_MODULES = ("openvino", "ort_mobile")


@dataclass(frozen=True)
class TargetSpec:
    name: str
    options: type[BaseModel]
    build: Callable[..., dict]  # (onnx path, out dir, options) → {"files": [...], ...figures}
    load: Callable[..., Any]  # (out dir, options, threads) → a callable feeds → {output: array}
    package: str  # what `pip install` brings it (named in the error when it is missing)
    help: str
    files: tuple[str, ...] = ()  # every file build writes: a folder holding exactly these is an earlier compile's


def register_target(name: str, options: type[BaseModel], *, load: Callable[..., Any], package: str, help: str = "",
                    files: tuple[str, ...] = ()):
    def deco(fn: Callable[..., dict]) -> Callable[..., dict]:
        TARGETS[name] = TargetSpec(name, options, fn, load, package, help or (fn.__doc__ or "").strip(),
                                   tuple(sorted(files)))
        return fn

    return deco


def load_targets() -> dict[str, TargetSpec]:
    for m in _MODULES:
        importlib.import_module(f"onnxforge.targets.{m}")
    return TARGETS


def target(name: str) -> TargetSpec:
    from onnxforge.errors import UserError

    specs = load_targets()
    if name not in specs:
        raise UserError(f"unknown target {name!r} — choose one of {', '.join(sorted(specs))}")
    return specs[name]
