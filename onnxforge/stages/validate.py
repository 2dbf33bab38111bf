"""validate: structural checks, then every output compared against a named reference, task metrics, verdict."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from onnxforge.config import StrictModel
from onnxforge.registry import register_stage

REFERENCES = ("source", "previous", "onnx-reference")


class OutputTolerance(StrictModel):
    """Tolerances for one output, overriding the stage-wide rtol/atol."""

    rtol: float | None = Field(None, ge=0, description="relative tolerance for this output: passes when |got - ref| "
                               "<= atol + rtol·|ref| everywhere; null = the stage's rtol")
    atol: float | None = Field(None, ge=0, description="absolute tolerance for this output, in the output's units; "
                               "null = the stage's atol")
    max_flip_rate: float = Field(0.0, ge=0, le=1, description="label outputs: allowed fraction of changed labels")
    skip: bool = Field(False, description="do not compare this output (e.g. a timestamp or an id); the others are "
                       "still compared")


class ValidateOptions(StrictModel):
    against: str = Field("source", description="source | previous | onnx-reference | path/to/reference.onnx")
    rtol: float | None = Field(None, ge=0, description="default: the frontend's (source) or 1e-4 (ONNX reference)")
    atol: float | None = Field(None, ge=0, description="absolute tolerance, in the outputs' units: an output passes "
                               "when |got - ref| <= atol + rtol·|ref| everywhere; default: the frontend's (source) "
                               "or 1e-5 (ONNX reference)")
    outputs: dict[str, OutputTolerance] = Field(default_factory=dict, description="per-output overrides")
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 0], description="0 = all rows in one batch")
    batch1_rows: int = Field(16, gt=0, description="rows scored one at a time for batch size 1")
    stochastic: list[str] | None = Field(None, description="outputs compared as distributions (default: metadata)")
    draw_axis: int = Field(-1, description="stochastic outputs: the axis holding the draws (-1 = last)")
    sigmas: float = Field(4.0, gt=0, description="allowed Monte-Carlo standard errors for stochastic means")
    max_rows: int | None = Field(1000, gt=0, description="compare at most this many data rows (the first ones); "
                                 "null = every row")


def _is_ours(model, ctx) -> bool:
    meta = {p.key for p in model.metadata_props}
    try:
        inside_run = ctx.model is not None and ctx.cfg.run_path.resolve() in Path(ctx.model).resolve().parents
    except OSError:
        inside_run = False
    return inside_run or "onnxforge.version" in meta


def structural(path: Path, ctx) -> dict[str, Any]:
    """The admission gate, with a failure in our own artifact a failed check (1) rather than bad input (2)."""
    import onnx

    from onnxforge import admission
    from onnxforge.errors import CheckFailed, UserError

    adm = admission.read(path)
    model = adm.model
    ours = _is_ours(model, ctx)
    admission.check(adm, ours=ours)
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        shapes = "ok"
    except Exception as e:
        msg = f"{path}: strict shape inference failed: {str(e).splitlines()[0]}"
        raise (CheckFailed(msg) if ours else UserError(msg + " — fix or re-export the model")) from None
    sess = admission.open_session(path, ours=ours, provider_list=ctx.cfg.runtime.providers,
                                  threads=ctx.cfg.runtime.threads)
    return {"checker": "ok", "shape_inference": shapes, "ir_version": model.ir_version,
            "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
            "providers": sess.get_providers(), "session": sess, "model": model}


def _reference(ctx, opts: ValidateOptions, feeds, stochastic: list[str], model=None):
    """Return (description, deterministic outputs, sampler for stochastic outputs or None). A reference .onnx
    passes the admission gate and must take the same inputs as `model`, the model under test."""
    from onnxforge import runtime
    from onnxforge.errors import UserError

    against = opts.against
    if against == "source" and ctx.cfg.source.framework != "onnx":
        fe, native = ctx.frontend, ctx.native()
        sampler = (lambda f, n=None: fe.sample(native, f, ctx.cfg)) if hasattr(fe, "sample") else None
        return f"{fe.name} native predict", fe.predict(native, feeds, ctx.cfg), sampler
    if against == "onnx-reference":
        from onnx.reference import ReferenceEvaluator

        ev = ReferenceEvaluator(str(ctx.model))
        names = [o.name for o in ev.proto_.graph.output] if hasattr(ev, "proto_") else None
        res = ev.run(None, feeds)
        names = names or [o.name for o in runtime.session(ctx.model).get_outputs()]
        outs = dict(zip(names, res, strict=True))
        return "onnx.reference evaluator", outs, (lambda f: dict(zip(names, ev.run(None, f), strict=True)))
    if against == "source":
        ref_path = ctx.source_model if ctx.cfg.source.path is None else ctx.cfg.source.path
    elif against == "previous":
        ref_path = _previous_model(ctx)
    else:
        ref_path = Path(against)
        if not ref_path.is_absolute() and ctx.cfg.config_path:
            ref_path = ctx.cfg.config_path.parent / ref_path
    if ref_path is None or not Path(ref_path).is_file():
        raise UserError(f"validate.against: reference model not found ({against}: {ref_path}) — give a .onnx path")
    from onnxforge import admission

    if ctx.model is not None and Path(ref_path).resolve() == Path(ctx.model).resolve():  # under test: admitted
        sess = admission.open_session(ref_path, level="disable")
    else:
        ref = admission.admit(ref_path, what="reference model", session={"level": "disable"})
        if model is not None and ctx.model is not None:
            admission.same_inputs(model, ref.model, model_name=Path(ctx.model).name, ref_name=str(ref_path))
        sess = ref.session
    return (f"ONNX {Path(ref_path).name} (no graph optimizations)", runtime.run(sess, feeds),
            lambda f: runtime.run(sess, f))


def _previous_model(ctx) -> Path | None:
    cur = str(Path(ctx.model).resolve())
    for entry in ctx.results.values():
        if entry.get("model") and str((ctx.cfg.run_path / entry["model"]).resolve()) == cur:
            ins = list((entry.get("inputs") or {}).keys())
            return ctx.cfg.run_path / ins[0] if ins else None
    return None


def _stochastic_outputs(model, opts, where=None) -> list[str]:
    """validate.stochastic, else the model's metadata (user input like the rest of the file: checked JSON)."""
    from onnxforge.artifact import meta_json

    if opts.stochastic is not None:
        return list(opts.stochastic)
    return meta_json(model, "stochastic_outputs", list, [], items=str, where=where)


