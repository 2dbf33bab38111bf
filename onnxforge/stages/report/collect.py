"""Gather a report's figures. Every artifact is measured here (size, ops, params, opset, outputs on the data,
latency), so the report never depends on what a stage chose to put in its summary; stage summaries (validation
comparisons, quantize/optimize before/after) are added as they are, rendered generically."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.errors import UserError
from onnxforge.paths import inside, quoted, scrub, shown
from onnxforge.stages.report.errors import clean, compare_outputs

SCHEMA_VERSION = 1
LABEL_KEYS = ("label", "labels", "y", "target")
METRIC_KEYS = ("accuracy", "top1_agreement", "mae", "rmse", "r2")


@dataclass
class Artifact:
    label: str  # unique and readable: "01-convert/model.onnx" in a run, the file name for loose models
    path: Path
    stage: str | None = None
    parent: str | None = None  # label of the artifact this one was made from


@dataclass
class Sources:
    kind: str  # "run" | "models"
    artifacts: list[Artifact]
    manifest: dict | None = None
    cfg: Any = None
    run_dir: Path | None = None
    native: Callable[[], tuple[Any, Any]] | None = None  # → (frontend, native model), loaded on demand
    notes: list[str] = field(default_factory=list)
    out: Path | None = None  # the report's folder: loose files' paths are shown relative to it


# ------------------------------------------------------------------ where the artifacts come from


MAX_MANIFEST_BYTES = 64 << 20  # far above any manifest onnxforge writes; a bigger one is not ours
SKIPPED = ("native-model figures skipped: `onnxforge report` runs no code named by a run folder or its config; "
           "to compare with the source model, pass --config CONFIG.yaml --native (runs the code the config names)")


def read_manifest(run_dir: Path) -> dict:
    """The run folder's manifest, as untrusted input: confined to the folder, size-capped, shape-checked."""
    mpath = Path(run_dir) / "manifest.json"
    if not mpath.is_file():
        raise UserError(f"{run_dir}: no manifest.json — give a run folder (runs/NAME) or .onnx files")
    inside(Path(run_dir), "manifest.json", "the manifest")  # a symlink to a file elsewhere is not read
    if mpath.stat().st_size > MAX_MANIFEST_BYTES:
        raise UserError(f"{mpath}: {mpath.stat().st_size >> 20} MiB, larger than any manifest onnxforge writes "
                        "— rerun `onnxforge run`")
    try:
        manifest = json.loads(mpath.read_text())
        stages = manifest["stages"]
        if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
            raise TypeError("stages")
    except (ValueError, KeyError, TypeError, RecursionError) as e:  # ValueError: bad JSON, bad UTF-8
        raise UserError(f"{mpath}: not a readable manifest ({type(e).__name__}) — rerun `onnxforge run`") from None
    return manifest


