"""report: figures for every artifact of the run (size, ops, params, opset, errors, accuracy, latency) written as
report.json / report.md / report.html into the stage folder. Runs even after a failed stage, never cached."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from onnxforge.config import StrictModel
from onnxforge.registry import register_stage

Positive = Annotated[int, Field(gt=0)]


class ReportOptions(StrictModel):
    formats: list[Literal["json", "md", "html"]] = Field(default_factory=lambda: ["json", "md", "html"],
                                                         description="files to write")
    bench: bool = Field(True, description="measure latency of every artifact (and of the native source)")
    batches: list[Positive] = Field(default_factory=lambda: [1, 64], min_length=1, description="batch sizes for latency")
    threads: list[Positive] = Field(default_factory=lambda: [1], min_length=1, description="intra-op thread counts for latency")
    runs: int = Field(50, gt=0, description="timed runs per setting")
    warmup: int = Field(5, ge=0, description="untimed runs before timing")
    max_seconds: float = Field(2.0, gt=0, description="time budget per setting (at least 5 runs are kept)")
    rounds: int = Field(3, gt=0, description="interleaved rounds: every model is timed in each, so drift hits all")
    max_rows: int | None = Field(1000, gt=0, description="rows of the data used for errors and accuracy")
    native: bool = Field(True, description="load the source model as the reference for the first artifact")


@register_stage("report", ReportOptions, produces_model=False,
                help="report.json/md/html: size, ops, params, errors, accuracy and latency of every artifact")
def run_report(ctx, opts: ReportOptions):
    from onnxforge.pipeline import StageResult
    from onnxforge.report import build_report

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
