"""convert: source model → ONNX through its frontend, stamped with provenance metadata."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from onnxforge.config import StrictModel
from onnxforge.registry import register_stage


class ConvertOptions(StrictModel):
    opset: int | None = Field(None, ge=7, le=24, description="target opset (default: the frontend's choice)")
    verify_rows: int | None = Field(None, ge=0, le=4096, description="rows the new artifact runs on in onnxruntime "
                                    "before it is written: declared output shapes/dtypes and values against the "
                                    "native predict (the data's first rows, else synthesized inputs; 0 = write it "
                                    "unchecked; default: 1024 for scikit-learn/XGBoost/LightGBM, 32 for others)")


@register_stage("convert", ConvertOptions, produces_model=True, help="export the source model to ONNX")
def run_convert(ctx, opts: ConvertOptions):
    from onnxforge import __version__
    from onnxforge.artifact import save_model, sha256_file, stamp
    from onnxforge.errors import CheckFailed, UserError
    from onnxforge.pipeline import StageResult
    from onnxforge.summary import summarize

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
    # written beside the final path, checked there, then renamed: a failed check leaves no artifact, and the bytes
    # checked are the bytes shipped
    final = ctx.stage_dir / "model.onnx"
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=ctx.stage_dir))
    try:
        staged = save_model(model, staging / final.name)
        try:
            verified = verify(ctx, opts, model, staged)
        except CheckFailed:  # an earlier run's artifact there no longer matches this source: not left behind
            for stale in (final, final.with_name(final.name + ".data")):
                stale.unlink(missing_ok=True)
            raise
        for f in staging.iterdir():  # the model, and its .data file when over 2 GB
            os.replace(f, final.parent / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    s = summarize(model, final)
    summary = {k: s[k] for k in ("opset", "nodes", "params", "file_bytes")} | {
        "inputs": s["inputs"], "outputs": s["outputs"], "verified": verified}
    if not verified.get("values"):  # said where it is seen (--json warnings, the manifest), not only recorded
        summary["warnings"] = [f"convert: the artifact's values were not checked against {fe.name}'s own predict "
                               f"({verified.get('reason', 'no output could be compared')}) — run validate"]
    return StageResult(model=final, summary=summary, message=f"opset {opset}, {s['nodes']} nodes")


def verify(ctx, opts: ConvertOptions, model, path: Path) -> dict[str, Any]:
    """Run the new artifact in onnxruntime on a few rows and hold it to what it declares and to the native model:
    every output's shape (rank, fixed dims) and element type as the graph declares them, then its values against the
    frontend's predict at the tolerances validate would use (validate's own reference and comparison). Stochastic
    outputs (PyMC draws) are held to their declared shape and type only: validate compares their distribution.
    Returns what was verified; raises CheckFailed (exit 1) on a mismatch."""
    from onnxforge import admission, data, runtime
    from onnxforge.errors import CheckFailed, UserError
    from onnxforge.registry import frontend
    from onnxforge.stages.validate import (
        ValidateOptions,
        _reference,
        _stochastic_outputs,
        compare_output,
        declared_mismatches,
        default_tolerances,
        figure,
        nan_policy,
    )

    cfg = ctx.cfg
    n_rows = frontend(cfg.source.framework).verify_rows if opts.verify_rows is None else opts.verify_rows
    if not n_rows:
        return {"checked": False, "reason": "convert.verify_rows is 0"}
    given = cfg.stages.validate
    # validate's per-output tolerances, skips and flip rates apply when it compares against this same source
    vopts = given.model_copy() if given is not None and given.against == "source" else ValidateOptions()
    if cfg.data.path is not None:
        feeds, provenance = ctx.feeds("eval", path, nonfinite=nan_policy(model))
        feeds = data.take(feeds, n_rows)
        from onnxforge.bayes.families import check_model_inputs  # a PyMC artifact's trials, known sigma, ...

        check_model_inputs(feeds, model, path.name)
    else:
        try:
            feeds, provenance = data.synthesize(ctx.input_specs(path), n_rows, cfg.data.seed), "synthetic"
        except UserError as e:  # e.g. a text input without its categories: nothing to run it on
            return {"checked": False, "reason": f"no inputs could be synthesized: {e}"}
        if nan_policy(model) == "nan":  # stamped as scoring missing values natively: check that routing too
            feeds = _with_missing(feeds, cfg.data.seed)
    rows = data.n_rows(feeds)
    # `path` is a scratch file removed when this fails: the message names what it is, not where it was
    sess = admission.open_session(path, name="convert's new model.onnx (not written)", ours=True,
                                  provider_list=cfg.runtime.providers, threads=cfg.runtime.threads)
    try:
        got = runtime.run(sess, feeds)
    except UserError as e:
        if provenance != "synthetic":
            raise  # the data does not fit the model: validate would say the same
        return {"checked": False, "rows": rows, "data": provenance,
                "reason": f"onnxruntime cannot run it on synthesized inputs: {e}"}
    result: dict[str, Any] = {"checked": True, "rows": rows, "data": provenance, "outputs": {
        name: {"shape": list(np.shape(v)), "dtype": str(np.asarray(v).dtype)} for name, v in got.items()}}
    bad = declared_mismatches(model, got, rows, getattr(feeds, "rows_per_run", None))
    if bad:
        c = bad[0]
        what = ("the converter mis-declared a multi-output model" if c["kind"] == "shape" and _wider(c, got)
                else "the converter mis-declared it")
        said = (f"declares {c['declared']} but onnxruntime returns {_shape(got[c['output']])}" if c["kind"] == "shape"
                else f"declares {c['declared_dtype']} but onnxruntime returns {c['dtype']}")
        raise CheckFailed(f"convert: output '{c['output']}' {said} on {rows} {provenance} rows — {what}; nothing was "
                          "written (a runtime that trusts the declared shape would misread it): report it with the "
                          "model file", result | {"failing": bad})
    stochastic = _stochastic_outputs(model, vopts)
    try:
        ref_desc, ref, _ = _reference(ctx, vopts, feeds, stochastic)
    except UserError as e:
        if provenance != "synthetic":
            raise
        return result | {"values": False, "reason": f"the native model cannot run on synthesized inputs: {e}"}
    defaults = default_tolerances(ctx, vopts)
    comparisons = [c for name in got if (c := compare_output(name, ref, got[name], rows, rows, vopts, stochastic,
                                                             defaults)) is not None]
    result |= {"reference": ref_desc, "unchecked": [n for n in got if n not in {c["output"] for c in comparisons}]}
    for c in comparisons:  # each output's own tolerances (the frontend's default for its kind, or the config's)
        result["outputs"][c["output"]] |= {k: c[k] for k in ("kind", "pass", "rtol", "atol", "max_abs", "max_rel",
                                                             "flips", "reason") if k in c}
    failing = [c for c in comparisons if not c["pass"]]
    if failing:
        c = failing[0]
        raise CheckFailed(f"convert: output '{c['output']}' differs from {ref_desc} on {rows} {provenance} rows: "
                          f"{figure(c)} — the converted graph does not compute what the model does; nothing was "
                          "written: report it with the model file, or try another convert.opset",
                          result | {"failing": failing})
    result["values"] = bool(comparisons)
    if not comparisons:
        result["reason"] = f"no output of the model is among {ref_desc}'s ({', '.join(ref) or 'none'})"
    return result


def _shape(a) -> str:
    from onnxforge.compare import fmt_shape

    return fmt_shape(np.shape(a))


def _wider(c: dict, got: dict) -> bool:
    """More values per row than declared (a matrix declared as one column): a multi-output model."""
    import math

    fixed = [d for d in (c.get("declared_dims") or [])[1:] if isinstance(d, int)]
    shape = np.shape(got[c["output"]])
    return len(shape) > 1 and bool(fixed) and math.prod(shape[1:]) > math.prod(fixed)


def _with_missing(feeds, seed: int):
    """The synthesized rows with every 4th float cell NaN: a model stamped accepts_missing is checked on the missing
    value's default branches as well, not only on complete rows."""
    rng = np.random.default_rng(seed + 1)
    for name, arr in feeds.items():
        if isinstance(arr, np.ndarray) and arr.dtype.kind == "f":
            arr = arr.copy()
            arr[rng.random(arr.shape) < 0.25] = np.nan
            feeds[name] = arr
    return feeds