def from_run(run_dir: Path, ctx=None) -> Sources:
    """A run folder: its manifest names the artifacts. Inside a live run (ctx) the run's config gives the data and
    the native reference; from the command line only --config/--native do (see with_config)."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    stages = list(manifest["stages"])
    notes: list[str] = []
    if ctx is not None:  # the stage runs before its own entry is written; earlier ones are in the manifest
        seen = {s.get("name") for s in stages}
        stages += [e for n, e in ctx.results.items() if n not in seen]
        manifest["stages"] = stages
    arts: list[Artifact] = []
    by_path: dict[str, str] = {}
    for s in stages:
        rel = s.get("model")
        if not rel:
            continue
        path = inside(run_dir, rel, f"stage {quoted(s.get('name'), 40)} names model")
        if rel in by_path:
            continue
        if not path.is_file():
            notes.append(f"{rel} (stage {s.get('name')}) is missing from the run folder")
            continue
        _check_recorded(run_dir, s, rel, notes)
        parent = next((by_path[p] for p in _dict(s.get("inputs")) if p in by_path), None)
        by_path[rel] = rel
        arts.append(Artifact(rel, path, s.get("name"), parent))
    if not arts:
        failed = next((s for s in stages if s.get("verdict") in ("fail", "error")), None)
        if failed is None:
            raise UserError(f"{run_dir}: the run has no model artifact yet — run its convert stage first")
        # a stage failed before any model was written: the report still says what ran and why it failed (CI reads it)
        notes.append(f"no artifact to measure: stage {_text(failed.get('name'))} {_text(failed.get('verdict'))}ed "
                     "before any model was written (its reason is in the stages table)")
    src = Sources("run", arts, manifest, None, run_dir, None, notes)
    if ctx is not None:
        src.cfg, src.native = ctx.cfg, (lambda: (ctx.frontend, ctx.native()))
    return src


def _check_recorded(run_dir: Path, stage: dict, rel: str, notes: list[str]) -> None:
    """The stage's recorded figures (validation, before/after, verdicts) describe the bytes the manifest hashed: a
    model file (or its external data) that no longer matches was replaced after the run, and reporting it under the
    stage's name would show a pass for a file nothing checked: refused (exit 2), naming the file and the fix.
    A manifest that records no hash for the model (hand-made, or edited) gets a note instead."""
    from onnxforge.artifact import sha256_file

    outs = _dict(stage.get("outputs"))
    if rel not in outs:  # not a manifest onnxforge wrote as it is: said beside the figures
        notes.append(f"{rel}: manifest.json records no sha256 for it, so the stage's recorded figures could not be "
                     "matched to this file")
        return
    for out, want in outs.items():
        if out != rel and not (isinstance(out, str) and out.startswith(rel + ".")):  # model.onnx(.data)
            continue
        f = inside(run_dir, out, f"stage {quoted(stage.get('name'), 40)} names output")
        if not f.is_file() or sha256_file(f) != want:
            why = "is missing" if not f.is_file() else "no longer matches the sha256 manifest.json recorded"
            raise UserError(f"{run_dir / out}: {why} for stage {_text(stage.get('name'))} (changed after the run: "
                            "the stage's recorded verdict and figures are not about this file) — rerun the stages "
                            "(onnxforge run CONFIG.yaml reruns a stage whose output changed), or report the files "
                            "themselves: onnxforge report A.onnx B.onnx")


def with_config(src: Sources, cfg, native: bool) -> Sources:
    """The user's own --config: its data, inputs and runtime; with --native also its source model, which runs the
    code the config names (a torch factory, a PyMC transform, a pickle) — hence opt-in."""
    src.cfg = cfg
    src.native = _native_loader(cfg) if cfg is not None and native else None
    if src.native is None and (src.kind == "run" or cfg is not None):
        src.notes.append(SKIPPED)
    return src


def _native_loader(cfg):
    def load():
        from onnxforge.registry import frontend

        fe = frontend(cfg.source.framework)
        return fe, fe.load(cfg)

    return load


def from_models(paths: list[Path]) -> Sources:
    for p in paths:
        if not Path(p).is_file():
            raise UserError(f"{p}: not found — give a run folder or existing .onnx files")
        if Path(p).suffix.lower() != ".onnx":
            raise UserError(f"{p}: not an .onnx file — give a run folder or .onnx files")
    names = [Path(p).name for p in paths]
    if len(set(names)) != len(names):  # relative to the working directory: no absolute path in a label
        names = [shown(p, Path.cwd()) for p in paths]
    labels = names if len(set(names)) == len(names) else [f"{n} #{i + 1}" for i, n in enumerate(names)]
    # the first file is the baseline every other one is compared with
    arts = [Artifact(lab, Path(p), None, labels[0] if i else None) for i, (lab, p) in enumerate(
        zip(labels, paths, strict=True))]
    return Sources("models", arts)


# ------------------------------------------------------------------ data


def _synthetic(specs) -> str:
    """'synthetic: x float32[64, 4] in [0, 1); …' — what the figures were computed on."""
    from onnxforge.inputspec import line

    log = getattr(specs, "log", None)
    return "synthetic" + (f": {line(log[-1])}" if log else "")


def _eval_data(src: Sources, data: Path | None, first_model, max_rows: int | None):
    """(feeds, labels, provenance, label key, input specs, data file as shown or None). The report never fails for
    lack of data: without a data file it uses synthetic inputs, and says so."""
    from onnxforge import data as d

    cfg = src.cfg
    from onnxforge.inputspec import plan

    specs = plan(first_model, src.artifacts[0].path if src.artifacts else None, cfg)
    path = data or (cfg.data.path if cfg is not None else None)
    if path is None:
        if cfg is not None and cfg.data.synthetic:
            feeds = d.synthesize(specs, cfg.data.synthetic_rows, cfg.data.seed)
            return feeds, None, _synthetic(specs), None, specs, None
        src.notes.append("no data file: outputs, errors and agreement use synthetic inputs, no accuracy (give --data "
                         "FILE, or --config CONFIG.yaml for the run's data)")
        feeds = d.synthesize(specs, 64, 0)
        return feeds, None, _synthetic(specs), None, specs, None
    table = d.load_table(path)
    feeds = d.feeds_from_table(table, specs, cfg.data.rows if cfg is not None else None)
    used = {s.column or s.name for s in specs} | {c for s in specs for c in (s.columns or [])}
    key = cfg.data.labels if cfg is not None and cfg.data.labels in table else None
    named = key is not None
    key = key or next((k for k in LABEL_KEYS if k in table and k not in used), None)
    rows = d.n_rows(feeds) if not max_rows else min(d.n_rows(feeds), max_rows)
    labels = None
    if key is not None:
        y, limit = d.label_column(table, key), cfg.data.rows if cfg is not None else None
        try:  # the same check as every stage's labels: one finite value or string per data row
            labels = d.check_labels(y[:limit] if limit and y.ndim else y, d.n_rows(feeds), key=key,
                                    source=path)[:rows]
        except UserError as e:
            if named:  # the user named this column: a bad one is their error, as in validate and quantize
                raise
            src.notes.append(f"no accuracy: the column '{key}' looks like labels but is not usable as such ({e})")
    where = shown(path, *_bases(src))
    return d.take(feeds, rows), labels, where, key if labels is not None else None, specs, where


def _bases(src: Sources) -> list:
    """Folders a path in the report is shown relative to (see reporting.paths): the run folder, else (loose
    files) the report's own folder; then the config's folder and the working directory."""
    cfg_dir = src.cfg.config_path.parent if src.cfg is not None and src.cfg.config_path else None
    return [src.run_dir or src.out, cfg_dir, Path.cwd()]


_RAN_ON: dict[str, str] = {}  # model path → the provider that computed its metrics (recorded in the report)


def _run_model(path: Path, proto, feeds: dict[str, np.ndarray], cfg) -> dict[str, np.ndarray]:
    from onnxforge import data as d
    from onnxforge import runtime
    from onnxforge.admission import open_session
    from onnxforge.runtime import requested

    sess = open_session(Path(path), provider_list=requested(cfg.runtime.providers if cfg is not None else None),
                        threads=cfg.runtime.threads if cfg is not None else None)
    _RAN_ON[str(path)] = sess.get_providers()[0]
    size = d.fixed_batch(proto)
    if size is None:
        return runtime.run(sess, feeds)
    n = d.n_rows(feeds) // size * size  # a fixed-batch model scores whole batches only
    parts = [runtime.run(sess, b) for b in d.batches(d.take(feeds, n), size)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


def _metrics(outputs, labels, reference=None, proto=None) -> dict | None:
    from onnxforge.metrics import declared, task_metrics

    if not outputs or (labels is None and reference is None):
        return None
    # the prediction output the model declares (a Bayesian categorical's class probabilities are argmaxed)
    name, kind = declared(proto, outputs) if proto is not None else (None, None)
    if kind == "none":  # no point prediction declared: no task metric
        return None
    n = len(next(iter(outputs.values())))
    lab = None if labels is None else labels[:n]
    try:
        try:
            return task_metrics(outputs, lab, None if reference is None else {k: v[:n] for k, v in reference.items()},
                                name=name, kind=kind)
        except KeyError:  # the reference names its outputs differently: no agreement figure
            return task_metrics(outputs, lab, name=name, kind=kind) if lab is not None else None
    except (ValueError, IndexError, TypeError, KeyError):
        return None  # outputs that are no prediction (e.g. embeddings) have no task metric


def _deltas(m: dict | None, ref: dict | None) -> dict | None:
    if not m or not ref:
        return None
    out = {k: m[k] - ref[k] for k in METRIC_KEYS if isinstance(m.get(k), float) and isinstance(ref.get(k), float)}
    return out or None


# ------------------------------------------------------------------ the report


def collect(src: Sources, opts, *, bench: bool, data: Path | None, console=None) -> dict:
    from onnxforge import __version__
    from onnxforge import data as d
    from onnxforge.admission import admit
    from onnxforge.benchmark import progress_bar

    protos = [admit(a.path, session=False).model for a in src.artifacts]  # the gate every command's model passes
    if not protos:  # a run that failed before writing a model (from_run): the stages and the reason, no figures
        return _without_artifacts(src)
    feeds, labels, provenance, label_key, specs, source = _eval_data(src, data, protos[0], opts.max_rows)
    native_fe, native, native_out, native_info = None, None, None, None
    outputs: dict[str, dict | None] = {}
    artifacts, errors = [], []
    ref_metrics: dict[str, dict | None] = {}
    with_native = src.native is not None and opts.native
    with progress_bar(console) as prog:
        task = prog.add_task("report: outputs on the data", total=len(protos) + with_native)
        if with_native:
            prog.update(task, description="report: loading the source model")
            if bench and src.cfg is not None:  # TensorFlow fixes its thread pools when it starts: ask first
                _preset_threads(src.cfg, opts.threads[0])
            native_fe, native, native_out, native_info = _native(src, feeds)
            if native_info is not None:
                native_info["metrics"] = _metrics(_without(native_out, _stochastic(protos[0], src.artifacts[0].path)), labels)
                ref_metrics[native_info["label"]] = native_info["metrics"]
            prog.advance(task)
        for a, proto in zip(src.artifacts, protos, strict=True):
            prog.update(task, description=f"report: {_plain(a.label)}")
            art, errs = _measure(a, proto, feeds, labels, src, outputs, ref_metrics, native_info, native_out)
            base = artifacts[0]["file_bytes"] if artifacts else art["file_bytes"]
            art["size_ratio"] = art["file_bytes"] / base if base else 1.0
            artifacts.append(art)
            errors += errs
            prog.advance(task)

    latency = None
    if bench:
        runnable = [(a, p) for a, p in zip(src.artifacts, protos, strict=True) if outputs[a.label] is not None]
        latency = _latency(runnable, feeds, opts, src, native_fe, native, native_info, console,
                           inputs=(specs, source))

    man = src.manifest or {}
    report = {
        "schema": "onnxforge.report", "schema_version": SCHEMA_VERSION, "onnxforge": __version__,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"), "kind": src.kind,
        "title": _text(man.get("name")) or ", ".join(a.label for a in src.artifacts)[:120],
        "verdict": man.get("verdict", "info") if src.kind == "run" else "info",
        "run": _run_info(src) if src.kind == "run" else None,
        "data": {"eval": provenance, "rows": d.n_rows(feeds) if feeds else 0,
                 "labels": label_key},
        "native": native_info, "artifacts": artifacts, "latency": latency, "errors": errors,
        "validations": _validations(man, {a.label for a in src.artifacts}),
        "stage_changes": _stage_changes(man, src.run_dir), "stage_tables": _stage_tables(man), "stages": _stages(man),
        "environment": _environment(), "notes": src.notes, "files": {},
    }
    return scrub(clean(report), *_bases(src))  # no absolute path of this machine leaves in a report


def _without_artifacts(src: Sources) -> dict:
    """The report of a run whose failed stage left no model: its stages (the failure first in every rendering),
    validations and notes; nothing measured."""
    from onnxforge import __version__

    man = src.manifest or {}
    report = {
        "schema": "onnxforge.report", "schema_version": SCHEMA_VERSION, "onnxforge": __version__,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"), "kind": src.kind,
        "title": _text(man.get("name")) or "run", "verdict": _text(man.get("verdict")) or "fail",
        "run": _run_info(src), "data": {"eval": "none (no artifact)", "rows": 0, "labels": None},
        "native": None, "artifacts": [], "latency": None, "errors": [],
        "validations": _validations(man, set()), "stage_changes": _stage_changes(man, src.run_dir),
        "stage_tables": _stage_tables(man), "stages": _stages(man), "environment": _environment(),
        "notes": src.notes, "files": {},
    }
    return scrub(clean(report), *_bases(src))


def _measure(a: Artifact, proto, feeds, labels, src: Sources, outputs: dict, ref_metrics: dict, native_info,
             native_out) -> tuple[dict, list]:
    """One artifact's own figures, its outputs on the data, and its errors/metrics against its reference."""
    from onnxforge.artifact import sha256_file
    from onnxforge.summary import summarize

    info = summarize(proto, a.path)
    try:
        outputs[a.label] = _run_model(a.path, proto, feeds, src.cfg)
    except Exception as e:  # e.g. ops this onnxruntime cannot run: still report size and ops
        if getattr(e, "provider", False):
            raise  # a provider asked for and not here: exit 2, never a note beside CPU figures
        outputs[a.label] = None
        src.notes.append(f"{a.label}: onnxruntime could not run it ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160] if str(e) else ''})")
    ref_label, ref_out = _reference_of(a, outputs, native_info, native_out)
    stochastic = _stochastic(proto, a.path)
    got, ref_out = _without(outputs[a.label], stochastic), _without(ref_out, stochastic)
    if stochastic:
        src.notes.append(f"{a.label}: stochastic outputs {sorted(stochastic)} have no element-wise errors or "
                         "task metrics here (validate compares them as distributions)")
    errors = compare_outputs(a.label, ref_label, ref_out, got) if got is not None and ref_out is not None else []
    m = _metrics(got, labels, ref_out, proto)
    ref_metrics.setdefault(a.label, _metrics(got, labels, proto=proto))
    return {
        "label": a.label, "path": a.path.relative_to(src.run_dir).as_posix() if src.run_dir else shown(a.path, *_bases(src)),
        "stage": a.stage, "parent": a.parent, "reference": ref_label, "sha256": sha256_file(a.path),
        "file_bytes": info["file_bytes"], "size_ratio": 1.0,
        "nodes": info["nodes"], "params": info["params"], "initializer_bytes": info["initializer_bytes"],
        "ir_version": info["ir_version"], "opset": info["opset"], "producer": info["producer"],
        "inputs": info["inputs"], "outputs": info["outputs"], "ops": info["ops"],
        "ran": outputs[a.label] is not None,
        "provider": _RAN_ON.get(str(a.path)) if outputs[a.label] is not None else None,
        "metrics": m, "metric_deltas": _deltas(m, ref_metrics.get(ref_label)) if ref_label else None,
    }, errors


