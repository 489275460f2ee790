"""Every database operation on messages, and nothing else (Procrastinate's `manager.py`): claim
with contexts, next due, the guarded writes of a message's journey (store parts, record a part,
finish) batched by group commit (the statements themselves: writes.py), leases (renew, rescue,
hand back), the sweep and the backlog. Pacing's bookings are pacing/store.py's; `listener
replay`'s statements are its own. The SQL itself is named in queries.sql.

Every write on a claimed message is guarded by the state and owner it expects (`status =
'processing' AND locked_by = me`), so a worker whose lease was taken over can never finish a
message twice; `LeaseLost` says so. A guarded write that loses its connection is run again,
with backoff, for as long as the message's lease holds: the process knows what it must record
(an accepted part's provider id), and a database blip must not make it give that up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple, TypeVar
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from listener.batch import GroupCommit
from listener.db import Lane
from listener.errors import DataRefusedError
from listener.flow import Stop
from listener.jobs import Finish, Job, RecordPart, StoreParts
from listener.providers.base import Usage
from listener.queries import q
from listener.queue.writes import (
    BatchedWrites,
    by_id,
    id_order,
    is_connection_error,
    is_data_error,
)
from listener.settings import Settings

log = logging.getLogger(__name__)

R = TypeVar("R")

# A guarded write that lost its connection is tried again after these pauses (doubling up to
# the cap) for as long as the message's lease holds.
_WRITE_RETRY_FIRST = 0.1
_WRITE_RETRY_CAP = 2.0


class Claimed(NamedTuple):
    """What a claim took, and the database's time when it ran (its now()): what was due then
    was due to it; the wake-up timer looks for what comes due after it, on the database's
    clock."""

    jobs: list[Job]
    at: datetime | None


class LeaseLost(Exception):
    """Our lease on a message was taken over; stop working on it without writing."""


class Store:
    """The listener's database operations on messages, for one worker."""

    def __init__(self, pool: AsyncConnectionPool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings
        self.worker = settings.worker_id
        # One bad row (bytes Postgres refuses) fails only its own write: the batch it was in
        # runs again item by item.
        self.writes = BatchedWrites(pool, self.worker)
        self._store = GroupCommit(self.writes.store, key=by_id, isolate=is_data_error)
        self._record = GroupCommit(self.writes.record, key=by_id, isolate=is_data_error)
        self._finish = GroupCommit(self.writes.finish, key=by_id, isolate=is_data_error)
        # Lease renewal and the rescue each on a connection of their own: never queued behind
        # the pool's work (a claim, a batch of writes, a hold being moved).
        self._renewals = Lane(pool)
        self._rescues = Lane(pool)

    def _lanes(self) -> list[Lane]:
        return [self._renewals, self._rescues, *set(self.writes.lanes.values())]

    async def open_lanes(self) -> None:
        """Open the connections of lease renewal, the rescue and the batched writes (at
        start, together; one that cannot be opened now is opened at its first use)."""
        opened = await asyncio.gather(
            *(lane.open() for lane in self._lanes()), return_exceptions=True
        )
        failed = [exc for exc in opened if isinstance(exc, BaseException)]
        for exc in failed:
            if not isinstance(exc, psycopg.Error):
                raise exc
        if failed:
            log.warning(
                "could not open %d connections of its own (lease renewal, the rescue, a"
                " message's writes) yet: %s",
                len(failed),
                failed[0],
                extra={"action": "lane_open_failed"},
            )

    async def aclose(self) -> None:
        """Close the connections of its own (lease renewal, the rescue, the batched writes;
        the pool is the caller's)."""
        for lane in self._lanes():
            await lane.close()

    def lease_margin(self) -> float:
        """How long a lease taken (or renewed) now surely holds: its length, less a margin
        for the clock of the statement that took it."""
        lease = self.settings.lease.total_seconds()
        return lease - min(1.0, lease / 10)

    # ----------------------------------------------------------------------------------------
    # Claiming
    # ----------------------------------------------------------------------------------------

    async def claim(self, limit: int) -> Claimed:
        """Claim up to `limit` due rows with their leads' contexts (one round trip)."""
        lease_until = time.monotonic() + self.lease_margin()
        params = {"limit": limit, "worker": self.worker, "lease": self.settings.lease}
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            # One pipeline, one implicit transaction: claim_plan's setting holds for the claim.
            async with conn.pipeline():
                plan = await conn.execute(q("claim_plan"))
                await cur.execute(q("claim"), params)
            clock = await plan.fetchone()
            rows = await cur.fetchall()
        jobs = []
        for row in rows:
            job = Job.from_row(row)
            job.plan.context = row["context"]
            job.attempt.lease_until = lease_until
            jobs.append(job)
        return Claimed(jobs, clock[1] if clock else None)

    async def step_facts(self, job: Job) -> dict[str, Any]:
        """What says whether a follow-up step still goes (see queue/sequences.py): its lead's
        opt-out, hand-off and replies since the sequence began, the previous step's delivery,
        and the earlier steps' texts."""
        params = {
            "previous_id": job.claim.previous_id,
            "lead_id": job.claim.lead_id,
            "campaign_id": job.claim.campaign_id,
        }
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(q("step_check"), params)
            row = await cur.fetchone()
        assert row is not None  # the campaign of a claimed message exists
        return row

    async def next_due(self, after: datetime) -> datetime | None:
        """When the next pending row comes due after `after` (possibly already past)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("next_due"), {"after": after})
            row = await cur.fetchone()
        return row[0] if row else None

    async def backlog(self) -> int:
        """Pending rows already due."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("backlog"))
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # ----------------------------------------------------------------------------------------
    # A message's guarded writes
    # ----------------------------------------------------------------------------------------

    async def store_parts(self, item: StoreParts, job: Job) -> None:
        """Store the parts, with the usage of the LLM calls the attempt made so far."""
        if job.attempt.usage.calls and item.usage is None:
            item = StoreParts(item.id, item.text, item.parts, job.attempt.usage)
        await self._guarded(self._store, item, job)
        if item.usage is job.attempt.usage:
            job.attempt.usage = Usage()

    async def record_part(self, item: RecordPart, job: Job) -> None:
        await self._guarded(self._record, item, job)

    async def finish(self, item: Finish, job: Job) -> None:
        """End the attempt; the usage of LLM calls not stored yet travels with it."""
        if job.attempt.usage.calls and item.usage is None:
            item = replace(item, usage=job.attempt.usage)
        await self._guarded(self._finish, item, job)
        if item.usage is job.attempt.usage:
            job.attempt.usage = Usage()

    async def note_uncertain(self, job: Job) -> int:
        """A send of the message's next part got no answer: count it on the row (so every
        listener honours it); returns how many sends of that part got none."""
        # The first send of the part left at most a send's deadline (plus a margin) ago.
        window = self.settings.send_timeout + timedelta(
            milliseconds=self.settings.evolution_delay_ms, seconds=60
        )
        params = {
            "id": job.id,
            "part_no": job.plan.parts_sent,
            "worker": self.worker,
            "window": window,
        }

        async def execute() -> int | None:
            async with self.pool.connection() as conn:
                cur = await conn.execute(q("note_uncertain"), params)
                row = await cur.fetchone()
            return None if row is None else int(row[0])

        sends, _ = await self._retrying(job, execute)
        if sends is None:
            raise LeaseLost()
        return sends

    async def looked_up(self, job: Job) -> None:
        """A row the old system left `processing` was looked up: it is not looked up again."""

        async def execute() -> bool:
            async with self.pool.connection() as conn:
                cur = await conn.execute(q("looked_up"), {"id": job.id, "worker": self.worker})
                return await cur.fetchone() is not None

        kept, _ = await self._retrying(job, execute)
        if not kept:
            raise LeaseLost()
        job.plan.look_up_since = None

    async def load_uncertain(self, job: Job) -> None:
        """On a resume: which part's send got no answer, how many times, since when."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("uncertain_of"), {"id": job.id})
            row = await cur.fetchone()
        if row is not None:
            job.plan.uncertain_part, job.plan.uncertain_sends, job.plan.uncertain_at = (
                row[0],
                row[1],
                row[2],
            )

    async def find_sent(
        self, instance: str, numbers: tuple[str, ...], text: str, since: datetime
    ) -> str | None:
        """The id of a `send.message` event for one of `numbers` with exactly `text` since
        `since` (a send whose answer never came went out after all)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                q("find_sent"),
                {"instance": instance, "numbers": list(numbers), "text": text, "since": since},
            )
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def _guarded(
        self, writer: GroupCommit[Any], item: StoreParts | RecordPart | Finish, job: Job
    ) -> None:
        retried = False
        try:
            try:
                matched = await writer.submit(item)  # the hot path: one try, no wrapper
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                matched, retried = await self._retrying(job, lambda: writer.submit(item), exc)
        except Exception as exc:
            if is_data_error(exc):  # this row's own data: it ran alone (see GroupCommit)
                raise DataRefusedError(f"the database refused this message's data: {exc}") from exc
            raise
        if matched:
            return
        # After a lost answer the first try may have gone through: a part already recorded
        # is recorded.
        if retried and isinstance(item, RecordPart) and await self._recorded(item):
            return
        if isinstance(item, StoreParts) and (stop := await self.lead_stop(job)) is not None:
            raise Stop("skipped", stop)
        raise LeaseLost()

    async def lead_stop(self, job: Job) -> str | None:
        """Why a message still ours may not begin (its lead opted out since the claim, or was
        handed off since the message was made), or None; LeaseLost when it is not ours any
        more."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("lead_stop"), {"id": job.id, "worker": self.worker})
            row = await cur.fetchone()
        if row is None:
            raise LeaseLost()
        return None if row[0] is None else str(row[0])

    async def _recorded(self, item: RecordPart) -> bool:
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("parts_sent"), {"id": item.id})
            row = await cur.fetchone()
        return row is not None and row[0] > item.part_no

    async def _retrying(
        self, job: Job, write: Callable[[], Awaitable[R]], failed: Exception | None = None
    ) -> tuple[R, bool]:
        """Run a guarded write (`failed`: its first try already lost its connection); on a lost
        connection run it again, with backoff, while the message's lease holds. Returns the
        result and whether it took more than one try."""
        pause = _WRITE_RETRY_FIRST
        retried = False
        while True:
            try:
                if failed is not None:
                    raise failed
                return await write(), retried
            except Exception as exc:
                failed = None
                if (
                    not is_connection_error(exc)
                    or time.monotonic() + pause > job.attempt.lease_until
                ):
                    raise
                log.warning(
                    "a write lost its connection, trying again in %.1fs: %s",
                    pause,
                    exc,
                    extra={"action": "write_retry", "message_id": str(job.id)},
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, _WRITE_RETRY_CAP)
            retried = True

    # ----------------------------------------------------------------------------------------
    # Leases
    # ----------------------------------------------------------------------------------------

    async def renew(self, jobs: list[Job]) -> None:
        """Extend the lease of `jobs`; mark the ones taken from us as lost."""
        lease_until = time.monotonic() + self.lease_margin()
        kept = await self.writes.returning_ids(
            "renew_leases",
            {"ids": [j.id for j in jobs], "worker": self.worker, "lease": self.settings.lease},
            lane=self._renewals,
        )
        for job in jobs:
            if job.id in kept:
                job.attempt.lease_until = lease_until
            else:
                job.attempt.lost = True

    async def hand_back(self, ids: list[UUID]) -> None:
        """Put messages we still hold back in the queue, due as they were, attempt refunded
        (a stop). A lost connection is tried again briefly before leaving them to their lease."""
        items = sorted((Finish(i, "pending", None, 1, None) for i in ids), key=id_order)
        for retry in range(3):
            try:
                await self.writes.finish(items)
                return
            except psycopg.Error as exc:
                if retry == 2 or not is_connection_error(exc):
                    raise
                await asyncio.sleep(0.2 * (retry + 1))

    def rescue_window(self) -> timedelta:
        """How long before a dead worker's lease ended its last send may have left: a lease
        (renewed while it lived), a send's deadline, Evolution's typing delay, a margin."""
        settings = self.settings
        return (
            settings.lease
            + settings.send_timeout
            + timedelta(milliseconds=settings.evolution_delay_ms, seconds=60)
        )

    async def rescue(self) -> list[tuple[UUID, str]]:
        """Take back rows whose lease expired (see queries.sql for who keeps the attempt)."""
        rows = await self._rescues.fetchall(
            q("rescue_expired"),
            {"max_attempts": self.settings.max_attempts, "window": self.rescue_window()},
        )
        return [(row[0], row[1]) for row in rows]

    async def sweep(self, max_age: timedelta) -> int:
        """The seed's sweep: skip pending rows that have not begun, due longer than `max_age`."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("sweep_old"), {"max_age": max_age})
            row = await cur.fetchone()
        return int(row[0]) if row else 0
