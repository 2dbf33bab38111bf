"""`onnxforge report`: what a person reads after a run — terminal tables, report.json (documented schema),
report.md (fits a CI comment) and one self-contained report.html with plots."""

from __future__ import annotations

from pathlib import Path

FORMATS = {"json": "report.json", "md": "report.md", "html": "report.html"}


def build_report(targets: list[Path], *, out: Path | None = None, formats: list[str] | tuple = ("json", "md", "html"),
                 bench: bool = True, data: Path | None = None, console=None, options=None, ctx=None,
                 config: Path | None = None, native: bool = False) -> dict:
    """Report on a run folder (its manifest names the artifacts) or on loose .onnx files (the first one is the
    baseline the others are compared with). Writes the requested formats into `out` and returns the report.

    A run folder is only read: no code it (or the config its manifest names) points at is run. The source model
    is the native reference only inside a live run (ctx) or when the caller passes its own `config` and
    `native=True`, since loading it runs the code that config names."""
    from onnxforge.artifact import atomic_write_json, atomic_write_text
    from onnxforge.errors import UserError
    from onnxforge.stages.report import collect
    from onnxforge.stages.report.options import ReportOptions

    opts = options or ReportOptions()
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise UserError(f"--formats: unknown {', '.join(unknown)} — choose from {', '.join(FORMATS)}")
    if not formats:  # nothing to write: a report that silently writes no file would look like success in CI
        raise UserError(f"--formats: empty — give one or more of {', '.join(FORMATS)} (e.g. --formats json,md)")
    targets = [Path(t) for t in targets]
    if not targets:
        raise UserError("report: give a run folder or one or more .onnx files")
    if out is not None:
        _check_out(Path(out))
    if data is not None and not Path(data).is_file():
        raise UserError(f"--data {data}: file not found — check the path")
    if native and config is None and ctx is None:
        raise UserError("--native needs --config CONFIG.yaml: the config whose source model to load")
    cfg = None
    if ctx is None and config is not None:
        from onnxforge.config import load_config

        cfg = load_config(config)
    if len(targets) == 1 and targets[0].is_dir():
        src = collect.from_run(targets[0], ctx)
        if out is None:  # a symlinked report/ in a foreign run folder must not redirect our writes
            out = targets[0] / "report"
            if out.is_symlink() or (out.exists() and not out.is_dir()):
                raise UserError(f"{out}: a symlink or a file, not the run's report folder — give one with --out FOLDER")
    elif any(t.is_dir() for t in targets):
        folder = next(t for t in targets if t.is_dir())
        raise UserError(f"report: {folder} is a folder — give one run folder alone, or .onnx files (not both)")
    else:
        src = collect.from_models(targets)
        out = Path(out) if out is not None else Path.cwd()
    if ctx is None:
        collect.with_config(src, cfg, native)
    out = Path(out)
    src.out = out
    report = collect.collect(src, opts, bench=bench, data=Path(data) if data else None, console=console)
    report["files"] = {f: FORMATS[f] for f in dict.fromkeys(formats)}
    out.mkdir(parents=True, exist_ok=True)
    if "json" in formats:
        atomic_write_json(out / FORMATS["json"], report)
    if "md" in formats:
        from onnxforge.stages.report.markdown import render_markdown

        atomic_write_text(out / FORMATS["md"], render_markdown(report))
    if "html" in formats:
        from onnxforge.stages.report.html_page import render_html

        atomic_write_text(out / FORMATS["html"], render_html(report, notes_out=console))
    if console is not None:
        from onnxforge.stages.report.terminal import render_terminal

        render_terminal(report, console, brief=ctx is not None)
        for f in report["files"].values():
            console.print(f"[green]wrote[/green] {out / f}")
    return report


def _check_out(out: Path) -> None:
    """--out is a folder, created if missing: a file there, or a file where one of its parents should be, is the
    user's mistake (exit 2, before anything is measured or created), not an OSError at the end."""
    from onnxforge.errors import UserError
    from onnxforge.paths import nearest_existing

    p = nearest_existing(out)
    if not p.is_dir():
        what = f"is {'a file' if p.is_file() else 'not a folder'}" if p == out else \
            f"is inside {p}, which is not a folder"
        raise UserError(f"--out {out} {what} — give a folder (it is created if missing)")


def load_schema() -> dict:
    """The JSON Schema of report.json (package data: onnxforge/schemas/report.schema.json)."""
    import json
    from importlib.resources import files

    return json.loads(files("onnxforge").joinpath("schemas/report.schema.json").read_text())
