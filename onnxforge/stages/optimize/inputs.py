"""The model a quantize/optimize stage works on."""

from __future__ import annotations

from pathlib import Path


def input_model(ctx) -> Path:
    """The current model, or the source .onnx when no earlier stage produced one (a config with only
    `optimize:` on an ONNX source)."""
    from onnxforge.errors import UserError

    if ctx.model is not None:
        return Path(ctx.model)
    src = ctx.cfg.source
    if src.framework == "onnx" and src.path is not None:
        return Path(src.path)
    raise UserError(f"{ctx.stage}: no model to work on — put a convert stage before it in `stages:`")
