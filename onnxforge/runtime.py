"""onnxruntime sessions: providers with fallback, thread count, optimization level; quiet() for its Python tools."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
          "all": "ORT_ENABLE_ALL"}


def providers(requested: list[str] | None = None) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    chosen = []
    for p in requested or ["CPUExecutionProvider"]:
        if p in available:
            chosen.append(p)
        else:
            warnings.warn(f"execution provider {p} is not available here; falling back", stacklevel=2)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def session(model: str | Path | bytes | Any, *, provider_list: list[str] | None = None, threads: int | None = None,
            level: str = "all", optimized_path: str | Path | None = None):
    """Build an InferenceSession from a path, bytes or ModelProto."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4  # fatal only: ORT's error log repeats the exception (a second stderr line)
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    src = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model) if isinstance(
        model, Path) else model
    return ort.InferenceSession(src, sess_options=so, providers=providers(provider_list))


def run(sess, feeds: dict[str, np.ndarray], outputs: list[str] | None = None, *,
        user_inputs: bool = True) -> dict[str, np.ndarray]:
    """Outputs by name. A model whose inputs pin the batch dim (e.g. [1, 4]) is run on the rows that many at a
    time, its outputs concatenated: onnxruntime would refuse any other row count (INVALID_ARGUMENT).

    With `user_inputs` (the default: the user's model, or one fed the user's data or inputs synthesized from
    their input spec), onnxruntime failing mid-run on the inputs (a Gemm whose dims do not match, a broadcast
    that does not fit) is the inputs not fitting the model: one line, exit 2. Pass False for a model we built
    from one that already ran on the same feeds: its failure is a bug."""
    from onnxforge import data

    names = outputs or [o.name for o in sess.get_outputs()]
    size = pinned_rows(sess, feeds)
    try:
        if size is None:
            return dict(zip(names, sess.run(names, dict(feeds)), strict=True))
        parts = [sess.run(names, dict(b)) for b in data.batches(feeds, size)]
    except Exception as e:
        if not user_inputs or not _run_failure(e):
            raise
        raise _unfit(e, feeds) from None
    return {name: np.concatenate([p[j] for p in parts]) for j, name in enumerate(names)}


# onnxruntime's status classes for a kernel that cannot compute on the inputs it got (shape or value mismatch);
# others (NOT_IMPLEMENTED, ENGINE_ERROR, …) are left to the caller
_RUN_FAILURES = ("InvalidArgument", "Fail", "RuntimeException")


def _run_failure(e: Exception) -> bool:
    return type(e).__module__.startswith("onnxruntime") and type(e).__name__ in _RUN_FAILURES


def _unfit(e: Exception, feeds: dict[str, np.ndarray]):
    from onnxforge.admission import ort_reason
    from onnxforge.errors import UserError

    cls, reason = ort_reason(e)
    reason = reason.replace("Non-zero status code returned while running ", "")
    shown = ", ".join(f"{k} {np.asarray(v).dtype}{list(np.shape(v))}" for k, v in list(feeds.items())[:6])
    more = f" and {len(feeds) - 6} more" if len(feeds) > 6 else ""
    return UserError(f"onnxruntime cannot run the model on inputs {shown}{more} ({cls}: {reason}) — give data "
                     "whose shapes fit the model (--data FILE or data.path), or declare the real input shapes "
                     "(inputs: in the config) where the model leaves them symbolic")


def pinned_rows(sess, feeds: dict[str, np.ndarray]) -> int | None:
    """The batch size the session's inputs pin when the feeds hold another number of rows, else None."""
    from onnxforge.data import whole
    from onnxforge.errors import UserError

    skip = whole(feeds)
    rows = {len(v) for k, v in feeds.items() if np.ndim(v) and k not in skip}
    if len(rows) != 1:
        return None
    pin = getattr(feeds, "rows_per_run", None)
    dims = {tuple(i.shape[:1]) for i in sess.get_inputs() if i.name in feeds and i.name not in skip}
    if pin:
        dims = {(pin,)}
    if len(dims) != 1:
        return None
    (b,), n = (dims.pop() or (None,)), rows.pop()
    if not isinstance(b, int) or b <= 0 or n == b:
        return None
    if n % b:
        raise UserError(f"the model takes exactly {b} rows per run (its inputs pin the batch dim) and {n} rows are "
                        f"not a multiple of {b} — give a multiple of {b} rows")
    return b


@contextmanager
def quiet() -> Iterator[None]:
    """onnxruntime's Python tools (quantization, transformers optimizer) log advice at WARNING/INFO on the root logger; keep the CLI output ours."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(old)
