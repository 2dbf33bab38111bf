"""From a pipeline config to a checked BayesPredictive: posterior, transform, inputs, categories, family
parameters and outputs, each mismatch reported as one line naming the fix."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from onnxforge.bayes.families import DEFAULT_PARAMS, FAMILIES
from onnxforge.bayes.posterior import load_posterior
from onnxforge.bayes.predictive import BayesPredictive, Categorical, load_callable
from onnxforge.errors import UserError

COUNT_FAMILIES = ("poisson", "negative-binomial", "binomial", "zero-inflated-poisson",
                  "zero-inflated-negative-binomial")


def _transform_inputs(fn) -> list[str]:
    params = list(inspect.signature(fn).parameters.values())
    if len(params) < 2:
        raise UserError(f"source.transform: {fn.__name__} must take (xp, params, *inputs) — it takes "
                        f"{[p.name for p in params]}")
    return [p.name for p in params[2:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _categoricals(cfg, post, inputs) -> dict[str, Categorical]:
    s = cfg.source
    names = {i.name: i for i in inputs}
    out = {}
    for name, c in s.categorical.items():
        if name not in names:
            raise UserError(f"source.categorical.{name}: no input named '{name}' — inputs are {list(names)}")
        dim = c.dim or name
        if dim not in post.coords:
            raise UserError(f"source.categorical.{name}: the posterior has no dim '{dim}' (dims: "
                            f"{', '.join(sorted(post.coords)) or 'none'}) — set categorical.{name}.dim")
        levels = list(post.coords[dim])
        strings = isinstance(levels[0], str)
        want = "string" if strings else "int64"
        if names[name].dtype != want:
            raise UserError(f"input '{name}': its levels in the posterior are {'strings' if strings else 'integers'}"
                            f" ({levels[:3]}...) — set its dtype to {want}")
        if c.policy == "population" and not c.population:
            raise UserError(f"source.categorical.{name}: policy population needs population: {{var: hyper-mean}}, "
                            "e.g. {alpha: mu_alpha}")
        out[name] = Categorical(name, dim, levels, c.policy, dict(c.population))
    for i in inputs:
        if i.dtype == "string" and i.name not in out:
            raise UserError(f"input '{i.name}' is a string input — declare it under source.categorical")
    return out


def _extend_population(post, cats: dict[str, Categorical]) -> dict[str, np.ndarray]:
    """Append each population value as one more level of the indexed variable (code = number of levels)."""
    values = dict(post.values)
    for cat in cats.values():
        if cat.policy != "population":
            continue
        for var, pop in cat.population.items():
            if var not in values:
                raise UserError(f"categorical.{cat.input}.population: no posterior variable '{var}' — have "
                                f"{', '.join(sorted(values))}")
            dims = post.dims[var]
            if cat.dim not in dims:
                raise UserError(f"categorical.{cat.input}.population: '{var}' is not indexed by '{cat.dim}' "
                                f"(dims {list(dims)})")
            axis = dims.index(cat.dim)
            v = values[var]
            rest = v.shape[:axis] + v.shape[axis + 1:]
            if isinstance(pop, str):
                if pop not in post.values:
                    raise UserError(f"categorical.{cat.input}.population.{var}: no posterior variable '{pop}'")
                u = post.values[pop]
                if u.shape != rest:
                    raise UserError(f"categorical.{cat.input}.population.{var}: '{pop}' has shape "
                                    f"{list(u.shape)}, needs {list(rest)} ('{var}' without '{cat.dim}')")
            else:
                u = np.full(rest, float(pop))
            values[var] = np.concatenate([v, np.expand_dims(u, axis)], axis=axis)
    return values


def _family_params(cfg, family, post, input_names) -> dict[str, tuple[str, Any]]:
    s = cfg.source
    unknown = set(s.params) - set(family.params)
    if unknown:
        raise UserError(f"source.params: family {family.name} has no parameter(s) {sorted(unknown)} — it takes "
                        f"{list(family.params) or 'none'}")
    out = {}
    for name in family.params:
        ref = s.params.get(name, DEFAULT_PARAMS.get(name))
        if name == "alpha" and name not in s.params:
            ref = None  # `alpha` is too often an intercept to guess
        if ref is None:
            raise UserError(f"source.params.{name}: family {family.name} needs '{name}' — name a posterior "
                            f"variable, an input or a number, e.g. params: {{{name}: ...}}")
        if isinstance(ref, int | float):
            out[name] = ("const", float(ref))
        elif ref in post.values:
            if post.values[ref].ndim != 1:
                raise UserError(f"source.params.{name}: '{ref}' has dims {list(post.dims[ref])}; family "
                                "parameters must be scalars per sample")
            out[name] = ("var", ref)
        elif ref in input_names and name == "n":
            out[name] = ("input", ref)
        else:
            raise UserError(f"source.params.{name}: '{ref}' is not a posterior variable "
                            f"({', '.join(sorted(post.values))}) — fix the name")
    if family.name in ("negative-binomial", "zero-inflated-negative-binomial") and out["alpha"][0] == "input":
        raise UserError("source.params.alpha must be a posterior variable or a number")
    if family.name == "binomial" and out["n"][0] == "const" and not float(out["n"][1]).is_integer():
        raise UserError(f"source.params.n: binomial trials must be a whole number, got {out['n'][1]}")
    return out


def _dummy_encoded(inputs, cats, rows: int = 3) -> dict[str, np.ndarray]:
    """A few rows of zeros (codes for categorical inputs) shaped as the config declares: the model is built on them
    and its data are placeholders afterwards."""
    out = {}
    for spec in inputs:
        shape = [rows] + [d if isinstance(d, int) else 1 for d in (spec.shape or ["batch"])[1:]]
        out[spec.name] = np.zeros(shape, np.int64 if spec.name in cats else np.float64)
    return out


def _zero_code(cfg, post, cats, builder, names: list[str]):
    """(family, transform, fparams, extra values) read from the PyMC model (bayes.lower)."""
    from onnxforge.bayes.lower import call_builder, extract

    s = cfg.source
    if s.params:
        raise UserError("source.params: without a transform the family parameters come from the PyMC model — drop "
                        "params, or give source.transform")
    coords = {d: list(c) for d, c in post.coords.items()}
    builds = []
    for rows, fill in ((3, False), (5, True)):
        enc = _dummy_encoded(cfg.inputs, cats, rows)
        if fill:  # other values, other row count
            enc = {k: (np.arange(v.size).reshape(v.shape) % len(cats[k].levels) if k in cats
                       else np.linspace(-1.7, 2.3, v.size).reshape(v.shape)) for k, v in enc.items()}
        args = {k: (v.reshape(-1) if len(spec.shape or [1]) == 1 else v)
                for spec in cfg.inputs for k, v in [(spec.name, enc[spec.name])]}
        builds.append(extract(call_builder(builder, args, coords), s.observed, names, post))
    family, zc, fixed = builds[0]
    # the model is built on placeholder rows: a value it computes from its data while being built (numpy on the
    # data, `.eval()` — HSGP's centre of X) is a constant of those rows, wrong for any other; two builds tell
    changed = zc.constants_changed(builds[1][1])
    if changed:
        raise UserError(f"zero-code export: the model computes a value from its data when it is built (a constant "
                        f"of {changed} changes with the rows it is built on — e.g. numpy on the data, .eval(), "
                        "HSGP's centre of X): fix that value in the model, or write source.transform")
    if "family" in s.model_fields_set and s.family != family:
        raise UserError(f"source.family: {s.family}, but the model's '{s.observed}' is {family} — drop family (the "
                        "model decides it) or fix the model")
    fparams, extra = {}, {}
    for name in FAMILIES[family].params:
        if name in zc.graphs:
            fparams[name] = ("graph", name)
        elif name in fixed:
            kind, ref, values = fixed[name]
            if values is not None:
                extra[ref] = values
            fparams[name] = (kind, ref)
    return FAMILIES[family], zc, fparams, extra


def build_predictive(cfg) -> BayesPredictive:
    s = cfg.source
    if s.path is None:
        raise UserError("source.path is required for framework 'pymc' — point it at the posterior .nc file")
    if s.transform is None and s.model is None:
        raise UserError("source: give model: 'file.py:builder' (the PyMC model: zero-code export) or transform: "
                        "'file.py:function' (the mean function by hand)")
    post = load_posterior(s.path, s.samples)
    builder = load_callable(s.model, "model") if s.model else None
    if not cfg.inputs:
        hint = ("the model's pm.Data names" if s.transform is None
                else f"the transform's inputs {_transform_inputs(load_callable(s.transform, 'transform'))}")
        raise UserError(f"inputs: list {hint} with dtype and shape, e.g. [{{name: X, shape: [batch, 3]}}]")
    names = [i.name for i in cfg.inputs]
    cats = _categoricals(cfg, post, cfg.inputs)
    extra_values: dict[str, np.ndarray] = {}
    if s.transform is None:
        family, transform, fparams, extra_values = _zero_code(cfg, post, cats, builder, names)
        wanted = names
    else:
        transform = load_callable(s.transform, "transform")
        wanted = _transform_inputs(transform)
        family = FAMILIES[s.family]
        fparams = _family_params(cfg, family, post, names)
        extra = {r for k, r in fparams.values() if k == "input"}
        if set(wanted) - set(names) or set(names) - set(wanted) - extra:
            raise UserError(f"inputs {names} differ from the transform's arguments {wanted} — make them the same")
    o = s.outputs
    kinds = [k for k, on in (("mean", o.mean), ("std", o.std), ("quantiles", bool(o.quantiles)),
                             ("draws", o.draws > 0)) if on]
    if not kinds:
        raise UserError("source.outputs: every output is off — enable mean, std, quantiles or draws")
    if cfg.outputs is not None and len(cfg.outputs) != len(kinds):
        raise UserError(f"outputs: {len(cfg.outputs)} name(s) given for {len(kinds)} output(s) {kinds} — list one "
                        "name each, in that order, or drop `outputs:`")
    out_names = dict(zip(kinds, cfg.outputs or kinds, strict=True))
    values = _extend_population(post, cats)
    values.update(extra_values)
    pred = BayesPredictive(
        posterior=post, transform=transform, family=family, inputs=list(cfg.inputs), args=wanted, categorical=cats,
        fparams=fparams, quantiles=list(o.quantiles), want_mean=o.mean, want_std=o.std, n_draws=o.draws,
        max_count=s.max_count, output_names=out_names, values=values, builder=builder,
        observed=s.observed)
    # a dry run records the variables the transform uses and turns shape mismatches into one-line errors
    pred.mu(pred.encode(pred.dummy_feeds()))
    pred.used.update(r for k, r in fparams.values() if k == "var")
    _refuse_nonfinite(pred)
    for cat in cats.values():
        if cat.policy != "population":
            continue
        uncovered = [v for v in sorted(pred.used) if cat.dim in post.dims.get(v, ()) and v not in cat.population]
        if uncovered:
            what = "the model's graph" if s.transform is None else "the transform"
            raise UserError(f"categorical.{cat.input}: {what} indexes {uncovered} by '{cat.dim}' but "
                            f"population gives no value for them — add population: {{{uncovered[0]}: ...}}")
    return pred


def _refuse_nonfinite(pred: BayesPredictive) -> None:
    """A NaN or inf draw in a variable the predictive uses would reach every row (a std of inf, NaN quantiles) and
    compare equal to a reference that has it too: refused at load, naming the variable (a diverged run, or a value
    written on purpose)."""
    for name in sorted(pred.used):
        v = pred.values.get(name)
        if v is None:
            continue
        bad = ~np.isfinite(v)
        if bad.any():
            where = bad.reshape(-1, v.shape[-1]).any(0)
            kind = "NaN" if np.isnan(v).any() else "inf"
            raise UserError(f"{pred.posterior.path.name}: posterior variable '{name}' holds {kind} in "
                            f"{int(where.sum())} of its {v.shape[-1]} samples (sample {int(np.argmax(where))} "
                            "first) — drop those draws (or fix the sampling run) before converting")


def artifact_metadata(pred: BayesPredictive, cfg) -> dict[str, Any]:
    """metadata_props for the artifact: what validate, predict and a reader need to interpret the outputs."""
    names = pred.output_names
    cols: dict[str, list[str]] = {}
    if "quantiles" in names:
        cols[names["quantiles"]] = [f"q{q:g}" for q in pred.quantiles]
    meta: dict[str, Any] = {
        "stochastic_outputs": [names["draws"]] if "draws" in names else [],
        "output_columns": cols or None,
        # the point prediction, for task metrics (a [rows, Q] quantiles output is not a class-score matrix)
        "prediction_output": names.get("mean"),
        # a categorical's mean is (rows, classes) of probabilities: task metrics take its argmax as the class
        # without a mean output there is no point prediction: no task metrics (quantiles are no class scores)
        "prediction_kind": ("none" if "mean" not in names else "class_probabilities" if pred.family.classes
                            else None),
        "bayes": {"family": pred.family.name, "transform": (cfg.source.transform.rpartition(":")[2]
                                                             if cfg.source.transform else None),
                  "outputs": names, "quantiles": pred.quantiles, "draws": pred.n_draws,
                  "seed": cfg.source.seed, "params": {k: list(v) for k, v in pred.fparams.items()},
                  "variables": sorted(pred.used), "posterior": pred.posterior.summary()},
    }
    if cfg.source.transform is None:  # zero-code: which model function, and the PyTensor ops that were lowered
        meta["bayes"]["zero_code"] = {"model": cfg.source.model.rpartition(":")[2], "observed": cfg.source.observed,
                                      "ops": pred.transform.ops}
    direct = {k: ref for k, (kind, ref) in pred.fparams.items() if kind == "input"}
    if cfg.source.transform is None:
        direct.update({k: v for k, v in pred.transform.direct_inputs().items() if k in pred.fparams})
    if direct:  # family parameters fed straight from an input: the scorer checks their domain
        meta["bayes"]["param_inputs"] = direct
    if pred.categorical:
        meta["categories"] = {c.input: c.levels for c in pred.categorical.values()}
        meta["unseen_policy"] = {c.input: c.policy for c in pred.categorical.values()}
    if pred.n_draws and pred.family.name in COUNT_FAMILIES:
        meta["bayes"]["max_count"] = pred.max_count
        # exact count draws hold a (rows, draws, support) tensor: keep offline chunks near 256 MB
        meta["rows_per_chunk"] = max(1, (256 << 20) // (16 * pred.n_draws * (pred.max_count + 1)))
    return meta
