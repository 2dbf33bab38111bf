"""Old opsets before QDQ: DequantizeLinear needs opset 10, its per-channel axis opset 13. A model below 13 is
converted (onnx.version_converter) on a copy; the user's file is never touched."""

from __future__ import annotations

from onnxforge.normalize import default_opset

QDQ_OPSET = 13


def upgrade(model, name: str):
    """A checked copy of `model` at opset 13, or None when it is at 13 already. UserError (one line, the fix)
    when onnx cannot convert it."""
    import onnx
    from onnx import version_converter

    from onnxforge.errors import UserError

    if default_opset(model) >= QDQ_OPSET or not default_opset(model):
        return None  # at 13 already, or no ai.onnx ops at all (an ai.onnx.ml-only model): nothing to convert
    m = onnx.ModelProto()
    m.CopyFrom(model)
    # IR-3 files list initializers as inputs too (then they are overridable inputs, not weights)
    inits = {t.name for t in m.graph.initializer}
    kept = [i for i in m.graph.input if i.name not in inits]
    if len(kept) != len(m.graph.input):
        del m.graph.input[:]
        m.graph.input.extend(kept)
    m.ir_version = max(m.ir_version, 4)
    try:
        out = version_converter.convert_version(m, QDQ_OPSET)
        out.ir_version = max(out.ir_version, 7)  # opset 13 needs IR 7
        onnx.checker.check_model(out, full_check=True)
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"{name}: INT8 needs opset {QDQ_OPSET} (the model has {default_opset(model)}) and onnx "
                        f"cannot convert it ({msg}) — re-export the model at opset >= {QDQ_OPSET}, or use "
                        "--mode fp16") from None
    return out