def _stochastic(proto, where=None) -> set[str]:
    """Outputs holding random draws: they differ element by element by design (validate compares them as
    distributions), so they get no element-wise errors or task metrics here."""
    from onnxforge.artifact import meta_json

    return set(meta_json(proto, "stochastic_outputs", list, [], items=str, where=where))


def _native(src: Sources, feeds):
    """Load the source model and predict on the report's data: the reference for the first artifact."""
    try:
        fe, native = src.native()
    except UserError as e:
        src.notes.append(f"native reference unavailable: {e}")
        return None, None, None, None
    except Exception as e:  # a frontend bug must not cost the user the whole report either
        src.notes.append(f"native reference unavailable ({type(e).__name__}: {str(e)[:160]})")
        return None, None, None, None
    label = f"{fe.name} (native)"
    try:
        out = {k: np.asarray(v) for k, v in fe.predict(native, feeds, src.cfg).items()}
    except Exception as e:  # a frontend bug must not cost the user the whole report
        src.notes.append(f"native predict failed ({type(e).__name__}: {str(e)[:160]})")
        return fe, native, None, {"label": label, "framework": fe.name, "metrics": None}
    return fe, native, out, {"label": label, "framework": fe.name, "metrics": None}


def _without(outs: dict | None, names: set[str]) -> dict | None:
    if outs is None or not names:
        return outs
    return {k: v for k, v in outs.items() if k not in names} or None


