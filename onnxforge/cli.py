"""The command line: parse → config → pipeline/stage → render. Imports no ML framework (checked in tests)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from onnxforge import __version__

HELP = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  context_settings=HELP,
                  help="onnxforge: convert, validate, quantize, optimize and report ONNX artifacts.\n\n"
                       "Exit codes: 0 ok · 1 a check failed · 2 bad input · 3 internal error.\n\n"
                       "--json: stdout holds one JSON document {ok, exit_code, command, result, warnings[, error]} "
                       "(schema: onnxforge config schema --envelope).")
config_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, context_settings=HELP,
                         help="The pipeline config: its JSON Schema, and checking a file.")
app.add_typer(config_app, name="config")

JsonOpt = Annotated[bool, typer.Option("--json", help="one JSON document on stdout {ok, exit_code, command, "
                                                      "result, warnings[, error]}; human text on stderr")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="show tracebacks")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="pipeline YAML (stage options, data, source)")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="stage option key=value (YAML value); repeatable")]
OutOpt = Annotated[Path | None, typer.Option("--output", "-o", help="where to write the resulting .onnx")]
DataOpt = Annotated[Path | None, typer.Option("--data", help="data file: .npy .npz .csv .parquet")]
ShapeOpt = Annotated[list[str] | None, typer.Option(
    "--shape", help="NAME=d0,d1,... the shape of an input the model leaves symbolic (dim 0 of a batched input is "
                    "the rows); repeatable")]
ValueOpt = Annotated[list[str] | None, typer.Option(
    "--value", help="NAME=V a fixed value for a synthesized input, e.g. a sample rate; repeatable")]
ProvidersOpt = Annotated[list[str] | None, typer.Option(
    "--providers", help="onnxruntime execution providers in order, comma list or repeatable (cuda, tensorrt, "
                        "openvino, cpu or full names); one not installed is exit 2 unless --allow-fallback")]
FallbackOpt = Annotated[bool, typer.Option(
    "--allow-fallback", help="run on the next installed provider when one asked for is missing (recorded)")]
RemeasureOpt = Annotated[bool, typer.Option("--remeasure", help="re-time decisions and rewrite the lock")]
LockedOpt = Annotated[bool, typer.Option(
    "--locked", help="fail (exit 1) if a recorded decision would have to be re-measured; for CI")]
RequireFasterOpt = Annotated[bool, typer.Option(
    "--require-faster", help="fail (exit 1) when the result is measurably slower than its input "
                             "(sets the stage option require_faster: true)")]


def _emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------ the exit-code contract and the JSON envelope


def command(fn=None, *, name: str | None = None):
    """Map the exit-code contract onto every command (no traceback without --debug) and, under --json, print
    the one envelope (onnxforge.envelope) on stdout. A command returns its result object and prints its human
    text; this wrapper renders the result, the error and the warnings."""
    if fn is None:
        return functools.partial(command, name=name)
    cmd_name = name or fn.__name__

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug, as_json = kwargs.get("debug", False), kwargs.get("as_json", False)
        if not as_json:
            code, _, _ = _guarded(fn, args, kwargs, debug)
        else:
            import warnings

            from onnxforge.envelope import dumps, envelope, warning_line

            with warnings.catch_warnings(record=True) as caught, _stdout_to_stderr():
                # onnxforge's own warnings are part of the result: PYTHONWARNINGS=ignore hides only third parties'
                warnings.filterwarnings("always", module=r"onnxforge(\.|$)")
                code, result, error = _guarded(fn, args, kwargs, debug)
            doc = envelope(cmd_name, code, result, error, [warning_line(w) for w in caught])
            sys.stdout.write(dumps(doc) + "\n")
            sys.stdout.flush()
        if code:
            raise typer.Exit(code)

    return wrapper


def _guarded(fn, args, kwargs, debug: bool) -> tuple[int, Any, str | None]:
    """(exit code, result object, one-line error) of running a command body; the error line goes to stderr."""
    from rich.markup import escape

    from onnxforge.errors import CheckFailed, UserError, one_line

    err = _stderr()
    try:
        _model_not_a_folder(kwargs.get("model"), fn.__name__)
        return 0, fn(*args, **kwargs), None
    except typer.Exit as e:
        return e.exit_code, None, (None if e.exit_code == 0 else f"exit {e.exit_code}")
    except CheckFailed as e:
        if debug:
            err.print_exception()
        err.print(f"[bold red]check failed:[/bold red] {escape(one_line(e))}", soft_wrap=True)
        return 1, e.result, one_line(e)
    except UserError as e:
        if debug:
            err.print_exception()
        err.print(f"[bold red]error:[/bold red] {escape(one_line(e))}", soft_wrap=True)
        return 2, None, one_line(e)
    except KeyboardInterrupt:
        return 130, None, "interrupted"
    except Exception as e:  # a bug in onnxforge or a framework: one line, exit 3
        if debug:
            err.print_exception()
        msg = one_line(f"{type(e).__name__}: {e}")[:400]
        err.print(f"[bold red]internal error:[/bold red] {escape(msg)} — rerun with --debug for the traceback",
                  soft_wrap=True)
        return 3, None, msg


def _model_not_a_folder(model: Any, command_name: str) -> None:
    """Every MODEL argument (and convert's --model) is a file: a folder there was reported as 'model not found',
    which it is not."""
    if isinstance(model, Path) and model.is_dir():
        from onnxforge.errors import UserError

        where = "" if command_name == "convert" else " (a run's models are RUN/NN-<stage>/model.onnx)"
        raise UserError(f"{model} is a folder, not a model file — give the model file itself{where}")


def _flush_all() -> None:
    for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            s.flush()
    with contextlib.suppress(Exception):  # C stdio buffers (native libraries' printf)
        import ctypes

        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def _stdout_to_stderr():
    """While a --json command runs, whatever writes to stdout — print(), progress bars, rich, native code
    (TensorFlow, torch export, skl2onnx) writing to file descriptor 1 — lands on stderr; the envelope is then
    the only thing on the real stdout."""
    _flush_all()
    saved = None
    with contextlib.suppress(OSError, ValueError):
        saved = os.dup(1)
        os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _flush_all()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


class _JsonCommand(TyperCommand):
    """A usage error (unknown option, bad value, missing argument) still answers --json with one envelope."""

    def make_context(self, info_name, args, parent=None, **extra):
        wants_json = "--json" in args  # before parsing: it consumes the list
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except typer.TyperException as e:
            if wants_json:
                from onnxforge.envelope import dumps, envelope

                names = [info_name]
                while parent is not None and parent.parent is not None:
                    names.insert(0, parent.info_name)
                    parent = parent.parent
                code = getattr(e, "exit_code", 2)
                sys.stdout.write(dumps(envelope(" ".join(names), code, None, e.format_message())) + "\n")
            raise


_PREFIX: dict[int, str] = {id(config_app): "config "}


def _cmd(group: typer.Typer, name: str):
    """Register a command on `group` under `name`, wrapped by `command`."""

    def deco(fn):
        return group.command(name, cls=_JsonCommand)(command(fn, name=_PREFIX.get(id(group), "") + name))

    return deco


def _lock_mode(remeasure: bool, locked: bool) -> str:
    from onnxforge.errors import UserError

    if remeasure and locked:
        raise UserError("--remeasure and --locked contradict each other — give one (--locked in CI, --remeasure to "
                        "re-time and rewrite the lock)")
    return "remeasure" if remeasure else "locked" if locked else "use"


def _stderr():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _out(as_json: bool):
    from rich.console import Console

    con = Console(stderr=as_json, highlight=False)
    if not con.is_terminal:  # logs and CI: do not squeeze tables into 80 columns
        con.width = max(con.width, 140)
    return con


def _version_cb(value: bool):
    if value:
        print(f"onnxforge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version_cb, is_eager=True)] = False):
    pass


# ------------------------------------------------------------------ pipeline


@_cmd(app, "run")
def run(config: Annotated[Path, typer.Argument(help="pipeline YAML")],
        force: Annotated[bool, typer.Option("--force", help="rerun stages even when cached")] = False,
        until: Annotated[str | None, typer.Option(help="stop after this stage")] = None,
        run_dir: Annotated[Path | None, typer.Option(
            "--run-dir", help="parent folder of the run folder (overrides the config's run_dir; may be anywhere)")] = None,
        remeasure: RemeasureOpt = False, locked: LockedOpt = False,
        as_json: JsonOpt = False, debug: DebugOpt = False):
    """Run every stage the config lists, into run_dir/NAME/ with a manifest.json."""
    from onnxforge.config import load_config
    from onnxforge.errors import CheckFailed
    from onnxforge.pipeline import run_pipeline

    lock = _lock_mode(remeasure, locked)
    cfg = load_config(config, run_dir=run_dir)
    con = _out(as_json)
    try:
        manifest = run_pipeline(cfg, force=force, until=until, console=con, lock=lock)
    except CheckFailed as e:
        _print_run(e.result, cfg, con)
        raise
    _print_run(manifest, cfg, con)
    return manifest


def _print_run(manifest: dict | None, cfg, con) -> None:
    if not manifest:
        return
    from rich.table import Table

    t = Table(title=f"run {manifest['name']} → {cfg.run_path}")
    for c in ("stage", "status", "verdict", "wall s", "output"):
        t.add_column(c)
    for s in manifest["stages"]:
        color = {"pass": "green", "fail": "red", "skip": "dim"}.get(s.get("verdict"), "white")
        t.add_row(s["name"], s.get("status", ""), f"[{color}]{s.get('verdict', '')}[/{color}]",
                  f"{s.get('wall_s', 0):.2f}", s.get("model") or ", ".join(s.get("outputs", {})) or "")
    con.print(t)
    con.print(f"manifest: {cfg.run_path / 'manifest.json'}")


# ------------------------------------------------------------------ stages


def _stage(stage: str, model: Path | None, output: Path | None, config: Path | None, opts: dict, sets, as_json,
           data: dict | None = None, source: dict | None = None, top: dict | None = None,
           lock: str = "use") -> dict:
    """Run one stage alone; its result is {stage, verdict, model, summary} (onnxforge.envelope.stage_result),
    also on a failed check."""
    from onnxforge.envelope import stage_result, stage_result_from
    from onnxforge.errors import CheckFailed
    from onnxforge.standalone import build_config, parse_sets, run_alone

    opts = {k: v for k, v in opts.items() if v is not None} | parse_sets(sets)
    cfg = build_config(stage, model, config, opts, data={k: v for k, v in (data or {}).items() if v is not None},
                       source=source, top=top)
    con = _out(as_json)
    try:
        res, final = run_alone(stage, cfg, model, output, console=con, lock=lock)
    except CheckFailed as e:
        e.result = stage_result_from(stage, e.result)
        raise
    summary = res.summary if hasattr(res, "summary") else res.get("summary", {})
    verdict = res.verdict if hasattr(res, "verdict") else res.get("verdict")
    if summary.get("synthesized_inputs"):
        from onnxforge.inputspec import line

        con.print(f"synthesized inputs: {line(summary['synthesized_inputs'])}", markup=False, soft_wrap=True)
    if final:
        con.print(f"[green]wrote[/green] {final}")
    return stage_result(stage, verdict, final, summary)


def _data_flags(data: Path | None, labels: str | None = None, synthetic: bool = False, rows: int | None = None):
    return {"path": str(data.resolve()) if data else None, "labels": labels, "synthetic": synthetic or None,
            "rows": rows}


def _input_flags(shapes: list[str] | None, values: list[str] | None) -> dict:
    """--shape NAME=d0,d1 and --value NAME=V → the config's input_shapes / input_values."""
    from onnxforge.errors import UserError

    out: dict[str, dict] = {}
    for flag, items, key in (("--shape", shapes, "input_shapes"), ("--value", values, "input_values")):
        for item in items or []:
            name, sep, raw = item.partition("=")
            try:
                if not sep or not name.strip() or not raw.strip():
                    raise ValueError
                val = [int(x) for x in raw.split(",")] if flag == "--shape" else float(raw)
            except ValueError:
                example = "images=1,3,320,320" if flag == "--shape" else "sr=16000"
                raise UserError(f"{flag} {item!r}: expected NAME={'d0,d1,...' if flag == '--shape' else 'V'}, "
                                f"e.g. {flag} {example}") from None
            out.setdefault(key, {})[name.strip()] = val
    return out


def _parse_input(spec: str) -> dict:
    """name:dtype:dim,dim  (dims are ints or names for dynamic dims)."""
    parts = spec.split(":")
    d: dict[str, Any] = {"name": parts[0]}
    if len(parts) > 1 and parts[1]:
        d["dtype"] = parts[1]
    if len(parts) > 2 and parts[2]:
        d["shape"] = [int(x) if x.lstrip("-").isdigit() else x for x in parts[2].split(",")]
    return d


@_cmd(app, "convert")
def convert(config: ConfigOpt = None,
            framework: Annotated[str | None, typer.Option(help="torch | keras | sklearn | xgboost | lightgbm | "
                                                               "pymc | onnx")] = None,
            model: Annotated[Path | None, typer.Option("--model", "-m", help="the source model file")] = None,
            inputs: Annotated[list[str] | None, typer.Option("--input", "-i",
                                                             help="input spec name:dtype:dims, repeatable")] = None,
            source_opt: Annotated[list[str] | None, typer.Option("--source-opt", help="source.key=value")] = None,
            opset: Annotated[int | None, typer.Option(help="target opset")] = None,
            output: OutOpt = None, sets: SetOpt = None, remeasure: RemeasureOpt = False, locked: LockedOpt = False,
            as_json: JsonOpt = False, debug: DebugOpt = False):
    """Export a source model to ONNX (checked, stamped with provenance metadata)."""
    from onnxforge.errors import UserError
    from onnxforge.standalone import parse_sets

    lock = _lock_mode(remeasure, locked)
    if output is None:
        raise UserError("convert: give -o/--output PATH.onnx")
    source: dict[str, Any] = parse_sets(source_opt)
    if framework:
        source["framework"] = framework
    if model:
        source["path"] = str(model.resolve())
    top: dict[str, Any] = {}
    if config is None:
        if not framework:
            raise UserError("convert: give --framework and --model, or --config FILE")
        top["name"] = (model.stem if model else framework)
    if inputs:
        top["inputs"] = [_parse_input(s) for s in inputs]
    return _stage("convert", None, output, config, {"opset": opset}, sets, as_json, source=source, top=top,
                  lock=lock)


@_cmd(app, "validate")
def validate(model: Annotated[Path | None, typer.Argument(help="the .onnx to check")] = None,
             config: ConfigOpt = None,
             against: Annotated[str | None, typer.Option(help="source | previous | onnx-reference | REF.onnx")] = None,
             data: DataOpt = None,
             labels: Annotated[str | None, typer.Option(help="labels key/column in the data file")] = None,
             rtol: Annotated[float | None, typer.Option()] = None,
             atol: Annotated[float | None, typer.Option()] = None,
             synthetic: Annotated[bool, typer.Option(help="allow inputs synthesized from the input spec")] = False,
             shape: ShapeOpt = None, value: ValueOpt = None, sets: SetOpt = None,
             providers: ProvidersOpt = None, allow_fallback: FallbackOpt = False,
             remeasure: RemeasureOpt = False, locked: LockedOpt = False,
             as_json: JsonOpt = False, debug: DebugOpt = False):
    """Check a model: onnx.checker, shapes, a session, then outputs against a reference. Exit 1 on mismatch."""
    from onnxforge.runtime import from_flags

    with from_flags(providers, allow_fallback) as rt:
        return _stage("validate", model, None, config, {"against": against, "rtol": rtol, "atol": atol}, sets,
                      as_json, data=_data_flags(data, labels, synthetic), top=_input_flags(shape, value) | rt,
                      lock=_lock_mode(remeasure, locked))


@_cmd(app, "quantize")
def quantize(model: Annotated[Path | None, typer.Argument(help="the float .onnx")] = None,
             output: OutOpt = None, config: ConfigOpt = None,
             mode: Annotated[str | None, typer.Option(help="auto (default) | static | dynamic | fp16 | int4")] = None,
             data: DataOpt = None,
             labels: Annotated[str | None, typer.Option(help="labels key/column (for accuracy budgets)")] = None,
             max_accuracy_drop: Annotated[float | None, typer.Option(help="e.g. 0.005 = half a point")] = None,
             shape: ShapeOpt = None, value: ValueOpt = None, sets: SetOpt = None,
             providers: ProvidersOpt = None, allow_fallback: FallbackOpt = False,
             require_faster: RequireFasterOpt = False, remeasure: RemeasureOpt = False, locked: LockedOpt = False,
             as_json: JsonOpt = False, debug: DebugOpt = False):
    """INT8 (dynamic/static), INT4 weight-only (MatMulNBits) or FP16, under an accuracy budget that is never
    exceeded."""
    from onnxforge.runtime import from_flags

    with from_flags(providers, allow_fallback) as rt:
        return _stage("quantize", model, output, config, {"mode": mode, "max_accuracy_drop": max_accuracy_drop,
                                                          "require_faster": require_faster or None}, sets,
                      as_json, data=_data_flags(data, labels), top=_input_flags(shape, value) | rt,
                      lock=_lock_mode(remeasure, locked))


@_cmd(app, "optimize")
def optimize(model: Annotated[Path | None, typer.Argument(help="the .onnx to optimize")] = None,
             output: OutOpt = None, config: ConfigOpt = None,
             level: Annotated[str | None, typer.Option(help="none | basic | extended | all")] = None,
             portable: Annotated[bool | None, typer.Option("--portable/--no-portable",
                                                           help="standard ONNX ops only")] = None,
             data: DataOpt = None,
             synthetic: Annotated[bool, typer.Option(help="compare passes on inputs synthesized from the input "
                                                          "spec when no data is given")] = False,
             shape: ShapeOpt = None, value: ValueOpt = None, sets: SetOpt = None,
             providers: ProvidersOpt = None, allow_fallback: FallbackOpt = False,
             require_faster: RequireFasterOpt = False, remeasure: RemeasureOpt = False, locked: LockedOpt = False,
             as_json: JsonOpt = False, debug: DebugOpt = False):
    """Graph optimization (ORT levels, simplification, transformer fusion); each pass checked numerically."""
    from onnxforge.runtime import from_flags

    with from_flags(providers, allow_fallback) as rt:
        return _stage("optimize", model, output, config, {"level": level, "portable": portable,
                                                          "allow_synthetic": synthetic or None,
                                                          "require_faster": require_faster or None}, sets, as_json,
                      data=_data_flags(data), top=_input_flags(shape, value) | rt,
                      lock=_lock_mode(remeasure, locked))


@_cmd(app, "compile")
def compile_cmd(model: Annotated[Path, typer.Argument(help="the .onnx to compile")],
                target: Annotated[str | None, typer.Option(
                    "--target", "-t", help="openvino | ort-mobile (default: the config's compile.target)")] = None,
                output: Annotated[Path | None, typer.Option(
                    "--output", "-o", help="the folder to write the target's files into")] = None,
                config: ConfigOpt = None, data: DataOpt = None,
                synthetic: Annotated[bool, typer.Option(help="check on inputs synthesized from the input spec "
                                                             "when no data is given")] = False,
                weights: Annotated[str | None, typer.Option(help="openvino: fp32 | fp16 | int8")] = None,
                rtol: Annotated[float | None, typer.Option()] = None,
                atol: Annotated[float | None, typer.Option()] = None,
                shape: ShapeOpt = None, value: ValueOpt = None, sets: SetOpt = None,
                providers: ProvidersOpt = None, allow_fallback: FallbackOpt = False,
                as_json: JsonOpt = False, debug: DebugOpt = False):
    """Compile a model for a hardware target (OpenVINO IR, ORT mobile .ort), check its outputs against
    onnxruntime on the ONNX model and time both in the same run. Exit 1 on mismatch; nothing is left behind."""
    from onnxforge.errors import UserError
    from onnxforge.pipeline import StageContext
    from onnxforge.runtime import from_flags
    from onnxforge.stages.compile import compile_model
    from onnxforge.standalone import build_config, parse_sets

    if output is None:
        raise UserError("compile: give -o/--output FOLDER for the target's files")
    if not model.is_file():
        raise UserError(f"model not found: {model} — check the path")
    if output.resolve() == model.resolve() or output.resolve() in model.resolve().parents:
        raise UserError(f"the output folder {output} holds the input model — choose another -o")
    opts: dict[str, Any] = {"target": target, "rtol": rtol, "atol": atol}
    if target is None and config is None:
        raise UserError("compile: give --target openvino | ort-mobile (or --config with a compile stage's target)")
    if weights is not None:
        if target not in ("openvino", None):  # it was ignored: ort-mobile stores the weights as the model holds them
            raise UserError(f"--weights is an openvino option (fp32 | fp16 | int8); target {target} keeps the "
                            "model's weights as they are — drop --weights, or use --target openvino")
        opts["openvino"] = {"weights": weights}
    opts = {k: v for k, v in opts.items() if v is not None} | parse_sets(sets)
    with from_flags(providers, allow_fallback) as rt:
        cfg = build_config("compile", model, config, opts,
                           data={k: v for k, v in _data_flags(data, None, synthetic).items() if v is not None},
                           top=_input_flags(shape, value) | rt)
        if cfg.data.path is None and not cfg.data.synthetic:  # the config-key wording of ctx.feeds fits no flag
            raise UserError("compile: no data to check the target against — give --data FILE, or --synthetic to "
                            "check on inputs synthesized from the input spec")
        ctx = StageContext(cfg, "compile", output.resolve().parent, model.resolve(), model.resolve(), {}, _out(as_json))
        feeds, provenance = ctx.feeds("eval")
        res = compile_model(ctx, cfg.stages.compile, output, feeds, provenance)
    target = cfg.stages.compile.target
    con = _out(as_json)
    for b, v in res["latency"].items():
        sp = v["speedup"]
        con.print(f"{b}: onnxruntime {v['onnxruntime_p50_ms']:.3f} ms, {target} {v[f'{target}_p50_ms']:.3f} ms "
                  f"({sp['ratio']:.2f}× [{sp['interval'][0]:.2f}–{sp['interval'][1]:.2f}], same run)")
    con.print(f"[green]wrote[/green] {output}: {', '.join(res['files'])}")
    return res


# ------------------------------------------------------------------ artifacts


@_cmd(app, "inspect")
def inspect(model: Annotated[Path, typer.Argument(help="an .onnx file")], as_json: JsonOpt = False,
            debug: DebugOpt = False):
    """IO, opsets, op histogram, parameters, sizes and metadata of an ONNX file."""
    from rich.table import Table

    from onnxforge.summary import inspect_file

    info = inspect_file(model)
    if as_json:
        return info
    con = _out(False)
    con.print(f"[bold]{model}[/bold]  {info['file_bytes']:,} bytes · IR {info['ir_version']} · "
              f"opset {info['opset']} · {info['producer']}")
    t = Table("io", "name", "dtype", "shape")
    for kind in ("inputs", "outputs"):
        for io in info[kind]:
            t.add_row(kind[:-1], io["name"], str(io["dtype"]), str(io["shape"]))
    con.print(t)
    con.print(f"nodes {info['nodes']:,} · params {info['params']:,} · initializers {info['initializer_bytes']:,} B")
    ops = Table("op", "count")
    for op, n in info["ops"].items():
        ops.add_row(op, str(n))
    con.print(ops)
    if info["metadata"]:
        meta = Table("metadata", "value")
        for k, v in info["metadata"].items():
            meta.add_row(k, v if len(v) < 120 else v[:117] + "...")
        con.print(meta)
    return info


@_cmd(app, "predict")
def predict(model: Annotated[Path, typer.Argument(help="an .onnx file")],
            input: Annotated[Path, typer.Option(
                "--input", help="a .csv .parquet .npz .npy file; for a folder --output also a folder or a glob "
                "of .parquet/.csv files")],
            output: Annotated[Path, typer.Option(
                "--output", "-o", help="a .parquet .csv .npz file, or a folder (no suffix, or an existing "
                "folder): partitioned parquet, resumable")],
            chunk_rows: Annotated[int, typer.Option(help="rows per onnxruntime call (and per output part)")] = 65536,
            threads: Annotated[int | None, typer.Option(
                help="intra-op threads (per worker; default: cores / workers)")] = None,
            seed: Annotated[int | None, typer.Option(help="seed for stochastic artifacts")] = None,
            columns: Annotated[list[str] | None, typer.Option(
                "--columns", metavar="INPUT=COLS",
                help="INPUT=COL1,COL2,...: table columns stacked into that input; repeatable")] = None,
            allow_nan: Annotated[bool, typer.Option(
                "--allow-nan", help="let NaN/±inf reach a model not stamped as handling missing values")] = False,
            engine: Annotated[str | None, typer.Option(
                help="local (this process + forked workers, the default), dask or ray; folder --output only")] = None,
            workers: Annotated[int | None, typer.Option(
                help="worker processes (default: the CPUs this process may use); folder --output only")] = None,
            scheduler: Annotated[str | None, typer.Option(
                help="a running cluster instead of a local one: Dask tcp://host:8786, Ray ray://host:10001 or auto")] = None,
            keep: Annotated[str | None, typer.Option(
                metavar="COL,...", help="input columns copied beside the predictions (an id to join on)")] = None,
            overwrite: Annotated[bool, typer.Option(
                "--overwrite", help="redo every part of a folder --output instead of resuming")] = False,
            providers: ProvidersOpt = None, allow_fallback: FallbackOpt = False,
            as_json: JsonOpt = False, debug: DebugOpt = False):
    """Score data offline with the same artifact that serves online: one file in chunks, or a dataset of any size
    into partitioned parquet on every core (or a Dask cluster), resuming where a stopped run left off."""
    from onnxforge.runtime import from_flags

    with from_flags(providers, allow_fallback):  # every session, the workers' too, asks for them
        return _predict(model, input, output, chunk_rows, threads, seed, columns, allow_nan, engine, workers,
                        scheduler, keep, overwrite, as_json)


def _predict(model, input, output, chunk_rows, threads, seed, columns, allow_nan, engine, workers, scheduler, keep,
             overwrite, as_json):
    from onnxforge.data import parse_columns
    from onnxforge.errors import UserError

    folder = output.is_dir() or not output.suffix
    if not folder:
        given = [f for f, v in (("--engine", engine), ("--workers", workers), ("--scheduler", scheduler),
                                ("--keep", keep), ("--overwrite", overwrite)) if v]
        if given:
            raise UserError(f"{given[0]} is for a folder --output (partitioned parquet) — give a folder, or drop "
                            f"{given[0]}")
        from onnxforge.score.files import predict_file

        res = predict_file(model, input, output, chunk_rows=chunk_rows, threads=threads, seed=seed,
                           columns=parse_columns(columns), allow_nan=allow_nan, console=_stderr())
        if not as_json:
            _out(False).print(f"[green]wrote[/green] {output} ({res['rows']:,} rows, {res['seconds']:.2f} s)")
        return res
    from onnxforge.score.offline import predict_dataset

    res = predict_dataset(model, input, output, engine=engine or "local", workers=workers, scheduler=scheduler,
                          chunk_rows=chunk_rows, keep=[k.strip() for k in keep.split(",") if k.strip()] if keep
                          else None, overwrite=overwrite, seed=seed, columns=parse_columns(columns),
                          allow_nan=allow_nan, threads=threads, console=_stderr())
    if not as_json:
        skipped = f", {res['parts_skipped']} done before" if res["parts_skipped"] else ""
        _out(False).print(f"[green]wrote[/green] {output}/ ({res['rows']:,} rows in {res['parts']} parts"
                          f"{skipped}; {res['engine']} engine, {res['workers']} worker(s) × "
                          f"{res['threads_per_worker']} thread(s), {res['seconds']:.2f} s)")
    return res


@_cmd(app, "report")
def report(targets: Annotated[list[Path], typer.Argument(help="a run folder, or one or more .onnx files")],
           out: Annotated[Path | None, typer.Option("--out", help="folder for report.{json,md,html}")] = None,
           formats: Annotated[str, typer.Option(help="comma list of json,md,html")] = "json,md,html",
           bench: Annotated[bool, typer.Option("--bench/--no-bench", help="measure latency")] = True,
           data: DataOpt = None,
           config: Annotated[Path | None, typer.Option(
               "--config", "-c", help="your pipeline YAML: its data, inputs and runtime (the run folder's own "
               "config is never read)")] = None,
           native: Annotated[bool, typer.Option(
               "--native", help="also load --config's source model as the reference (runs the code it names)")] = False,
           providers: ProvidersOpt = None, allow_fallback: FallbackOpt = False,
           as_json: JsonOpt = False, debug: DebugOpt = False):
    """Size, ops, params, validation verdicts, accuracy deltas and latency: terminal, JSON, Markdown, HTML.
    Reads a run folder without running anything it names."""
    from onnxforge.runtime import from_flags
    from onnxforge.stages.report.build import build_report

    with from_flags(providers, allow_fallback):
        return build_report(targets, out=out, formats=[f.strip() for f in formats.split(",") if f.strip()],
                            bench=bench, data=data, console=_out(as_json), config=config, native=native)


@_cmd(app, "bench")
def bench_cmd(model: Annotated[Path, typer.Argument(help="an .onnx file")],
              batch: Annotated[list[int] | None, typer.Option("--batch", help="batch sizes, repeatable")] = None,
              threads: Annotated[list[int] | None, typer.Option("--threads", help="thread counts")] = None,
              runs: Annotated[int, typer.Option(help="timed runs per setting")] = 100,
              config: ConfigOpt = None, shape: ShapeOpt = None, value: ValueOpt = None,
              providers: ProvidersOpt = None, allow_fallback: FallbackOpt = False,
              as_json: JsonOpt = False, debug: DebugOpt = False):
    """Latency percentiles and throughput of a model (and its native source when --config names it); each row
    records the execution provider that ran it."""
    from onnxforge.benchmark import bench_cli
    from onnxforge.runtime import from_flags

    with from_flags(providers, allow_fallback):
        return bench_cli(model, batches=batch or [1, 64], threads=threads or [1], runs=runs, config=config,
                         console=_out(as_json), shapes=_input_flags(shape, value))


# ------------------------------------------------------------------ serve


@_cmd(app, "serve")
def serve(target: Annotated[Path, typer.Argument(
              help="an .onnx file, or a run folder (its final artifact; every stage's artifact as a version)")],
          host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="port; 0 picks a free one (printed on stderr)")] = 8000,
          workers: Annotated[int, typer.Option(help="server processes sharing the port")] = 1,
          threads: Annotated[int | None, typer.Option(
              help="onnxruntime intra-op threads per worker (default: the process's CPU quota / workers)")] = None,
          max_batch_size: Annotated[int, typer.Option(
              help="rows stacked into one run for models with a batch axis; 0 or 1: no batching")] = 64,
          max_queue_delay_ms: Annotated[float, typer.Option(
              help="hold a short batch this long for more rows (0: batch only what queued meanwhile)")] = 0.0,
          max_queue: Annotated[int, typer.Option(help="requests waiting or running per version; more get 503")] = 256,
          max_body_bytes: Annotated[int, typer.Option(help="request body cap; larger bodies get 413")] = 16 << 20,
          name: Annotated[str | None, typer.Option(help="model name in URLs (default: the run's or file's name)")]
          = None,
          ui: Annotated[bool, typer.Option("--ui", help="add the browser playground at /ui")] = False,
          log_level: Annotated[str, typer.Option(help="server log level (access logs are INFO JSON lines)")]
          = "info",
          providers: ProvidersOpt = None, allow_fallback: FallbackOpt = False,
          as_json: JsonOpt = False, debug: DebugOpt = False):
    """Serve an artifact over HTTP until SIGTERM: Open Inference Protocol v2 (Triton/KServe clients), POST /predict
    with JSON records, /metrics, /openapi.json; --ui adds a browser playground."""
    from onnxforge.errors import UserError

    try:  # the web stack is an extra, imported only when serving
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ModuleNotFoundError as e:
        raise UserError(f"serving needs {e.name}, which is not installed — pip install 'onnxforge[serve]'") from None
    from onnxforge.serve.app import Options
    from onnxforge.serve.launch import check_options
    from onnxforge.serve.launch import serve as run_server

    check_options(port=port, workers=workers, threads=threads, max_batch_size=max_batch_size,
                  max_queue_delay_ms=max_queue_delay_ms, max_queue=max_queue, max_body_bytes=max_body_bytes)
    from onnxforge import runtime

    names = runtime.parse(providers)
    runtime.providers(runtime.Providers(names, allow_fallback) if names else None)  # exit 2 before binding
    opts = Options(str(target), name=name, threads=threads, max_batch_size=max_batch_size,
                   max_queue_delay_ms=max_queue_delay_ms, max_queue=max_queue, max_body_bytes=max_body_bytes, ui=ui,
                   providers=names, allow_fallback=allow_fallback)
    return run_server(opts, host=host, port=port, workers=workers, log_level=log_level)


