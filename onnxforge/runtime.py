"""onnxruntime sessions: execution providers (never a silent fallback), thread count, optimization level; quiet() for its Python tools."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np

LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
          "all": "ORT_ENABLE_ALL"}


# which package brings each provider (the message for one that is not installed names it)
PROVIDER_PACKAGES = {
    "CPUExecutionProvider": "onnxruntime",
    "CUDAExecutionProvider": "onnxruntime-gpu (with CUDA 12 and cuDNN 9)",
    "TensorrtExecutionProvider": "onnxruntime-gpu (with the TensorRT 10 libraries)",
    "OpenVINOExecutionProvider": "onnxruntime-openvino (instead of onnxruntime, not beside it)",
    "DmlExecutionProvider": "onnxruntime-directml (Windows)",
    "ROCMExecutionProvider": "onnxruntime-rocm",
    "MIGraphXExecutionProvider": "onnxruntime-migraphx",
    "QNNExecutionProvider": "onnxruntime-qnn",
    "CoreMLExecutionProvider": "onnxruntime (the macOS wheel)",
    "DnnlExecutionProvider": "an onnxruntime build with --use_dnnl",
    "XnnpackExecutionProvider": "an onnxruntime build with --use_xnnpack",
}


class Providers(list):
    """The provider names a config asks for, carrying its `allow_fallback` to every session built from them."""

    allow_fallback: bool = False
    options: dict[str, dict] | None = None

    cache_dir: Path | None = None

    def __new__(cls, names=(), allow_fallback: bool = False, options: dict | None = None, cache_dir=None):
        return super().__new__(cls)

    def __init__(self, names=(), allow_fallback: bool = False, options: dict | None = None, cache_dir=None):
        super().__init__(names)
        self.allow_fallback, self.options, self.cache_dir = allow_fallback, options, cache_dir


# defaults for the GPU providers (a GPU machine runs these; here their tests skip): TensorRT builds fp16 engines
# and caches them (an engine build takes minutes), CUDA picks conv algorithms by heuristic (exhaustive search
# makes the first run slow and the timings depend on it)
GPU_DEFAULTS: dict[str, dict[str, Any]] = {
    "CUDAExecutionProvider": {"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC",
                              "do_copy_in_default_stream": True},
    "TensorrtExecutionProvider": {"device_id": 0, "trt_fp16_enable": True, "trt_engine_cache_enable": True,
                                  "trt_engine_cache_path": "trt_cache", "trt_timing_cache_enable": True,
                                  "trt_timing_cache_path": "trt_cache"},
}


def provider_options(name: str, options: dict[str, dict] | None = None, cache_dir: str | Path | None = None
                     ) -> dict[str, str]:
    """onnxruntime's options for provider `name`: our GPU defaults, then the user's (runtime.provider_options).
    The TensorRT engine and timing caches go under `cache_dir` (runtime.cache_dir) and are off without it:
    nothing is written outside the folders asked for. Values as strings: what onnxruntime takes for every
    provider."""
    opts = dict(GPU_DEFAULTS.get(name, {}))
    if name == "TensorrtExecutionProvider":
        if cache_dir is None:
            opts = {k: v for k, v in opts.items() if "cache" not in k}
        else:
            for k in ("trt_engine_cache_path", "trt_timing_cache_path"):
                opts[k] = str(Path(cache_dir) / str(opts[k]))
    opts |= dict((options or {}).get(name, {}))
    return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in opts.items()}


def device_run(sess, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    """A run through I/O binding: on a CUDA/TensorRT session the inputs are copied to the device once and the
    outputs stay there until read back (no per-node host round trips); on CPU it is a plain run."""
    import onnxruntime as ort

    names = outputs or [o.name for o in sess.get_outputs()]
    dev = "cuda" if ran_on(sess) in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"
    binding = sess.io_binding()
    for k, v in feeds.items():
        binding.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v), dev, 0))
    for n in names:
        binding.bind_output(n, dev, 0)
    sess.run_with_iobinding(binding)
    return dict(zip(names, binding.copy_outputs_to_cpu(), strict=True))


# what sessions built without an explicit provider list use: set by `onnxforge <cmd> --providers` (see use())
_DEFAULT: ContextVar[Providers | None] = ContextVar("onnxforge_providers", default=None)


@contextmanager
def use(names: list[str] | None, allow_fallback: bool = False) -> Iterator[None]:
    """Every session built inside (also those a stage builds for its own checks) asks for `names`."""
    tok = _DEFAULT.set(Providers(names, allow_fallback) if names else None)
    try:
        yield
    finally:
        _DEFAULT.reset(tok)


@contextmanager
def from_flags(flag: list[str] | None, allow_fallback: bool = False) -> Iterator[dict]:
    """`--providers`/`--allow-fallback` of a CLI command: inside, every session asks for them; yields the config
    keys ({"runtime": {...}}) a stage run merges over the YAML's, so the manifest records them too."""
    names = parse(flag)
    if names is None and not allow_fallback:
        yield {}
        return
    keys = {"allow_fallback": True} if allow_fallback else {}
    if names:
        keys["providers"] = names
    with use(names, allow_fallback):
        yield {"runtime": keys}


