"""Number formatting shared by the terminal, Markdown and HTML renderings."""

from __future__ import annotations

import re
from typing import Any

from onnxforge.timing import threads_label as threads  # noqa: F401  (the renderers' name for it)

# control characters (a terminal obeys ESC sequences, even from a file you `cat`) and bidi overrides (text that
# reads differently from what it is): never copied from a run folder into any rendering
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(v: Any) -> str:
    """A value as text with every control or bidi character shown as its \\x../\\u.... escape."""
    s = "" if v is None else str(v)
    return _UNSAFE.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), s)


def size(n: int | None) -> str:
    if n is None:
        return ""
    for unit, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:,.1f} {unit}"
    return f"{n} B"


def times(ratio: float | None) -> str:
    """A size ratio (this file / the other) in words: '3.41× smaller', '2.91× larger' or 'same size' — never
    '0.34× smaller' for a file that grew."""
    if ratio is None or not isinstance(ratio, int | float) or isinstance(ratio, bool) or ratio != ratio or ratio <= 0:
        return ""
    if ratio == 1:
        return "same size"
    x, word = (1 / ratio, "smaller") if ratio < 1 else (ratio, "larger")
    return f"{x:.3f}× {word}" if x < 1.01 else f"{x:,.2f}× {word}"


def size_change(before, after) -> str:
    """'863 → 2,511 B' as a ratio in words: '2.91× larger'."""
    ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (before, after))
    return times(after / before) if ok and before else ""


def is_size(key: str) -> bool:
    """A figure that is a size in bytes (file_bytes, initializer_bytes, …)."""
    return str(key).rsplit(".", 1)[-1].endswith("bytes")


def row_ratio(r: dict) -> str:
    """A before → after row's ratio: sizes in words ('2.91× larger'), other figures as after/before."""
    if is_size(r.get("key", "")):
        return size_change(r.get("before"), r.get("after"))
    ratio = r.get("ratio")
    return f"{ratio:.3g}" if isinstance(ratio, int | float) and not isinstance(ratio, bool) else ""


def opset(d: dict | None, ops: dict | None = None) -> str:
    """'18' or '18, com.microsoft 1'; with the op histogram, only the domains some node uses (quantizers import
    every domain they know)."""
    if not d:
        return ""
    main = d.get("ai.onnx")
    used = None if ops is None else {op.split("::")[0] for op in ops if "::" in op}
    rest = [f"{k} {v}" for k, v in d.items() if k != "ai.onnx" and (used is None or k in used)]
    return ", ".join(([str(main)] if main is not None else []) + rest)


def ms(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}" if v < 10 else f"{v:.1f}"


def num(v: float | None) -> str:
    return "" if v is None else f"{v:,.0f}"


def sci(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return "0" if v == 0 else f"{v:.3g}"
    return str(v)


def value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


METRIC_NAMES = {"accuracy": "acc", "top1_agreement": "agree", "r2": "R²", "mae": "MAE", "rmse": "RMSE"}


def metrics(m: dict | None) -> str:
    if not m:
        return ""
    return " · ".join(f"{METRIC_NAMES[k]} {m[k]:.4g}" for k in METRIC_NAMES if isinstance(m.get(k), float))


def deltas(d: dict | None) -> str:
    if not d:
        return ""
    return " · ".join(f"{METRIC_NAMES[k]} {d[k]:+.4g}" for k in METRIC_NAMES if isinstance(d.get(k), float))


def comparison_other(c: dict) -> str:
    """The figures of a validation comparison that are not float errors: label flips, distribution checks."""
    if c.get("kind") == "label":
        return f"{c.get('flips')}/{c.get('total')} flips"
    if c.get("kind") == "distribution" and "max_z" in c:
        return (f"max z {c['max_z']:.2f}; mean off in {c.get('mean_fail_rows')}/{c.get('rows')} rows, "
                f"quantiles off in {c.get('quantile_fail_rows')}/{c.get('rows')}")
    return str(c.get("reason") or "")


def nonfinite(e: dict) -> str:
    """'; 1 NaN/inf differ' for a float error row whose NaN/inf elements differ from the reference's: max/mean/p99
    are over finite pairs only, so without it a NaN output would read as exact."""
    nf = e.get("nonfinite_mismatch")
    return f"; {nf:,} NaN/inf differ" if isinstance(nf, int) and nf else ""


def tail_note(rows: list[dict]) -> str:
    """Why a p90/p99 cell is blank (the timing gives none from too few runs), or ''."""
    if any(r.get("p90_ms") is None or r.get("p99_ms") is None for r in rows):
        return ("p90 needs 10 timed runs and p99 100: blank where fewer ran (it would be the slowest run under "
                "another name) — raise latency runs")
    return ""
