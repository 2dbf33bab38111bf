"""Normalize a model on load, in memory (the user's file is never modified): old IR and opset conventions made
explicit so that onnxruntime's optimizer and quantizer, and onnxslim, see what the model means.

- IR < 4 lists every initializer as a graph input too. Read that way, a weight is an input a caller may replace:
  onnxruntime folds nothing through it and the quantizer asks for it as a feed ("Required inputs ... are
  missing"). IR 4 made initializers constants; since an IR-3 file cannot mean its weights to be fed, they are
  dropped from the inputs and the model is stamped IR 4.
- ai.onnx opsets below 7 are upgraded to 7 where onnx's version converter can (onnxruntime only guarantees 7+
  and its transpose optimizer refuses older ones); where it cannot, the model is left at its opset.
"""

from __future__ import annotations

MIN_OPSET = 7


def normalize(model) -> list[str]:
    """Rewrite `model` in place; returns one note per change (empty: nothing to do)."""
    notes = []
    if model.ir_version < 4:
        inits = {t.name for t in model.graph.initializer}
        keep = [i for i in model.graph.input if i.name not in inits]
        dropped = len(model.graph.input) - len(keep)
        if dropped:
            del model.graph.input[:]
            model.graph.input.extend(keep)
        notes.append(f"IR {model.ir_version} → 4" + (f": {dropped} initializers no longer listed as graph inputs "
                                                       "(constants, as IR 4 reads them)" if dropped else ""))
        model.ir_version = 4
    opset = default_opset(model)
    if 0 < opset < MIN_OPSET:
        upgraded = _upgrade(model, MIN_OPSET)
        if upgraded is not None:
            model.CopyFrom(upgraded)
            notes.append(f"opset {opset} → {MIN_OPSET} (onnx version converter)")
    return notes


def default_opset(model) -> int:
    """The model's ai.onnx opset; 0 when it imports none (an ai.onnx.ml-only model)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _upgrade(model, target: int):
    """The model at `target` opset, checked; None when the converter or the checker refuses."""
    import onnx
    from onnx import version_converter

    try:
        out = version_converter.convert_version(model, target)
        onnx.checker.check_model(out, full_check=True)
    except Exception:  # the converter has no adapter for some op: keep the model at its own opset
        return None
    return out