# a float16/bfloat16 output cannot agree past its own resolution (machine epsilon 9.8e-4 / 7.8e-3): two correct
# runtimes round intermediate sums differently (a float16 MLP: up to 0.016 apart on outputs up to 32, 0.0056 beyond
# rtol 1e-3), so a default (never a tolerance the user set) is at least these; bfloat16 scaled by its epsilon
LOW_PRECISION_TOLERANCES = {"float16": (1e-3, 1e-2), "bfloat16": (1e-2, 1e-1)}


def default_tolerances(ctx, opts: ValidateOptions) -> Callable[..., tuple[float, float]]:
    """Each output's (rtol, atol) where it has none of its own: the options' rtol/atol where set, else — against the
    source — the frontend's default for that output (by model family and output kind, set from measurement:
    Frontend.tolerance), else 1e-4/1e-5 against another ONNX model; a default is raised to
    LOW_PRECISION_TOLERANCES for an output (candidate's or reference's `dtypes`) in float16 or bfloat16."""
    source = opts.against == "source"
    seen: dict[tuple, tuple[float, float]] = {}

    def tolerance(name: str, *dtypes) -> tuple[float, float]:
        kinds = tuple(sorted({getattr(d, "name", str(d)) for d in dtypes} & set(LOW_PRECISION_TOLERANCES)))
        if (name, kinds) not in seen:
            rtol, atol = ctx.frontend.tolerance(ctx.native(), ctx.cfg, name) if source else (1e-4, 1e-5)
            for k in kinds:
                rtol, atol = max(rtol, LOW_PRECISION_TOLERANCES[k][0]), max(atol, LOW_PRECISION_TOLERANCES[k][1])
            seen[name, kinds] = (opts.rtol if opts.rtol is not None else rtol,
                                 opts.atol if opts.atol is not None else atol)
        return seen[name, kinds]

    return tolerance


