"""The fuzz harness: a case is (seed, command, mutation); `prepare` writes its inputs, `execute` runs the CLI
in-process and `check` holds the result to the exit-code contract.

Cases run inside a worker subprocess (`python harness.py --worker`, driven by `Worker`): the CLI is invoked
in-process there (typer's CliRunner on onnxforge.cli.app, ~0.1 s a case instead of ~2 s for a fresh interpreter),
while a crash or a hang in native code (onnxruntime, protobuf) takes down only the worker — the case is recorded
as `crash`/`timeout` and a fresh worker carries on with the next one.

What every case must satisfy (a violation is a *failure*, named by its kind):
- exit3          exit code 3: an internal error (a bug), whatever the message
- exit-code      any exit code outside {0, 1, 2, 3}
- uncaught       an exception escaped the command wrapper (a traceback in a real shell)
- traceback      "Traceback (most recent call last)" in stdout or stderr
- multi-line     an error that is not exactly one line on stderr (or no line at all)
- stderr-noise   an error line accompanied by other stderr lines from onnxruntime's log or Python warnings
- json           --json: stdout is not one JSON document, or its exit_code/ok disagree with the exit code
- residue        after a failure, a file at the output path (or anything in the output/run folder a failed
                 command created); after any exit, temporary files in the output or run folder; files
                 written by read-only commands (inspect, validate, config check)
- tmp-leak       files left in the temporary folder (TMPDIR) after the command
- input-modified an input file changed, removed, or a temporary file left beside it
- missing-output exit 0 but the output file is not there
- bad-output     exit 0 but the output does not load (an .onnx failing onnx.checker's full check, a table that
                 pandas/numpy cannot read)
- gate-bypass    a command accepted (exit 0 or 1) a mutated model that the admission gate refuses (`onnxforge
                 inspect` exits 2 on it): every command reads a user's model through the one gate (DESIGN.md)
- crash/timeout  the worker died (a signal) or the case took longer than the limit
- harness        the harness itself failed to build the case (a bug here, not in onnxforge)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bases  # noqa: E402
import mutate  # noqa: E402

COMMANDS = ("inspect", "validate", "optimize", "quantize", "predict", "run", "config-check")
MUTATIONS: dict[str, tuple[str, ...]] = {
    "inspect": ("none", *mutate.MODEL),
    "validate": ("none", *mutate.MODEL, *mutate.DATA),
    "optimize": ("none", *mutate.MODEL, *mutate.DATA),
    "quantize": ("none", *mutate.MODEL, *mutate.DATA),
    "predict": ("none", *mutate.MODEL, *mutate.DATA),
    "run": ("none", *mutate.YAML, *mutate.MODEL, *mutate.DATA),
    "config-check": ("none", *mutate.YAML),
}
READ_ONLY = {"inspect", "validate", "config-check"}
CI_CASES = 700  # 7 commands × 100: every (command, mutation) pair at least twice
ERROR_PREFIXES = ("error:", "check failed:", "internal error:")
TEMP_NAMES = {"sym_shape_infer_temp.onnx", "augmented_model.onnx"}
# onnxruntime's native library keeps a session-id file in TMPDIR (written once per folder, like /tmp/.ses): not ours
TMP_KNOWN = {(".ses",)}
_TEMP_RE = re.compile(r"^(\.|tmp[a-z0-9_]{6,}$|.*\.tmp$|.*\.partial$)")


@dataclasses.dataclass(frozen=True, order=True)
class Case:
    seed: int
    command: str
    mutation: str

    @property
    def id(self) -> str:
        return f"{self.seed}-{self.command}-{self.mutation}"

    def __str__(self) -> str:
        return self.id

    @classmethod
    def parse(cls, text: str) -> Case:
        """'17-validate-model.dims' or '17:validate:model.dims'."""
        m = re.fullmatch(r"(\d+)[-:]([a-z-]+?)[-:]((?:none|model|data|yaml)(?:\.[a-z_]+)?)", text.strip())
        if not m:
            raise ValueError(f"case {text!r}: expected SEED-COMMAND-MUTATION, e.g. 17-validate-model.dims")
        case = cls(int(m[1]), m[2], m[3])
        if case.command not in MUTATIONS or case.mutation not in MUTATIONS[case.command]:
            raise ValueError(f"case {text!r}: unknown command or mutation for it")
        return case

    def rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(self.command.encode()), zlib.crc32(self.mutation.encode())])


def case_at(i: int) -> Case:
    """The i-th case of the one sequence both the CI share and `make fuzz` walk: commands round-robin, each
    command's mutations round-robin, the seed is the index."""
    command = COMMANDS[i % len(COMMANDS)]
    muts = MUTATIONS[command]
    return Case(i, command, muts[(i // len(COMMANDS)) % len(muts)])


def cases(n: int, start: int = 0) -> list[Case]:
    return [case_at(i) for i in range(start, start + n)]


# ====================================================================== building a case


@dataclasses.dataclass
class Prepared:
    argv: list[str]
    dir: Path
    inputs: Path
    out: Path
    tmp: Path
    output: Path | None = None  # the file a successful command writes
    run_path: Path | None = None  # run: the run folder
    json: bool = False
    detail: str = ""
    base: str = ""
    existing: dict[str, str] = dataclasses.field(default_factory=dict)  # out/ files there before: name → sha256


def _write_data(rng, case: Case, base: str, fmt: str, inputs: Path, cols=None, stem: str = "data"
                ) -> tuple[Path, str]:
    """The data file `stem.fmt` for `base` (or `cols`), mutated when the case is a data case. Returns (path,
    detail); the path's suffix differs from `fmt` when the mutation is about the file's kind."""
    cols = bases.table(base) if cols is None else cols
    mutation = case.mutation if case.mutation.startswith("data.") else "none"
    path = inputs / f"{stem}.{fmt}"
    detail = ""
    if mutation in mutate.TABLE_MUTATIONS:
        new, detail = mutate.TABLE_MUTATIONS[mutation](rng, cols, fmt)
        if isinstance(new, bytes):
            path.write_bytes(new)
        else:
            try:
                bases.write_table(path, new, fmt)
            except Exception as e:  # the format cannot hold it (parquet + complex): as text instead
                detail += f" (unwritable as {fmt}: {type(e).__name__}; as strings)"
                bases.write_table(path, {k: np.asarray(v).astype(str) for k, v in new.items()}, fmt)
    elif mutation in mutate.RAW_DATA_MUTATIONS:
        raw, detail = mutate.RAW_DATA_MUTATIONS[mutation](rng, cols, fmt)
        path = path.with_suffix(".npy" if detail == "npy-header" else ".npz")
        path.write_bytes(raw)
    elif mutation in ("data.truncate", "data.bytes"):
        bases.write_table(path, cols, fmt)
        b = path.read_bytes()
        new, detail = (mutate.m_truncate(rng, b) if mutation == "data.truncate" else mutate.byte_mutation(rng, b))
        path.write_bytes(new)
    elif mutation == "data.format":
        kind = mutate.pick(rng, ["content", "content", "suffix"])
        if kind == "content":
            other = mutate.pick(rng, mutate.OTHER_FORMATS[fmt])
            try:
                bases.write_table(path, cols, other)
            except Exception:  # multi-dim columns do not go into a table: write them flattened
                bases.write_table(path, {k: np.asarray(v).reshape(len(v), -1)[:, 0] for k, v in cols.items()},
                                  other)
            detail = f"{other} content as .{fmt}"
        else:
            suffix = mutate.pick(rng, [".txt", ".json", ".xlsx", "", ".NPZ", ".npz.gz", ".feather"])
            path = inputs / f"{stem}{suffix}"
            bases.write_table(path, cols, fmt)
            detail = f"{fmt} as {path.name}"
    else:
        bases.write_table(path, cols, fmt)
    return path, detail


def _model_file(rng, case: Case, base: str, inputs: Path, data_name: str) -> tuple[Path, str]:
    path = inputs / "model.onnx"
    if case.mutation.startswith("model."):
        ctx = {"data_name": data_name, "abs_outside": str(inputs.parent / "tmp" / "outside.bin")}
        raw, detail = mutate.mutate_model(rng, case.mutation, bases.model(base), ctx)
        path.write_bytes(raw)
        return path, detail
    path.write_bytes(bases.model_bytes(base))
    return path, ""


def _flag(rng, p: float) -> bool:
    return bool(rng.random() < p)


def prepare(case: Case, root: Path) -> Prepared:
    rng = case.rng()
    d = root / case.id
    if d.exists():
        shutil.rmtree(d)
    inputs, out, tmp = d / "in", d / "out", d / "tmp"
    for p in (inputs, out, tmp):
        p.mkdir(parents=True)
    as_json = _flag(rng, 0.25)
    json_flag = ["--json"] if as_json else []
    cmd = case.command
    if cmd in ("run", "config-check"):
        return _prepare_config(rng, case, d, inputs, out, tmp, as_json)

    base = mutate.pick(rng, bases.MODELS)
    fmt = mutate.pick(rng, bases.FORMATS[base])
    data, ddetail = _write_data(rng, case, base, fmt, inputs)
    model, mdetail = _model_file(rng, case, base, inputs, data.name)
    prep = Prepared([], d, inputs, out, tmp, json=as_json, detail=mdetail or ddetail, base=f"{base}/{fmt}")
    use_data = case.mutation.startswith("data.") or not _flag(rng, 0.2)
    data_flags = ["--data", str(data)] if use_data else ["--synthetic"]
    has_labels = fmt != "npy"  # an .npy holds one array: the input
    labels = ["--labels", "label"] if use_data and has_labels and (case.mutation == "data.labels" or _flag(rng, 0.3)
                                                                   ) else []
    if cmd == "inspect":
        prep.argv = ["inspect", str(model), *json_flag]
    elif cmd == "validate":
        against = ["--against", "onnx-reference"] if _flag(rng, 0.3) else []
        prep.argv = ["validate", str(model), *data_flags, *labels, *against, "--set", "batch1_rows=4", *json_flag]
    elif cmd == "optimize":
        prep.output = out / "optimized.onnx"
        level = mutate.pick(rng, ["basic", "basic", "extended", "all", "none"])
        portable = ["--portable"] if _flag(rng, 0.3) else []
        prep.argv = ["optimize", str(model), "-o", str(prep.output), *data_flags, "--level", level, *portable,
                     "--set", "min_pass_speedup=0", "--set", "pass_timing_rounds=1", "--set", "latency_rounds=1",
                     "--set", "batch_sizes=[1]", "--set", "rows=16", *json_flag]
    elif cmd == "quantize":
        prep.output = out / "quantized.onnx"
        mode = mutate.pick(rng, ["dynamic", "dynamic", "static", "fp16"])
        budget = ["--max-accuracy-drop", "1"] if labels else []
        synth = ["--set", "allow_synthetic_calibration=true"] if not use_data else []
        prep.argv = ["quantize", str(model), "-o", str(prep.output), *(data_flags if use_data else []), "--mode",
                     mode, *labels, *budget, *synth, "--set", "allow_slower=true", "--set", "latency_rounds=1",
                     "--set", "batch_sizes=[1]", "--set", "calibration_rows=16", "--set", "eval_rows=16",
                     *json_flag]
    elif cmd == "predict":
        prep.output = out / f"scores.{mutate.pick(rng, ['parquet', 'csv', 'npz'])}"
        chunk = ["--chunk-rows", str(mutate.pick(rng, [1, 7, 1000]))] if _flag(rng, 0.4) else []
        seed = ["--seed", "3"] if _flag(rng, 0.2) else []
        prep.argv = ["predict", str(model), "--input", str(data), "-o", str(prep.output), *chunk, *seed, *json_flag]
    if prep.output is not None and _flag(rng, 0.1):
        # the user's earlier result is at the output path: a failure must leave it as it was
        prep.output.write_bytes(b"an earlier result\n")
        prep.existing = _snapshot(out)
    return prep


def _prepare_config(rng, case: Case, d: Path, inputs: Path, out: Path, tmp: Path, as_json: bool) -> Prepared:
    generated = case.mutation.startswith("model.") or _flag(rng, 0.5 if case.command == "run" else 0.2)
    if generated:
        base = mutate.pick(rng, bases.MODELS)
        fmt = mutate.pick(rng, bases.FORMATS[base])
        synthetic = not case.mutation.startswith("data.") and base != "tab" and _flag(rng, 0.15)
        data, ddetail = _write_data(rng, case, base, fmt, inputs)
        model, mdetail = _model_file(rng, case, base, inputs, data.name)
        cfg_dict = bases.onnx_config(model.name, None if synthetic else data.name, labels=_flag(rng, 0.5))
        cfg = inputs / "pipeline.yaml"
        text = bases.dump_yaml(cfg_dict)
        detail, label = mdetail or ddetail, f"onnx:{base}/{fmt}"
    else:
        name = mutate.pick(rng, bases.RUN_CONFIGS if case.command == "run" else bases.ALL_CONFIGS)
        cfg, data_files = bases.copy_config(name, inputs)
        text = cfg.read_text()
        detail, label = "", name
        if case.mutation.startswith("data.") and data_files:
            target = mutate.pick(rng, data_files)
            cols, fmt = bases.read_table(target)
            target.unlink()
            new, detail = _write_data(rng, case, "", fmt, target.parent, cols=cols, stem=target.stem)
            if new.name != target.name:  # the mutation renamed the file: the config follows it
                text = text.replace(target.name, new.name)
            detail = f"{target.name}: {detail}"
    if case.mutation.startswith("yaml."):
        raw, detail = mutate.mutate_yaml(rng, case.mutation, text)
        cfg.write_bytes(raw)
    else:
        cfg.write_text(text)
    argv = ["run", str(cfg)] if case.command == "run" else ["config", "check", str(cfg)]
    prep = Prepared([*argv, *(["--json"] if as_json else [])], d, inputs, out, tmp, json=as_json, detail=detail,
                    base=label)
    if case.command == "run":
        prep.run_path = out / "runs"
    return prep


# ====================================================================== running it in-process


def _snapshot(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "symlink:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[rel] = "dir"
    return out


def _cli_warning_filters() -> None:
    """The filters a fresh `python -m onnxforge` starts with (what the user would see on stderr)."""
    warnings.resetwarnings()
    warnings.simplefilter("default")
    for cat in (ResourceWarning, ImportWarning, PendingDeprecationWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=cat)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")


@contextlib.contextmanager
def _fd_capture(scratch: Path):
    """Capture what native code writes to file descriptors 1 and 2 (onnxruntime's log, C++ warnings)."""
    for s in (sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            s.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    files = {fd: open(scratch / f"fd{fd}.txt", "w+b") for fd in (1, 2)}  # noqa: SIM115
    got: dict[int, str] = {}
    try:
        for fd, f in files.items():
            os.dup2(f.fileno(), fd)
        yield got
    finally:
        for s in (sys.__stdout__, sys.__stderr__):
            with contextlib.suppress(Exception):
                s.flush()
        for fd, f in files.items():
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
            f.seek(0)
            got[fd] = f.read().decode("utf-8", "replace")
            f.close()


def invoke(argv: list[str], cwd: Path, tmp: Path, scratch: Path) -> dict[str, Any]:
    """Run the CLI in this process like a fresh `onnxforge ARGV` would run in a shell, from `cwd` with TMPDIR=tmp."""
    from typer.testing import CliRunner

    from onnxforge.cli import app

    runner = CliRunner(env={"COLUMNS": "200", "TMPDIR": str(tmp), "ONNXFORGE_MAX_DATA_BYTES": None,
                            "ONNXFORGE_MAX_SYNTHETIC_ELEMENTS": None})
    old_cwd, old_tmp = os.getcwd(), tempfile.tempdir
    root_logger = logging.getLogger()
    level, handlers = root_logger.level, list(root_logger.handlers)
    t0 = time.perf_counter()
    with _fd_capture(scratch) as native, warnings.catch_warnings(record=True) as caught:
        _cli_warning_filters()
        os.chdir(cwd)
        tempfile.tempdir = str(tmp)
        try:
            res = runner.invoke(app, argv, catch_exceptions=True)
        finally:
            os.chdir(old_cwd)
            tempfile.tempdir = old_tmp
            root_logger.setLevel(level)
            root_logger.handlers[:] = handlers
    seconds = time.perf_counter() - t0
    exc = res.exception
    uncaught = None
    if exc is not None and not isinstance(exc, SystemExit):
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        uncaught = {"type": type(exc).__name__, "message": str(exc)[:300], "traceback": "".join(tb)[-4000:],
                    "where": _where(exc.__traceback__)}
    warn_text = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, None) for w in caught)
    return {"exit": res.exit_code, "stdout": res.stdout, "stderr": res.stderr, "native_out": native.get(1, ""),
            "native_err": native.get(2, ""), "warnings": warn_text, "uncaught": uncaught, "seconds": seconds}


def _where(tb) -> str | None:
    """The deepest onnxforge frame of a traceback: module:function:line."""
    where = None
    for fs in traceback.extract_tb(tb):
        p = Path(fs.filename)
        if "onnxforge" in p.parts and "tests" not in p.parts:
            rel = Path(*p.parts[p.parts.index("onnxforge"):])
            where = f"{rel}:{fs.name}:{fs.lineno}"
    return where


def _debug_where(argv: list[str], prep: Prepared, scratch: Path) -> str | None:
    """Rerun an exit-3 case with --debug (in a scratch copy of its folders) for the frame that raised."""
    d = scratch / "debug"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(prep.inputs, d / "in", symlinks=True)
    (d / "out").mkdir()
    (d / "tmp").mkdir()
    mapped = [a.replace(str(prep.inputs), str(d / "in")).replace(str(prep.out), str(d / "out")) for a in argv]
    res = invoke([*mapped, "--debug"], d / "out", d / "tmp", scratch)
    text = res["stderr"]
    frames = re.findall(r"(onnxforge/[\w/]+\.py):(\d+) in (\w+)", text)  # rich tracebacks
    frames += [(f, ln, fn) for f, ln, fn in re.findall(r'File "[^"]*?/(onnxforge/[\w/]+\.py)", line (\d+), in (\w+)',
                                                         text)]
    shutil.rmtree(d, ignore_errors=True)
    if frames:
        f, ln, fn = frames[-1]
        return f"{f}:{fn}:{ln}"
    return None


# ====================================================================== holding it to the contract


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def _is_temp(name: str) -> bool:
    return name in TEMP_NAMES or bool(_TEMP_RE.match(name))


def check(case: Case, prep: Prepared, res: dict, before: dict[str, str]) -> list[dict[str, str]]:
    fails: list[dict[str, str]] = []

    def fail(kind: str, message: str) -> None:
        fails.append({"kind": kind, "message": message[:600]})

    code = res["exit"]
    err_lines = _lines(res["stderr"])
    first = next((ln for ln in err_lines if ln.startswith(ERROR_PREFIXES)), err_lines[0] if err_lines else "")
    if res["uncaught"]:
        u = res["uncaught"]
        fail("uncaught", f"{u['type']}: {u['message']} (at {u['where']})")
    elif code == 3:
        fail("exit3", first)
    elif code not in (0, 1, 2):
        fail("exit-code", f"exit {code}: {first}")
    for stream in ("stdout", "stderr", "native_err", "native_out"):
        if "Traceback (most recent call last)" in res[stream]:
            fail("traceback", f"traceback on {stream}: {_lines(res[stream])[-1] if _lines(res[stream]) else ''}")
            break
    noise = _lines(res["native_err"]) + _lines(res["warnings"])
    if code != 0 and not res["uncaught"]:
        if prep.json:
            errs = [ln for ln in err_lines if ln.startswith(ERROR_PREFIXES)]
            if len(errs) != 1:
                fail("multi-line", f"{len(errs)} error lines on stderr: {' | '.join(err_lines)[:400]}")
        elif len(err_lines) != 1:
            fail("multi-line", f"{len(err_lines)} lines on stderr: {' | '.join(err_lines)[:400]}")
        if noise:
            fail("stderr-noise", f"{first[:120]} + {len(noise)} more line(s): {' | '.join(noise)[:300]}")
    if _lines(res["native_out"]):
        fail("stderr-noise", f"native output on stdout: {' | '.join(_lines(res['native_out']))[:300]}")
    if prep.json and not res["uncaught"]:
        try:
            doc = json.loads(res["stdout"])
        except json.JSONDecodeError as e:
            fail("json", f"--json stdout is not one JSON document ({e}): {res['stdout'][:200]!r}")
        else:
            if code != 0 and (not isinstance(doc, dict) or doc.get("exit_code") != code or doc.get("ok") is not False
                              or "\n" in str(doc.get("error", ""))):
                fail("json", f"--json error document disagrees with exit {code}: {str(doc)[:200]}")
    # ---- files
    after = _snapshot(prep.inputs)
    changed = [k for k, v in before.items() if after.get(k) != v]
    if changed:
        fail("input-modified", f"changed or removed: {', '.join(changed[:5])}")
    added = [k for k in after if k not in before]
    temp_in = [k for k in added if any(_is_temp(part) for part in Path(k).parts)]
    if temp_in or (added and code != 0):
        fail("input-modified", f"new files beside the inputs: {', '.join((temp_in or added)[:5])}")
    now = _snapshot(prep.out)
    clobbered = [k for k, v in prep.existing.items() if now.get(k) != v]
    if code != 0 and clobbered:
        fail("residue", f"exit {code} but the file already at the output path changed or went: {clobbered[0]}")
    out_files = sorted(k for k in now if not (k in prep.existing and now[k] == prep.existing[k]))
    temps = [f for f in out_files if any(_is_temp(part) for part in Path(f).parts)]
    if temps:
        fail("residue", f"temporary files left: {', '.join(temps[:5])}")
    if case.command in READ_ONLY and out_files:
        fail("residue", f"a read-only command wrote: {', '.join(out_files[:5])}")
    elif code != 0 and case.command != "run" and out_files:
        fail("residue", f"left after exit {code}: {', '.join(out_files[:5])}")
    elif code != 0 and case.command == "run" and out_files:
        fail_run = _run_residue(prep, code)
        if fail_run:
            fail("residue", fail_run)
    if code == 0 and prep.output is not None and not prep.output.is_file():
        fail("missing-output", f"exit 0 but {prep.output.name} was not written")
    elif code == 0 and prep.output is not None:
        bad = _unusable(prep.output)
        if bad:
            fail("bad-output", f"exit 0 but {prep.output.name} {bad}")
    leaked = sorted(str(p.relative_to(prep.tmp)) for p in prep.tmp.rglob("*") if p.relative_to(prep.tmp).parts
                    not in TMP_KNOWN)
    if leaked:
        fail("tmp-leak", f"left in TMPDIR: {', '.join(leaked[:5])}")
    return fails


def _unusable(path: Path) -> str | None:
    """Why a written output cannot be used (an .onnx that fails the full checker, a table that does not read)."""
    try:
        if path.suffix == ".onnx":
            import onnx

            onnx.checker.check_model(str(path), full_check=True)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                for k in z.files:
                    z[k]
        elif path.suffix == ".csv":
            import pandas as pd

            pd.read_csv(path)
        elif path.suffix == ".parquet":
            import pandas as pd

            pd.read_parquet(path)
    except Exception as e:
        return f"does not load: {type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
    return None


def _run_residue(prep: Prepared, code: int) -> str | None:
    """A failed run keeps its manifest and the stages that passed; a failed, errored or skipped stage keeps no
    model. A run refused before its first stage (no manifest) leaves nothing."""
    runs = prep.run_path
    manifests = list(runs.glob("*/manifest.json")) if runs and runs.is_dir() else []
    if not manifests:
        left = sorted(str(p.relative_to(prep.out)) for p in prep.out.rglob("*") if p.is_file())
        return f"left after exit {code} (no manifest): {', '.join(left[:5])}" if left else None
    for mpath in manifests:
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, ValueError) as e:
            return f"unreadable manifest after exit {code}: {e}"
        for st in manifest.get("stages", []):
            if st.get("verdict") in ("fail", "error", "skip"):
                models = sorted(str(p.relative_to(prep.out)) for p in (mpath.parent / st.get("dir", "?")).glob("*.onnx"))
                if models:
                    return f"stage {st.get('name')} ({st.get('verdict')}) left {', '.join(models[:3])}"
    return None


GATED = {"validate", "optimize", "quantize", "predict", "run"}


def _gate_refuses(model: Path, scratch: Path) -> str | None:
    """`inspect`'s verdict on a model (it reads through the admission gate): its error line if it refuses it."""
    d = scratch / "gate"
    shutil.rmtree(d, ignore_errors=True)
    (d / "out").mkdir(parents=True)
    (d / "tmp").mkdir()
    res = invoke(["inspect", str(model)], d / "out", d / "tmp", scratch)
    shutil.rmtree(d, ignore_errors=True)
    return next(iter(_lines(res["stderr"])), "") if res["exit"] == 2 else None


_FIX_WORDS = re.compile(r"[:;,(] ?(?:list|use|give|set|fix|check|save|choose|add|drop|point|rename|remove|pass|"
                        r"re-export|write|map|install|pip install|raise|convert|cast|impute)\b")


def _hint(first: str) -> bool:
    """Does an exit-2 line name a fix? (' — ' then advice, a 'did you mean', or an imperative after a colon.)"""
    return " — " in first or "did you mean" in first or bool(_FIX_WORDS.search(first))


def run_case(case: Case, root: Path, keep: bool = False) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    scratch = root / f".scratch-{os.getpid()}"  # one per worker: two workers share `root`
    scratch.mkdir(exist_ok=True)
    out: dict[str, Any] = {"id": case.id, "seed": case.seed, "command": case.command, "mutation": case.mutation}
    try:
        prep = prepare(case, root)
    except Exception as e:
        out.update(exit=None, seconds=0.0, failures=[{"kind": "harness", "message": f"prepare: {type(e).__name__}: "
                                                      f"{e} @ {traceback.extract_tb(e.__traceback__)[-1]}"}])
        return out
    before = _snapshot(prep.inputs)
    res = invoke(prep.argv, prep.out, prep.tmp, scratch)
    fails = check(case, prep, res, before)
    model = prep.inputs / "model.onnx"
    if (case.mutation.startswith("model.") and case.command in GATED and res["exit"] in (0, 1) and model.is_file()):
        refused = _gate_refuses(model, scratch)
        if refused:
            fails.append({"kind": "gate-bypass", "message": f"exit {res['exit']} on a model the admission gate "
                                                            f"(`onnxforge inspect`) refuses: {refused[:400]}"})
    err_lines = _lines(res["stderr"])
    first = next((ln for ln in err_lines if ln.startswith(ERROR_PREFIXES)),
                 err_lines[0] if err_lines and res["exit"] != 0 else "")
    where = res["uncaught"]["where"] if res["uncaught"] else None
    if res["exit"] == 3 and not res["uncaught"]:
        with contextlib.suppress(Exception):
            where = _debug_where(prep.argv, prep, scratch)
    out.update(exit=res["exit"], seconds=round(res["seconds"], 3), base=prep.base, detail=prep.detail,
               argv=[a.replace(str(prep.dir), "<case>") for a in prep.argv], message=first[:500], where=where,
               failures=fails, hint=(_hint(first) if res["exit"] == 2 else None), folder=str(prep.dir),
               noise=len(_lines(res["native_err"]) + _lines(res["warnings"])))
    if out["noise"]:
        out["noise_sample"] = (_lines(res["native_err"]) + _lines(res["warnings"]))[0][:300]
    if res["uncaught"]:
        out["traceback"] = res["uncaught"]["traceback"]
    if fails or keep:
        out["stdout"], out["stderr"] = res["stdout"][-3000:], res["stderr"][-3000:]
        out["native_err"], out["warnings"] = res["native_err"][-2000:], res["warnings"][-2000:]
    if not keep and not fails:
        shutil.rmtree(prep.dir, ignore_errors=True)
    return out


# ====================================================================== the worker process and its driver


def _limit_memory() -> None:
    """A case may not take the shared machine's memory: cap the worker's address space (FUZZ_MEM_GB, default 8)."""
    import resource

    gb = float(os.environ.get("FUZZ_MEM_GB", "8"))
    if gb > 0:
        lim = int(gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))


_FAULT_LOG = None


def worker_main() -> None:
    """Serve cases over stdin/stdout, one JSON line each way. fd 1 is the protocol: everything else is kept off it."""
    import faulthandler

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    global _FAULT_LOG
    _FAULT_LOG = os.fdopen(os.dup(2), "w")  # the log, even while a case has fd 2 redirected
    faulthandler.enable(file=_FAULT_LOG)
    _limit_memory()
    for line in sys.stdin:
        req = json.loads(line)
        case = Case(*req["case"])
        sys.__stderr__.write(f"--- case {case.id}\n")
        sys.__stderr__.flush()
        try:
            res = run_case(case, Path(req["root"]), keep=req.get("keep", False))
        except BaseException as e:  # the harness, not onnxforge
            res = {"id": case.id, "seed": case.seed, "command": case.command, "mutation": case.mutation,
                   "exit": None, "seconds": 0.0,
                   "failures": [{"kind": "harness", "message": f"{type(e).__name__}: {e}"}],
                   "traceback": traceback.format_exc()[-3000:]}
        proto.write(json.dumps(res, default=str) + "\n")


class Worker:
    """A `harness.py --worker` subprocess; `run(case)` sends one case and waits (at most `timeout` seconds)."""

    def __init__(self, root: Path, timeout: float = 90.0, log: Path | None = None):
        self.root, self.timeout = Path(root), timeout
        self.log = log or self.root / "worker.log"
        self.proc: subprocess.Popen | None = None

    def _start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
        self._logf = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, str(HERE / "harness.py"), "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._logf, env=env, cwd=str(self.root))

    def run(self, case: Case, keep: bool = False) -> dict[str, Any]:
        import select

        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc and self.proc.stdin and self.proc.stdout
        log_start = self.log.stat().st_size if self.log.exists() else 0
        self.proc.stdin.write((json.dumps({"case": [case.seed, case.command, case.mutation], "root": str(self.root),
                                           "keep": keep}) + "\n").encode())
        self.proc.stdin.flush()
        t0 = time.perf_counter()
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        line = self.proc.stdout.readline() if ready else b""
        if line:
            return json.loads(line)
        elapsed = time.perf_counter() - t0
        if self.proc.poll() is None:
            self.proc.kill()
            kind, msg = "timeout", f"no result after {self.timeout:.0f} s"
        else:
            kind, msg = "crash", f"the worker died (exit {self.proc.returncode}) while running the case"
        self.proc.wait()
        self.proc = None
        self._logf.close()
        tail = ""
        with contextlib.suppress(OSError), open(self.log, "rb") as f:
            f.seek(log_start)
            tail = f.read().decode("utf-8", "replace")[-3000:]
        keep_dir = self.root / case.id
        return {"id": case.id, "seed": case.seed, "command": case.command, "mutation": case.mutation, "exit": None,
                "seconds": round(elapsed, 3), "failures": [{"kind": kind, "message": msg}], "log": tail,
                "folder": str(keep_dir)}

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def describe(res: dict[str, Any]) -> str:
    """A failure as text with everything needed to rerun it alone."""
    lines = [f"case {res['id']} (seed {res['seed']}, command {res['command']}, mutation {res['mutation']}"
             f"{', ' + res['detail'] if res.get('detail') else ''}; base {res.get('base', '?')})",
             f"  exit {res.get('exit')}: {res.get('message', '')}"]
    for f in res.get("failures", []):
        lines.append(f"  FAIL {f['kind']}: {f['message']}")
    if res.get("where"):
        lines.append(f"  raised at {res['where']}")
    if res.get("argv"):
        lines.append(f"  argv: onnxforge {' '.join(res['argv'])}")
    lines.append(f"  rerun: .venv/bin/python tests/fuzz/run_fuzz.py --case {res['id']} --keep")
    for k in ("stderr", "native_err", "warnings", "log", "traceback"):
        if res.get(k):
            lines.append(f"  --- {k}:\n" + "\n".join("    " + x for x in str(res[k]).strip().splitlines()[-25:]))
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        worker_main()
    else:
        sys.exit("harness.py is driven by run_fuzz.py or tests/fuzz/test_fuzz.py (--worker)")
