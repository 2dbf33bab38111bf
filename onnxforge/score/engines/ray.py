"""The Ray engine (`pip install 'onnxforge[ray]'`): Ray Data `map_batches` with a callable class, one actor per
worker, each building one `Scorer` from the model's bytes in its constructor and scoring whole parts.

The dataset Ray maps is the list of parts, one per batch: each actor reads its part's rows itself and writes its
own part file, the same contract as the other engines (atomic parts, resume, `--keep`, the same bytes). Reading
with `ray.data.read_parquet` instead would cut the input into Ray's own blocks and write Ray's own file names:
no per-part resume and no output equal to the local engine's. A local Ray instance (`ray.init(num_cpus=...)`,
no dashboard) is started and shut down by default; `scheduler` names a running cluster (`ray://host:10001`, or
`auto` for the one `ray start` runs on this machine), whose workers must see the input and output paths.
"""

from __future__ import annotations

from collections.abc import Iterator


def _need_ray():
    import importlib.util

    from onnxforge.errors import UserError

    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.data") is None:
        raise UserError("--engine ray needs ray[data], which is not installed — pip install 'onnxforge[ray]'")


class PartScorer:
    """A Ray Data callable class: one Scorer per actor; a batch of part positions → (part, rows) written."""

    def __init__(self, job, parts):
        from onnxforge.score.offline import arrow_threads

        arrow_threads(job.threads)  # this actor's share of the cores, for decoding as for onnxruntime
        self.job, self.parts, self.scorer = job, parts, job.scorer()

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        from onnxforge.errors import UserError
        from onnxforge.score.offline import score_part

        # a refusal (a bad row) comes back as data: Ray would wrap the UserError in exceptions whose cause does
        # not survive the trip, and log the traceback besides the one line predict prints
        done, error = [], ""
        try:
            for i in batch["i"].tolist():
                done.append((self.parts[i].index, score_part(self.scorer, self.job, self.parts[i])))
        except UserError as e:
            error = str(e)
        return {"part": np.array([d[0] for d in done] or [-1], dtype=np.int64),
                "rows": np.array([d[1] for d in done] or [0], dtype=np.int64),
                "error": np.array([error] * max(1, len(done)), dtype=object)}


def run(job, parts, workers: int, scheduler: str | None = None) -> Iterator[tuple[int, int]]:
    _need_ray()
    import logging
    import warnings

    import ray

    from onnxforge.errors import UserError

    if not parts:
        return
    started = False
    if not ray.is_initialized():
        opts = {"address": scheduler} if scheduler else {
            "num_cpus": workers * (job.threads or 1), "include_dashboard": False,
            "object_store_memory": 128 * 2**20}  # the parts' list and the (part, rows) pairs only
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a ray:// address that does not answer warns, then raises
                ray.init(**opts, logging_level=logging.ERROR, log_to_driver=False)
        except (ConnectionError, TimeoutError, ValueError, RuntimeError) as e:
            if not scheduler:
                raise
            msg = " ".join(str(e).split())[:160]
            raise UserError(f"--scheduler {scheduler}: no Ray cluster answers there ({msg}) — give a running "
                            "cluster's ray://host:10001 address, or 'auto' on a node where `ray start` ran") from None
        started = True
    try:
        from ray.data import ActorPoolStrategy, DataContext

        for name in ("ray", "ray.data"):  # Ray Data logs each execution's plan and timing at INFO
            logging.getLogger(name).setLevel(logging.ERROR)
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False  # predict shows its own
        ds = ray.data.from_items([{"i": i} for i in range(len(parts))], override_num_blocks=len(parts))
        # the job (the model's bytes) and the parts' list go to each actor once, with its constructor; no actor
        # restarts (a part that fails fails the run, and Ray logs an error for restartable actors whose
        # constructor arguments sit in the object store)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # max_restarts as a plain remote arg (2.60)
            out = ds.map_batches(PartScorer, fn_constructor_args=(job, list(parts)), batch_size=1,
                                 batch_format="numpy", compute=ActorPoolStrategy(size=workers),
                                 num_cpus=job.threads or 1, max_restarts=0)
        for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
            for index, rows, error in zip(batch["part"].tolist(), batch["rows"].tolist(), batch["error"].tolist(),
                                          strict=True):
                if error:
                    raise UserError(error)
                yield index, rows
    finally:
        if started:
            ray.shutdown()
