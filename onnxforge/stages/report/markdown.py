"""report.md: short enough for a CI comment (GitHub caps comments at 65,536 characters), tables first.

The comment is rendered by GitHub, and its values come from the run folder (the manifest may have been tampered
with): every value is escaped so it stays text — no raw HTML, no link, image or autolink, no heading or emphasis.
Table cells are escaped unless built here as `Md`; only plain identifiers and paths go in code spans."""

from __future__ import annotations

import re

from onnxforge.stages.report import fmt
from onnxforge.timing import speed_text

LIMIT = 60_000
VERDICT = {"pass": "✅ pass", "fail": "❌ fail", "error": "❌ error", "info": "ℹ️ info"}

_META = re.compile(r"[\\`*\[\]<>#!|~&$]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")  # intraword `_` is no emphasis
_AUTOLINK = re.compile(r"(?i)(?<=[a-z0-9])(:)(?=//)|(?<=www)(\.)|(@)")  # GitHub links bare URLs, www. and e-mails
_PLAIN = re.compile(r"[\w .,/+=()-]+")
_HTML_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,_-:()")


class Md(str):
    """Markdown built here from escaped parts: the one kind of cell `_table` does not escape."""


def text(v) -> Md:
    """Any value as Markdown text on one line."""
    s = " ".join(fmt.printable(v).split())
    s = _META.sub(lambda m: "\\" + m.group(0), s)
    return Md(_AUTOLINK.sub(lambda m: "\\" + m.group(0), s))


def code(v) -> Md:
    """A code span for a plain identifier or path; anything else (a backtick, a URL, markup) is escaped text."""
    s = " ".join(fmt.printable(v).split())
    return Md(f"`{s}`") if _PLAIN.fullmatch(s) else text(s)


def _inert_html(v) -> str:
    """Text inside an HTML block, where Markdown escapes do not apply: every character that is not plainly
    readable becomes a character reference, so no tag, link or autolink can form."""
    return "".join(c if c in _HTML_SAFE else f"&#{ord(c)};" for c in " ".join(str(v).split()))