def compare_output(name: str, ref: dict, got, n: int, rows: int, opts: ValidateOptions, stochastic: list[str],
                   defaults: Callable[[str], tuple[float, float]]) -> dict | None:
    """One deterministic output of a run on the first `n` of `rows` rows against the reference's, at its tolerances;
    None where there is nothing to compare (skipped, stochastic, not in the reference, or a scalar/batch statistic
    that only a run over all rows can be compared on). convert's self-check uses it too."""
    from onnxforge.compare import compare

    tol = opts.outputs.get(name, OutputTolerance())
    if tol.skip or name in stochastic or name not in ref or got is None:
        return None
    r = np.asarray(ref[name])
    aligned = r.ndim > 0 and r.shape[0] == rows
    if not aligned and n != rows:
        return None  # a scalar or batch statistic: compared where all rows ran as one batch
    rtol, atol = defaults(name, r.dtype, getattr(got, "dtype", None))  # a sequence output has none
    c = compare(name, r[:n] if aligned else r, got, tol.rtol if tol.rtol is not None else rtol,
                tol.atol if tol.atol is not None else atol)
    if c.get("kind") == "label" and not c["pass"] and c["flip_rate"] <= tol.max_flip_rate:
        c["pass"] = True
    return c


def declared_mismatches(model, outputs: dict, rows: int, rows_per_run: int | None = None) -> list[dict]:
    """Outputs whose shape or element type from onnxruntime contradicts what the graph declares (onnxruntime only
    warns): failing comparisons that say so, rather than a tolerance figure further on. `rows_per_run`: the rows
    ran that many at a time (a model pinning its batch) and were joined — one run's part is what was declared."""
    from onnxforge import data
    from onnxforge.compare import conforms, declared_outputs

    rows_per_run = rows_per_run or data.fixed_batch(model) or None
    found = []
    for name, decl in declared_outputs(model).items():
        got = outputs.get(name)
        if got is None:
            continue
        if rows_per_run and rows_per_run < rows and np.ndim(got) and np.shape(got)[0] == rows:
            got = got[:rows_per_run]
        c = conforms(name, decl, got)
        if not c["pass"]:
            found.append(c | {"batch": rows})
    return found


def nan_policy(model) -> str:
    """NaN may reach a model convert stamped as scoring missing values as its source does (tree ensembles)."""
    from onnxforge.artifact import metadata

    return "nan" if metadata(model).get("onnxforge.accepts_missing") == "true" else "refuse"


def named_outputs(opts: ValidateOptions, out_names: list[str], model_name: str) -> None:
    """A tolerance under `outputs:` or a `stochastic:` name for an output the model does not have was ignored
    without a word: the user believed a typo'd `varaible: {atol: 100}` applied. Refused before any data is read."""
    import difflib

    from onnxforge.errors import UserError

    for key, names in (("outputs", list(opts.outputs)), ("stochastic", opts.stochastic or [])):
        for n in names:
            if n not in out_names:
                near = difflib.get_close_matches(n, out_names, n=1)
                hint = f" (did you mean '{near[0]}'?)" if near else ""
                raise UserError(f"validate.{key} names '{n}', but {model_name} has no such output{hint} — its "
                                f"outputs are {', '.join(out_names)[:300]}")


