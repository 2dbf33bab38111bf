"""The report as rich tables in the terminal. Values from the run folder are escaped for rich markup, so a
tampered manifest cannot print links, styles or terminal control sequences."""

from __future__ import annotations

from onnxforge.stages.report import fmt
from onnxforge.timing import speed_text


def _m(v) -> str:
    """A value for rich: markup escaped, control characters shown, not sent to the terminal."""
    from rich.markup import escape

    return escape(fmt.printable(v))


def render_terminal(rep: dict, console, brief: bool = False) -> None:
    from rich.table import Table

    color = {"pass": "green", "fail": "red", "error": "red"}.get(rep["verdict"], "cyan")
    d = rep["data"]
    console.print(f"[bold]report {_m(rep['title'])}[/bold] · verdict [{color}]{_m(rep['verdict'])}[/{color}] · data "
                  f"{_m(d['eval'])} ({d['rows']} rows{', labels ' + _m(d['labels']) if d['labels'] else ''})")
    t = Table(title="artifacts")
    for c in ("artifact", "size", "vs first", "nodes", "params", "opset", "metric", "Δ vs reference", "reference"):
        t.add_column(c, justify="left" if c in ("artifact", "reference", "metric", "Δ vs reference") else "right")
    for a in rep["artifacts"]:
        t.add_row(_m(a["label"]), fmt.size(a["file_bytes"]), fmt.times(a["size_ratio"]) if a is not rep["artifacts"][0]
                  else "first", str(a["nodes"]),
                  f"{a['params']:,}", _m(fmt.opset(a["opset"], a["ops"])), fmt.metrics(a.get("metrics")),
                  fmt.deltas(a.get("metric_deltas")), _m(a.get("reference")))
    if rep["artifacts"]:
        console.print(t)
    for s in rep["stages"]:  # why the run failed, where it is seen first
        if s.get("verdict") in ("fail", "error"):
            console.print(f"[red]{_m(s['name'])} {_m(s['verdict'])}:[/red] {_m((s.get('message') or '')[:500])}",
                          soft_wrap=True)
    lat = rep.get("latency")
    if lat and lat["rows"]:
        lt = Table(title=f"latency ({lat['runs']} runs max per setting; "
                         + (f"speed vs {_m(lat['baseline'])}, >1 = faster)" if lat["baseline"] else "no speed ratio)"))
        for c in ("engine / artifact", "batch", "threads", "p50 ms", "p90 ms", "p99 ms", "rows/s", "speed"):
            lt.add_column(c, justify="left" if c == "engine / artifact" else "right")
        speed = {(r["label"], r["batch"], r["threads"]): r for r in lat["ratios"]}
        for r in lat["rows"]:
            s = speed.get((r["label"], r["batch"], r["threads"]))
            lt.add_row(_m(r["label"]), str(r["batch"]), fmt.threads(r), fmt.ms(r["p50_ms"]), fmt.ms(r["p90_ms"]),
                       fmt.ms(r["p99_ms"]), fmt.num(r["rows_per_s"]),
                       "no ratio" if r.get("threads_applied") is False else
                       "baseline" if r["label"] == lat["baseline"] else speed_text(s))
        console.print(lt)
        if fmt.tail_note(lat["rows"]):
            console.print(fmt.tail_note(lat["rows"]), soft_wrap=True)
        for x in lat.get("inputs") or []:
            console.print(f"batch {x['batch']}: {_m(x['label'])}", soft_wrap=True)
    if brief:
        return
    for v in rep["validations"]:
        vt = Table(title=_m(f"{v['stage']}: {v.get('model') or ''} vs {v.get('reference')} — {v.get('verdict')}"))
        for c in ("output", "batch", "kind", "pass", "max abs", "max rel", "p99 abs", "min atol", "min rtol", "other"):
            vt.add_column(c, justify="left" if c in ("output", "kind", "other") else "right")
        for c in v["comparisons"]:
            vt.add_row(_m(c.get("output")), _m(c.get("batch", "")), _m(c.get("kind", "")),
                       "[green]yes[/green]" if c.get("pass") else "[red]NO[/red]", _m(fmt.sci(c.get("max_abs"))),
                       _m(fmt.sci(c.get("max_rel"))), _m(fmt.sci(c.get("p99_abs"))), _m(fmt.sci(c.get("min_atol"))),
                       _m(fmt.sci(c.get("min_rtol"))), _m(_other(c)))
        console.print(vt)
    if rep["errors"]:
        et = Table(title=f"errors recomputed on {_m(rep['data']['eval'])}")
        for c in ("artifact", "output", "vs", "max abs", "p99 abs", "mean abs", "exact / flips"):
            et.add_column(c, justify="left" if c in ("artifact", "output", "vs") else "right")
        for e in rep["errors"]:
            if e["kind"] == "float":
                et.add_row(_m(e["label"]), _m(e["output"]), _m(e["reference"]), fmt.sci(e["max_abs"]), fmt.sci(e["p99_abs"]),
                           fmt.sci(e["mean_abs"]), f"{e['zeros']}/{e['elements']}{fmt.nonfinite(e)}")
            else:
                et.add_row(_m(e["label"]), _m(e["output"]), _m(e["reference"]), "", "", "", f"{e['flips']}/{e['elements']}")
        console.print(et)
    for sc in rep["stage_changes"]:
        ct = Table(title=f"{_m(sc['stage'])}: before → after")
        for c in ("figure", "before", "after", "after/before"):
            ct.add_column(c, justify="left" if c == "figure" else "right")
        for r in sc["rows"]:
            ct.add_row(_m(r["key"]), _m(fmt.value(r["before"])), _m(fmt.value(r["after"])), fmt.row_ratio(r))
        console.print(ct)
    for tb in rep["stage_tables"]:
        tt = Table(title=_m(f"{tb['stage']}: {tb['key']}") + (" (truncated)" if tb["truncated"] else ""))
        for c in tb["columns"]:
            tt.add_column(_m(c))
        for r in tb["rows"]:
            tt.add_row(*[_m(fmt.value(v)) for v in r])
        console.print(tt)
    for n in rep["notes"]:
        console.print(f"[yellow]note:[/yellow] {_m(n)}", markup=True, soft_wrap=True)


def _other(c: dict) -> str:
    try:
        return fmt.comparison_other(c)
    except (TypeError, ValueError, KeyError):  # a tampered figure of the wrong type shows as text, not a crash
        return str(c.get("reason") or "")