def _table(cols: list, rows: list[list]) -> list[str]:
    esc = [[c if isinstance(c, Md) else text(c) for c in r] for r in rows]
    return ["| " + " | ".join(text(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|",
            *("| " + " | ".join(r) + " |" for r in esc), ""]


def _latency_cells(rep: dict) -> tuple[list[str], dict[str, list[str]]]:
    """One column per batch size: p50 ms at the first thread setting, with the speed ratio vs the baseline."""
    lat = rep.get("latency") or {}
    rows = lat.get("rows") or []
    if not rows:
        return [], {}
    t0 = rows[0]["threads"]
    batches = sorted({r["batch"] for r in rows})
    speed = {(r["label"], r["batch"], r["threads"]): r for r in lat.get("ratios", [])}
    cells: dict[str, list[str]] = {}
    for lab in dict.fromkeys(r["label"] for r in rows):
        cells[lab] = []
        for b in batches:
            r = next((r for r in rows if r["label"] == lab and r["batch"] == b and r["threads"] == t0), None)
            s = speed.get((lab, b, t0))
            if r is not None and r.get("threads_applied") is False:
                cells[lab].append(f"{fmt.ms(r['p50_ms'])} (threads: default, not applied — no ratio)")
                continue
            cells[lab].append("" if r is None else fmt.ms(r["p50_ms"]) + (f" ({speed_text(s)})" if s else ""))
    return [f"p50 ms b={b}" for b in batches], cells


def render_markdown(rep: dict) -> str:
    d = rep["data"]
    out = [f"## onnxforge report: {text(rep['title'])} — {text(VERDICT.get(rep['verdict'], rep['verdict']))}", ""]
    lat = rep.get("latency") or {}
    out.append(f"_{len(rep['artifacts'])} artifact(s) · data: {code(d['eval'])} ({d['rows']} rows"
               f"{', labels ' + code(d['labels']) if d['labels'] else ''})"
               + (f" · latency: {lat['threads'][0]} thread(s) on {rep['environment']['cpus']} CPUs, "
                  + (f"ratios vs {code(lat['baseline'])}" if lat.get("baseline") else "no speed ratio")
                  if lat else "")
               + f" · onnxforge {text(rep['onnxforge'])}_")
    out.append("")
    for s in rep["stages"]:  # the reason a CI job failed belongs at the top of its comment
        if s.get("verdict") in ("fail", "error"):
            out += [f"**{text(s['name'])} {text(s['verdict'])}ed:** {text((s.get('message') or '')[:500])}", ""]
    lat_cols, lat_cells = _latency_cells(rep)
    rows = []
    for a in rep["artifacts"]:
        rows.append([code(a["label"]), fmt.size(a["file_bytes"]),
                     fmt.times(a["size_ratio"]) if rows else "first", str(a["nodes"]),
                     f"{a['params']:,}", fmt.opset(a["opset"], a["ops"]), fmt.metrics(a.get("metrics")),
                     fmt.deltas(a.get("metric_deltas")), *lat_cells.get(a["label"], [""] * len(lat_cols))])
    nat = rep.get("native") or {}
    if nat.get("metrics") or nat.get("label") in lat_cells:  # the source's own figures, for comparison
        rows.insert(0, [code(nat["label"]), "", "", "", "", "", fmt.metrics(nat.get("metrics")), "",
                        *lat_cells.get(nat["label"], [""] * len(lat_cols))])
    out += ["### Artifacts", ""]
    if rows:
        out += _table(["artifact", "size", "size vs first", "nodes", "params", "opset", "metrics", "Δ vs reference",
                       *lat_cols], rows)
    else:  # a run that failed before writing a model: nothing was measured
        out += ["_No model artifact: a stage failed before writing one._", ""]
    for x in lat.get("inputs") or []:  # what every latency figure above was computed on
        out.append(f"- latency at batch {x['batch']}: {text(x['label'])}")
    if lat.get("inputs"):
        out.append("")
    if rep["validations"]:
        vrows = []
        for v in rep["validations"]:
            for c in v["comparisons"]:
                vrows.append([v["stage"], code(v.get("model") or ""), c.get("output"), c.get("batch", ""),
                              Md("✅" if c.get("pass") else "❌"), fmt.sci(c.get("max_abs")), fmt.sci(c.get("p99_abs")),
                              fmt.sci(c.get("min_atol")), fmt.sci(c.get("min_rtol")), _other(c)])
        refs = "; ".join(f"{text(v['stage'])}: {text(v.get('reference'))}" for v in rep["validations"])
        out += ["### Validation", "", f"Reference — {refs}", ""]
        out += _table(["stage", "model", "output", "batch", "pass", "max abs", "p99 abs", "min atol", "min rtol",
                       "other"], vrows)
    if rep["errors"]:
        erows = [[code(e["label"]), e["output"], code(e["reference"]),
                  *([fmt.sci(e["max_abs"]), fmt.sci(e["p99_abs"]), fmt.sci(e["mean_abs"])] if e["kind"] == "float"
                    else ["", "", ""]),
                  f"{e['flips']} flips" if e["kind"] == "label"
                  else f"{e['zeros']}/{e['elements']} exact{fmt.nonfinite(e)}"]
                 for e in rep["errors"]]
        out += ["### Errors (recomputed)", ""]
        out += _table(["artifact", "output", "vs", "max abs", "p99 abs", "mean abs", "exact / flips"], erows)
    for sc in rep["stage_changes"]:
        out += [f"### {text(sc['stage'])}: before → after", ""]
        out += _table(["figure", "before", "after", "after/before"],
                      [[r["key"], fmt.value(r["before"]), fmt.value(r["after"]), fmt.row_ratio(r)]
                       for r in sc["rows"]])
    for tb in rep["stage_tables"]:  # wide tables (e.g. quantize candidates) folded away
        # an HTML block: Markdown is not parsed inside it, so its text is made inert as HTML instead
        summary = _inert_html(f"{tb['stage']}: {tb['key']} ({len(tb['rows'])} rows)")
        out += [f"<details><summary>{summary}</summary>", ""]
        out += _table(tb["columns"], [[fmt.value(v) for v in r] for r in tb["rows"]])
        out += ["</details>", ""]
    if rep["stages"]:
        out += ["### Stages", ""]
        out += _table(["stage", "status", "verdict", "wall s", "message"],
                      [[s["name"], s.get("status") or "", s.get("verdict") or "",
                        f"{s['wall_s']:.2f}" if isinstance(s.get("wall_s"), int | float) else "",
                        (s.get("message") or "")[:160]] for s in rep["stages"]])
    if rep["notes"]:
        out += ["### Notes", "", *(f"- {text(n)}" for n in rep["notes"]), ""]
    text_ = "\n".join(out)
    if len(text_) > LIMIT:  # keep the comment postable, note included; the full figures are in report.json
        note = "\n\n_… truncated; see report.json for every figure._\n"
        text_ = text_[:LIMIT - len(note)].rsplit("\n", 1)[0] + note
    return text_


def _other(c: dict) -> str:
    try:
        return fmt.comparison_other(c)
    except (TypeError, ValueError, KeyError):  # a tampered figure of the wrong type shows as text, not a crash
        return str(c.get("reason") or "")
