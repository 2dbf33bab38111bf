"""The Dask engine: the parts as a `dask.dataframe` (one partition per part, read by `from_map`), scored by
`map_partitions` with the same `Scorer`, cached per worker process (built once from the model's bytes, which
travel once as one graph key). A `LocalCluster` (processes, one thread each) by default; `scheduler` names a
running cluster (`tcp://host:8786`) whose workers must see the input and output paths.
"""

from __future__ import annotations

from collections.abc import Iterator

_SCORERS: dict = {}  # per worker process: job key → Scorer


def _need_dask():
    import importlib.util

    from onnxforge.errors import UserError

    missing = [m for m in ("dask", "distributed") if importlib.util.find_spec(m) is None]
    if missing or importlib.util.find_spec("dask.dataframe") is None:
        raise UserError("--engine dask needs dask[dataframe] and distributed, which are not installed — "
                        "pip install 'onnxforge[scale]'")


def _read(part, job):
    import pandas as pd

    from onnxforge.score.dataset import read_part

    frames = list(read_part(part, job.read_columns, job.chunk_rows))
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _score(df, job, parts, partition_info=None):
    import pandas as pd

    from onnxforge.score.offline import score_part

    if partition_info is None:  # dask asking for the output's shape
        return pd.DataFrame({"part": pd.Series([], dtype="int64"), "rows": pd.Series([], dtype="int64")})
    scorer = _SCORERS.get(job.key)
    if scorer is None:
        from onnxforge.score.offline import arrow_threads

        arrow_threads(job.threads)  # a worker process of ours: its share of the cores for decoding too
        scorer = _SCORERS[job.key] = job.scorer()
    part = parts[partition_info["number"]]
    step = job.chunk_rows
    frames = (df.iloc[i:i + step] for i in range(0, len(df), step))
    return pd.DataFrame({"part": [part.index], "rows": [score_part(scorer, job, part, frames)]})


def run(job, parts, workers: int, scheduler: str | None = None) -> Iterator[tuple[int, int]]:
    _need_dask()
    import logging

    import dask
    import dask.dataframe as dd
    import pandas as pd
    from distributed import Client, LocalCluster, as_completed

    if not parts:
        return
    cluster = None
    if scheduler:
        client = Client(scheduler, timeout="20s")
    else:
        # this machine only: the scheduler, the workers and its HTTP endpoints listen on 127.0.0.1, random ports
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
        client = Client(cluster)
    try:
        job_d = dask.delayed(job, pure=True)  # one graph key: the model's bytes travel once per worker
        parts_d = dask.delayed(list(parts), pure=True)
        meta = pd.DataFrame({c: pd.Series([], dtype=object) for c in job.read_columns})
        ddf = dd.from_map(_read, parts, job=job, meta=meta, enforce_metadata=False)
        out = ddf.map_partitions(_score, job_d, parts_d,
                                 meta=pd.DataFrame({"part": pd.Series([], dtype="int64"),
                                                    "rows": pd.Series([], dtype="int64")}),
                                 enforce_metadata=False)
        futures = client.compute(out.to_delayed())
        try:
            for fut in as_completed(futures):
                res = fut.result()
                for index, rows in zip(res["part"].tolist(), res["rows"].tolist(), strict=True):
                    yield int(index), int(rows)
        finally:
            for fut in futures:
                fut.cancel()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
