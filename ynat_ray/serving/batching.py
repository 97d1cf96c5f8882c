"""Continuous batching: texts from concurrent requests share forward passes, and a lone request never waits.

Why not `@serve.batch`: it holds every batch up to `batch_wait_timeout_s` for batch-mates, also when none is
coming, so on an idle server each lone request paid the whole wait (docs/serving.md, "Batching"). Here:

- the compute thread runs a batch as soon as it is free and texts are queued; texts that arrive while it
  computes form the next batch (up to `max_batch_size`), as continuous batching in LLM servers does;
- a batch waits for batch-mates (at most `wait_s` after its oldest text was queued) only while requests the
  replica has already accepted are still on their way to the queue, being read or validated: a lone request
  runs at once, and a burst still fills shared passes;
- a request alone in the replica runs on the event loop's own thread when the last forward pass was short
  (`INLINE_MAX_S`), skipping the hop to the compute thread and back: two thread wake-ups, a sizeable share of
  a small model's latency. With any other request in the replica, or a slow model, batches run on the compute
  thread, so the loop keeps reading requests and enforcing timeouts meanwhile;
- a request that gave up (its timeout) leaves its texts behind, and they are skipped, not computed.

The batcher knows the replica's requests through `Visit`s (`Batcher.visit`, one per request, from its arrival
to its answer), and every other use of the compute thread goes through `on_compute`, so it knows when the
thread is free. One `Batcher` per replica, on the replica's event loop. Pure asyncio, no Ray, so it is tested
on its own (tests/test_serve.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, NamedTuple, TypeVar

logger = logging.getLogger("ray.serve")

# A lone request's batch may block the event loop this long at most (judged by the last pass); longer passes
# run on the compute thread, where the hop costs a small share of the pass.
INLINE_MAX_S = 0.005
RunBatch = Callable[[list[str]], list[Any]]
OnBatch = Callable[[int, float], None]
T = TypeVar("T")


class _Queued(NamedTuple):
    text: str
    future: asyncio.Future
    queued_at: float  # the loop's clock


class _BatchFailed(NamedTuple):
    """The row of every text in a batch whose `run` raised (a value, so one request's texts fail together)."""

    error: Exception


class Visit:
    """One request in the replica, from its arrival to its answer (`Batcher.visit`).

    `queued()` says it reached the queue, or will not (it failed validation, was refused): a partial batch stops
    waiting for it. `left()` says it was answered (and implies `queued()`). Each counts once.
    """

    __slots__ = ("_batcher", "_coming", "_here")

    def __init__(self, batcher: Batcher) -> None:
        self._batcher, self._coming, self._here = batcher, True, True

    def queued(self) -> None:
        if self._coming:
            self._coming = False
            self._batcher._expected -= 1
            self._batcher._wake.set()

    def left(self) -> None:
        self.queued()
        if self._here:
            self._here = False
            self._batcher._visits -= 1


def _timed(run: RunBatch, texts: list[str]) -> tuple[list[Any], float]:
    """`run(texts)` and the seconds it took, measured where it runs (not counting a hop to another thread)."""
    started = time.perf_counter()
    rows = run(texts)
    return rows, time.perf_counter() - started


class Batcher:
    """Texts from any number of requests -> batches for `run`, one at a time (the replica's one compute thread,
    `executor`, or the loop's thread for a request alone in the replica).

    `run` gets a list of texts and returns one row per text (`replica.batch_logits` returns the text's logits
    and the pass size, or the text's own error). `on_batch(size, seconds)` is told about each batch computed
    (the replica's metrics). `configure` changes `max_batch_size` and `wait_s` live (Serve's `reconfigure`);
    they apply from the next batch on.
    """

    def __init__(self, run: RunBatch, executor: Executor, *, max_batch_size: int, wait_s: float, on_batch: OnBatch | None = None) -> None:
        self.run, self.executor, self.on_batch = run, executor, on_batch
        self.configure(max_batch_size, wait_s)
        self._queue: deque[_Queued] = deque()
        self._visits = 0  # requests in the replica (`visit` .. `left`)
        self._expected = 0  # of those, the ones not queued yet
        self._busy = 0  # calls on the compute thread now (batches and `on_compute`)
        self._last_pass_s: float | None = None  # how long the last batch took (None: none yet)
        self._worker: asyncio.Task | None = None
        self._wake = asyncio.Event()  # set when a text is queued or an expected request arrives

    def configure(self, max_batch_size: int, wait_s: float) -> None:
        if max_batch_size < 1 or wait_s < 0:
            raise ValueError(f"need max_batch_size >= 1 and wait_s >= 0, got {max_batch_size} and {wait_s}")
        self.max_batch_size, self.wait_s = max_batch_size, wait_s

    @property
    def expected(self) -> int:
        """Requests in the replica that have not reached the queue yet (what a partial batch may wait for)."""
        return self._expected

    def visit(self) -> Visit:
        """A request arrived and may bring texts: a partial batch may wait for it (at most `wait_s`) until its
        `Visit.queued()`, which `submit` calls."""
        self._visits += 1
        self._expected += 1
        return Visit(self)

    async def on_compute(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the compute thread (a health check, a token count): the one way onto that thread
        besides the batches, so a lone request's batch never runs on the loop while the thread is busy (the fast
        tokenizer must not be called from two threads at once)."""
        self._busy += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            self._busy -= 1

    async def submit(self, texts: Sequence[str], visit: Visit | None = None) -> list[Any]:
        """Queue `texts` and wait for their rows (in order). Cancelling the wait (a timeout) leaves them behind."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        futures = [loop.create_future() for _ in texts]
        self._queue.extend(_Queued(text, future, now) for text, future in zip(texts, futures))
        if visit is not None:
            visit.queued()
        self._wake.set()
        if self._worker is None:
            # A task, not a call: requests whose bytes are already read get validated and queued before the
            # worker first looks at the queue, so a burst starts as one batch without any timed wait.
            self._worker = loop.create_task(self._drain())
        rows = await asyncio.gather(*futures)
        failed = next((row for row in rows if isinstance(row, _BatchFailed)), None)
        if failed is not None:
            raise failed.error
        return list(rows)

    async def _drain(self) -> None:
        """Run batches while texts are queued; then stop (the next `submit` starts a new worker)."""
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                await self._wait_for_batchmates(loop)
                batch = self._take()
                if batch:
                    await self._compute(batch)
        finally:
            self._worker = None

    async def _wait_for_batchmates(self, loop: asyncio.AbstractEventLoop) -> None:
        """While the batch is not full and accepted requests are still on their way, wait for them, but no
        longer than `wait_s` after the oldest queued text."""
        while len(self._queue) < self.max_batch_size and self._expected > 0:
            left = self._queue[0].queued_at + self.wait_s - loop.time()
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except asyncio.TimeoutError:
                return

    def _take(self) -> list[_Queued]:
        """Up to `max_batch_size` queued texts, oldest first, skipping those whose request gave up."""
        batch: list[_Queued] = []
        while self._queue and len(batch) < self.max_batch_size:
            item = self._queue.popleft()
            if not item.future.done():
                batch.append(item)
        return batch

    def _alone(self) -> bool:
        """One request in the replica, its texts all taken, the compute thread idle and the model fast: nothing
        to overlap the pass with, and the loop is not held for long."""
        fast = self._last_pass_s is not None and self._last_pass_s < INLINE_MAX_S
        return fast and self._visits == 1 and not self._queue and self._busy == 0

    async def _compute(self, batch: list[_Queued]) -> None:
        texts = [item.text for item in batch]
        try:
            rows, seconds = _timed(self.run, texts) if self._alone() else await self.on_compute(_timed, self.run, texts)
            if len(rows) != len(batch):
                raise RuntimeError(f"the batch function returned {len(rows)} rows for {len(batch)} texts")
        except Exception as err:  # noqa: BLE001 - a bug in `run`: this batch's requests fail (500), the worker goes on
            logger.exception("a batch of %d text(s) failed", len(batch))
            _settle(batch, [_BatchFailed(err)] * len(batch))
            return
        self._last_pass_s = seconds
        _settle(batch, rows)
        if self.on_batch is not None:
            try:
                self.on_batch(len(batch), seconds)
            except Exception:  # noqa: BLE001 - a metrics failure must not stop the batches; logged with its traceback
                logger.exception("recording a batch's metrics failed")


def _settle(batch: list[_Queued], rows: Sequence[Any]) -> None:
    """Hand each text its row, unless its request gave up meanwhile."""
    for item, row in zip(batch, rows):
        if not item.future.done():
            item.future.set_result(row)
