"""prune: a PyTorch source model with channels/filters removed (structured, dependency-graph aware), optionally
fine-tuned by the user's hook, exported, and gated by the accuracy budget against the converted float model; ORT
latency and size before and after are measured in the same run. Place it after convert."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from onnxforge.code_trust import is_file_ref
from onnxforge.config import StrictModel
from onnxforge.registry import register_stage

# why mask-only pruning is refused (said in the refusal): the artifact is a dense ONNX file and the project writes
# no sparse or compressed format, so single zeroed weights buy neither goal
MASK_ONLY_NO_SPEED = ("mask-only (unstructured) pruning leaves dense tensors full of zeros and onnxruntime's CPU "
                      "kernels multiply them all the same: no speedup")
MASK_ONLY_NO_SIZE = ("mask-only (unstructured) pruning leaves dense tensors full of zeros: every zero still takes "
                     "its full width, so the .onnx file does not shrink")


class PruneOptions(StrictModel):
    method: Literal["structured", "unstructured"] = Field("structured", description="structured: remove whole "
                                                          "channels/filters (torch-pruning); unstructured (zeroing "
                                                          "single weights) is refused: the ONNX file stays dense, so "
                                                          "it is neither smaller nor faster")
    goal: Literal["speed", "size"] = Field("speed", description="speed: latency before/after is measured and "
                                           "reported; size: the stage fails (exit 1, no model) unless the pruned "
                                           "file and its weights are smaller than the input's")
    ratio: float | None = Field(None, ge=0, lt=1, description="fraction of channels removed in every prunable "
                                "layer (the last layer is kept whole)")
    ratios: dict[Literal["Conv", "Linear"], float] = Field(default_factory=dict, description="per layer type, "
                                                           "e.g. {Conv: 0.5, Linear: 0.3}; over `ratio`")
    importance: Literal["l1", "l2"] = Field("l2", description="channel importance: weight magnitude norm")
    finetune: str | None = Field(None, description="file.py:function (relative to the YAML) or "
                                 "package.module:function, called as fn(model, data) "
                                 "after pruning (data: {'x': {input: array}, 'labels': array or None}); returns "
                                 "the model (or None: trained in place). Runs code: source.trust_code rules apply")
    max_accuracy_drop: float = Field(0.01, ge=0, le=1, description="allowed accuracy drop vs the unpruned model "
                                     "(R² for regressors); over it is exit 1 with no model")
    threads: int = Field(1, gt=0, description="intra-op threads for the latency figures")
    torch_threads: int = Field(1, gt=0, description="torch threads while pruning and fine-tuning: fixed so the "
                               "same config gives the same weights on any machine (a float sum split over another "
                               "thread count rounds differently)")
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 64], description="latency batch sizes")
    rounds: int = Field(3, gt=0, description="paired timing rounds")

    @field_validator("finetune")
    @classmethod
    def _hook_ref(cls, v: str | None) -> str | None:
        if v is not None:
            target, sep, fn = v.rpartition(":")
            if not sep or not target or not fn.isidentifier():
                raise ValueError(f"prune.finetune: expected 'file.py:function' or 'package.module:function', got "
                                 f"'{v}' — e.g. finetune: train.py:finetune")
        return v

    @model_validator(mode="after")
    def _checked(self):
        if self.method == "unstructured":
            why = MASK_ONLY_NO_SPEED if self.goal == "speed" else MASK_ONLY_NO_SIZE
            raise ValueError(f"prune.method unstructured with goal {self.goal} is refused: {why} — use method: "
                             "structured (whole channels removed: a smaller and faster model)")
        if self.ratio is None and not self.ratios:
            raise ValueError("prune: give ratio (global) or ratios per layer type, e.g. ratio: 0.3")
        if any(not 0 <= v < 1 for v in self.ratios.values()):
            raise ValueError("prune.ratios: each ratio is a fraction in [0, 1)")
        return self


@register_stage("prune", PruneOptions, produces_model=True,
                help="structured pruning of a torch model (after convert): channels removed, fine-tune hook, "
                     "accuracy budget, ORT latency and size before/after")
def run_prune(ctx, opts: PruneOptions):
    import numpy as np

    from onnxforge import data, runtime, timing
    from onnxforge.artifact import save_model, stamp
    from onnxforge.errors import CheckFailed, UserError
    from onnxforge.pipeline import StageResult
    from onnxforge.stages.quantize.budget import Assessor, Budget

    cfg = ctx.cfg
    if cfg.source.framework != "torch" or ctx.model is None:
        raise UserError("prune works on a PyTorch source after convert — put `convert:` before `prune:` and use "
                        "source.framework: torch")
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        raise UserError("prune needs torch-pruning — pip install 'onnxforge[prune]'") from None
    import torch

    from onnxforge.frontends.torch import TorchModel

    native = ctx.native()
    if native.kind != "module":
        raise UserError("prune needs an nn.Module (factory + state_dict), not a torch.export program")
    feeds, prov = ctx.feeds("eval")
    labels = ctx.labels()
    threads = torch.get_num_threads()
    torch.set_num_threads(opts.torch_threads)
    try:
        model, removed, tuned = _pruned(ctx, opts, native, feeds, prov, labels)
    finally:
        torch.set_num_threads(threads)
    onnx_model = ctx.frontend.export(TorchModel(model, "module", native.origin), cfg, None, ctx.stage_dir)
    stamp(onnx_model, prune={"method": opts.method, "ratio": opts.ratio, "ratios": opts.ratios})
    out = save_model(onnx_model, ctx.stage_dir / "model.onnx")
    assess = Assessor(Path(ctx.model), feeds, labels, Budget(opts.max_accuracy_drop, {}))
    r = assess(out)
    before_b, after_b = Path(ctx.model).stat().st_size, out.stat().st_size
    before_w, after_w = _weight_bytes(Path(ctx.model)), _weight_bytes(out)
    summary = {"method": opts.method, "goal": opts.goal, "ratio": opts.ratio, "ratios": opts.ratios,
               "removed": removed, "finetune": tuned, "data": prov, "metric": assess.metric,
               "accuracy_before": assess.accuracy_float, "accuracy_after": r["accuracy"],
               "accuracy_drop": r["accuracy_drop"], "max_accuracy_drop": opts.max_accuracy_drop,
               "bytes_before": before_b, "bytes_after": after_b, "size_ratio": before_b / max(after_b, 1),
               "weight_bytes_before": before_w, "weight_bytes_after": after_w}
    if not r["within"]:
        out.unlink()
        summary["verdict"] = "fail"
        raise CheckFailed(f"prune: {_over_budget(assess.metric, r['accuracy_drop'], opts.max_accuracy_drop)} — "
                          "prune less (ratio), or fine-tune (finetune: module:function)", summary)
    if opts.goal == "size" and (after_b >= before_b or after_w >= before_w):
        out.unlink()
        summary["verdict"] = "fail"
        what = "no channel was removed" if not removed else "the weights did not shrink"
        raise CheckFailed(f"prune: goal size not met: {what} (file {before_b:,} → {after_b:,} B, weights "
                          f"{before_w:,} → {after_w:,} B) — raise ratio, or set ratios for the layer types the "
                          "model has (Conv, Linear; the last layer is kept whole)", summary)
    sessions = {k: runtime.session(p, threads=opts.threads) for k, p in (("before", Path(ctx.model)),
                                                                          ("after", out))}
    summary["provider"] = runtime.ran_on(sessions["after"])
    lat = {}
    for b in opts.batch_sizes:
        f = data.tile_rows(data.take(feeds, min(b, data.n_rows(feeds))), b)
        p50 = {k: [] for k in sessions}
        for i in range(opts.rounds):
            for k in (["before", "after"] if i % 2 == 0 else ["after", "before"]):
                p50[k].append(timing.measure(lambda s=sessions[k], f=f: s.run(None, f), runs=200, warmup=5,
                                             max_seconds=0.5, rows=b)["p50_ms"])
        pr = timing.paired(p50["before"], p50["after"])
        lat[f"batch{b}"] = {"before_p50_ms": float(np.median(p50["before"])),
                            "after_p50_ms": float(np.median(p50["after"])),
                            "speedup": pr.as_dict() | {"verdict": pr.verdict()}}
    summary["latency"] = lat
    summary["verdict"] = "pass"
    return StageResult(model=out, summary=summary, message=(
        f"{assess.metric} {assess.accuracy_float:.4f} → {r['accuracy']:.4f}, size ÷{summary['size_ratio']:.2f}, "
        + ", ".join(f"{k} {v['speedup']['ratio']:.2f}×" for k, v in lat.items())))


def _pruned(ctx, opts, native, feeds, prov, labels):
    """The pruned (and fine-tuned) module, the channels removed per layer, and what the fine-tune ran on."""
    import torch

    from onnxforge import data
    from onnxforge.errors import UserError
    from onnxforge.frontends._export import first_line
    from onnxforge.frontends.torch import _example, _specs
    from onnxforge.stages.prune.channels import prune

    cfg = ctx.cfg
    if opts.finetune and not cfg.source.trust_code:
        raise UserError(f"prune.finetune names code ({opts.finetune}): running it needs source.trust_code: true")
    fn = _hook(opts.finetune, cfg) if opts.finetune else None  # a wrong reference fails before the pruning
    model, removed = prune(native.module, tuple(_example(_specs(cfg))), ratio=opts.ratio, ratios=opts.ratios,
                           importance=opts.importance)
    tuned = None
    if fn is not None:
        train, tprov = (ctx.feeds("calibration") if cfg.data.calibration else (feeds, prov))
        tl = _labels_of(cfg, cfg.data.calibration, ctx) if cfg.data.calibration else labels
        torch.manual_seed(cfg.data.seed)  # the same config gives the same fine-tuned weights
        try:
            got = fn(model, {"x": train, "labels": tl})
        except Exception as e:
            raise UserError(f"prune.finetune {_short(opts.finetune)} raised {first_line(e)} — fix the hook "
                            "(it gets the pruned model and {'x': {input: array}, 'labels': array})") from None
        if got is not None and not isinstance(got, torch.nn.Module):
            raise UserError(f"prune.finetune {_short(opts.finetune)} returned {type(got).__name__}, not a "
                            "torch.nn.Module — return the model, or None after training it in place")
        model = (got if got is not None else model).eval()
        tuned = {"hook": opts.finetune, "data": tprov, "rows": data.n_rows(train)}
    return model, removed, tuned


def _labels_of(cfg, path, ctx):
    from onnxforge import data

    if cfg.data.labels is None:
        return None
    return data.read_labels(path, cfg.data.labels, None, specs=ctx.input_specs())


def _short(ref: str) -> str:
    target, _, fn = ref.rpartition(":")
    return f"{Path(target).name}:{fn}" if is_file_ref(target) else ref


def _hook(ref: str, cfg):
    """The fine-tune function `ref` names: a file (relative to the YAML, like source.factory) or a module
    importable from the config's folder. Every failure names prune.finetune, the key to fix."""
    from onnxforge.frontends.torch import import_callable

    base = cfg.config_path.parent if cfg.config_path is not None else None
    return import_callable(ref, cfg, "prune.finetune", "onnxforge_finetune", base)