def requested(configured: list[str] | None) -> list[str] | None:
    """The providers a command asks for: --providers (use()) over the config's runtime.providers."""
    return _DEFAULT.get() or configured


def parse(flag: list[str] | None) -> list[str] | None:
    """--providers cuda,cpu or --providers CUDAExecutionProvider → onnxruntime's names (short forms accepted)."""
    if not flag:
        return None
    short = {p.removesuffix("ExecutionProvider").lower(): p for p in PROVIDER_PACKAGES}
    short |= {"trt": "TensorrtExecutionProvider", "ov": "OpenVINOExecutionProvider", "dml": "DmlExecutionProvider"}
    out = []
    for item in flag:
        for name in filter(None, (x.strip() for x in item.split(","))):
            out.append(short.get(name.lower(), name))
    return out


def _missing(p: str, available: list[str]) -> str:
    pkg = PROVIDER_PACKAGES.get(p)
    bring = f"install {pkg}" if pkg else "install an onnxruntime build that has it"
    return (f"execution provider {p} is not available here (installed: {', '.join(available)}) — {bring}, "
            "or ask for one that is installed (--providers / runtime.providers), or set runtime.allow_fallback: "
            "true (--allow-fallback) to run on the installed ones")


def _provider_error(msg: str):
    """A provider asked for is missing or did not start: exit 2 wherever it surfaces. Marked `provider` so a
    caller that turns model failures into notes (the report) lets it through."""
    from onnxforge.errors import UserError

    err = UserError(msg)
    err.provider = True
    return err


def providers(requested: list[str] | None = None, allow_fallback: bool | None = None) -> list[str]:
    """The providers to open a session with. One requested but not installed is exit 2 (naming what is installed
    and the package that brings it) unless fallback is allowed; then it is skipped with a warning. CPU is
    always last: onnxruntime places nodes the others cannot run there."""
    import onnxruntime as ort

    if requested is None:
        requested = _DEFAULT.get()
    if allow_fallback is None:
        allow_fallback = bool(getattr(requested, "allow_fallback", False))
    available = ort.get_available_providers()
    chosen = []
    for p in requested or ["CPUExecutionProvider"]:
        if p in available:
            chosen.append(p)
        elif not allow_fallback:
            raise _provider_error(_missing(p, available))
        else:
            warnings.warn(f"execution provider {p} is not available here (installed: {', '.join(available)}); "
                          "runtime.allow_fallback is true: running on the next one", stacklevel=2)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return list(dict.fromkeys(chosen))


def session(model: str | Path | bytes | Any, *, provider_list: list[str] | None = None, threads: int | None = None,
            level: str = "all", optimized_path: str | Path | None = None, allow_fallback: bool | None = None,
            options: dict[str, dict] | None = None):
    """Build an InferenceSession from a path, bytes or ModelProto. After creation the providers onnxruntime really
    activated are checked against the request: a GPU provider that is installed but could not start (no driver,
    no device) is exit 2 unless fallback is allowed. `sess.get_providers()[0]` is what runs the model."""
    import onnxruntime as ort

    if provider_list is None:
        provider_list = _DEFAULT.get()
    if allow_fallback is None:
        allow_fallback = bool(getattr(provider_list, "allow_fallback", False))
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
    chosen = providers(provider_list, allow_fallback)
    if options is None:
        options = getattr(provider_list, "options", None)
    cache_dir = getattr(provider_list, "cache_dir", None)
    with warnings.catch_warnings(record=True) as caught:  # ORT warns (UserWarning) when a provider fails to start
        warnings.simplefilter("always")
        sess = ort.InferenceSession(src, sess_options=so, providers=chosen,
                                    provider_options=[provider_options(p, options, cache_dir) for p in chosen])
    active = sess.get_providers()
    lost = [p for p in chosen if p not in active]
    if lost:
        why = "; ".join(str(w.message).splitlines()[0] for w in caught)[:300]
        msg = (f"onnxruntime could not start {', '.join(lost)} (active: {', '.join(active)})"
               + (f": {why}" if why else ""))
        if not allow_fallback:
            raise _provider_error(msg + " — check the driver and device, or set runtime.allow_fallback: true")
        warnings.warn(msg + "; runtime.allow_fallback is true: running on " + active[0], stacklevel=2)
    return sess


def ran_on(sess) -> str:
    """The provider that ran the model: the first one the session really activated."""
    return sess.get_providers()[0]


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
