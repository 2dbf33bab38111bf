"""Channel/filter removal with torch-pruning's dependency graph: every layer that consumes a removed channel
shrinks with it, so the exported ONNX model has smaller weights and does less work (a mask would not: ORT's CPU
kernels multiply the zeros all the same)."""

from __future__ import annotations

import copy
from typing import Any


def layer_types() -> dict[str, Any]:
    from torch import nn

    return {"Conv": nn.modules.conv._ConvNd, "Linear": nn.Linear}


def prune(module, example: tuple, *, ratio: float | None, ratios: dict[str, float], importance: str):
    """A pruned deep copy of `module` and what was removed per layer. The last layer (the model's outputs) is
    never pruned: the exported model keeps its output shape."""
    import torch
    import torch_pruning as tp

    model = copy.deepcopy(module).eval()
    types = layer_types()
    layers = [m for m in model.modules() if isinstance(m, tuple(types.values()))]
    if not layers:
        from onnxforge.errors import UserError

        raise UserError("prune: the model has no Conv or Linear layer to prune — drop the prune stage")
    keep = [layers[-1]]
    per_layer = {m: next((ratios[k] for k, t in types.items() if k in ratios and isinstance(m, t)), 0.0)
                 for m in layers[:-1]} if ratios else None
    imp = tp.importance.MagnitudeImportance(p=2 if importance == "l2" else 1)
    before = {n: _width(m) for n, m in model.named_modules() if m in layers}
    pruner = tp.pruner.MetaPruner(model, example, importance=imp, pruning_ratio=ratio or 0.0,
                                  pruning_ratio_dict=per_layer, ignored_layers=keep, global_pruning=False)
    with torch.no_grad():
        pruner.step()
    after = {n: _width(m) for n, m in model.named_modules() if n in before}
    return model, {n: {"before": before[n], "after": after[n]} for n in before if before[n] != after[n]}


def _width(m) -> int:
    return int(getattr(m, "out_channels", getattr(m, "out_features", 0)))

