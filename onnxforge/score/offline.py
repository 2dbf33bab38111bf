"""`predict` into a folder: a dataset of any size scored in parts on every core (local engine), a Dask or a
Ray cluster, resumable, in bounded memory.

The driver reads the model once through the admission gate, checks every file's columns from its header, cuts
the input into parts (see dataset.py) and hands the engine the model's bytes: each worker builds its own
onnxruntime session (sessions cannot be pickled) and scores whole parts with the same `Scorer` as everything
else. A part's rows are read and scored `chunk_rows` at a time and written to its own file atomically
(partitions.py), so memory stays at a few chunks per worker whatever the input size, and a rerun skips the
parts already written. Stochastic artifacts are reseeded per part (from --seed, 0 when not given): the draws
of a part depend on its rows and index only, never on the engine, the worker count or a resume.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxforge.errors import UserError

ENGINES = ("local", "dask", "ray")
FORMAT_VERSION = 1  # of the parts' layout: a change makes old folders "another run"


@dataclass
class Job:
    """What a worker needs to score parts (picklable: the model travels as bytes)."""

    model_bytes: bytes
    name: str
    out_dir: str
    read_columns: list[str]
    keep: list[str]
    chunk_rows: int
    seed: int
    threads: int | None
    columns: dict[str, list[str]] | None = None
    allow_nan: bool = False
    key: str = field(default="")
    providers: list[str] | None = None  # a runtime.Providers pickles with its fallback policy
    text_columns: list[str] = field(default_factory=list)  # read as written from a CSV (data.Keys.text)

    def scorer(self):
        from onnxforge.score.scorer import Scorer

        return Scorer(self.model_bytes, admitted=True, name=self.name, threads=self.threads, columns=self.columns,
                      allow_nan=self.allow_nan, providers=self.providers)


def score_part(scorer, job: Job, part, frames=None) -> int:
    """Score one part into its own file (atomically); returns its row count. `frames`: its rows already read
    (pandas DataFrames of at most chunk_rows rows), else read here."""
    import pyarrow as pa

    from onnxforge.score.dataset import read_part
    from onnxforge.score.partitions import PartWriter
    from onnxforge.score.scorer import derived_seed

    runner = scorer.with_seed(derived_seed(job.seed, part.index))
    writer = PartWriter(Path(job.out_dir), part.index)
    done = 0
    try:
        for df in frames if frames is not None else read_part(part, job.read_columns, job.chunk_rows,
                                                                             text=job.text_columns):
            if not len(df):
                continue
            cols = runner(df, offset=part.first_row + done, source=part.path)
            clash = [k for k in job.keep if k in cols]
            if clash:
                raise UserError(f"--keep {clash[0]}: the predictions have a column of that name — keep another "
                                "column, or rename it in the data")
            kept = {k: pa.array(df[k].to_numpy(), from_pandas=True) for k in job.keep}
            writer.write({**kept, **cols})
            done += len(df)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return done


def arrow_threads(n: int | None) -> int:
    """Set pyarrow's decode pool to `n` threads (it sizes itself to the host: with several workers, each one's
    parquet decoding would take every core again); returns the count it had."""
    import pyarrow as pa

    before = pa.cpu_count()
    if n:
        pa.set_cpu_count(max(1, n))
    return before


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (ORT sizes its pool to the
    host, so the engines set threads themselves)."""
    import math
    import os

    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        try:
            q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
            p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            if q > 0 and p > 0:
                n = min(n, max(1, math.ceil(q / p)))
        except (OSError, ValueError):
            pass
    return max(1, n)


