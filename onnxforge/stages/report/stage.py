"""report: figures for every artifact of the run (size, ops, params, opset, errors, accuracy, latency) written as
report.json / report.md / report.html into the stage folder. Runs even after a failed stage, never cached."""

from __future__ import annotations

from onnxforge.registry import register_stage
from onnxforge.stages.report.options import ReportOptions


@register_stage("report", ReportOptions, produces_model=False,
                help="report.json/md/html: size, ops, params, errors, accuracy and latency of every artifact")
def run_report(ctx, opts: ReportOptions):
    from onnxforge.pipeline import StageResult
    from onnxforge.stages.report.build import build_report

    rep = build_report([ctx.cfg.run_path], out=ctx.stage_dir, formats=list(opts.formats), bench=opts.bench,
                       data=None, console=ctx.console, options=opts, ctx=ctx)
    lat = {}
    for r in (rep.get("latency") or {}).get("rows", []):
        lat.setdefault(r["label"], {})[f"p50_ms_batch{r['batch']}_threads{r['threads']}"] = r["p50_ms"]
    summary = {"run_verdict": rep["verdict"], "artifacts": [
        {"label": a["label"], "file_bytes": a["file_bytes"], "nodes": a["nodes"], "params": a["params"],
         **({"accuracy": a["metrics"]["accuracy"]} if (a.get("metrics") or {}).get("accuracy") is not None else {}),
         **lat.get(a["label"], {})} for a in rep["artifacts"]], "files": sorted(rep["files"].values())}
    return StageResult(verdict="info", summary=summary, files=[ctx.stage_dir / f for f in rep["files"].values()])
