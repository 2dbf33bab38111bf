"""Run a pipeline's stages in order into run_dir/<name>/NN-stage/, with a manifest and a per-stage cache."""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge import __version__
from onnxforge.artifact import atomic_write_json, sha256_file
from onnxforge.errors import CheckFailed, UserError
from onnxforge.paths import scrub, shown
from onnxforge.registry import STAGES, dist_version, frontend

MANIFEST = "manifest.json"


@dataclass
class StageResult:
    verdict: str = "pass"  # pass | fail | info
    model: Path | None = None  # the new current model, for stages that produce one
    summary: dict[str, Any] = field(default_factory=dict)  # JSON-able figures for the manifest and report
    files: list[Path] = field(default_factory=list)
    message: str = ""


@dataclass
class StageContext:
    cfg: Any
    stage: str
    stage_dir: Path
    model: Path | None  # the current model: this stage's input
    source_model: Path | None  # the model the convert stage produced
    results: dict[str, dict] = field(default_factory=dict)  # earlier stages' manifest entries, by stage name
    console: Any = None
    _cache: dict[str, Any] = field(default_factory=dict)  # shared by the stages of one run
    decisions: Any = None  # lock.Decisions: this stage's entry in the config's lock (None: no lock, measure)
    synthesized: list = field(default_factory=list)  # what this stage synthesized (data.synthesize appends)

    @property
    def frontend(self):
        if "frontend" not in self._cache:
            self._cache["frontend"] = frontend(self.cfg.source.framework)
        return self._cache["frontend"]

    def native(self):
        """The user's model loaded once per run by its frontend (the reference for validation)."""
        if "native" not in self._cache:
            self._cache["native"] = self.frontend.load(self.cfg)
        return self._cache["native"]

    def input_specs(self, model_path: Path | None = None):
        """The input model (see inputspec) of the model at `model_path` (default: the current model): the
        config's inputs merged over what the model declares, dims resolved, batch axes and integer ranges."""
        from onnxforge import inputspec
        from onnxforge.artifact import load_model

        path = model_path or self.model or self.source_model
        if path is None or not Path(path).is_file():
            return self.cfg.inputs
        specs = inputspec.plan(load_model(path, load_external=False), path, self.cfg)
        specs.log = self.synthesized  # data.synthesize records what it made: the stage summary shows it
        return specs

    def feeds(self, which: str = "eval", model_path: Path | None = None, *,
              nonfinite: str = "refuse") -> tuple[dict[str, np.ndarray], str]:
        """Inputs for checks: the data file, or (only if allowed) synthetic data. Returns (feeds, provenance).
        `nonfinite`: 'nan' lets NaN in the data through (a model that scores missing values, see data.check_values)."""
        from onnxforge import data

        d = self.cfg.data
        path = d.calibration if which == "calibration" and d.calibration else d.path
        specs = self.input_specs(model_path)
        if path is not None:  # provenance goes into manifest/report files: no absolute path
            return (data.feeds_from_table(data.load_table(path), specs, d.rows, nonfinite=nonfinite),
                    shown(path, *path_bases(self.cfg)))
        if d.synthetic:
            return data.synthesize(specs, d.synthetic_rows, d.seed), "synthetic"
        raise UserError("no data for checks: set data.path (or data.synthetic: true to allow synthesized inputs)")

    def labels(self) -> np.ndarray | None:
        from onnxforge import data

        d = self.cfg.data
        if d.path is None or d.labels is None:
            return None
        return data.read_labels(d.path, d.labels, d.rows, specs=self.input_specs())