def predict_dataset(model: str | Path, input: str | Path, output: str | Path, *, engine: str = "local",
                    workers: int | None = None, scheduler: str | None = None, chunk_rows: int = 65536,
                    keep: list[str] | None = None, overwrite: bool = False, seed: int | None = None,
                    columns: dict[str, list[str]] | None = None, allow_nan: bool = False,
                    threads: int | None = None, providers: list[str] | None = None,
                    console=None) -> dict[str, Any]:
    """Score a parquet/csv file, folder or glob into the folder `output` (partitioned parquet). See the module
    docstring; returns rows, parts (scored and skipped), seconds, rows/s and the engine's settings."""
    from onnxforge.artifact import sha256_file
    from onnxforge.score import dataset, partitions
    from onnxforge.score.files import check_output_path, check_threads, refuse_no_inputs
    from onnxforge.score.progress import bar
    from onnxforge.score.scorer import Scorer

    t_start = time.perf_counter()
    if engine not in ENGINES:
        raise UserError(f"--engine {engine}: unknown — use one of {', '.join(ENGINES)}")
    if chunk_rows < 1:
        raise UserError(f"--chunk-rows {chunk_rows}: give a positive number of rows")
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers}: give a positive number of workers")
    check_threads(threads)
    check_output_path(Path(output))
    if scheduler and engine == "local":
        raise UserError("--scheduler is for --engine dask or ray — add --engine dask (tcp://...) or --engine ray "
                        "(ray://... or auto), or drop --scheduler")
    keep = list(dict.fromkeys(keep or []))
    out_dir = Path(output)
    paths = dataset.files(input)
    _not_inside(out_dir, input, paths)
    from onnxforge import runtime

    if providers is None:  # `predict --providers` (runtime.use) reaches the workers' sessions too
        providers = runtime.requested(None)
    runtime.providers(providers)  # one not installed: exit 2 before a worker starts
    scorer = Scorer(Path(model), seed=None, columns=columns, allow_nan=allow_nan, lazy=True, providers=providers)
    refuse_no_inputs(scorer, Path(model))
    chunk = min(chunk_rows, scorer.rows_per_chunk or chunk_rows)
    read_columns: list[str] = []
    text_columns: list[str] = []
    for p in paths:  # every file's header before any work: a missing column is refused up front
        names = dataset.columns_of(p)
        cols = scorer.input_columns(names, p)
        missing = [k for k in keep if k not in names]
        if missing:
            raise UserError(f"{p}: --keep column '{missing[0]}' is not in the data — available: "
                            f"{', '.join(sorted(names))[:200]}")
        read_columns = read_columns or list(dict.fromkeys(cols + keep))
        text_columns = text_columns or [c for c in cols.text if c not in keep]
    parts = dataset.plan(paths, chunk_rows)  # parts by the user's chunk size; onnxruntime runs by `chunk`
    total = sum(p.rows for p in parts)
    if total == 0:
        raise UserError(f"{input}: holds no rows — give data with at least one row to score")
    base_seed = seed if seed is not None else 0
    key = {"version": FORMAT_VERSION, "model": sha256_file(model), "input": dataset.fingerprint(paths),
           "chunk_rows": chunk_rows, "run_rows": chunk, "columns": columns or {}, "keep": keep, "seed": base_seed, "allow_nan": allow_nan}
    cpus = available_cpus()
    n_workers = max(1, min(workers or cpus, len(parts)))
    # never more threads than cores: this machine's CPUs shared by the workers; a remote cluster's workers run a
    # task per core, so one thread per session there
    per_worker = threads or (1 if scheduler else max(1, cpus // n_workers))
    job = Job(model_bytes=scorer.model_bytes, name=str(model), out_dir=str(out_dir), read_columns=read_columns,
              keep=keep, chunk_rows=chunk, seed=base_seed, threads=per_worker, columns=columns,
              allow_nan=allow_nan, key=dataset.digest(key), providers=providers,
              text_columns=text_columns)
    done, created = partitions.prepare(out_dir, key, overwrite=overwrite)
    todo = [p for p in parts if p.index not in done]
    written: set[int] = set()
    rows = 0
    try:
        with bar(console) as progress:
            task = progress.add_task(f"{len(paths)} file{'s' * (len(paths) > 1)} → {out_dir.name}/", total=total,
                                     completed=sum(p.rows for p in parts if p.index in done))
            if engine == "local":
                from onnxforge.score.engines.local import run
            elif engine == "dask":
                from onnxforge.score.engines.dask import run
            else:
                from onnxforge.score.engines.ray import run
            by_index = {p.index: p for p in todo}
            for index, n in run(job, todo, n_workers, scheduler=scheduler):
                written.add(index)
                rows += n
                progress.advance(task, by_index[index].rows)
    except UserError:
        # every part this run was to write: a worker stopped mid-way may have finished one it had not reported yet
        # (none of them existed before: prepare removed them, or they were not done)
        partitions.remove_new(out_dir, {p.index for p in todo}, created)
        raise
    except BaseException:
        partitions.remove_new(out_dir, set(), False)  # finished parts stay for the rerun; temporaries go
        raise
    seconds = time.perf_counter() - t_start
    summary = {"model": str(model), "input": str(input), "output": str(out_dir), "engine": engine,
               "workers": n_workers, "threads_per_worker": per_worker, "cpus": cpus,
               "scheduler": scheduler, "rows": total, "rows_scored": rows, "parts": len(parts),
               "parts_scored": len(written), "parts_skipped": len(done), "chunk_rows": chunk,
               "seconds": seconds, "rows_per_s": rows / seconds if seconds > 0 else float("inf"),
               "seed": base_seed, "keep": keep}
    partitions.finish(out_dir, key, {k: summary[k] for k in ("rows", "parts")})
    return summary


def _not_inside(out_dir: Path, spec, paths: list[Path]) -> None:
    out = out_dir.resolve()
    for p in paths:
        if out == p.resolve() or out in p.resolve().parents:
            raise UserError(f"--output {out_dir} holds input files — choose another folder (inputs are never "
                            "overwritten)")
    src = Path(str(spec))
    if src.is_dir() and (out == src.resolve() or src.resolve() in out.parents):
        raise UserError(f"--output {out_dir} is inside the input folder {src} — choose a folder outside it (its "
                        "parts would be read as input by the next run)")
