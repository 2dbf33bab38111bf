"""Memory caps (issue #20): a small file or a model's declared shapes must not make onnxforge allocate gigabytes
unless the user raised the cap.

- data files: the bytes one file may put in memory at once (the members/columns the model reads, decoded), checked
  from headers and metadata *before* reading. Default 4 GiB; ONNXFORGE_MAX_DATA_BYTES=8G raises it, 0 lifts it.
- synthetic inputs: the elements of one synthesized feed set (all inputs together). Default 10,000,000 (40 MB of
  float32); ONNXFORGE_MAX_SYNTHETIC_ELEMENTS=N raises it, 0 lifts it.

`configure()` sets them from Python (a CLI flag would call it); it takes precedence over the environment.
"""

from __future__ import annotations

import os

from onnxforge.errors import UserError

DATA_ENV = "ONNXFORGE_MAX_DATA_BYTES"
SYNTH_ENV = "ONNXFORGE_MAX_SYNTHETIC_ELEMENTS"
DEFAULT_DATA_BYTES = 4 << 30
DEFAULT_SYNTH_ELEMENTS = 10_000_000
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_set: dict[str, int | None] = {}


def configure(*, max_data_bytes: int | str | None = None, max_synthetic_elements: int | str | None = None) -> None:
    """Override the caps for this process (0 = no cap); None leaves a cap as it is."""
    if max_data_bytes is not None:
        _set[DATA_ENV] = _parse(str(max_data_bytes), "max data bytes")
    if max_synthetic_elements is not None:
        _set[SYNTH_ENV] = _parse(str(max_synthetic_elements), "max synthetic elements")


def _parse(text: str, what: str) -> int | None:
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in _UNITS else ""
    try:
        n = int(float(t[: len(t) - len(unit)]) * _UNITS[unit])
    except ValueError:
        raise UserError(f"{what}: '{text}' is not a size — give a number such as 8G, 512M or 20000000 "
                        "(0 = no cap)") from None
    if n < 0:
        raise UserError(f"{what}: '{text}' is negative — give a positive size (0 = no cap)")
    return n or None


def _get(env: str, default: int) -> int | None:
    if env in _set:
        return _set[env]
    raw = os.environ.get(env, "").strip()
    return _parse(raw, env) if raw else default


def max_data_bytes() -> int | None:
    return _get(DATA_ENV, DEFAULT_DATA_BYTES)


def max_synthetic_elements() -> int | None:
    return _get(SYNTH_ENV, DEFAULT_SYNTH_ELEMENTS)


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def check_data_bytes(nbytes: int, path, what: str) -> None:
    """Refuse (exit 2) before allocating when a data file would put more than the cap in memory."""
    cap = max_data_bytes()
    if cap is not None and nbytes > cap:
        raise UserError(f"{path}: {what} would take {human(nbytes)} in memory, over the {human(cap)} cap for "
                        f"data files — use a smaller file or fewer rows, or raise the cap with {DATA_ENV}=SIZE "
                        "(e.g. 16G; 0 = no cap)")