def _reference_of(a: Artifact, outputs, native_info, native_out):
    if a.parent is not None:
        return a.parent, outputs.get(a.parent)
    if native_info and native_out is not None:
        return native_info["label"], native_out
    return None, None


def _preset_threads(cfg, n: int) -> None:
    try:
        from onnxforge.registry import frontend

        frontend(cfg.source.framework).preset_threads(n)
    except Exception:  # a missing framework is reported when the model loads
        pass


def _latency(runnable, feeds, opts, src: Sources, fe, native, native_info, console, inputs=(None, None)) -> dict:
    from onnxforge.benchmark import (
        inputs_label,
        native_cases,
        onnx_cases,
        pick_baseline,
        progress_bar,
        ratios,
        run_cases,
        usable_batches,
    )

    threads = list(opts.threads)
    providers = src.cfg.runtime.providers if src.cfg is not None else None
    cases = []
    if fe is not None and fe.name != "onnx" and native_info is not None:  # an ONNX source is the convert output
        cases += native_cases(fe, native, src.cfg, feeds, batches=list(opts.batches), threads=threads)
    for a, proto in runnable:
        cases += onnx_cases(a.path, feeds, batches=usable_batches(proto, opts.batches)[0], threads=threads,
                            providers=providers, label=a.label)
    with progress_bar(console) as prog:
        task = prog.add_task("report: latency", total=max(len(cases), 1))
        try:
            rows = run_cases(cases, runs=opts.runs, warmup=opts.warmup, max_seconds=opts.max_seconds,
                             rounds=opts.rounds, progress=prog, task=task)
        except Exception as e:
            if not cases or not cases[0].engine.endswith("native"):
                raise
            # a native predict that cannot take these batches must not cost the ONNX figures
            src.notes.append(f"native latency not measured ({type(e).__name__}: {str(e)[:160]})")
            cases = [c for c in cases if not c.engine.endswith("native")]
            for c in cases:
                c.times.clear()
                c.limits.clear()
            rows = run_cases(cases, runs=opts.runs, warmup=opts.warmup, max_seconds=opts.max_seconds,
                             rounds=opts.rounds)
    specs, source = inputs
    shown_inputs = {b: inputs_label(feeds, b, specs=specs, source=source)
                    for b in dict.fromkeys(r["batch"] for r in rows)}
    for r in rows:
        r["inputs"] = shown_inputs[r["batch"]]
    noted = set()
    for r in rows:
        if r.get("threads_applied") is False and (r["label"], r["threads"]) not in noted:
            noted.add((r["label"], r["threads"]))
            src.notes.append(f"{r['label']}: {r['threads']} thread(s) asked but not applied ({r.get('threads_note')});"
                             " its latency ran on the framework's default threads and has no speed ratio")
    baseline = pick_baseline(rows, rows[0]["label"] if rows else None)
    return {"baseline": baseline, "runs": opts.runs, "warmup": opts.warmup, "rounds": opts.rounds,
            "batches": list(opts.batches), "threads": threads,
            "inputs": [{"batch": b, "label": v} for b, v in shown_inputs.items()], "rows": rows,
            "ratios": ratios(rows, baseline) if baseline else []}