def validate_model(ctx, opts: ValidateOptions) -> dict[str, Any]:
    from onnxforge import admission, data, metrics, runtime
    from onnxforge.compare import distribution
    from onnxforge.errors import CheckFailed

    st = structural(ctx.model, ctx)
    sess, model = st.pop("session"), st.pop("model")
    named_outputs(opts, [o.name for o in sess.get_outputs()], Path(ctx.model).name)
    feeds, provenance = ctx.feeds("eval", ctx.model, nonfinite=nan_policy(model))
    admission.check_feeds(feeds, model, what=f"the data ({provenance})", model_name=Path(ctx.model).name)
    from onnxforge.bayes.families import check_model_inputs  # a PyMC artifact's trials, known sigma, ...

    check_model_inputs(feeds, model, Path(ctx.model).name)
    if opts.max_rows:
        feeds = data.take(feeds, opts.max_rows)
    rows = data.n_rows(feeds)
    stochastic = _stochastic_outputs(model, opts, Path(ctx.model).name)
    ref_desc, ref, sampler = _reference(ctx, opts, feeds, stochastic, model)
    defaults = default_tolerances(ctx, opts)
    out_names = [o.name for o in sess.get_outputs()]
    comparisons: list[dict] = []
    got_full = None
    # -1 and 0 dims count as dynamic there, as onnxruntime reads them; rows_per_run: a pin found by the input model
    fixed = data.fixed_batch(model) or getattr(feeds, "rows_per_run", None)
    # a model with no graph inputs (all initializers) has no rows to batch over: it runs once, as one batch of 1
    no_inputs = not sess.get_inputs()
    for bs in ([fixed] if fixed else [1] if no_inputs else opts.batch_sizes):
        # a pinned batch (even of 1) runs every row, that many at a time; batch size 1 otherwise scores a sample
        n = min(rows, opts.batch1_rows) if bs == 1 and not fixed else rows
        size = bs or n
        # runtime.run splits the rows for a pinned batch itself (and names the total when it is no multiple)
        chunks = [feeds] if no_inputs else list(data.batches(data.take(feeds, n), n if fixed else size))
        parts = [runtime.run(sess, b) for b in chunks]
        got = {k: _join([p[k] for p in parts], [data.n_rows(b) for b in chunks]) for k in out_names}
        if bs == 0 or n == rows:
            got_full = got
        for name in out_names:
            c = compare_output(name, ref, got[name], n, rows, opts, stochastic, defaults)
            if c is not None:
                c["batch"] = size
                comparisons.append(c)
    if got_full is None:  # batch_sizes named only 1 (a sample of the rows): the metrics need every row
        got_full = runtime.run(sess, feeds)
    comparisons[:0] = declared_mismatches(model, got_full, rows, fixed or None)  # first: they explain the value failures
    comparisons += as_loaded(ctx, opts, model, feeds, got_full, stochastic, defaults)
    for name in stochastic:
        if name not in out_names:
            continue
        ref_draws = ref.get(name) if name in ref else None
        if ref_draws is None and sampler is not None:
            ref_draws = sampler(feeds).get(name)
        if ref_draws is None:
            comparisons.append({"output": name, "kind": "distribution", "pass": False,
                                "reason": "the reference cannot sample this output"})
            continue
        # skipping the check is a fix only where other outputs are still compared
        too_few_draws(ctx, opts, name, ref_draws, got_full[name], can_skip=any(
            c.get("kind") != "distribution" for c in comparisons))
        c = distribution(name, ref_draws, got_full[name], axis=opts.draw_axis, sigmas=opts.sigmas)
        c["batch"] = rows
        comparisons.append(c)
    unchecked = [n for n in out_names if n not in ref and n not in stochastic]
    if not comparisons:
        raise CheckFailed(f"no output of {Path(ctx.model).name} could be compared with {ref_desc} "
                          f"(model outputs {out_names}, reference outputs {list(ref)})")
    labels = ctx.labels()
    if labels is not None and opts.max_rows:
        labels = labels[: opts.max_rows]
    det_ref = {k: v for k, v in ref.items() if k in out_names and k not in stochastic and got_full[k] is not None
               and np.ndim(v) > 0 and np.shape(v)[0] == rows}  # task metrics are per row
    det_got = {k: got_full[k] for k in det_ref}
    task = {}
    name, kind = metrics.declared(model, det_got)
    if det_got and kind != "none":  # "none": the model declares no point prediction (PyMC quantiles only)
        task = {"candidate": metrics.task_metrics(det_got, labels, det_ref, name=name, kind=kind),
                "reference": metrics.task_metrics(det_ref, labels, name=name, kind=kind)}
    failing = sorted({c["output"] for c in comparisons if not c["pass"]})
    return {"verdict": "fail" if failing else "pass", "failing": failing, "reference": ref_desc,
            "against": opts.against, "data": provenance, "rows": rows, "structural": st,
            "comparisons": comparisons, "unchecked": unchecked, "metrics": task}


