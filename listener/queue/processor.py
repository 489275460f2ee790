"""The pipeline, top to bottom: the claim loop -> each message in a slot, through its
journey (listener/queue/journey.py: check, pace, write, split, send the parts in order,
record) -> the drain. No HTTP and no SQL here: providers come in behind their Protocols, the
database through the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from uuid import UUID

import psycopg
from psycopg_pool import AsyncConnectionPool

from listener.db import within
from listener.jobs import Finish, Job
from listener.metrics import Health, Metrics
from listener.pacing.health import InstanceHealth
from listener.pacing.pool import Senders
from listener.pacing.store import SenderStore
from listener.providers.base import LLM, Sender
from listener.providers.gate import Gate
from listener.queue.calls import ProviderCalls
from listener.queue.journey import Journey
from listener.queue.store import Claimed, LeaseLost, Store
from listener.queue.writing import Writer
from listener.settings import Settings

log = logging.getLogger(__name__)


class Processor:
    """Claims and processes messages; one per listener process."""

    def __init__(
        self,
        settings: Settings,
        pool: AsyncConnectionPool,
        llm: LLM,
        sender: Sender,
        *,
        metrics: Metrics | None = None,
        health: Health | None = None,
        on_request: Callable[[Job], None] | None = None,
    ) -> None:
        self.settings = settings
        self.llm = llm
        self.sender = sender
        self.metrics = metrics or Metrics()
        self.health = health or Health()
        self.store = Store(pool, settings)
        self.calls = ProviderCalls(settings, self.metrics)
        self.writer = Writer(settings, llm, self.calls, on_request=on_request)
        self.instances = InstanceHealth(
            sender.connection_state, settings.instance_check_ttl.total_seconds()
        )
        self.senders = Senders(settings, SenderStore(pool, settings), self.instances, self.metrics)
        self.journey = Journey(
            settings, self.store, self.calls, self.writer, sender, self.senders, self.metrics
        )
        self.wake = asyncio.Event()
        self._held: dict[UUID, Job] = {}
        self._tasks: dict[UUID, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._busy = 0  # messages inside their journey (the in-flight gauge, read when scraped)
        self.metrics.in_flight.set_function(lambda: self._busy)
        self._room = asyncio.Event()
        self._recording = 0  # held messages whose last part is accepted, being recorded
        self._stopping = False
        self._stopped = asyncio.Event()
        # Claim ahead at most one window's worth beyond the window itself: enough to keep the
        # slots busy while the next claim runs, never a whole backlog in memory (messages being
        # recorded, past their sends, do not count: see _Slot). A claim waits
        # until a window's worth of room is free: claiming whatever room a few finished
        # messages left split the window into cohorts that claim, store and record apart
        # (claims and flushes of 25 at concurrency 50, not 50), twice the statements for the
        # same work and 12-15 % fewer messages a second (docs/BENCHMARKS.md).
        self._high_water = settings.concurrency * 2
        self._claim_room = settings.concurrency
        self.next_due: datetime | None = None
        # Called with the next future due time whenever it is read (the daemon's wake timer).
        self.on_next_due: Callable[[datetime], None] | None = None

    @property
    def llm_gate(self) -> Gate:
        return self.calls.llm

    @property
    def sender_gate(self) -> Gate:
        return self.calls.sender

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def _unsent(self) -> int:
        """Held messages that may still call a provider: the claim's room counts these (one
        whose last part is being recorded no longer holds a window's place, see _Slot)."""
        return len(self._held) - self._recording

    # ----------------------------------------------------------------------------------------
    # The claim loop
    # ----------------------------------------------------------------------------------------

    def stop_claiming(self) -> None:
        self._stopping = True
        self._stopped.set()
        self.wake.set()
        self._room.set()

    async def claim_loop(self) -> None:
        """Claim whenever woken (or every poll interval), as much as the window can use soon.

        The first wake-up after an idle spell is handled at once; wake-ups that follow within
        the debounce window are folded into one claim at the window's end."""
        settings = self.settings
        debounce = settings.debounce.total_seconds()
        poll = settings.poll_interval.total_seconds()
        more = True  # on start, look for due rows without waiting for a notification
        last_claim = 0.0
        failures = 0
        while not self._stopping:
            self.health.tick()
            if not more:
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout=min(poll, 5.0))
                except TimeoutError:
                    if time.monotonic() - last_claim < poll:
                        continue
                if self._stopping:
                    break
                # Woken by a notification: fold the ones that follow within the window into
                # this claim. A backlog (the last claim came back full) claims back to back.
                since = time.monotonic() - last_claim
                if since < debounce:
                    await asyncio.sleep(debounce - since)
            self.wake.clear()
            while self._high_water - self._unsent < self._claim_room and not self._stopping:
                self._room.clear()
                await self._room.wait()
            await self._wait_for_gates()
            if self._stopping:
                break
            limit = min(settings.claim_batch, self._high_water - self._unsent)
            last_claim = time.monotonic()
            try:
                # A database that stops answering (a frozen connection raises nothing) must
                # not hang the loop: a claim slower than a lease is given up. Rows it may have
                # claimed meanwhile come back through their lease.
                jobs, claimed_at = await within(
                    self.claim(limit), settings.lease.total_seconds(), on_timeout=self._claim_hung
                )
                failures = 0
                self.health.db_ok = True
            except (psycopg.Error, TimeoutError) as exc:
                failures += 1
                self.health.db_ok = False
                self.health.last_error = f"claim failed: {exc}"
                delay = min(0.2 * 2**failures, 10.0)
                log.warning(
                    "claim failed, retrying in %.1fs: %s",
                    delay,
                    exc,
                    extra={"action": "claim_failed"},
                )
                with contextlib.suppress(TimeoutError):  # a shutdown does not wait it out
                    await asyncio.wait_for(self._stopped.wait(), timeout=delay)
                more = True
                continue
            more = len(jobs) == limit
            for job in jobs:
                self._held[job.id] = job
                self._tasks[job.id] = asyncio.create_task(self._run(job))
            if not more and claimed_at is not None:
                await self.refresh_next_due(claimed_at)

    async def _wait_for_gates(self) -> None:
        """Sleep while a provider holds the listener back; wake at once on shutdown."""
        for gate in (self.calls.llm, self.calls.sender):
            while (remaining := gate.remaining) > 0 and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), timeout=remaining)

    def _claim_hung(self) -> None:
        self.health.db_ok = False
        self.health.last_error = "claim failed: the database did not answer within a lease"

    async def claim(self, limit: int) -> Claimed:
        """Claim up to `limit` due rows with their leads' contexts."""
        claimed = await self.store.claim(limit)
        jobs = claimed.jobs
        if not jobs:
            return claimed
        now = datetime.now(UTC)
        for job in jobs:
            self.metrics.pickup_seconds.observe(
                max(0.0, (now - job.claim.scheduled_at).total_seconds())
            )
        self.metrics.attempts.inc(len(jobs))
        self.metrics.batches.inc()
        leads = {job.claim.lead_id for job in jobs}
        found = {job.claim.lead_id for job in jobs if job.plan.context is not None}
        log.info(
            "Loaded %d/%d lead contexts in batch",
            len(found),
            len(leads),
            extra={"action": "batch_claimed", "messages": len(jobs), "in_flight": self.held},
        )
        return claimed

    async def refresh_next_due(self, claimed_at: datetime) -> None:
        """Read when the next row comes due after the last claim (its time on the database's
        clock), for the wake-up timer: one that came due while the claim's answer travelled
        gives a time already past, so the timer fires at once and the next claim takes it."""
        try:
            self.next_due = await self.store.next_due(claimed_at)
        except psycopg.Error as exc:
            log.warning("next due lookup failed: %s", exc, extra={"action": "next_due_failed"})
            return
        if self.next_due is not None and self.on_next_due is not None:
            self.on_next_due(self.next_due)

    # ----------------------------------------------------------------------------------------
    # One message in its slot (its journey is listener/queue/journey.py)
    # ----------------------------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        slot = _Slot(self)
        try:
            await slot.take()
            if self._stopping:
                # Shutdown began before this message started: hand it back untouched.
                await self.store.finish(Finish(job.id, "pending", None, 1, None), job)
                return
            slot.begin()
            name = await self.journey.run(job, last_sent=slot.sent)
            self.metrics.outcome(name).inc()
            self.metrics.processing_seconds.observe(time.monotonic() - job.claim.claimed_at)
        except LeaseLost:
            log.warning(
                "lease lost, leaving the message to its new owner",
                extra={"action": "lease_lost", "message_id": str(job.id)},
            )
        except psycopg.Error as exc:
            # Our writes could not reach the database for as long as the lease held; the row
            # is taken back by whoever is alive then (our attempt refunded if that is us).
            log.error(
                "database write failed for a message; its lease will hand it back: %s",
                exc,
                extra={"action": "message_db_error", "message_id": str(job.id)},
            )
        except Exception:  # a bug, or an outcome Postgres refused: the lease hands it back
            log.exception(
                "could not finish a message; its lease will hand it back",
                extra={"action": "message_error", "message_id": str(job.id)},
            )
        finally:
            slot.end()
            self._held.pop(job.id, None)
            self._tasks.pop(job.id, None)
            self._room.set()

    def restrict(self, instance: str, reason: str, seconds: float | None = None) -> bool:
        """WhatsApp restricted the instance's number (delivery feedback): hold its messages at
        once, for `seconds` (a run of failed first parts), or until its connectionState reads
        `open` again (logged out, banned). False when it was already held."""
        if seconds is not None:
            held = self.instances.hold(instance, f"restricted: {reason}", seconds)
        else:
            self.instances.mark(instance, f"restricted: {reason}")
            held = True
        self.senders.hold_soon(instance)
        return held

    # ----------------------------------------------------------------------------------------
    # Leases and the drain
    # ----------------------------------------------------------------------------------------

    async def renew_leases(self) -> None:
        """Extend the lease of every message still held; mark the ones taken from us. How long
        it took is `listener_lease_renewal_seconds`."""
        if self._held:
            began = time.monotonic()
            await self.store.renew(list(self._held.values()))
            self.metrics.renewal_seconds.observe(time.monotonic() - began)

    async def drain(self, grace: float) -> None:
        """Stop claiming, let in-flight messages finish within `grace` seconds, then hand the
        rest back to the queue with their attempt refunded. Past the grace, a message stops
        between parts, never inside a send: one whose part is in the air (or being recorded)
        is let finish that part and record it first, bounded by the send's own deadline.
        Call it once the claim loop has ended, so no message starts after the drain began."""
        self.stop_claiming()
        deadline = time.monotonic() + grace
        if self._tasks:
            log.info(
                "finishing %d messages in flight (grace %.0fs)",
                len(self._tasks),
                grace,
                extra={"action": "draining", "in_flight": len(self._tasks)},
            )
        while self._tasks and (left := deadline - time.monotonic()) > 0:
            await asyncio.wait(list(self._tasks.values()), timeout=left)
        self.journey.past_grace = True
        unfinished = list(self._tasks)
        late = list(self._tasks.values())
        for message_id, task in list(self._tasks.items()):
            job = self._held.get(message_id)
            if job is None or not job.attempt.sending:
                task.cancel()  # in a wait, a pause, the LLM or a pacing call: nothing in the air
        await asyncio.gather(*late, return_exceptions=True)
        leftover = list(set(self._held) | set(unfinished))
        if not leftover:
            return
        try:
            await self.store.hand_back(leftover)
        except psycopg.Error as exc:
            log.error(
                "could not hand back %d messages; their leases will: %s",
                len(leftover),
                exc,
                extra={"action": "hand_back_failed"},
            )
        else:
            log.info(
                "handed back %d messages",
                len(leftover),
                extra={"action": "handed_back", "messages": len(leftover)},
            )
        self._held.clear()


