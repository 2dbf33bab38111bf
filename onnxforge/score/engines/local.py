"""The embedded engine: a process pool, one onnxruntime session per worker built from the model's bytes, each
with `threads` intra-op threads (cores / workers, so the pool never oversubscribes the CPUs it may use).

One worker scores in this process (no pool to start). Workers are forked before this process builds any
onnxruntime session, and die with it (PR_SET_PDEATHSIG): a killed predict leaves no orphan scoring on.
"""

from __future__ import annotations

from collections.abc import Iterator

_STATE: dict = {}


def _init(job) -> None:
    from onnxforge.score.offline import arrow_threads

    _die_with_parent()
    arrow_threads(job.threads)  # this worker's share of the cores, for decoding as for onnxruntime
    _STATE["job"], _STATE["scorer"] = job, job.scorer()


def _score(part) -> tuple[int, int]:
    from onnxforge.score.offline import score_part

    return part.index, score_part(_STATE["scorer"], _STATE["job"], part)


def _die_with_parent() -> None:
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
        except OSError:
            pass


def run(job, parts, workers: int, scheduler=None) -> Iterator[tuple[int, int]]:
    from onnxforge.score.offline import score_part

    if workers <= 1 or len(parts) <= 1:
        from onnxforge.score.offline import arrow_threads

        scorer = job.scorer()
        before = arrow_threads(job.threads)
        try:
            for part in parts:
                yield part.index, score_part(scorer, job, part)
        finally:
            arrow_threads(before)
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method), initializer=_init,
                               initargs=(job,))
    try:
        # at most two parts queued per worker: a failure stops the run soon, and memory holds no backlog
        pending = set()
        queue = iter(parts)
        for part in queue:
            pending.add(pool.submit(_score, part))
            if len(pending) >= 2 * workers:
                break
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)  # refill as each part ends
            for fut in finished:
                yield fut.result()  # a worker's UserError is raised here
            for part in queue:
                pending.add(pool.submit(_score, part))
                if len(pending) >= 2 * workers:
                    break
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