def too_few_draws(ctx, opts: ValidateOptions, name: str, ref_draws, got_draws, can_skip: bool = True) -> None:
    """Fewer draws per row on a side than the distributional check needs (a posterior thinned below it, a model
    making a few draws) is a configuration the check cannot run on: refused (exit 2), not a failed check (exit 1).
    A PyMC config is refused earlier, by the frontend's preflight, where the counts are known without a convert."""
    from onnxforge.compare import MIN_DRAWS
    from onnxforge.errors import UserError

    sizes = []
    for a in (ref_draws, got_draws):
        shape = np.shape(a)
        ok = shape and -len(shape) <= opts.draw_axis < len(shape)  # else: distribution() says what is wrong
        sizes.append(shape[opts.draw_axis] if ok else None)
    short = [(n, side) for n, side in zip(sizes, ("reference", "candidate"), strict=True)
             if n is not None and n < MIN_DRAWS]
    if not short:
        return
    n, side = min(short)
    pymc = getattr(getattr(ctx.cfg, "source", None), "framework", None) == "pymc"
    if side == "reference" and pymc and opts.against == "source":
        what, fix = (f"PyMC's draws (one per posterior sample): the posterior keeps {n} samples",
                     f"keep {MIN_DRAWS} or more (raise source.samples, or sample more draws)")
    elif pymc:
        what, fix = f"the {side}'s {n} draws per row", f"set source.outputs.draws to {MIN_DRAWS} or more"
    else:
        what, fix = (f"the {side}'s {n} draws per row (axis {opts.draw_axis})",
                     f"give it {MIN_DRAWS} or more draws per row (or fix validate.draw_axis)")
    skip = ", or set validate's stochastic: [] to skip the distributional check" if can_skip else ""
    raise UserError(f"validate: output '{name}' is checked as a distribution against {what}, and that check needs "
                    f"at least {MIN_DRAWS} — {fix}{skip}")


def as_loaded(ctx, opts: ValidateOptions, model, feeds, got: dict, stochastic: list[str], defaults) -> list[dict]:
    """A tabular source fitted on pandas computes in float64: scored on the data file's float64 values (its own
    predict on the user's frame) it can differ from the float32 artifact, which the same-tensors comparison above
    cannot see (Pipeline(StandardScaler, XGBRegressor): off by up to 78 on 32 of 50 rows, each scaled value a float32
    rounding away across a split). Compared too, where the float32 inputs rounded any value of the file."""
    from onnxforge import data

    d = ctx.cfg.data
    if opts.against != "source" or not getattr(ctx.frontend, "float64_reference", False) or d.path is None:
        return []
    specs = ctx.input_specs(ctx.model)
    narrowed = [s.name for s in specs if s.dtype == "float32"]
    if not narrowed:
        return []
    wide = [s.model_copy(update={"dtype": "float64"}) if s.name in narrowed else s for s in specs]
    rows = data.n_rows(feeds)
    feeds64 = data.take(data.feeds_from_table(data.load_table(d.path), wide, d.rows, nonfinite=nan_policy(model)),
                        rows)
    if all(np.array_equal(feeds64[n], np.asarray(feeds[n], np.float64), equal_nan=True) for n in narrowed):
        return []  # the file holds float32 values: the reference above saw them exactly
    ref64 = ctx.frontend.predict(ctx.native(), feeds64, ctx.cfg)
    out = []
    for name, value in got.items():
        c = compare_output(name, ref64, value, rows, rows, opts, stochastic, defaults)
        if c is None:
            continue
        c.update(output=f"{name} (float64 data)", batch=rows)
        if not c["pass"]:
            c["reason"] = (f"{figure(c)} against {ctx.frontend.name} predict on the data file's float64 values: "
                           f"the float32 inputs {narrowed[:3]} round some rows across a split — declare them "
                           "dtype: float64 (the graph then computes as the pipeline does)")
        out.append(c)
    return out


