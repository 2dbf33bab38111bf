"""PyMC posterior → ONNX predictive: a fitted model's posterior (netcdf) and its mean function (one Python
transform, written against `xp`) become a graph serving the predictive mean, std, quantiles and draws."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from onnxforge.config import SourceBase, StrictModel, resolve_path
from onnxforge.frontends.base import Frontend, pool_threads
from onnxforge.registry import register_frontend

FamilyName = Literal["normal", "bernoulli", "binomial", "poisson", "student-t", "negative-binomial", "gamma",
                     "lognormal", "beta", "zero-inflated-poisson", "zero-inflated-negative-binomial",
                     "categorical"]
OUTPUT_KINDS = ("mean", "std", "quantiles", "draws")


def _resolve_ref(value: str | None, info: ValidationInfo) -> str | None:
    # 'file.py:function' with the file relative to the YAML, like every other path in a config
    if value is None:
        return None
    path, sep, name = value.rpartition(":")
    if not sep or not path or not name.isidentifier():
        raise ValueError("expected 'path/file.py:function'")
    p = resolve_path(path, (info.context or {}).get("base_dir"))
    return f"{p}:{name}"


CodeRef = Annotated[str, AfterValidator(_resolve_ref)]


class PymcOutputs(StrictModel):
    mean: bool = Field(True, description="posterior predictive mean E[y | x]")
    std: bool = Field(True, description="posterior predictive std, observation noise included")
    quantiles: list[float] = Field(default_factory=lambda: [0.05, 0.5, 0.95],
                                   description="posterior quantiles of the expected value E[y | x, θ]")
    draws: int = Field(0, ge=0, le=100_000, description="predictive draws per row (0 = none); stochastic")

    @field_validator("quantiles")
    @classmethod
    def _in_unit(cls, v: list[float]) -> list[float]:
        if any(not 0.0 <= q <= 1.0 for q in v):
            raise ValueError("quantiles must lie in [0, 1]")
        return v


class PymcCategorical(StrictModel):
    dim: str | None = Field(None, description="posterior dim whose coords are the levels (default: input name)")
    policy: Literal["error", "population"] = Field(
        "error", description="unseen level: error (graph and predict refuse) or population (hierarchical mean)")
    population: dict[str, str | float] = Field(
        default_factory=dict, description="for `population`: variable indexed by dim → posterior variable "
                                          "(or number) used for an unseen level, e.g. {alpha: mu_alpha}")


class PymcSource(SourceBase):
    framework: Literal["pymc"]
    transform: CodeRef | None = Field(None, description="'file.py:function' computing the mean: fn(xp, params, "
                                      "**inputs); without it (zero-code) the mean is read from `model`")
    model: CodeRef | None = Field(None, description="'file.py:builder' returning the pm.Model: without `transform` "
                                                    "its observed variable's parameters are exported (zero-code); "
                                                    "with one, the pm.sample_posterior_predictive draws reference")
    observed: str = Field("y", description="the observed variable in the PyMC model")
    family: FamilyName = Field("normal", description="likelihood of the observed variable: the distribution the "
                                                     "mean, std, quantiles and draws are computed from (zero-code: "
                                                     "read from the model)")
    params: dict[str, str | float] = Field(
        default_factory=dict, description="family parameter → posterior variable, input name, or number, "
                                          "e.g. {sigma: sigma}, {n: trials}, {alpha: phi}")
    outputs: PymcOutputs = Field(default_factory=PymcOutputs, description="which posterior predictive outputs "
                                                                          "the ONNX graph returns")
    samples: int | None = Field(1000, gt=0, description="thin the posterior to at most this many samples")
    categorical: dict[str, PymcCategorical] = Field(default_factory=dict,
                                                    description="inputs holding raw category levels")
    seed: int | None = Field(None, ge=0, description="bake seeds into the random nodes: reproducible draws")
    max_count: int = Field(64, ge=2, le=4096, description="count families: support [0, max_count) of exact "
                                                          "inverse-CDF draws")


@register_frontend
class PymcFrontend(Frontend):
    name = "pymc"
    Source = PymcSource
    packages = ("pymc", "pytensor", "arviz", "xarray", "h5netcdf", "torch", "onnxscript")
    stochastic = True
    wanted = "the posterior netcdf file (idata.to_netcdf)"
    # measured (bench/out/tolerances.md): mean/std/quantiles within 2.7e-6 abs (logistic std; ≤ 9e-7 elsewhere)
    rtol = 1e-5
    atol = 1e-5

    def load(self, cfg):
        from onnxforge.bayes.loader import build_predictive
        from onnxforge.frontends.base import require

        require("xarray", "pymc")
        require("h5netcdf", "pymc")
        return build_predictive(cfg)

    def preflight(self, cfg) -> None:
        super().preflight(cfg)
        opts = getattr(cfg.stages, "validate", None) if "validate" in cfg.stages.order else None
        s = cfg.source
        if opts is None or not s.outputs.draws:
            return
        draws = _draws_name(cfg)
        stochastic = getattr(opts, "stochastic", None)
        if stochastic is not None and draws not in stochastic:
            return  # validate compares no draws (stochastic: [] skips the distributional check)
        from onnxforge.compare import MIN_DRAWS
        from onnxforge.errors import UserError

        o = s.outputs  # skipping the check is a fix only where other outputs are still compared
        skip = ", or set validate's stochastic: [] to skip the distributional check" if (
            o.mean or o.std or o.quantiles) else ""
        against_source = getattr(opts, "against", "source") == "source"
        # validate's stochastic check samples draws with pm.sample_posterior_predictive, which needs the model:
        # refused here, before a ~30 s convert, with the message validate would give (bayes.predictive.sample_pymc)
        if against_source and not s.model:
            raise UserError("the stochastic check needs source.model ('file.py:builder' returning the pm.Model) "
                            "to run pm.sample_posterior_predictive — set it, or drop outputs.draws")
        # fewer draws per row than the check needs fails validate (exit 1) after the convert: a config error
        if s.outputs.draws < MIN_DRAWS:
            raise UserError(f"source.outputs.draws is {s.outputs.draws}: validate's distributional check of "
                            f"'{draws}' needs at least {MIN_DRAWS} draws per row — set outputs.draws to "
                            f"{MIN_DRAWS} or more{skip}")
        kept, why = _kept_samples(s)
        if against_source and kept is not None and kept < MIN_DRAWS:
            # the reference, pm.sample_posterior_predictive, draws once per kept posterior sample
            raise UserError(f"the posterior keeps {kept} samples ({why}): validate's distributional check of "
                            f"'{draws}' against PyMC's draws (one per sample) needs at least {MIN_DRAWS} — keep "
                            f"{MIN_DRAWS} or more (raise source.samples, or sample more draws){skip}")

    def export(self, native, cfg, opset, workdir):
        from onnxforge.bayes.module import export_onnx
        from onnxforge.errors import UserError
        from onnxforge.frontends.base import require

        require("torch", "pymc")
        require("onnxscript", "pymc")
        opset = opset or 18
        if opset < 18:
            raise UserError(f"convert.opset {opset}: the pymc frontend exports at opset 18-21 — raise it")
        if native.n_draws and opset > 21:
            raise UserError(f"convert.opset {opset}: graphs with draws must stay at opset ≤ 21 (onnxruntime's "
                            "random ops fail at 22+) — use 18-21")
        return export_onnx(native, opset, cfg.source.seed)

    def predict(self, native, feeds, cfg):
        return native.outputs(feeds)

    def threads(self, native, n: int):
        # predict is numpy (bayes.predictive.outputs): its only pools are BLAS/OpenMP, limited and read back
        return pool_threads(n)

    def sample(self, native, feeds, cfg):
        if not native.n_draws:
            return {}
        seed = cfg.source.seed if cfg.source.seed is not None else 0
        return {native.output_names["draws"]: native.sample_pymc(feeds, seed=seed)}

    def metadata(self, native, cfg):
        from onnxforge.bayes.loader import artifact_metadata

        return artifact_metadata(native, cfg)

    def code(self, cfg) -> dict[str, str]:
        return {f"source.{k}": v for k in ("transform", "model") if (v := getattr(cfg.source, k))}

    def source_files(self, cfg):
        s = cfg.source
        refs = [Path(r.rpartition(":")[0]) for r in (s.transform, s.model) if r]
        return [p for p in [s.path, *refs] if p]


def _draws_name(cfg) -> str:
    """The draws output's name, as bayes.loader names the outputs (cfg.outputs in the order of OUTPUT_KINDS)."""
    o = cfg.source.outputs
    kinds = [k for k, on in zip(OUTPUT_KINDS, (o.mean, o.std, bool(o.quantiles), o.draws > 0), strict=True) if on]
    names = list(cfg.outputs or kinds)
    return names[kinds.index("draws")] if "draws" in kinds and len(names) == len(kinds) else "draws"


def _kept_samples(s) -> tuple[int | None, str]:
    """How many posterior samples convert keeps (bayes.posterior.thin_index keeps min(chains × draws, samples)),
    from the netcdf header alone (h5py, no xarray); None when the file cannot say (load then says why)."""
    total = None
    try:
        import h5py

        with h5py.File(s.path, "r") as f:
            g = f["posterior"]
            chains, draws = int(g["chain"].shape[0]), int(g["draw"].shape[0])
            total = chains * draws
    except Exception:  # missing, not HDF5, no posterior group or dims: convert's loader names the problem
        pass
    if total is not None and (s.samples is None or total <= s.samples):
        return total, f"{chains} chain(s) × {draws} draws in {Path(s.path).name}"
    if s.samples is not None:  # thinned to it, or (the file unread) at most it
        return s.samples, f"source.samples: {s.samples}"
    return None, ""