# ------------------------------------------------------------------ from the manifest


def _environment() -> dict:
    """Where the latency was measured: it means little without the machine."""
    import os
    import platform

    from onnxforge.pipeline import versions

    return {"versions": versions(), "machine": platform.machine(), "system": platform.system(),
            "cpus": os.cpu_count()}


def _run_info(src: Sources) -> dict:
    m = src.manifest or {}
    versions = m.get("versions") if isinstance(m.get("versions"), dict) else {}
    return {"name": _text(m.get("name")), "path": shown(src.run_dir, Path.cwd()),
            "config": _text(m.get("config")) or None, "verdict": _text(m.get("verdict")),
            "started": _text(m.get("started")), "finished": _text(m.get("finished")),
            "final_model": _text(m.get("final_model")), "versions": {str(k): str(v) for k, v in versions.items()}}


def _plain(v) -> str:
    """A run-folder value in a rich progress line: no markup, no control characters."""
    from rich.markup import escape

    from onnxforge.stages.report.fmt import printable

    return escape(printable(v))


def _dict(v) -> dict:
    return v if isinstance(v, dict) else {}


def _text(v) -> str | None:
    """A manifest field meant to be a string (a tampered one may hold anything)."""
    return None if v is None else v if isinstance(v, str) else json.dumps(v, default=str)[:200]