def _join(arrays: list, sizes: list[int]):
    """One output over every batch: per-row outputs concatenate; an output that is not one row per input row (a
    scalar, a batch statistic) has no per-row meaning across batches — None unless one batch ran."""
    if len(arrays) == 1:
        return arrays[0]
    if all(a.ndim > 0 and a.shape[0] == k for a, k in zip(arrays, sizes, strict=True)):
        return np.concatenate(arrays)
    return None


def render(result: dict, console) -> None:
    from rich.table import Table

    t = Table(title=f"validate vs {result['reference']} — {result['rows']} rows from {result['data']}")
    for col in ("output", "batch", "kind", "pass", "max abs", "max rel", "p99 abs", "min atol", "min rtol",
                "flips/fails"):
        t.add_column(col, justify="right" if col not in ("output", "kind") else "left")
    for c in result["comparisons"]:
        ok = "[green]yes[/green]" if c["pass"] else "[red]NO[/red]"
        if c.get("kind") == "float":
            t.add_row(c["output"], str(c["batch"]), "float", ok, f"{c['max_abs']:.3g}", f"{c['max_rel']:.3g}",
                      f"{c['p99_abs']:.3g}", f"{c['min_atol']:.3g}", f"{c['min_rtol']:.3g}", str(c["mismatches"]))
        elif c.get("kind") == "label":
            t.add_row(c["output"], str(c["batch"]), "label", ok, "", "", "", "", "", f"{c['flips']}/{c['total']}")
        elif c.get("kind") == "distribution" and "max_z" in c:
            t.add_row(c["output"], str(c["batch"]), "distribution", ok, f"z={c['max_z']:.2f}", "", "", "", "",
                      f"{c['mean_fail_rows']}+{c['quantile_fail_rows']}q/{c['rows']}")
        else:
            t.add_row(c["output"], str(c.get("batch", "")), c.get("kind", ""), ok, c.get("reason", ""), "", "", "",
                      "", "")
    console.print(t)
    m = result.get("metrics") or {}
    if m.get("candidate"):
        cand = {k: v for k, v in m["candidate"].items() if isinstance(v, float)}
        refm = {k: v for k, v in m["reference"].items() if isinstance(v, float)}
        console.print(f"metrics: candidate {json.dumps(cand)}  reference {json.dumps(refm)}")


def figure(c: dict) -> str:
    """A failing comparison in a few words: a shape or type mismatch as such, else its tolerance figure."""
    if "reason" in c:
        return c["reason"]
    if c.get("kind") == "float" and (c.get("nan_mismatch") or c.get("inf_mismatch")):
        return (f"{c.get('nan_mismatch') or 0} NaN and {c.get('inf_mismatch') or 0} inf element(s) differ from the "
                f"reference (no tolerance passes them; max_abs={c['max_abs']:.3g} on the finite ones)")
    if c.get("kind") == "float":
        return f"max_abs={c['max_abs']:.3g} (needs atol≥{c['min_atol']:.3g})"
    if c.get("kind") == "distribution":
        return (f"{c['mean_fail_rows']}/{c['rows']} rows off in mean (max z={c['max_z']:.1f}), "
                f"{c['quantile_fail_rows']} in quantiles")
    return f"{c['flips']}/{c['total']} labels changed"


@register_stage("validate", ValidateOptions, produces_model=False,
                help="compare the current model with a reference; exit 1 on mismatch")
def run_validate(ctx, opts: ValidateOptions):
    from onnxforge.artifact import atomic_write_json
    from onnxforge.errors import CheckFailed
    from onnxforge.paths import scrub
    from onnxforge.pipeline import StageResult, path_bases

    result = scrub(validate_model(ctx, opts), *path_bases(ctx.cfg))  # validation.json names no absolute path
    out = atomic_write_json(ctx.stage_dir / "validation.json", result)
    if ctx.console:
        render(result, ctx.console)
    if result["verdict"] == "fail":
        worst = [f"{c['output']}@batch{c.get('batch')}: {figure(c)}" for c in result["comparisons"] if not c["pass"]]
        raise CheckFailed(f"validation failed for {', '.join(result['failing'])}: {'; '.join(worst[:4])}", result)
    return StageResult(verdict="pass", summary=result, files=[out])
