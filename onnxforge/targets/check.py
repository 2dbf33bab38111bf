"""Compile an ONNX artifact for a target, then hold the target's files to it: the same inputs through onnxruntime
(the reference, on the provider that really ran, recorded) and through the target's own runtime, compared output by
output at the usual tolerances; then both timed in paired rounds in the same process (ratio > 1: the target is
faster). Files are written into a scratch folder beside the destination and renamed into place only when the check
passes: a failed compile leaves nothing at the final path."""

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


def compile_to(onnx_path: Path, dest: Path, name: str, opts, feeds: dict[str, np.ndarray], *,
               rtol: float | None = None, atol: float | None = None, threads: int = 1, batches=(1,),
               rounds: int = 3, seconds: float = 0.5, console=None) -> dict[str, Any]:
    """Build target `name` from `onnx_path` into the folder `dest`, check it and time it. Returns the summary
    (files, comparisons, latency, verdict); raises CheckFailed (exit 1) when an output is out of tolerance."""
    from onnxforge import runtime, timing
    from onnxforge.benchmark import progress_bar
    from onnxforge.compare import compare
    from onnxforge.data import n_rows, take, tile_rows
    from onnxforge.errors import CheckFailed
    from onnxforge.targets import target

    spec = target(name)
    dest = Path(dest)
    d_rtol, d_atol = tolerance(opts)
    rtol, atol = (d_rtol if rtol is None else rtol), (d_atol if atol is None else atol)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
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
        if dest.exists():
            shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
        for f in files:  # only the target's files, nothing of the scratch work
            os.replace(f, work / Path(f).name) if Path(f).parent != work else None
        keep = {Path(f).name for f in files}
        for p in work.iterdir():
            if p.name not in keep:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(work, 0o777 & ~umask)  # mkdtemp made it private; the result is an ordinary folder
        os.replace(work, dest)
        summary["files"] = sorted(keep)
        return summary
    finally:
        shutil.rmtree(work, ignore_errors=True)
