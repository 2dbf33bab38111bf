"""convert: source model → ONNX through its frontend, stamped with provenance metadata."""

from __future__ import annotations

import json
import re

from pydantic import Field

from onnxforge.config import StrictModel
from onnxforge.registry import register_stage


class ConvertOptions(StrictModel):
    opset: int | None = Field(None, ge=7, le=24, description="target opset (default: the frontend's choice)")


@register_stage("convert", ConvertOptions, produces_model=True, help="export the source model to ONNX")
def run_convert(ctx, opts: ConvertOptions):
    from onnxforge import __version__
    from onnxforge.artifact import save_model, sha256_file, stamp
    from onnxforge.errors import UserError
    from onnxforge.inspect import summarize
    from onnxforge.pipeline import StageResult

    cfg, fe = ctx.cfg, ctx.frontend
    native = ctx.native()
    model = fe.export(native, cfg, opts.opset, ctx.stage_dir)
    if re.fullmatch(r"[0-9a-f]{32}", model.graph.name):  # skl2onnx/onnxmltools name graphs with a fresh uuid4:
        model.graph.name = cfg.name  # the same config must give the same bytes
    graph_inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if cfg.inputs and [s.name for s in cfg.inputs] != graph_inputs:
        raise UserError(f"the input spec names {[s.name for s in cfg.inputs]} but the model's inputs are "
                        f"{graph_inputs} — fix `inputs:` in the config")
    srcs = fe.source_files(cfg)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    stamp(model, **{
        "source.framework": fe.name,
        "source.versions": fe.versions(),
        "source.sha256": {p.name: sha256_file(p) for p in srcs if p.is_file()},
        "version": __version__,
        "input_spec": [s.model_dump(mode="json", exclude_defaults=True) for s in cfg.inputs] or None,
        "opset": str(opset),
        **fe.metadata(native, cfg),
    })
    out = save_model(model, ctx.stage_dir / "model.onnx")
    s = summarize(model, out)
    return StageResult(model=out, summary={k: s[k] for k in ("opset", "nodes", "params", "file_bytes")} | {
        "inputs": s["inputs"], "outputs": s["outputs"]}, message=json.dumps({"opset": opset}))
