"""report.md: short enough for a CI comment (GitHub caps comments at 65,536 characters), tables first."""

from __future__ import annotations

from onnxforge.reporting import fmt

LIMIT = 60_000
VERDICT = {"pass": "✅ pass", "fail": "❌ fail", "error": "❌ error", "info": "ℹ️ info"}


def _table(cols: list[str], rows: list[list[str]]) -> list[str]:
    esc = [[str(c).replace("|", "\\|").replace("\n", " ") for c in r] for r in rows]
    return ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|",
            *("| " + " | ".join(r) + " |" for r in esc), ""]


def _latency_cells(rep: dict) -> tuple[list[str], dict[str, list[str]]]:
    """One column per batch size: p50 ms at the first thread setting, with the speed ratio vs the baseline."""
    lat = rep.get("latency") or {}
    rows = lat.get("rows") or []
    if not rows:
        return [], {}
    t0 = rows[0]["threads"]
    batches = sorted({r["batch"] for r in rows})
    speed = {(r["label"], r["batch"], r["threads"]): r["speedup"] for r in lat.get("ratios", [])}
    cells: dict[str, list[str]] = {}
    for lab in dict.fromkeys(r["label"] for r in rows):
        cells[lab] = []
        for b in batches:
            r = next((r for r in rows if r["label"] == lab and r["batch"] == b and r["threads"] == t0), None)
            s = speed.get((lab, b, t0))
            cells[lab].append("" if r is None else fmt.ms(r["p50_ms"]) + (f" ({s:.2f}×)" if s else ""))
    return [f"p50 ms b={b}" for b in batches], cells


def render_markdown(rep: dict) -> str:
    d = rep["data"]
    out = [f"## onnxforge report: {rep['title']} — {VERDICT.get(rep['verdict'], rep['verdict'])}", ""]
    lat = rep.get("latency") or {}
    out.append(f"_{len(rep['artifacts'])} artifact(s) · data: `{d['eval']}` ({d['rows']} rows"
               f"{', labels `' + d['labels'] + '`' if d['labels'] else ''})"
               + (f" · latency: {lat['threads'][0]} thread(s) on {rep['environment']['cpus']} CPUs, ratios vs "
                  f"`{lat['baseline']}`" if lat else "")
               + f" · onnxforge {rep['onnxforge']}_")
    out.append("")
    for s in rep["stages"]:  # the reason a CI job failed belongs at the top of its comment
        if s.get("verdict") in ("fail", "error"):
            out += [f"**{s['name']} {s['verdict']}ed:** {(s.get('message') or '').replace(chr(10), ' ')[:500]}", ""]
    lat_cols, lat_cells = _latency_cells(rep)
    rows = []
    for a in rep["artifacts"]:
        rows.append([f"`{a['label']}`", fmt.size(a["file_bytes"]), f"{a['size_ratio']:.2f}×", str(a["nodes"]),
                     f"{a['params']:,}", fmt.opset(a["opset"], a["ops"]), fmt.metrics(a.get("metrics")),
                     fmt.deltas(a.get("metric_deltas")), *lat_cells.get(a["label"], [""] * len(lat_cols))])
    nat = rep.get("native") or {}
    if nat.get("metrics") or nat.get("label") in lat_cells:  # the source's own figures, for comparison
        rows.insert(0, [f"`{nat['label']}`", "", "", "", "", "", fmt.metrics(nat.get("metrics")), "",
                        *lat_cells.get(nat["label"], [""] * len(lat_cols))])
    out += ["### Artifacts", ""]
    out += _table(["artifact", "size", "size vs first", "nodes", "params", "opset", "metrics", "Δ vs reference",
                   *lat_cols], rows)
    if rep["validations"]:
        vrows = []
        for v in rep["validations"]:
            for c in v["comparisons"]:
                figs = fmt.comparison_other(c)
                vrows.append([v["stage"], f"`{v.get('model') or ''}`", str(c.get("output")), str(c.get("batch", "")),
                              "✅" if c.get("pass") else "❌", fmt.sci(c.get("max_abs")), fmt.sci(c.get("p99_abs")),
                              fmt.sci(c.get("min_atol")), fmt.sci(c.get("min_rtol")), figs])
        refs = "; ".join(f"{v['stage']}: {v.get('reference')}" for v in rep["validations"])
        out += ["### Validation", "", f"Reference — {refs}", ""]
        out += _table(["stage", "model", "output", "batch", "pass", "max abs", "p99 abs", "min atol", "min rtol",
                       "other"], vrows)
    if rep["errors"]:
        erows = [[f"`{e['label']}`", e["output"], f"`{e['reference']}`",
                  *([fmt.sci(e["max_abs"]), fmt.sci(e["p99_abs"]), fmt.sci(e["mean_abs"])] if e["kind"] == "float"
                    else ["", "", ""]),
                  f"{e['flips']} flips" if e["kind"] == "label" else f"{e['zeros']}/{e['elements']} exact"]
                 for e in rep["errors"]]
        out += ["### Errors (recomputed)", ""]
        out += _table(["artifact", "output", "vs", "max abs", "p99 abs", "mean abs", "exact / flips"], erows)
    for sc in rep["stage_changes"]:
        out += [f"### {sc['stage']}: before → after", ""]
        out += _table(["figure", "before", "after", "after/before"],
                      [[r["key"], fmt.value(r["before"]), fmt.value(r["after"]),
                        f"{r['ratio']:.3g}" if r["ratio"] is not None else ""] for r in sc["rows"]])
    for tb in rep["stage_tables"]:  # wide tables (e.g. quantize candidates) folded away
        out += [f"<details><summary>{tb['stage']}: {tb['key']} ({len(tb['rows'])} rows)</summary>", ""]
        out += _table(tb["columns"], [[fmt.value(v) for v in r] for r in tb["rows"]])
        out += ["</details>", ""]
    if rep["stages"]:
        out += ["### Stages", ""]
        out += _table(["stage", "status", "verdict", "wall s", "message"],
                      [[s["name"], s.get("status") or "", s.get("verdict") or "",
                        f"{s['wall_s']:.2f}" if isinstance(s.get("wall_s"), int | float) else "",
                        (s.get("message") or "")[:160]] for s in rep["stages"]])
    if rep["notes"]:
        out += ["### Notes", "", *(f"- {n}" for n in rep["notes"]), ""]
    text = "\n".join(out)
    if len(text) > LIMIT:  # keep the comment postable; the full figures are in report.json
        text = text[:LIMIT].rsplit("\n", 1)[0] + "\n\n_… truncated; see report.json for every figure._\n"
    return text
