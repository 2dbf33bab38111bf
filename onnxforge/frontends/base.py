"""What a frontend offers: load the user's model safely, export it to ONNX, predict with the native framework."""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from onnxforge.config import SourceBase
from onnxforge.errors import UserError


def require(module: str, extra: str):
    """Import a framework lazily; a missing one is a setup problem the user can fix."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"{module} is not installed ({e}) — pip install 'onnxforge[{extra}]'") from None


def dist_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def refuse_pickle(path: Path, trust: bool) -> None:
    if not trust:
        raise UserError(f"{path.name} is a pickle/joblib file, which runs code when loaded — set "
                        "source.trust_pickle: true if you trust it, or save it as skops/native format")


class Frontend:
    name: ClassVar[str]
    Source: ClassVar[type[SourceBase]]
    packages: ClassVar[tuple[str, ...]] = ()  # distributions whose versions are recorded
    stochastic: ClassVar[bool] = False
    # default comparison tolerance against the native framework (validate may override per output)
    rtol: ClassVar[float] = 1e-3
    atol: ClassVar[float] = 1e-5

    def load(self, cfg) -> Any:
        raise NotImplementedError

    def export(self, native: Any, cfg, opset: int | None, workdir: Path):
        """Return an onnx.ModelProto whose inputs are named as cfg.inputs and outputs as cfg.outputs."""
        raise NotImplementedError

    def predict(self, native: Any, feeds: dict[str, np.ndarray], cfg) -> dict[str, np.ndarray]:
        """Native predictions keyed by the ONNX output names: the reference `validate` compares against."""
        raise NotImplementedError

    def metadata(self, native: Any, cfg) -> dict[str, Any]:
        """Extra metadata_props (e.g. class labels)."""
        return {}

    def code(self, cfg) -> dict[str, str]:
        """Code the config names that loading runs, {field: 'file.py:fn' | 'module:fn'} (see code_trust)."""
        return {}

    def source_files(self, cfg) -> list[Path]:
        """Files whose content defines the model (hashed for the cache and the metadata)."""
        return [cfg.source.path] if cfg.source.path else []

    def versions(self) -> dict[str, str]:
        return {p: v for p in self.packages if (v := dist_version(p))}
