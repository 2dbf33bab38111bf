"""report.html: one self-contained file (inline CSS, plots as base64 PNG, no script, no CDN) that opens offline.

Every value comes from files a run folder holds (the manifest may have been tampered with), so all text is escaped
where it enters the page: table cells are escaped unless built here as `Html`, f-strings escape each field."""

from __future__ import annotations

from html import escape

from onnxforge.stages.report import fmt, plots
from onnxforge.timing import speed_text

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header .meta{color:#b8c0cc;margin-top:4px}main{padding:8px 28px 40px;max-width:1280px}
section{background:#fff;border:1px solid #e1e5ea;border-radius:8px;padding:14px 18px;margin:16px 0}
h2{font-size:17px;margin:0 0 10px}table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border-bottom:1px solid #e8ebef;padding:4px 10px;text-align:right;white-space:nowrap}
th{background:#f0f2f5}td.l,th.l{text-align:left}.badge{display:inline-block;padding:2px 10px;border-radius:10px;
font-weight:600;color:#fff}.pass{background:#2e8540}.fail,.error{background:#c0392b}.info{background:#4c78a8}
.ok{color:#2e8540;font-weight:600}.bad{color:#c0392b;font-weight:600}img.plot{max-width:100%;display:block;
margin:8px 0}.scroll{overflow-x:auto}code{background:#f0f2f5;padding:1px 4px;border-radius:3px}.muted{color:#6b7480}
"""


class Html(str):
    """Markup built by this module from escaped parts: the one kind of cell `_t` does not escape."""


def e(v) -> Html:
    """Any value as page text (quotes too, so it is safe in an attribute)."""
    return Html(escape(fmt.printable(v), quote=True))


def _code(v) -> Html:
    return Html(f"<code>{e(v)}</code>")


def _cell(v) -> str:
    return v if isinstance(v, Html) else e(v)


def _t(cols: list, rows: list[list], left: int = 1, last_left: bool = False) -> Html:
    """A table; the first `left` columns (and the last one if last_left) are text, aligned left. Every header and
    cell is escaped unless it is `Html`."""
    def cls(i: int) -> str:
        return "l" if i < left or (last_left and i == len(cols) - 1) else ""

    head = "".join(f'<th class="{cls(i)}">{e(c)}</th>' for i, c in enumerate(cols))
    body = "".join("<tr>" + "".join(f'<td class="{cls(i)}">{_cell(c)}</td>' for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _img(pid: str, b64: str | None, alt: str) -> str:
    return (f'<img class="plot" id="{e(pid)}" alt="{e(alt)}" src="data:image/png;base64,{e(b64)}">'
            if b64 else "")


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{e(sid)}"><h2>{e(title)}</h2>{body}</section>'


def _ok(v) -> Html:
    return Html('<span class="ok">yes</span>' if v else '<span class="bad">NO</span>')


def _badge(verdict) -> Html:
    cls = verdict if verdict in ("pass", "fail", "error", "info") else "info"  # a class name from our own list
    return Html(f'<span class="badge {cls}">{e(verdict)}</span>')


def _muted(text) -> Html:
    return Html(f'<span class="muted">{e(text)}</span>')


def render_html(rep: dict, notes_out=None) -> str:
    can_plot = plots.available()
    if not can_plot and notes_out is not None:
        notes_out.print("[yellow]report.html without plots: matplotlib is missing — pip install "
                        "'onnxforge[report]'[/yellow]")
    arts = rep["artifacts"]
    d = rep["data"]
    parts = []
    summary = (f'<p>{_badge(rep["verdict"])} {e(len(arts))} artifact(s) · data {_code(d["eval"])} ({e(d["rows"])} rows'
               f'{", labels " + _code(d["labels"]) if d["labels"] else ""})</p>')
    if rep.get("run"):
        r = rep["run"]
        summary += (f'<p class="muted">run {_code(r["path"])} · config {_code(r["config"])} · final model '
                    f'{_code(r["final_model"])}</p>')
    for s in rep["stages"]:
        if s.get("verdict") in ("fail", "error"):
            summary += (f'<p><span class="bad">{e(s["name"])} {e(s["verdict"])}:</span> '
                        f'{e((s.get("message") or "")[:500])}</p>')
    if not can_plot:
        summary += '<p class="muted">Plots need matplotlib: pip install \'onnxforge[report]\'.</p>'
    parts.append(_section("summary", "Summary", summary))

    rows = [[_code(a["label"]), a.get("stage") or "", fmt.size(a["file_bytes"]), fmt.times(a["size_ratio"]) if i else "first",
             f"{a['nodes']:,}", f"{a['params']:,}", fmt.opset(a["opset"], a["ops"]), fmt.metrics(a.get("metrics")),
             fmt.deltas(a.get("metric_deltas")), a.get("reference") or ""] for i, a in enumerate(arts)]
    if rep.get("native") and rep["native"].get("metrics"):
        n = rep["native"]
        rows.insert(0, [_code(n["label"]), "source", "", "", "", "", "", fmt.metrics(n["metrics"]), "", ""])
    parts.append(_section("artifacts", "Artifacts", _t(
        ["artifact", "stage", "size", "size vs first", "nodes", "params", "opset", "metrics", "Δ vs reference",
         "reference"], rows, left=2) if rows else
        '<p class="muted">No model artifact: a stage failed before writing one.</p>'))
    size_png = plots.size_bars([a["label"] for a in arts], [a["file_bytes"] for a in arts],
                               [a["params"] for a in arts]) if can_plot and arts else None
    parts.append(_section("size", "Size", _img("plot-size", size_png, "file size per artifact")))

    lat = rep.get("latency")
    if lat and lat["rows"]:
        speed = {(r["label"], r["batch"], r["threads"]): r for r in lat["ratios"]}
        lrows = [[_code(r["label"]), r["batch"], fmt.threads(r), fmt.ms(r["p50_ms"]), fmt.ms(r["p90_ms"]),
                  fmt.ms(r["p99_ms"]), fmt.ms(r["mean_ms"]), fmt.num(r["rows_per_s"]), r["runs"],
                  "no ratio" if r.get("threads_applied") is False else
                  "baseline" if r["label"] == lat["baseline"] else
                  speed_text(speed.get((r["label"], r["batch"], r["threads"])))] for r in lat["rows"]]
        body = (f'<p class="muted">{e(lat["warmup"])} warm-up runs, then up to {e(lat["runs"])} timed runs per '
                + (f'setting; speed is relative to {_code(lat["baseline"])} in the same run (&gt;1 = faster).</p>'
                   if lat["baseline"] else 'setting; no speed ratio (no baseline held its thread limit).</p>')
                + "".join(f'<p class="muted">batch {e(x["batch"])}: {e(x["label"])}</p>' for x in lat.get("inputs") or [])
                + (f'<p class="muted">{e(fmt.tail_note(lat["rows"]))}</p>' if fmt.tail_note(lat["rows"]) else "")
                + _t(["engine / artifact", "batch", "threads", "p50 ms", "p90 ms", "p99 ms", "mean ms", "rows/s", "runs",
                      "speed"], lrows)
                + _img("plot-latency", plots.latency_bars(lat["rows"]) if can_plot else None, "latency per artifact"))
    else:
        body = '<p class="muted">Latency not measured (--no-bench).</p>'
    parts.append(_section("latency", "Latency", body))

    vbody = ""
    for v in rep["validations"]:
        vrows = [[c.get("output"), c.get("batch", ""), c.get("kind", ""), _ok(c.get("pass")),
                  fmt.sci(c.get("max_abs")), fmt.sci(c.get("max_rel")), fmt.sci(c.get("p99_abs")),
                  fmt.sci(c.get("min_atol")), fmt.sci(c.get("min_rtol")), _other(c)]
                 for c in v["comparisons"]]
        m = v.get("metrics") or {}
        mline = ""
        if m.get("candidate"):
            mline = (f'<p>metrics — candidate: {e(_safe(fmt.metrics, m["candidate"]))}; reference: '
                     f'{e(_safe(fmt.metrics, m.get("reference")))}</p>')
        vbody += (f'<h3>{e(v["stage"])}: {_code(v.get("model"))} vs {e(v.get("reference"))} — '
                  f'{_badge(v.get("verdict"))}</h3>'
                  f'<p class="muted">{e(v.get("rows"))} rows from {_code(v.get("data"))}</p>' + _t(
                      ["output", "batch", "kind", "pass", "max abs", "max rel", "p99 abs", "min atol", "min rtol",
                       "other"], vrows, last_left=True) + mline)
    parts.append(_section("validation", "Validation", vbody or '<p class="muted">No validation stage ran.</p>'))

    errs = rep["errors"]
    if errs:
        erows = [[_code(x["label"]), x["output"], _code(x["reference"]),
                  *([fmt.sci(x["max_abs"]), fmt.sci(x["p99_abs"]), fmt.sci(x["mean_abs"]),
                     f"{x['zeros']:,}/{x['elements']:,}{fmt.nonfinite(x)}"] if x["kind"] == "float"
                    else ["", "", "", f"{x['flips']} flips / {x['elements']:,}"])] for x in errs]
        panels = [x for x in errs if x["kind"] == "float" and x["hist"]["counts"]]
        ebody = (f'<p class="muted">|candidate − reference| per element on {e(d["rows"])} rows of '
                 f'{_code(d["eval"])}; histograms in log10 bins.</p>'
                 + _t(["artifact", "output", "vs", "max abs", "p99 abs", "mean abs", "exact / flips"], erows)
                 + (_img("plot-errors", plots.error_histograms(panels), "error histograms")
                    if can_plot and panels else '<p class="muted">All compared elements are exactly equal.</p>'))
    else:
        ebody = '<p class="muted">No reference to compare with (a run without a source, or one loose model).</p>'
    parts.append(_section("errors", "Errors", ebody))

    ops_all = list(dict.fromkeys(op for a in arts for op in a["ops"]))
    orows = [[op, *[a["ops"].get(op, "") for a in arts]] for op in ops_all]
    parts.append(_section("operators", "Operators", _img(
        "plot-ops", plots.op_histogram({a["label"]: a["ops"] for a in arts}) if can_plot and ops_all else None,
        "operator histogram") + _t(["op", *[a["label"] for a in arts]], orows)))

    sbody = ""
    for sc in rep["stage_changes"]:
        sbody += f"<h3>{e(sc['stage'])}: before → after</h3>" + _t(
            ["figure", "before", "after", "after/before"],
            [[r["key"], fmt.value(r["before"]), fmt.value(r["after"]), fmt.row_ratio(r)] for r in sc["rows"]])
    for tb in rep["stage_tables"]:
        sbody += (f"<h3>{e(tb['stage'])}: {e(tb['key'])}{' (truncated)' if tb['truncated'] else ''}</h3>"
                  + _t(tb["columns"], [[fmt.value(v) for v in r] for r in tb["rows"]], left=1))
    if rep["stages"]:
        sbody += "<h3>Stage runs</h3>" + _t(["stage", "status", "verdict", "wall s", "message"],
                    [[s["name"] or "", s.get("status") or "", s.get("verdict") or "",
                      f"{s['wall_s']:.2f}" if isinstance(s.get("wall_s"), int | float) else "",
                      _muted((s.get("message") or "")[:300])] for s in rep["stages"]],
                    last_left=True)
    parts.append(_section("stages", "Stages", sbody or '<p class="muted">Loose models: no pipeline stages.</p>'))

    envd = rep["environment"]
    env = envd["versions"] | ((rep.get("run") or {}).get("versions") or {})  # the run's own versions win
    ebody = (f'<p>{e(envd["system"])} {e(envd["machine"])}, {e(envd["cpus"])} CPUs (where this report measured '
             'latency)</p>' + _t(["package", "version"], [[k, v] for k, v in env.items()]))
    if rep["notes"]:
        ebody += "<ul>" + "".join(f"<li>{e(n)}</li>" for n in rep["notes"]) + "</ul>"
    parts.append(_section("environment", "Environment and notes",
                          ebody or '<p class="muted">Nothing to note.</p>'))

    title = f"onnxforge report: {rep['title']}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>'
            f'<header><h1>{e(title)}</h1><div class="meta">generated {e(rep["generated"])} by onnxforge '
            f'{e(rep["onnxforge"])} · schema v{e(rep["schema_version"])}</div></header><main>{"".join(parts)}</main>'
            '</body></html>\n')


def _safe(f, *args) -> str:
    """A manifest figure through a formatter; a tampered value of the wrong type shows as text, not a crash."""
    try:
        return f(*args)
    except (TypeError, ValueError, KeyError, AttributeError):
        return " ".join(map(str, args))


def _other(c: dict) -> str:
    return _safe(fmt.comparison_other, c)