def _scalars(d: dict, limit: int = 16) -> dict:
    """A stage summary's top-level numbers and short strings (the figures a table can show)."""
    if not isinstance(d, dict):
        return {}
    items = [(k, v) for k, v in d.items() if isinstance(v, int | float | bool) or (isinstance(v, str) and len(v) <= 200)]
    return dict(items[:limit])


def _stages(man: dict) -> list[dict]:
    out = []
    for s in man.get("stages", []):
        wall = s.get("wall_s")
        out.append({"name": _text(s.get("name")), "dir": _text(s.get("dir")), "status": _text(s.get("status")),
                    "verdict": _text(s.get("verdict")), "model": _text(s.get("model")),
                    "wall_s": wall if isinstance(wall, int | float) and not isinstance(wall, bool) else None,
                    "message": (_text(s.get("message")) or "")[:500],
                    "figures": _scalars(_dict(s.get("summary")))})
    return out


def _validations(man: dict, labels: set[str]) -> list[dict]:
    out = []
    for s in man.get("stages", []):
        summ = _dict(s.get("summary"))
        if not isinstance(summ.get("comparisons"), list):
            continue
        ins = list(_dict(s.get("inputs")))
        model = ins[0] if s.get("name") == "validate" and ins else (s.get("model") or (ins[0] if ins else None))
        model = _text(model)
        rows = summ.get("rows")
        out.append({"stage": _text(s.get("name")), "model": model, "known_artifact": model in labels,
                    "verdict": _text(summ.get("verdict", s.get("verdict"))), "reference": _text(summ.get("reference")),
                    "against": _text(summ.get("against")), "rows": rows if isinstance(rows, int) else None,
                    "data": _text(summ.get("data")),
                    "comparisons": [c for c in summ["comparisons"] if isinstance(c, dict)],
                    "metrics": _dict(summ.get("metrics"))})
    return out


