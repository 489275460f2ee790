"""Group commit for the hot path: many messages each await their own write, but the writes
that queue up while one is running go to Postgres together as one statement.

A lone write goes at once (no timer, so an idle listener adds no latency: a flush begins once
the event loop has gone round without a new write, a few microseconds); under load, the writes
that arrive during a flush form the next batch. This is what lets one listener record
thousands of messages a second through a handful of round trips.

The few turns of the loop before a flush let a cohort gather: the messages of one claim reach
their write after the same steps, but not all in the same turn of the loop (one waits on a
gate, another on a number's pacing), and a flush that began with the first few split the
cohort in two statements, commits and round trips (flushes of 30 instead of 50 at concurrency
50; docs/BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")

FlushFn = Callable[[list[T]], Awaitable[set[Hashable]]]

#: Turns of the event loop a flush waits at most for more writes to join it (no timer: each
#: turn runs the tasks that are ready, then comes straight back).
SETTLE_TURNS = 8


class GroupCommit(Generic[T]):
    """Coalesce `submit(item)` calls into `flush(items)` calls of at most `max_batch` items.

    `flush` returns the keys (by `key(item)`) that the statement matched; `submit` answers
    whether its item was among them. When a flush of several items fails with an error that
    `isolate` says is about the data (one bad row), each item is flushed again alone, so only
    the bad one gets the error; any other error is raised in every submitter of the batch.
    """

    def __init__(
        self,
        flush: FlushFn[T],
        key: Callable[[T], Hashable],
        *,
        max_batch: int = 500,
        isolate: Callable[[Exception], bool] = lambda _: False,
    ) -> None:
        self._flush = flush
        self._key = key
        self._max = max_batch
        self._isolate = isolate
        self._queue: list[tuple[T, asyncio.Future[bool]]] = []
        self._running = False
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if not self._running:
            self._running = True
            self._task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        batch: list[tuple[T, asyncio.Future[bool]]] = []
        try:
            await self._gather()
            while self._queue:
                batch, self._queue = self._queue[: self._max], self._queue[self._max :]
                await self._run(batch)
        except BaseException:  # cancelled (a shutdown): no submitter waits for nothing
            for _, future in batch + self._queue:
                future.cancel()
            self._queue = []
            raise
        finally:
            self._running = False

    async def _gather(self) -> None:
        """Let the loop go round while writes keep arriving (at most SETTLE_TURNS turns)."""
        seen = 0
        for _ in range(SETTLE_TURNS):
            if len(self._queue) == seen or len(self._queue) >= self._max:
                return
            seen = len(self._queue)
            await asyncio.sleep(0)

    async def _run(self, batch: list[tuple[T, asyncio.Future[bool]]]) -> None:
        try:
            matched = await self._flush([item for item, _ in batch])
        except Exception as exc:  # handed to its waiters, never swallowed
            if len(batch) > 1 and self._isolate(exc):
                for one in batch:
                    await self._run([one])
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for item, future in batch:
            if not future.done():
                future.set_result(self._key(item) in matched)
