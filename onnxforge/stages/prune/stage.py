"""prune: a PyTorch source model with channels/filters removed (structured, dependency-graph aware), optionally
fine-tuned by the user's hook, exported, and gated by the accuracy budget against the converted float model; ORT
latency and size before and after are measured in the same run. Place it after convert."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from onnxforge.config import StrictModel
from onnxforge.registry import register_stage

# why mask-only pruning cannot serve a speed goal (said in the refusal)
MASK_ONLY_NO_SPEED = ("mask-only (unstructured) pruning leaves dense tensors full of zeros and onnxruntime's CPU "
                      "kernels multiply them all the same: no speedup")


class PruneOptions(StrictModel):
    method: Literal["structured", "unstructured"] = Field("structured", description="structured: remove whole "
                                                          "channels/filters (torch-pruning); unstructured: zero "
                                                          "single weights (torch.nn.utils.prune) — size goal only")
    goal: Literal["speed", "size"] = Field("speed", description="speed refuses unstructured pruning (ORT does not "
                                           "skip zeros)")
    ratio: float | None = Field(None, ge=0, lt=1, description="fraction of channels removed in every prunable "
                                "layer (the last layer is kept whole)")
    ratios: dict[Literal["Conv", "Linear"], float] = Field(default_factory=dict, description="per layer type, "
                                                           "e.g. {Conv: 0.5, Linear: 0.3}; over `ratio`")
    importance: Literal["l1", "l2"] = Field("l2", description="channel importance: weight magnitude norm")
    finetune: str | None = Field(None, description="module:function or file.py:function called as fn(model, data) "
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

    @model_validator(mode="after")
    def _checked(self):
        if self.method == "unstructured" and self.goal == "speed":
            raise ValueError(f"prune.method unstructured with goal speed is refused: {MASK_ONLY_NO_SPEED} — use "
                             "method: structured, or goal: size")
        if self.ratio is None and not self.ratios:
            raise ValueError("prune: give ratio (global) or ratios per layer type, e.g. ratio: 0.3")
        if any(not 0 <= v < 1 for v in self.ratios.values()):
            raise ValueError("prune.ratios: each ratio is a fraction in [0, 1)")
        return self


@register_stage("prune", PruneOptions, produces_model=True,
                help="structured pruning of a torch model (after convert): channels removed, fine-tune hook, "
                     "accuracy budget, ORT latency and size before/after")
def run_prune(ctx, opts: PruneOptions):
    from pathlib import Path

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
    summary = {"method": opts.method, "goal": opts.goal, "ratio": opts.ratio, "ratios": opts.ratios,
               "removed": removed, "finetune": tuned, "data": prov, "metric": assess.metric,
               "accuracy_before": assess.accuracy_float, "accuracy_after": r["accuracy"],
               "accuracy_drop": r["accuracy_drop"], "max_accuracy_drop": opts.max_accuracy_drop,
               "bytes_before": before_b, "bytes_after": after_b, "size_ratio": before_b / max(after_b, 1)}
    if not r["within"]:
        out.unlink()
        summary["verdict"] = "fail"
        raise CheckFailed(f"prune: {assess.describe(r)} exceeds max_accuracy_drop {opts.max_accuracy_drop:g} — "
                          "prune less (ratio), or fine-tune (finetune: module:function)", summary)
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
    from onnxforge.frontends.torch import _example, _specs

    cfg = ctx.cfg
    if opts.method == "structured":
        from onnxforge.stages.prune.channels import prune

        model, removed = prune(native.module, tuple(_example(_specs(cfg))), ratio=opts.ratio, ratios=opts.ratios,
                               importance=opts.importance)
    else:
        from onnxforge.stages.prune.channels import mask_only

        model, removed = mask_only(native.module, opts.ratio or max(opts.ratios.values())), {}
    tuned = None
    if opts.finetune:
        from onnxforge.frontends.torch import _import_factory

        if not cfg.source.trust_code:
            raise UserError(f"prune.finetune names code ({opts.finetune}): running it needs source.trust_code: true")

        fn = _import_factory(opts.finetune, cfg)
        train, tprov = (ctx.feeds("calibration") if cfg.data.calibration else (feeds, prov))
        tl = _labels_of(cfg, cfg.data.calibration, ctx) if cfg.data.calibration else labels
        torch.manual_seed(cfg.data.seed)  # the same config gives the same fine-tuned weights
        got = fn(model, {"x": train, "labels": tl})
        model = (got if got is not None else model).eval()
        tuned = {"hook": opts.finetune, "data": tprov, "rows": data.n_rows(train)}
    return model, removed, tuned


def _labels_of(cfg, path, ctx):
    from onnxforge import data

    if cfg.data.labels is None:
        return None
    return data.read_labels(path, cfg.data.labels, None, specs=ctx.input_specs())