def _flatten(d: dict, prefix: str = "", depth: int = 0) -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and depth < 2 and len(v) <= 12:  # an op histogram is too big for a row each
            out.update(_flatten(v, key + ".", depth + 1))
        elif isinstance(v, int | float | bool) or (isinstance(v, str) and len(v) <= 80):
            out[key] = v
    return out


def _on_disk(run_dir: Path | None, rel) -> int | None:
    """The size on disk (external data included) of a model the manifest names, None when it is not there."""
    from onnxforge.artifact import file_size

    if run_dir is None or not isinstance(rel, str):
        return None
    try:
        path = inside(run_dir, rel, "a stage names model")
        return file_size(path) if path.is_file() else None
    except (UserError, OSError):
        return None


def _stage_changes(man: dict, run_dir: Path | None = None) -> list[dict]:
    """quantize/optimize summaries carry `before`/`after` dicts: one row per figure present in either. The file
    sizes are those of the files on disk (the stage's input and output model) wherever they are in the run."""
    out = []
    for s in man.get("stages", []):
        summ = _dict(s.get("summary"))
        if not (isinstance(summ.get("before"), dict) and isinstance(summ.get("after"), dict)):
            continue
        b, a = _flatten(summ["before"]), _flatten(summ["after"])
        for figs, rel in ((b, next(iter(_dict(s.get("inputs"))), None)), (a, s.get("model"))):
            if "file_bytes" in figs and (size := _on_disk(run_dir, rel)) is not None:
                figs["file_bytes"] = size
        rows = []
        for k in dict.fromkeys([*b, *a]):
            bv, av = b.get(k), a.get(k)
            num = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (bv, av))
            rows.append({"key": k, "before": bv, "after": av,
                         "ratio": (av / bv) if num and bv else None})
        out.append({"stage": _text(s.get("name")), "verdict": _text(s.get("verdict")), "rows": rows})
    return out


