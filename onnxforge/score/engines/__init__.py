"""Engines that score a partitioned predict's parts: `local` (a process pool on this machine) and `dask` (a Dask
cluster, local or remote). Each exposes `run(job, parts, workers, scheduler=None)`, yielding (part index, rows) as
parts finish; both score a part with offline.score_part, so their outputs are the same bytes."""
