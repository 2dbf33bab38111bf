"""Compile an ONNX artifact for a target, then hold the target's files to it: the same inputs through onnxruntime
(the reference, on the provider that really ran, recorded) and through the target's own runtime, compared output by
output at the usual tolerances; then both timed in paired rounds in the same process (ratio > 1: the target is
faster). Files are written into a scratch folder beside the destination and renamed into place only when the check
passes: a failed compile leaves nothing at the final path. The destination must be new, empty, or an earlier compile
of the same target (exactly its files): compile never deletes or replaces what it did not write, nor its inputs."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

# (rtol, atol) against onnxruntime on the same ONNX model, by what the target stores: FP32 kernels differ only in
# summation order; FP16 weights round each weight to 11 bits; INT8 weights are held to a fidelity, not equality
TOLERANCES = {"fp32": (1e-4, 1e-5), "fp16": (1e-2, 1e-2), "int8": (5e-2, 5e-2)}


def tolerance(opts) -> tuple[float, float]:
    return TOLERANCES.get(getattr(opts, "weights", "fp32"), TOLERANCES["fp32"])


def _inside(p: Path, folder: Path) -> bool:
    # realpath, not code_trust.inside's resolve(): a symlink loop given as -o must reach the refusal below
    p, folder = Path(os.path.realpath(p)), Path(os.path.realpath(folder))
    return p == folder or folder in p.parents


def check_output(dest: Path, name: str, inputs=(), where: str | None = "-o") -> None:
    """Refuse (UserError, exit 2) a destination compile could only fill by deleting or replacing what it did not
    write: one holding an input (model, data, config), a file or link, a folder holding anything but exactly the
    files of an earlier compile of target `name`, or a path under a file. `where` names the flag in the message
    (None: a run folder's stage folder, whose fix is to move the files out)."""
    from onnxforge.errors import UserError
    from onnxforge.paths import nearest_existing, shown
    from onnxforge.targets import target

    spec = target(name)
    dest = Path(dest)
    label = f"{where} {dest}" if where else str(dest)
    fix = f"choose another {where}" if where else "move them out of the run folder"
    for p in inputs:
        if p is not None and _inside(Path(p), dest):
            what = "is" if _inside(dest, Path(p)) else f"holds {shown(p, Path.cwd())},"
            raise UserError(f"{label} {what} an input of this compile — {fix} (compile never writes over its inputs)")
    if dest.is_symlink():
        raise UserError(f"{label} is a symbolic link — {fix}: a new or empty folder for the {name} files")
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{label} is a file — {fix}: a new or empty folder for the {name} files (compile never "
                        "replaces what it did not write)")
    up = nearest_existing(dest.parent)
    if not up.is_dir():
        raise UserError(f"{label}: {up} is a file, not a folder — {fix}")
    if dest.is_dir():
        names = sorted(os.listdir(dest))
        # an earlier compile wrote exactly these files, all at once (never a part of them, never a folder or link)
        ours = tuple(names) == spec.files and all((dest / n).is_file() and not (dest / n).is_symlink() for n in names)
        if names and not ours:
            other = [n for n in names if n not in spec.files] or names
            more = f" and {len(other) - 3} more" if len(other) > 3 else ""
            raise UserError(f"{label} holds other files ({', '.join(other[:3])}{more}) — "
                            + (f"{fix}: a new or empty folder" if where else fix)
                            + f" (compile never deletes what it did not write; it replaces only an earlier {name} "
                            f"compile: {', '.join(spec.files)})")


def _put(work: Path, dest: Path, names) -> None:
    """Move the finished files `names` from `work` to `dest`. A new `dest` is `work` renamed (one step). An
    existing one (empty, or an earlier compile's) stays the same folder, since a shell or a server may be in it:
    its files are set aside, the new ones renamed in, and the earlier ones put back if a move fails."""
    if not dest.exists():
        os.replace(work, dest)
        return
    old = work / ".earlier"
    old.mkdir()
    aside, placed = [], []
    try:
        for n in names:
            if (dest / n).exists():
                os.replace(dest / n, old / n)
                aside.append(n)
        for n in names:
            os.replace(work / n, dest / n)
            placed.append(n)
    except BaseException:
        for n in placed:
            (dest / n).unlink(missing_ok=True)
        for n in aside:
            os.replace(old / n, dest / n)
        raise


def compile_to(onnx_path: Path, dest: Path, name: str, opts, feeds: dict[str, np.ndarray], *,
               rtol: float | None = None, atol: float | None = None, threads: int = 1, batches=(1,),
               rounds: int = 3, seconds: float = 0.5, console=None, inputs=(),
               where: str | None = "-o") -> dict[str, Any]:
    """Build target `name` from `onnx_path` into the folder `dest`, check it and time it. Returns the summary
    (files, comparisons, latency, verdict); raises CheckFailed (exit 1) when an output is out of tolerance.
    `inputs`: files `dest` must not hold (besides `onnx_path`); see check_output. A failure leaves nothing: no
    scratch folder, no parent folder it created, an earlier compile at `dest` untouched."""
    from onnxforge import runtime, timing
    from onnxforge.benchmark import progress_bar
    from onnxforge.compare import compare
    from onnxforge.data import n_rows, take, tile_rows
    from onnxforge.errors import CheckFailed
    from onnxforge.pipeline import first_new_folder, remove_created
    from onnxforge.targets import target

    spec = target(name)
    given = Path(dest)
    check_output(given, name, [onnx_path, *inputs], where)
    dest = Path(os.path.abspath(given))  # '-o .' has no name to make a sibling scratch folder from
    d_rtol, d_atol = tolerance(opts)
    rtol, atol = (d_rtol if rtol is None else rtol), (d_atol if atol is None else atol)
    created = first_new_folder(dest.parent)  # removed again if the compile fails
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    done = False  # (`ok` below is the check's verdict)
    try:
        with progress_bar(console) as prog:
            task = prog.add_task(f"compile: {name}", total=3)
            info = spec.build(Path(onnx_path), work, opts)
            prog.advance(task)
            run = spec.load(work, opts, threads)
            sess = runtime.session(Path(onnx_path), threads=threads)
            ref = runtime.run(sess, feeds)
            got = run(feeds)
            cmp = [compare(k, ref[k], got[k], rtol, atol) if k in got else
                   {"output": k, "pass": False, "reason": "missing from the target's outputs"} for k in ref]
            prog.advance(task)
            ok = all(c["pass"] for c in cmp)
            latency = {}
            if ok:
                for b in batches:
                    f = tile_rows(take(feeds, min(b, n_rows(feeds))), b)
                    fns = {"onnxruntime": lambda f=f: sess.run(None, f), name: lambda f=f: run(f)}
                    p50 = {k: [] for k in fns}
                    for r in range(rounds):  # paired rounds, order alternating: a slow spell hits both sides
                        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                            p50[k].append(timing.measure(fns[k], runs=200, warmup=10, max_seconds=seconds,
                                                         rows=b)["p50_ms"])
                    pr = timing.paired(p50["onnxruntime"], p50[name])
                    latency[f"batch{b}"] = {"onnxruntime_p50_ms": float(np.median(p50["onnxruntime"])),
                                            f"{name}_p50_ms": float(np.median(p50[name])),
                                            "speedup": pr.as_dict() | {"verdict": pr.verdict()}}
            prog.advance(task)
        files = info.pop("files")
        summary = {"target": name, "options": opts.model_dump(), "reference": Path(onnx_path).name,
                   "reference_provider": runtime.ran_on(sess), "threads": threads,
                   "target_threads": getattr(run, "threads", None), "rows": n_rows(feeds),
                   "outputs": {c["output"]: {k: c[k] for k in ("pass", "max_abs", "mismatches", "total", "rtol",
                                                               "atol", "reason") if k in c} for c in cmp},
                   "latency": latency, "onnx_bytes": Path(onnx_path).stat().st_size,
                   "bytes": {Path(f).name: Path(f).stat().st_size for f in files}, **info}
        summary["verdict"] = "pass" if ok else "fail"
        if not ok:
            bad = next(c for c in cmp if not c["pass"])
            why = bad.get("reason") or (f"max abs diff {bad.get('max_abs', float('nan')):.3g} beyond rtol {rtol:g}, "
                                        f"atol {atol:g}")
            raise CheckFailed(f"compile {name}: {bad['output']} differs from onnxruntime on the ONNX model ({why})"
                              " — loosen rtol/atol, or choose other weights", summary)
        for f in files:  # only the target's files, nothing of the scratch work
            os.replace(f, work / Path(f).name) if Path(f).parent != work else None
        keep = {Path(f).name for f in files}
        for p in work.iterdir():
            if p.name not in keep:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(work, 0o777 & ~umask)  # mkdtemp made it private; the result is an ordinary folder
        check_output(given, name, (), where)  # again: files may have appeared at dest while the check ran
        _put(work, dest, sorted(keep))
        summary["files"] = sorted(keep)
        done = True
        return summary
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not done:
            remove_created(dest.parent, created, own=False)  # only the empty folders this call made
