"""One declaration per extension point: frontends and stages register themselves here by name.

Registration modules must stay cheap to import (no ML framework at module level), because the
config schema is derived from every registered options model.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, entry_points, version
from typing import Any

from pydantic import BaseModel

FRONTENDS: dict[str, type] = {}
STAGES: dict[str, StageSpec] = {}
_loaded = False


@dataclass(frozen=True)
class StageSpec:
    name: str
    options: type[BaseModel]
    run: Callable[..., Any]
    produces_model: bool
    help: str


def register_frontend(cls: type) -> type:
    """Class decorator; the class carries `name` and `Source` (its pydantic source model)."""
    FRONTENDS[cls.name] = cls
    return cls


def register_stage(name: str, options: type[BaseModel], *, produces_model: bool, help: str = ""):
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        STAGES[name] = StageSpec(name, options, fn, produces_model, help or (fn.__doc__ or "").strip())
        return fn

    return deco


def dist_version(name: str) -> str | None:
    """The installed version of a distribution, None when it is not installed (manifests record them)."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def load_plugins() -> None:
    """Import every built-in frontend and stage module, then third-party `onnxforge.plugins` entry points."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for pkg_name in ("onnxforge.frontends", "onnxforge.stages"):
        pkg = importlib.import_module(pkg_name)
        for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            if not mod.name.startswith("_"):  # a package (a stage with helpers) registers in its stage module
                importlib.import_module(f"{pkg_name}.{mod.name}{'.stage' if mod.ispkg else ''}")
    for ep in entry_points(group="onnxforge.plugins"):
        ep.load()


def frontend(name: str):
    load_plugins()
    return FRONTENDS[name]()
