"""What a frontend offers: load the user's model safely, export it to ONNX, predict with the native framework."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from onnxforge.config import SourceBase
from onnxforge.errors import UserError
from onnxforge.registry import dist_version


def require(module: str, extra: str):
    """Import a framework lazily; a missing one is a setup problem the user can fix."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"{module} is not installed ({e}) — pip install 'onnxforge[{extra}]'") from None


def refuse_pickle(path: Path, trust: bool) -> None:
    if not trust:
        raise UserError(f"{path.name} is a pickle/joblib file, which runs code when loaded — set "
                        "source.trust_pickle: true if you trust it, or save it as skops/native format")


@dataclass(frozen=True)
class ThreadLimit:
    """Whether a thread limit really holds in the native framework (read back from it, never assumed), and how:
    what was set and read back, or why it could not be."""

    applied: bool
    how: str


@contextlib.contextmanager
def pool_threads(n: int) -> Iterator[ThreadLimit]:
    """Every OpenMP and BLAS pool loaded in the process limited to n threads (threadpoolctl), read back inside."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        yield ThreadLimit(False, "threadpoolctl is not installed (pip install threadpoolctl)")
        return
    with threadpool_limits(n):
        pools = threadpool_info()
        off = sorted({f"{p.get('internal_api')} {p.get('num_threads')}" for p in pools if p.get("num_threads") != n})
        yield ThreadLimit(not off, f"OpenMP/BLAS pools at {n} (threadpoolctl, {len(pools)} read back)" if not off
                          else f"threadpoolctl could not limit {', '.join(off)} to {n}")


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[ThreadLimit]:
    """torch's intra-op pool at n threads (torch.set_num_threads), read back, restored after."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        got = torch.get_num_threads()
        yield ThreadLimit(got == n, f"torch.set_num_threads({n}); get_num_threads() = {got}")
    finally:
        torch.set_num_threads(prev)


class Frontend:
    name: ClassVar[str]
    Source: ClassVar[type[SourceBase]]
    packages: ClassVar[tuple[str, ...]] = ()  # distributions whose versions are recorded
    stochastic: ClassVar[bool] = False
    path_required: ClassVar[bool] = True
    reads: ClassVar[tuple[str, ...] | None] = None  # file kinds (frontends/_files.py sniff) this frontend loads
    wanted: ClassVar[str] = "the model file"
    # default comparison tolerance against the native framework (validate may override per output); `tolerances`
    # refines it per (model family, output kind) — see tolerance()
    rtol: ClassVar[float] = 1e-3
    atol: ClassVar[float] = 1e-5
    tolerances: ClassVar[dict[tuple[str, str], tuple[float, float]]] = {}
    verify_rows: ClassVar[int] = 32  # convert's check before writing (convert.verify_rows overrides)

    def load(self, cfg) -> Any:
        raise NotImplementedError

    def preflight(self, cfg) -> None:
        """Checks of the source that read a few bytes and import no framework — the file is there and of a kind
        this frontend loads. `config check` and `run` both call it, before anything is created."""
        from onnxforge.frontends._files import sniff, wrong_file

        path = cfg.source.path
        if path is None:
            if self.path_required:
                raise UserError(f"source.path is required for framework '{self.name}' — point it at {self.wanted}")
            return
        if not Path(path).is_file():
            raise UserError(f"source.path: {path} not found — check the path (relative to the YAML file)")
        if self.reads is None:
            return
        kind = sniff(Path(path))
        if kind not in self.reads:
            raise wrong_file(Path(path), kind, self.wanted)
        if kind == "pickle":
            refuse_pickle(Path(path), cfg.source.trust_pickle)

    def export(self, native: Any, cfg, opset: int | None, workdir: Path):
        """Return an onnx.ModelProto whose inputs are named as cfg.inputs and outputs as cfg.outputs."""
        raise NotImplementedError

    def predict(self, native: Any, feeds: dict[str, np.ndarray], cfg) -> dict[str, np.ndarray]:
        """Native predictions keyed by the ONNX output names: the reference `validate` compares against."""
        raise NotImplementedError

    @contextlib.contextmanager
    def threads(self, native: Any, n: int) -> Iterator[ThreadLimit]:
        """While inside, `predict` runs on n threads; yields whether that really holds (read back from the
        framework) so a timing whose limit did not apply is labelled and kept out of ratios. Frontends override."""
        yield ThreadLimit(False, f"the {self.name} frontend has no thread control")

    def preset_threads(self, n: int) -> None:
        """Called before `load` when a thread count is known: for frameworks whose pools are fixed once they
        start (TensorFlow)."""

    def family(self, native: Any) -> str:
        """The kind of model, as far as its numerical agreement goes (tabular frontends: trees, linear, other)."""
        return self.name

    def output_kind(self, native: Any, cfg, output: str) -> str:
        """What an output holds, as far as its tolerance goes: value (regression values, scores, network outputs)
        or probabilities."""
        return "value"

    def tolerance(self, native: Any, cfg, output: str) -> tuple[float, float]:
        """(rtol, atol) an output is held to against the native predict by default: set from measurement
        (bench/bench_tolerances.py, bench/out/tolerances.md) at 10-100× the worst error the converters showed.
        validate (against: source) and convert's self-check both ask it."""
        return self.tolerances.get((self.family(native), self.output_kind(native, cfg, output)),
                                   (self.rtol, self.atol))

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