def with_synthesized(res: StageResult, ctx: StageContext) -> None:
    """Every summary says which inputs were synthesized: shapes, ranges and where they came from."""
    if ctx.synthesized and isinstance(res.summary, dict) and "synthesized_inputs" not in res.summary:
        seen, uniq = set(), []
        for d in (d for feed_set in ctx.synthesized for d in feed_set):
            key = json.dumps(d, sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                uniq.append(d)
        res.summary["synthesized_inputs"] = uniq


def path_bases(cfg) -> list:
    """Folders that paths written into the run folder are shown relative to (see reporting.paths)."""
    return [cfg.run_path, cfg.config_path.parent if cfg.config_path else None, Path.cwd()]


def _hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _files_hashes(paths) -> dict[str, str]:
    return {str(p): sha256_file(p) for p in paths if p and Path(p).is_file()}


def versions(extra: dict[str, str] | None = None) -> dict[str, str]:
    v = {"onnxforge": __version__, "python": platform.python_version()}
    for p in ("onnx", "onnxruntime", "numpy"):
        if (x := dist_version(p)):
            v[p] = x
    v.update(extra or {})
    return v


def _stage_key(prev_key: str, name: str, opts: Any, common: dict, model_hash: str | None) -> str:
    return _hash_json({"prev": prev_key, "stage": name, "options": opts, "common": common,
                       "model": model_hash, "version": __version__})


def _outputs_intact(entry: dict, run_path: Path) -> bool:
    outs = entry.get("outputs") or {}
    return entry.get("status") in ("ran", "cached") and entry.get("verdict") != "fail" and all(
        (run_path / p).is_file() and sha256_file(run_path / p) == h for p, h in outs.items())


def preflight(cfg) -> None:
    """What `config check` and `run` both verify before anything is created: the source file is there and of a
    kind its frontend reads (a few bytes, no framework import), and every data path exists."""
    order = cfg.stages.order
    if order and order[0] != "convert" and cfg.source.framework != "onnx":
        raise UserError(f"stages: {order[0]} needs a model, and only convert makes one from a "
                        f"{cfg.source.framework} source — list convert: {{}} first")
    if "convert" in order and order[0] != "convert":
        # convert makes the model from the source: every model-producing stage listed before it would be thrown
        # away (an ONNX source's quantize, then convert, shipped the float model and validated float against float)
        raise UserError(f"stages: convert is listed after {order[0]}, but it starts the pipeline from the source "
                        f"(what {order[0]} did would be discarded) — move convert: to the top of stages")
    frontend(cfg.source.framework).preflight(cfg)
    for label, p in (("data.path", cfg.data.path), ("data.calibration", cfg.data.calibration)):
        if p is not None and not Path(p).is_file():
            raise UserError(f"{label}: {p} not found — check the path (relative to the YAML file)")


def check_run_folder(run_path: Path) -> None:
    """Before anything is created: the run folder and the folders above it are folders, or do not exist yet — a
    file there, or a symlink leading nowhere (dangling, a loop), ended in an internal error from mkdir."""
    for p in (run_path, *run_path.parents):
        if p.is_symlink() and not p.exists():
            raise UserError(f"{p} is a symbolic link that leads nowhere (dangling, or a loop) — remove it, or choose "
                            "another run_dir (or --run-dir)")
        if p.exists():
            if not p.is_dir():
                what = "the run folder" if p == run_path else f"where the run folder {run_path} needs a folder"
                raise UserError(f"{p} is a file, {what} — move the file, or choose another run_dir (or --run-dir)")
            return


def first_new_folder(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (what this run would create), or None."""
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def remove_created(folder: Path, created: Path | None, *, own: bool) -> None:
    """Undo what a refused command created: `folder` itself when it is this command's own (`own`: a run folder),
    then each folder above it up to `created` only while empty — a concurrent command that shares a run_dir both
    found missing keeps its work (a refused run used to delete the whole new run_dir under the other's feet)."""
    if created is None:
        return
    if own:
        shutil.rmtree(folder, ignore_errors=True)
    p = folder
    while True:
        try:
            p.rmdir()
        except OSError:  # not empty (someone else's), or already gone
            if p.exists():
                return
        if p == created or p.parent == p:
            return
        p = p.parent


def stage_dir_name(cfg, name: str) -> str:
    """NN-stage, NN the stage's position in the config's full `stages` order: a single-stage command, a run with
    --until and a full run all write the same folder."""
    return f"{cfg.stages.order.index(name) + 1:02d}-{name}"


def _is_stage_dir(p: Path) -> bool:
    head, sep, tail = p.name.partition("-")
    return p.is_dir() and not p.is_symlink() and sep == "-" and len(head) == 2 and head.isdigit() and tail in STAGES


REPORT_COPIES = ("report.md", "report.html", "report.json")


def _tidy(run_path: Path, manifest: dict) -> None:
    """The run folder holds what its manifest describes: stage folders (NN-<stage>) of an earlier run that this
    one did not write (a later stage after --until, a stage skipped after a failure, an old numbering) are
    removed — nothing else is touched. The report stage's files are copied beside the numbered folders
    (runs/NAME/report.md, …, each written atomically) so CI does not depend on the stage count; stale copies go."""
    from onnxforge.standalone import copy_atomic

    keep = {s["dir"] for s in manifest["stages"] if s.get("status") in ("ran", "cached")}
    for p in sorted(run_path.iterdir()):
        if _is_stage_dir(p) and p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)
    report = next((s for s in manifest["stages"] if s["name"] == "report" and s.get("status") == "ran"), None)
    made = {Path(rel).name: run_path / rel for rel in (report or {}).get("outputs", {})}
    for name in REPORT_COPIES:
        if name in made and made[name].is_file():
            copy_atomic(made[name], run_path / name)
        elif (run_path / name).is_file() and not (run_path / name).is_symlink():
            (run_path / name).unlink()


def run_pipeline(cfg, *, force: bool = False, until: str | None = None, only_models: bool = False,
                 console=None, progress=None, lock: str = "use") -> dict:
    """Run every stage in cfg.stages order. Returns the manifest; raises CheckFailed (after writing the manifest)
    when a check failed, UserError for bad input.

    `lock`: decisions made from measurements and the config's lock file (<config>.lock, see onnxforge.lock) —
    "use" reuses matching entries and records missing ones, "remeasure" times every decision again (no stage
    that decides is taken from the run cache) and rewrites them, "locked" fails (CheckFailed) before anything
    runs when a decision would have to be measured. `force` reruns stages and still reuses the lock."""
    from onnxforge import runtime
    from onnxforge.lock import Decisions, Lock, decides, upstream_hash

    run_path = cfg.run_path
    full_order = order = cfg.stages.order
    if not order:  # a run of nothing exited 0: a CI job would pass without a model made or checked
        raise UserError("stages: lists no stage, so run has nothing to do — list the stages to run, e.g. "
                        "stages: {convert: {}, validate: {}}")
    locks = Lock.for_config(cfg, lock)
    if until:
        if until not in order:
            raise UserError(f"stage '{until}' is not in the config's stages ({', '.join(order)}) — add it")
        order = order[: order.index(until) + 1]
        if only_models:
            order = [s for s in order if STAGES[s].produces_model or s == until]
    preflight(cfg)
    upstream = ({n: upstream_hash(cfg, n, full_order) for n in order if decides(getattr(cfg.stages, n))}
                if locks.enabled else {})
    if locks.enabled:  # --locked refuses here, before anything is created, if a decision would be measured
        locks.precheck([locks.key(cfg, n, getattr(cfg.stages, n), None, up) for n, up in upstream.items()])
    check_run_folder(run_path)
    created = first_new_folder(run_path)  # a refused run leaves no folder behind
    try:
        run_path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # read-only or full file system, no permission
        remove_created(run_path, created, own=True)
        raise UserError(f"cannot create the run folder {run_path} ({e.strerror or type(e).__name__}) — choose a "
                        "writable run_dir (or --run-dir)") from None
    mpath = run_path / MANIFEST
    old = {}
    if mpath.is_file() and not force:
        try:
            old = {s["name"]: s for s in json.loads(mpath.read_text()).get("stages", [])}
        except (json.JSONDecodeError, KeyError, TypeError):
            old = {}
    fe = frontend(cfg.source.framework)
    common = cfg.model_dump(mode="json", exclude={"stages", "run_dir"})
    common["_files"] = _files_hashes([*fe.source_files(cfg), cfg.data.path, cfg.data.calibration])
    manifest: dict[str, Any] = {
        "onnxforge": __version__, "name": cfg.name,
        "config": shown(cfg.config_path, Path.cwd()) if cfg.config_path else "",  # informational: never loaded back
        "config_sha256": _hash_json(cfg.model_dump(mode="json")), "started": datetime.now(UTC).isoformat(),
        "versions": versions(fe.versions()), "stages": [], "verdict": "pass", "final_model": None,
    }
    bases = path_bases(cfg)  # stage summaries and messages lose this machine's absolute paths
    ctx_shared: dict[str, Any] = {}
    # an ONNX source is a model already: its stages may start without convert (its hash is in `common`)
    onnx_source = Path(cfg.source.path) if cfg.source.framework == "onnx" and cfg.source.path else None
    current: Path | None = None
    source_model: Path | None = None
    prev_key = ""
    failed = None
    results: dict[str, dict] = {}
    for name in order:
        spec = STAGES[name]
        opts = getattr(cfg.stages, name)
        stage_dir = run_path / stage_dir_name(cfg, name)
        entry: dict[str, Any] = {"name": name, "dir": stage_dir.name}
        if failed is not None and name != "report":
            entry.update(status="skipped", verdict="skip", message=f"skipped after {failed} failed")
            manifest["stages"].append(entry)
            continue
        model_hash = sha256_file(current) if current else None
        key = _stage_key(prev_key, name, opts.model_dump(mode="json"), common, model_hash)
        prev_key = key
        entry.update(key=key, inputs={str(current.relative_to(run_path)): model_hash} if current else {})
        cached = old.get(name)
        lkey, lock_ok = None, True
        if name in upstream and locks.enabled:
            stage_in = current or onnx_source
            lkey = locks.key(cfg, name, opts, sha256_file(stage_in) if stage_in else None, upstream[name])
            was = (cached or {}).get("lock") or {}
            have = locks.matching(lkey)
            # a cached stage's decision must be the lock's (a lock pulled from elsewhere wins), or be restorable
            lock_ok = lock != "remeasure" and was.get("key") == lkey.digest and (
                have["decision"] == was.get("decision") if have else lock == "use")
        if (name != "report" and cached and cached.get("key") == key and lock_ok
                and _outputs_intact(cached, run_path)):
            entry.update({k: cached[k] for k in ("verdict", "summary", "outputs", "model", "message") if k in cached})
            entry.update(scrub({k: entry[k] for k in ("summary", "message") if k in entry}, *bases))  # older runs
            entry.update(status="cached", wall_s=0.0)
            if lkey is not None:
                locks.keep(lkey, cached["lock"])
                entry["lock"] = cached["lock"]
            if console:
                console.print(f"[dim]• {name}: unchanged, cached[/dim]")
        else:
            stage_dir.mkdir(parents=True, exist_ok=True)
            ctx = StageContext(cfg, name, stage_dir, current or onnx_source, source_model or onnx_source,
                               dict(results), console, ctx_shared, decisions=Decisions(locks, lkey))
            locks.settled.add(name)
            if console:
                console.print(f"[bold cyan]▶ {name}[/bold cyan]")
            t0 = time.perf_counter()
            try:
                # sessions a stage builds for its own checks (quantize, optimize) ask for the config's providers too
                with runtime.use(runtime.requested(cfg.runtime.providers), cfg.runtime.allow_fallback):
                    res: StageResult = spec.run(ctx, opts)
            except CheckFailed as e:
                res = StageResult(verdict="fail", message=unsaved(str(e), stage_dir, name),
                                  summary=e.result if isinstance(e.result, dict) else {})
            except Exception as e:
                if failed is not None:
                    # the report after a failed stage: that failure decides the exit code and message, and its
                    # evidence (the run folder, the manifest) stays; the report's own problem is recorded beside it
                    why = str(e) if isinstance(e, UserError) else f"internal error: {type(e).__name__}: {e}"
                    entry.update(status="error", verdict="error", wall_s=round(time.perf_counter() - t0, 4),
                                 message=scrub(unsaved(why, stage_dir, name), *bases))
                    manifest["stages"].append(entry)
                    atomic_write_json(mpath, manifest)
                    continue
                if not isinstance(e, UserError):
                    raise
                msg = unsaved(str(e), stage_dir, name)
                e.args = (msg,) if msg != str(e) else e.args  # a UserError carries only its message
                if created is not None:  # refused on a first run: leave nothing behind
                    remove_created(run_path, created, own=True)
                    raise
                shutil.rmtree(stage_dir, ignore_errors=True)  # an artifact of an earlier run no longer matches
                entry.update(status="error", verdict="error", message=scrub(msg, *bases),
                             wall_s=time.perf_counter() - t0)
                manifest["stages"].append(entry)
                manifest["verdict"] = "error"
                atomic_write_json(mpath, manifest)
                raise
            entry["wall_s"] = round(time.perf_counter() - t0, 4)
            if lkey is not None and name in locks.now:  # restores the lock entry when the stage comes from cache
                entry["lock"] = {"key": locks.now[name]["key"], "decision": locks.now[name]["decision"]}
            with_synthesized(res, ctx)
            outs = [p for p in ([res.model] if res.model else []) + list(res.files) if p and Path(p).is_file()]
            entry.update(status="ran", verdict=res.verdict, summary=scrub(res.summary, *bases),
                         message=scrub(res.message, *bases),
                         outputs={str(Path(p).relative_to(run_path)): sha256_file(p) for p in outs},
                         model=str(res.model.relative_to(run_path)) if res.model else None)
        if entry.get("model"):
            current = run_path / entry["model"]
            if name == "convert" or source_model is None:
                source_model = current
        if entry["verdict"] == "fail":
            failed = name
            manifest["verdict"] = "fail"
        results[name] = entry
        manifest["stages"].append(entry)
        manifest["final_model"] = str(current.relative_to(run_path)) if current else None
        atomic_write_json(mpath, manifest)
    manifest["finished"] = datetime.now(UTC).isoformat()
    atomic_write_json(mpath, manifest)
    _tidy(run_path, manifest)
    locks.save(full_order)
    if failed:
        msg = next(s.get("message") for s in manifest["stages"] if s["name"] == failed)
        also = next((s.get("message") for s in manifest["stages"] if s["name"] == "report"
                     and s.get("status") == "error"), None)
        raise CheckFailed(f"stage {failed} failed: {msg}"
                          + (f" (the report stage failed too: {also})" if also else ""), manifest)
    return manifest


def unsaved(msg: str, stage_dir: Path, name: str) -> str:
    """A stage checks its new files in a scratch folder inside its stage folder and removes it when the check fails
    (convert's .convert-*/model.onnx): by the time the message is read that path is gone. Name what it was — the
    stage's new model, not written — instead of a path the user would look for in vain."""
    import re

    roots = {str(stage_dir), str(stage_dir.resolve())}
    pattern = "|".join(re.escape(r) for r in sorted(roots, key=len, reverse=True))

    def name_it(m: re.Match) -> str:
        p = Path(m.group(0))
        return m.group(0) if p.exists() else f"{name}'s new {p.name} (not written)"

    return re.sub(rf"(?:{pattern})/[^\s:;,()'\"]+", name_it, msg)
