"""Adaptive micro-batching and the bounded queue: requests waiting for one model version are stacked along the batch
axis into one onnxruntime run.

Adaptive: a batch is whatever queued while the previous run was busy (up to `max_batch_size` rows), so a lone
request runs at once and batches grow only with load; `max_queue_delay_ms` > 0 additionally holds a short batch
that long for more rows. Runs happen on one executor thread per version, off the event loop, which keeps parsing
requests meanwhile — except runs that take less than a thread hop (INLINE_S per request, a moving average): the
loop runs those itself, where stacking would save less than it costs. `max_queue` requests waiting or running at most: one more is refused (503) instead of letting
latency grow without bound.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from collections.abc import Callable
from typing import Any

import numpy as np

# a run this short (a tree ensemble's few rows) costs less than handing it to the executor thread and back; the
# event loop runs it itself
INLINE_S = 0.0003


class QueueFull(Exception):
    """More requests than `max_queue` are waiting: the app answers 503 with Retry-After."""


class Runner:
    """One model version's requests → runs. `run(arrays, seed)` is the model's own (ServedModel.run); `on_run`
    reports (requests, rows) per execution to the metrics."""

    def __init__(self, run: Callable[..., dict], *, batchable: bool, max_batch_size: int, max_queue_delay_ms: float,
                 max_queue: int, on_run: Callable[[int, int], None], depth: Callable[[int], None]):
        self._run, self.on_run, self._depth_cb = run, on_run, depth
        self.batching = batchable and max_batch_size > 1
        self.max_rows, self.delay = max_batch_size, max_queue_delay_ms / 1000
        self.max_queue = max_queue
        self.depth = 0  # requests accepted and not answered yet (waiting or running)
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="onnxforge-run")
        self.pending: collections.deque = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.draining = False
        self.run_s = 1.0  # a moving average of one run's seconds: runs far shorter than a thread hop stay inline

    def _enter(self) -> None:
        if self.depth >= self.max_queue:
            raise QueueFull(f"{self.depth} requests are already queued (max_queue={self.max_queue}) — retry shortly")
        self.depth += 1
        self._depth_cb(self.depth)

    def _leave(self) -> None:
        self.depth -= 1
        self._depth_cb(self.depth)

    async def infer(self, arrays: list[np.ndarray], rows: int, seed: int | None = None) -> dict[str, Any]:
        self._enter()
        try:
            loop = asyncio.get_running_loop()
            if self.run_s < INLINE_S and seed is None:
                # a run shorter than a thread hop: the loop runs it at once (batching would save less than it costs)
                out = self._timed(arrays)
                self.on_run(1, rows)
                return out
            if not self.batching or seed is not None:  # a seeded run replays its own stream: never shared
                out = await (loop.run_in_executor(self.pool, self._timed, arrays) if seed is None else
                             loop.run_in_executor(self.pool, self._run, arrays, seed))
                self.on_run(1, rows)
                return out
            if self._task is None:
                self._wake = asyncio.Event()
                self._task = loop.create_task(self._loop())
            fut = loop.create_future()
            self.pending.append((arrays, rows, fut))
            self._wake.set()
            out = await fut
            if isinstance(out, _Failed):
                raise out.error
            return out
        finally:
            self._leave()

    def _take(self) -> list:
        batch, rows = [self.pending.popleft()], 0
        rows = batch[0][1]
        while self.pending and rows + self.pending[0][1] <= self.max_rows:
            item = self.pending.popleft()
            batch.append(item)
            rows += item[1]
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                if self.delay and not self.draining:
                    queued = sum(p[1] for p in self.pending)
                    deadline = time.monotonic() + self.delay
                    while queued < self.max_rows and not self.draining and (left := deadline - time.monotonic()) > 0:
                        self._wake.clear()
                        try:
                            await asyncio.wait_for(self._wake.wait(), left)
                        except TimeoutError:
                            break
                        queued = sum(p[1] for p in self.pending)
                batch = [b for b in self._take() if not b[2].done()]  # a client that went away is not scored
                if not batch:
                    continue
                try:
                    outs = await loop.run_in_executor(self.pool, self._run_batch, batch)
                except Exception as e:
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                for (_, _, fut), out in zip(batch, outs, strict=True):
                    if not fut.done():
                        fut.set_result(out)

    def _timed(self, arrays: list[np.ndarray]) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            return self._run(arrays, None)
        finally:
            self.run_s = 0.8 * self.run_s + 0.2 * (time.perf_counter() - t0)

    def _run_batch(self, batch: list) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        try:
            return self._run_stacked(batch)
        finally:
            self.run_s = 0.8 * self.run_s + 0.2 * (time.perf_counter() - t0) / len(batch)

    def _run_stacked(self, batch: list) -> list[dict[str, Any]]:
        """One run over the stacked rows, split back per request. A batch whose run fails is rerun request by
        request, so one request's bad values never fail the others'."""
        if len(batch) == 1:
            out = self._run(batch[0][0], None)
            self.on_run(1, batch[0][1])
            return [out]
        stacked = [np.concatenate(parts) for parts in zip(*(b[0] for b in batch), strict=True)]
        rows = sum(b[1] for b in batch)
        try:
            out = self._run(stacked, None)
        except Exception:
            return [self._alone(b) for b in batch]
        if any(isinstance(v, list) or np.ndim(v) == 0 or np.shape(v)[0] != rows for v in out.values()):
            self.batching = False  # an output without a row per input row: this model cannot be batched
            return [self._alone(b) for b in batch]
        self.on_run(len(batch), rows)
        cuts = np.cumsum([b[1] for b in batch])[:-1]
        split = {k: np.split(v, cuts) for k, v in out.items()}
        return [{k: split[k][i] for k in out} for i in range(len(batch))]

    def _alone(self, item) -> Any:
        try:
            out = self._run(item[0], None)
        except Exception as e:
            return _Failed(e)
        self.on_run(1, item[1])
        return out

    async def close(self) -> None:
        self.draining = True
        if self._wake is not None:
            self._wake.set()
        while self.depth:  # uvicorn waits for open requests first; this covers any still queued
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
        self.pool.shutdown(wait=True)


class _Failed:
    """A request's own failure inside a batch, raised again in its own handler."""

    def __init__(self, error: Exception):
        self.error = error
