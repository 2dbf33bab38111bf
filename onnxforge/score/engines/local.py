"""The embedded engine: this process and `workers - 1` forked ones score parts side by side, each with its own
onnxruntime session built from the model's bytes and `threads` intra-op threads (cores / workers, so they never
oversubscribe the CPUs this process may use).

Every process claims its next part from one shared counter the moment it is free, reads that part's row groups
(or csv lines) itself and writes its own part file: no rows cross a pipe, nothing waits on a dispatcher, and the
last parts go to whoever is free first. A worker only sends `(part, rows)` back so the command can show progress
and knows what it wrote. This process scores too (it is one of the workers): a second worker costs one fork,
not two, and the command's own already-warm process takes half the parts.

Workers are forked before this process builds any onnxruntime session or thread of its own, and die with it
(PR_SET_PDEATHSIG): a killed predict leaves no orphan scoring on. After a failure the others are stopped at once
(their half-written parts are temporaries, removed by the caller).
"""

from __future__ import annotations

from collections.abc import Iterator

_DONE, _PART, _ERROR = "done", "part", "error"


def _claim(counter, total: int) -> int | None:
    """The next unclaimed part's position, or None when every part is taken (or the run is stopping)."""
    with counter.get_lock():
        i = counter.value
        if i >= total:
            return None
        counter.value = i + 1
        return i


def _worker(job, parts, counter, conn) -> None:
    """A forked worker: claim, score and write parts until none is left; report each on `conn`."""
    from onnxforge.score.offline import arrow_threads, score_part

    _die_with_parent()
    try:
        arrow_threads(job.threads)  # this worker's share of the cores, for decoding as for onnxruntime
        scorer = job.scorer()
        while (i := _claim(counter, len(parts))) is not None:
            conn.send((_PART, parts[i].index, score_part(scorer, job, parts[i])))
        conn.send((_DONE,))
    except BaseException as e:  # noqa: BLE001 - every failure goes back to the command, which decides
        conn.send((_ERROR, _picklable(e)))
    finally:
        conn.close()


def _picklable(e: BaseException) -> BaseException:
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


def _die_with_parent() -> None:
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
        except OSError:
            pass


def _in_process(job, parts) -> Iterator[tuple[int, int]]:
    from onnxforge.score.offline import arrow_threads, score_part

    before = arrow_threads(job.threads)
    try:
        scorer = job.scorer()
        for part in parts:
            yield part.index, score_part(scorer, job, part)
    finally:
        arrow_threads(before)


def run(job, parts, workers: int, scheduler=None) -> Iterator[tuple[int, int]]:
    """(part index, rows) as each part is written, in any order."""
    if workers <= 1 or len(parts) <= 1:
        yield from _in_process(job, parts)
        return
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    counter = ctx.Value("q", 0)
    procs, conns = [], {}
    try:
        for _ in range(workers - 1):
            recv, send = ctx.Pipe(duplex=False)  # one pipe each: a killed worker cannot block the others
            p = ctx.Process(target=_worker, args=(job, parts, counter, send), daemon=True)
            p.start()
            send.close()
            procs.append(p)
            conns[recv] = p

        def reports(block: bool) -> Iterator[tuple[int, int]]:
            """What the workers finished; with `block`, until every worker is done."""
            while conns:
                ready = wait(list(conns), timeout=None if block else 0)
                if not ready:
                    return
                for c in ready:
                    try:
                        msg = c.recv()
                    except EOFError:  # it died without a word (killed, out of memory)
                        p = conns.pop(c)
                        p.join()
                        raise RuntimeError(f"a scoring worker exited with code {p.exitcode} before finishing "
                                           "its parts") from None
                    if msg[0] == _PART:
                        yield msg[1], msg[2]
                    elif msg[0] == _DONE:
                        conns.pop(c).join()
                    else:
                        conns.pop(c)
                        raise msg[1]

        # this process is a worker too, from here on (after the forks: its session is built after them)
        from onnxforge.score.offline import arrow_threads, score_part

        before = arrow_threads(job.threads)
        try:
            scorer = job.scorer()
            while (i := _claim(counter, len(parts))) is not None:
                yield parts[i].index, score_part(scorer, job, parts[i])
                yield from reports(block=False)
        finally:
            arrow_threads(before)
        yield from reports(block=True)
    finally:
        with counter.get_lock():
            counter.value = len(parts)  # nothing more to claim: a worker still scoring stops after its part
        for p in procs:
            if p.is_alive() and conns:  # a failure: do not wait for the others' parts
                p.kill()
            p.join()
        for c in conns:
            c.close()