class _Slot:
    """A message's place among the `concurrency` in flight (and in the in-flight gauge),
    given back once: when its last part is accepted (`sent`), else when its journey ends.
    Recording that part is our own write, not a provider's work: the next message's work
    overlaps it instead of waiting for it (in a drain, a claim's messages record together,
    and the next claim's were idle meanwhile). Such a message is still held (its lease
    renewed, a graceful stop waits for it) until it is recorded, but no longer counts against
    the claim's room, which bounds the messages that may still call the LLM."""

    __slots__ = ("_busy", "_processor", "_recording", "_taken")

    def __init__(self, processor: Processor) -> None:
        self._processor = processor
        self._taken = False
        self._busy = False
        self._recording = False

    async def take(self) -> None:
        await self._processor._slots.acquire()
        self._taken = True

    def begin(self) -> None:
        self._busy = True
        self._processor._busy += 1

    def sent(self) -> None:
        """The last part was accepted: the place is free, the claim may use its room."""
        self.give_back()
        self._recording = True
        self._processor._recording += 1
        self._processor._room.set()

    def give_back(self) -> None:
        if self._busy:
            self._busy = False
            self._processor._busy -= 1
        if self._taken:
            self._taken = False
            self._processor._slots.release()

    def end(self) -> None:
        """The message is done (whatever its outcome)."""
        self.give_back()
        if self._recording:
            self._recording = False
            self._processor._recording -= 1