# ------------------------------------------------------------------ config


@_cmd(config_app, "schema")
def config_schema(envelope: Annotated[bool, typer.Option(
                      "--envelope", help="the schema of the --json envelope every command prints, instead")] = False,
                  as_json: JsonOpt = False, debug: DebugOpt = False):
    """Print the JSON Schema of the pipeline YAML (for editors and CI linting); plain output is the schema
    itself, --json wraps it in the envelope like every command."""
    from onnxforge import envelope as env
    from onnxforge.config import json_schema

    schema = env.schema() if envelope else json_schema()
    if not as_json:
        _emit(schema)
    return schema


@_cmd(config_app, "check")
def config_check(config: Annotated[Path, typer.Argument(help="pipeline YAML")], as_json: JsonOpt = False,
                 debug: DebugOpt = False):
    """Validate a pipeline YAML without running it; list the code it would run (a config that names code is code)."""
    from onnxforge.code_trust import code_refs
    from onnxforge.config import load_config
    from onnxforge.pipeline import preflight

    cfg = load_config(config)
    preflight(cfg)  # the same checks `run` makes before it creates anything
    code = code_refs(cfg)
    result = {"name": cfg.name, "framework": cfg.source.framework, "stages": cfg.stages.order,
              "runs_code": [c.as_dict() for c in code], "trust_pickle": cfg.source.trust_pickle}
    if as_json:
        return result
    con = _out(False)
    con.print(f"[green]ok[/green] {config}: {cfg.source.framework} → {' → '.join(cfg.stages.order)}")
    for c in code:
        con.print(f"runs code: {c.field} = {c.ref} ({c.trusted_by})", soft_wrap=True, markup=False)
    if cfg.source.trust_pickle:
        con.print("loads pickles: source.trust_pickle is true")
    return result


def main() -> None:
    app()