def _weight_bytes(path: Path) -> int:
    """Bytes of the model's stored tensors (initializers and Constant values), from their shapes and types."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    m = onnx.load(str(path), load_external_data=False)
    total = 0
    for g in [m.graph, *(a.g for n in m.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH)]:
        tensors = list(g.initializer) + [a.t for n in g.node if n.op_type == "Constant" for a in n.attribute
                                         if a.name == "value" and a.type == onnx.AttributeProto.TENSOR]
        for t in tensors:
            try:
                width = tensor_dtype_to_np_dtype(t.data_type).itemsize
            except (KeyError, ValueError):
                width = 1
            total += width * math.prod(t.dims)
    return total


def _over_budget(metric: str, drop: float, limit: float) -> str:
    """'accuracy drop 0.7705 (77.05 pt) exceeds max_accuracy_drop 0.01 (1.00 pt)': the drop and the budget in the
    same units, with as many digits as it takes to tell them apart."""
    unit, what = ("%", metric) if metric == "relative L2 error" else (" pt", f"{metric} drop")
    nd = next((k for k in range(2, 9) if f"{drop * 100:.{k}f}" != f"{limit * 100:.{k}f}"), 8)
    return (f"{what} {drop:.{nd + 2}f} ({drop * 100:.{nd}f}{unit}) exceeds max_accuracy_drop {limit:g} "
            f"({limit * 100:.{nd}f}{unit})")
