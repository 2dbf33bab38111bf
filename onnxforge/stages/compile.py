"""compile: the current ONNX model to a hardware target's format (OpenVINO IR, ORT mobile .ort), checked against
the ONNX model on the same inputs at the usual tolerances and timed beside onnxruntime (onnxforge/targets/)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from onnxforge.config import StrictModel
from onnxforge.registry import register_stage
from onnxforge.targets.openvino import OpenVINOOptions
from onnxforge.targets.ort_mobile import OrtMobileOptions


class CompileOptions(StrictModel):
    target: Literal["openvino", "ort-mobile"] = Field(description="openvino (IR xml+bin) | ort-mobile (.ort + "
                                                     "required operators config)")
    openvino: OpenVINOOptions = Field(default_factory=OpenVINOOptions, description="target openvino")
    ort_mobile: OrtMobileOptions = Field(default_factory=OrtMobileOptions, description="target ort-mobile")
    rtol: float | None = Field(None, ge=0, description="default: 1e-4 (fp32 weights), 1e-2 (fp16), 5e-2 (int8)")
    atol: float | None = Field(None, ge=0, description="default: 1e-5 (fp32 weights), 1e-2 (fp16), 5e-2 (int8)")
    threads: int = Field(1, gt=0, description="threads for both runtimes in the check and the timing")
    batch_sizes: list[int] = Field(default_factory=lambda: [1], description="latency batch sizes (rows tiled)")
    rounds: int = Field(3, gt=0, description="paired timing rounds (onnxruntime and the target back to back)")

    @model_validator(mode="after")
    def _one_target(self):
        # options of the target not chosen would be ignored without a word (a config meant for the other one)
        other = "ort_mobile" if self.target == "openvino" else "openvino"
        if other in self.model_fields_set:
            raise ValueError(f"compile.{other} sets options of target {other.replace('_', '-')} but target is "
                             f"{self.target} — drop compile.{other}, or set target: {other.replace('_', '-')}")
        return self

    def target_options(self):
        return self.openvino if self.target == "openvino" else self.ort_mobile


def _inputs(ctx) -> list:
    """Every file this compile reads (the model, the config's source files, data, the config itself): the
    destination may not hold any of them (compile replaces an earlier compile's files there)."""
    from onnxforge.standalone import cfg_source_files

    cfg = ctx.cfg
    return [ctx.model, ctx.source_model, *cfg_source_files(cfg), cfg.data.path, cfg.data.calibration,
            cfg.config_path]


def compile_model(ctx, opts: CompileOptions, dest, feeds, provenance: str, *, where: str | None = "-o") -> dict:
    """Compile ctx.model into the folder `dest` (see targets.check.compile_to; `where`: the flag that named
    `dest`, for refusals)."""
    from onnxforge.targets.check import compile_to

    s = compile_to(ctx.model, dest, opts.target, opts.target_options(), feeds, rtol=opts.rtol, atol=opts.atol,
                   threads=opts.threads, batches=opts.batch_sizes, rounds=opts.rounds, console=ctx.console,
                   inputs=_inputs(ctx), where=where)
    s["inputs"] = provenance
    return s


@register_stage("compile", CompileOptions, produces_model=False,
                help="compile the model for a target (openvino, ort-mobile); checked and timed against onnxruntime")
def run_compile(ctx, opts: CompileOptions):
    from onnxforge.pipeline import StageResult

    feeds, provenance = ctx.feeds("eval")
    dest = ctx.stage_dir / opts.target
    s = compile_model(ctx, opts, dest, feeds, provenance, where=None)
    return StageResult(summary=s, files=[dest / f for f in s["files"]],
                       message=f"{opts.target}: {', '.join(s['files'])}")