def _stage_tables(man: dict, max_rows: int = 40, max_cols: int = 16) -> list[dict]:
    """A stage summary's lists of records (e.g. quantize's measured candidates) as tables: one column per scalar
    figure (nested dicts flattened with dots), columns that are empty in every row left out."""
    out = []
    for s in man.get("stages", []):
        if s.get("name") == "report":  # our own summary: its figures are the report itself
            continue
        for key, val in (_dict(s.get("summary")) | _target_rows(s)).items():
            if key in ("comparisons", "inputs", "outputs") or not isinstance(val, list) or not val or not all(isinstance(v, dict)
                                                                                         for v in val):
                continue
            flat = [_flatten(v) for v in val[:max_rows]]
            cols = [c for c in dict.fromkeys(k for f in flat for k in f) if any(f.get(c) is not None for f in flat)]
            out.append({"stage": _text(s.get("name")), "key": key, "columns": cols[:max_cols],
                        "rows": [[f.get(c) for c in cols[:max_cols]] for f in flat],
                        "truncated": len(val) > max_rows or len(cols) > max_cols})
    return out


def _target_rows(stage: dict) -> dict:
    """A compile stage's figures as lists of records for _stage_tables: its check per output and its timing per
    batch size against onnxruntime (keyed by output / batch in the summary, so no table showed them)."""
    summ = _dict(stage.get("summary"))
    target = summ.get("target")
    if not isinstance(target, str) or not isinstance(summ.get("latency"), dict):
        return {}
    check = [{"output": k} | _dict(v) for k, v in _dict(summ.get("outputs")).items()]
    timing = []
    for b, v in _dict(summ.get("latency")).items():
        v, sp = _dict(v), _dict(_dict(v).get("speedup"))
        timing.append({"batch": b, "onnxruntime p50 ms": v.get("onnxruntime_p50_ms"),
                       f"{target} p50 ms": v.get(f"{target}_p50_ms"), "speedup": sp.get("ratio"),
                       "interval": "–".join(f"{x:.3g}" for x in sp.get("interval") or ()) or None,
                       "verdict": sp.get("verdict")})
    files = [{"file": k, "bytes": v} for k, v in _dict(summ.get("bytes")).items()]
    return {f"{target} check": check, f"{target} timing": timing, f"{target} files": files}
