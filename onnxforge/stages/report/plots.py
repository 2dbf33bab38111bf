"""Report plots as base64 PNG strings (embedded in the HTML, no files, no CDN). matplotlib is imported lazily and
driven through its object API with the Agg canvas, so no GUI backend or pyplot global state is touched."""

from __future__ import annotations

import base64
import io
import math

PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#EECA3B", "#9D755D"]


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _short(label: str, n: int = 28) -> str:
    label = label if len(label) <= n else "…" + label[-(n - 1):]
    return label.replace("$", r"\$")  # a "$" pair would start matplotlib mathtext


def size_bars(labels: list[str], file_bytes: list[int], params: list[int]) -> str:
    """File size per artifact (KiB), parameter count written on each bar."""
    fig = _figure(7.5, 0.6 + 0.45 * max(len(labels), 2))
    ax = fig.subplots()
    y = range(len(labels))
    kib = [b / 1024 for b in file_bytes]
    ax.barh(list(y), kib, color=[PALETTE[i % len(PALETTE)] for i in y])
    for i, (v, p) in enumerate(zip(kib, params, strict=True)):
        ax.text(v, i, f"  {v:,.1f} KiB · {p:,} params", va="center", fontsize=8)
    ax.set_yticks(list(y), [_short(s) for s in labels])
    ax.invert_yaxis()
    ax.set_xlabel("file size (KiB)")
    ax.set_xlim(0, max(kib) * 1.6 if kib and max(kib) > 0 else 1)
    ax.set_title("Size per artifact")
    return _png(fig)


def latency_bars(rows: list[dict]) -> str:
    """p50 latency per engine/artifact, one panel per batch size, p90 as a whisker."""
    batches = sorted({r["batch"] for r in rows})
    labels = list(dict.fromkeys(r["label"] for r in rows))
    threads = list(dict.fromkeys(r["threads"] for r in rows))
    fig = _figure(4.0 * len(batches) + 1.5, 0.9 + 0.42 * max(len(labels) * len(threads), 2))
    axes = fig.subplots(1, len(batches), squeeze=False)[0]
    for ax, b in zip(axes, batches, strict=True):
        ys, vals, errs, colors, names = [], [], [], [], []
        for i, lab in enumerate(labels):
            for t in threads:
                r = next((r for r in rows if r["label"] == lab and r["batch"] == b and r["threads"] == t), None)
                if r is None:
                    continue
                ys.append(len(ys))
                vals.append(r["p50_ms"])
                errs.append(max(r["p90_ms"] - r["p50_ms"], 0.0) if r["p90_ms"] is not None else 0.0)  # < 10 runs
                colors.append(PALETTE[i % len(PALETTE)])
                names.append(_short(lab, 24) + (f" ×{t}t" if len(threads) > 1 else ""))
        ax.barh(ys, vals, xerr=[[0] * len(errs), errs], color=colors, capsize=3)
        for y, v, err in zip(ys, vals, errs, strict=True):
            ax.text(v + err, y, f"  {v:.3g}", va="center", fontsize=8)
        ax.set_yticks(ys, names if ax is axes[0] else [""] * len(ys))
        ax.invert_yaxis()
        ax.set_xlim(0, max([v + e for v, e in zip(vals, errs, strict=True)] + [1e-9]) * 1.3)
        ax.set_xlabel("p50 ms (whisker: p90)")
        ax.set_title(f"batch {b}")
    fig.suptitle("Latency")
    return _png(fig)


def op_histogram(ops_by_label: dict[str, dict[str, int]], top: int = 18) -> str:
    """Operator counts, grouped by op, one bar per artifact; the `top` most frequent ops."""
    total: dict[str, int] = {}
    for ops in ops_by_label.values():
        for op, n in ops.items():
            total[op] = max(total.get(op, 0), n)
    names = sorted(total, key=lambda o: (-total[o], o))[:top]
    shown = [_short(o, 40) for o in names]
    labels = list(ops_by_label)
    k = max(len(labels), 1)
    fig = _figure(7.5, 0.8 + 0.32 * max(len(names), 2) * max(1, k / 2))
    ax = fig.subplots()
    h = 0.8 / k
    for i, lab in enumerate(labels):
        ys = [j + i * h for j in range(len(names))]
        ax.barh(ys, [ops_by_label[lab].get(o, 0) for o in names], height=h, label=_short(lab),
                color=PALETTE[i % len(PALETTE)])
    ax.set_yticks([j + (k - 1) * h / 2 for j in range(len(names))], shown)
    ax.invert_yaxis()
    ax.set_xlabel("nodes")
    ax.set_title("Operators" + (f" (top {top})" if len(total) > top else ""))
    if k > 1:
        ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def error_histograms(panels: list[dict], max_panels: int = 8) -> str:
    """One panel per (artifact, output): counts of |error| per log10 bin; exact zeros noted in the title."""
    panels = panels[:max_panels]
    cols = min(2, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig = _figure(5.0 * cols, 2.6 * nrows)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax, p in zip(axes, panels, strict=False):
        edges, counts = p["hist"]["log10_edges"], p["hist"]["counts"]
        if counts:
            widths = [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]
            ax.bar(edges[:-1], counts, width=widths, align="edge", color=PALETTE[0], edgecolor="white")
        ax.set_xlabel("log10 |error|")
        ax.set_ylabel("elements")
        zeros = f", {p['zeros']:,} exact" if p.get("zeros") else ""
        ax.set_title(f"{_short(p['label'], 30)} · {_short(p['output'])}\nvs {_short(p['reference'], 30)}{zeros}",
                     fontsize=9)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return _png(fig)
