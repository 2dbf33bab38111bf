"""Lazy re-exports for a package's public names: `import onnxforge.score` stays cheap (no numpy, no onnxruntime)
until a name is used."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def exports(package: str, names: dict[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` resolving each name in `names` (name → submodule) on first use."""

    def __getattr__(name: str):
        if name in names:
            return getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
