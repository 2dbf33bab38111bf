"""Run one stage by itself: on a loose .onnx file with flags, or on a pipeline config (earlier model-producing
stages come from the run cache). The same stage functions run as in `onnxforge run`."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from onnxforge.artifact import file_mode
from onnxforge.config import parse_config, read_yaml, safe_yaml, slug
from onnxforge.errors import UserError
from onnxforge.registry import STAGES


def parse_sets(sets: list[str] | None) -> dict[str, Any]:
    """`key=value` pairs (value parsed as YAML, so numbers, lists and booleans work); dots nest."""
    out: dict[str, Any] = {}
    for item in sets or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set per_channel=true")
        key, raw = item.split("=", 1)
        try:
            value = safe_yaml(raw) if raw else None
        except yaml.YAMLError:
            value = raw
        cur = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = value
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_config(stage: str, model: Path | None, config: Path | None, stage_opts: dict,
                 data: dict | None = None, source: dict | None = None, top: dict | None = None):
    """A validated pipeline config for running `stage` alone."""
    if config is not None:
        raw, lines = read_yaml(config)
        path = config
    elif model is not None:
        raw, lines, path = {"name": slug(Path(model).stem), "source": {"framework": "onnx",
                                                                      "path": str(Path(model).resolve())}}, {}, None
    elif stage == "convert" and source:
        raw, lines, path = {}, {}, None
    else:
        raise UserError(f"{stage}: give a MODEL.onnx or --config FILE")
    raw = dict(raw)
    stages = dict(raw.get("stages") or {})
    stages[stage] = _merge(stages.get(stage) or {}, stage_opts)
    raw["stages"] = stages
    if data:
        raw["data"] = _merge(raw.get("data") or {}, data)
    if source:
        raw["source"] = _merge(raw.get("source") or {}, source)
    raw = _merge(raw, top or {})  # --shape/--value add to the config's input_shapes/input_values
    return parse_config(raw, path, lines)


def cfg_source_files(cfg) -> list[Path]:
    from onnxforge.registry import frontend

    return frontend(cfg.source.framework).source_files(cfg)


def copy_atomic(src: Path, dest: Path) -> None:
    """A copy that is either complete at `dest` or absent (temporary file in the same folder, then rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_alone(stage: str, cfg, model: Path | None, output: Path | None, console=None, lock: str = "use"):
    """Returns (StageResult, final model path or None).

    `lock` as in run_pipeline. With a config, decisions live in the lock beside it (with a config and no model,
    the earlier stages run as in `onnxforge run`, into the same NN-stage folders). A loose model without a config
    writes no lock (there is no config to sit beside, and nothing is written outside the output asked for), so
    `locked` is refused there."""
    from onnxforge.errors import CheckFailed
    from onnxforge.lock import Decisions, Lock, decides
    from onnxforge.pipeline import (
        StageContext,
        first_new_folder,
        remove_created,
        run_pipeline,
        with_synthesized,
    )

    spec = STAGES[stage]
    model_in = Path(model) if model is not None else None
    locks = Lock.for_config(cfg, lock)  # --locked without a config: exit 2 before anything
    if output is not None:  # checked first, for every mode: inputs are never overwritten
        inputs = [model_in, *cfg_source_files(cfg), cfg.data.path, cfg.data.calibration, cfg.config_path]
        if Path(output).resolve() in {Path(p).resolve() for p in inputs if p}:
            raise UserError(f"the output path {output} is an input of this stage — choose another -o (inputs are "
                            "never overwritten)")
    if model_in is None:
        # with a config and no model: earlier model-producing stages run (or come from cache) first
        if stage != "convert":
            manifest = run_pipeline(cfg, until=stage, only_models=True, console=console, lock=lock)
            entry = manifest["stages"][-1]
            final = cfg.run_path / entry["model"] if entry.get("model") else None
            if output and final:
                copy_atomic(final, Path(output))
                return entry, output
            return entry, final
    elif not model_in.is_file():
        raise UserError(f"model not found: {model_in} — check the path")
    if spec.produces_model and output is None:
        raise UserError(f"{stage} produces a model: give -o/--output PATH.onnx")
    opts = getattr(cfg.stages, stage)
    key = None
    if locks.enabled and model_in is not None and decides(opts):
        from onnxforge.artifact import sha256_file

        digest = sha256_file(model_in)
        key = locks.key(cfg, stage, opts, digest, f"file:{digest}")
        locks.precheck([key])
    out_dir = (Path(output).resolve().parent if output else Path.cwd())
    created = first_new_folder(out_dir)  # removed again if the stage fails
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".onnxforge-{stage}-", dir=out_dir))
    ok = False
    try:
        ctx = StageContext(cfg, stage, work, model_in, model_in, {}, console, decisions=Decisions(locks, key))
        locks.settled.add(stage)
        try:
            res = spec.run(ctx, opts)
        except CheckFailed:
            locks.save(cfg.stages.order)  # a failing verdict measured is a decision too
            raise
        with_synthesized(res, ctx)
        final = None
        if res.model and output:
            os.replace(res.model, output)  # same folder: the rename is atomic
            final = Path(output)
        elif res.model:
            raise UserError(f"{stage} produces a model: give -o/--output PATH.onnx")
        for f in res.files:  # keep side files (reports) next to the output
            f = Path(f)
            if f.is_file() and output:
                os.replace(f, Path(output).with_name(f"{Path(output).stem}.{f.name}"))
        locks.save(cfg.stages.order)
        ok = True
        return res, final
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not ok:
            remove_created(out_dir, created, own=False)  # its files were in `work`: only empty folders go
