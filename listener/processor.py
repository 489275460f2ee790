"""The pipeline, top to bottom: claim due rows -> load their leads' contexts in one query ->
a sliding window of LISTENER_CONCURRENCY messages -> write (LLM) -> split -> send the parts in
order -> record. No HTTP details here: providers come in behind their Protocols.

Every write is guarded by the state and owner it expects (`status = 'processing' AND
locked_by = me`), so a worker whose lease was taken over can never finish a message twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from listener.batch import GroupCommit
from listener.db import within
from listener.errors import (
    EmptyReplyError,
    HoldBackError,
    InstanceMissingError,
    PermanentProviderError,
    ProviderError,
    RateLimitedError,
    UncertainDeliveryError,
)
from listener.gate import Gate
from listener.metrics import Health, Metrics
from listener.pacing import InstanceHealth, Wait
from listener.providers._http import mask_phone, shorten
from listener.providers.base import LLM, Sender, SentPart
from listener.queries import q
from listener.retry import after_failure, rate_limit_backoff
from listener.settings import Settings
from listener.split import UnsplittableReply, split_content, split_reply
from listener.text import clean_text

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
W = TypeVar("W", "_Store", "_Record", "_Finish")

FORMAT_INSTRUCTIONS = (
    "Write the outbound WhatsApp message for the lead described in the user message. "
    'Answer with JSON only: {"messages": ["first part", "second part"]}, one short part per '
    "WhatsApp bubble, at most {max_parts} parts, in the lead's language. Do not repeat what "
    "the lead's recent_messages already said."
)

# Rate-limit waits up to this long are slept through in place (the message keeps its slot and
# its lease); longer ones hand the message back to the queue for when the hold ends.
_MAX_IN_PLACE_WAIT = 60.0

# A batched write chosen as a deadlock's victim is run again this many times.
_DEADLOCK_RETRIES = 3

# A guarded write that lost its connection is tried again after these pauses (doubling up to
# the cap) for as long as the message's lease holds: the process knows what it must record.
_WRITE_RETRY_FIRST = 0.1
_WRITE_RETRY_CAP = 2.0

# A part whose send got no answer may have been delivered; it is sent at most this many times.
_MAX_UNCERTAIN_SENDS = 2


def is_data_error(exc: BaseException) -> bool:
    """A write refused for what it carries (bytes Postgres cannot store, a constraint), not
    for the connection: running it again will not help, running it alone isolates it."""
    return isinstance(exc, psycopg.DataError | psycopg.IntegrityError | UnicodeError)


def is_connection_error(exc: BaseException) -> bool:
    """The write may not have reached Postgres (or its answer did not come back)."""
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


_NOT_DIGIT = re.compile(r"[^0-9]")  # ASCII digits only: Evolution wants 0-9


def normalize_phone(raw: str | None) -> str | None:
    """Digits only, with country code; None when it cannot be a phone number (10-15 digits)."""
    if not raw:
        return None
    digits = _NOT_DIGIT.sub("", raw)
    return digits if 10 <= len(digits) <= 15 else None


@dataclass
class Job:
    """One claimed message and what the worker knows of it."""

    id: UUID
    campaign_id: UUID
    lead_id: UUID
    run_id: UUID | None
    attempts: int
    content: str | None
    parts: list[str] | None
    parts_sent: int
    scheduled_at: datetime
    campaign_prompt: str | None
    campaign_model: str | None
    campaign_instance: str | None
    campaign_status: str
    paced: bool = False
    gap: tuple[int, int] | None = None
    context: dict[str, Any] | None = None
    lost: bool = False
    claimed_at: float = field(default_factory=time.monotonic)
    # Until when (monotonic, a little early) our lease surely holds; renewals push it on.
    lease_until: float = 0.0
    # Inside a send or its record: a stop lets this finish instead of cancelling it.
    sending: bool = False

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        parts = row["parts"]
        return cls(
            id=row["id"],
            campaign_id=row["campaign_id"],
            lead_id=row["lead_id"],
            run_id=row["run_id"],
            attempts=row["attempts"],
            content=row["content"],
            parts=list(parts) if parts is not None else None,
            parts_sent=row["parts_sent"],
            scheduled_at=row["scheduled_at"],
            campaign_prompt=row["campaign_prompt"],
            campaign_model=row["campaign_model"],
            campaign_instance=row["campaign_instance"],
            campaign_status=row["campaign_status"],
            paced=bool(row.get("paced")),
            gap=(row["gap_min_seconds"], row["gap_max_seconds"])
            if row.get("gap_max_seconds")
            else None,
        )


class LeaseLost(Exception):
    """Our lease on a message was taken over; stop working on it without writing."""


class StopBetweenParts(Exception):
    """The shutdown's grace period is over: the message stops before its next part."""


class GateClosed(Exception):
    """A provider holds the whole listener back for longer than is worth waiting in place."""

    def __init__(self, gate: Gate) -> None:
        super().__init__(gate.reason)
        self.gate = gate


class MustWait(Exception):
    """Pacing says the message may not go now (its instance's gap); it is deferred."""

    def __init__(self, wait: Wait) -> None:
        super().__init__(wait.reason)
        self.wait = wait


@dataclass(frozen=True, slots=True)
class _Finish:
    id: UUID
    status: str
    scheduled_at: datetime | None
    refund: int
    last_error: str | None
    wait_reason: str | None = None


@dataclass(frozen=True, slots=True)
class _Record:
    id: UUID
    part_no: int
    provider_id: str
    final: bool


@dataclass(frozen=True, slots=True)
class _Store:
    id: UUID
    text: str | None
    parts: list[str]


def _by_id(item: _Store | _Record | _Finish) -> UUID:
    """Batched writes touch their rows in id order, the order an index scan of `id = ANY(...)`
    (renewing leases) uses too, which keeps deadlocks between them rare; a plan that does not
    follow it is covered by running the victim again."""
    return item.id


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
        self.pool = pool
        self.llm = llm
        self.sender = sender
        self.metrics = metrics or Metrics()
        self.health = health or Health()
        self.worker = settings.worker_id
        self.wake = asyncio.Event()
        self.llm_gate = Gate("llm")
        self.sender_gate = Gate("sender")
        self._held: dict[UUID, Job] = {}
        self._tasks: dict[UUID, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._room = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._on_request = on_request
        # Claim ahead at most one window's worth beyond the window itself: enough to keep the
        # slots busy while the next claim runs, never a whole backlog in memory.
        self._high_water = settings.concurrency * 2
        # One bad row (bytes Postgres refuses) fails only its own write: the batch it was in
        # runs again item by item.
        self._store = GroupCommit(self._flush_store, key=_by_id, isolate=is_data_error)
        self._record = GroupCommit(self._flush_record, key=_by_id, isolate=is_data_error)
        self._finish = GroupCommit(self._flush_finish, key=_by_id, isolate=is_data_error)
        # Set when the shutdown's grace period is over: messages stop between parts.
        self._past_grace = False
        self.next_due: datetime | None = None
        # Called with the next future due time whenever it is read (the daemon's wake timer).
        self.on_next_due: Callable[[datetime], None] | None = None
        self.instances = InstanceHealth(
            sender.connection_state, settings.instance_check_ttl.total_seconds()
        )

    # ----------------------------------------------------------------------------------------
    # Claiming
    # ----------------------------------------------------------------------------------------

    @property
    def held(self) -> int:
        return len(self._held)

    def stop_claiming(self) -> None:
        self._stopping = True
        self._stopped.set()
        self.wake.set()
        self._room.set()

    async def _wait_for_gates(self) -> None:
        """Sleep while a provider holds the listener back; wake at once on shutdown."""
        for gate in (self.llm_gate, self.sender_gate):
            while (remaining := gate.remaining) > 0 and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), timeout=remaining)

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
            while self.held >= self._high_water and not self._stopping:
                self._room.clear()
                await self._room.wait()
            if self._stopping:
                break
            await self._wait_for_gates()
            if self._stopping:
                break
            limit = min(settings.claim_batch, self._high_water - self.held)
            last_claim = time.monotonic()
            try:
                # A database that stops answering (a frozen connection raises nothing) must
                # not hang the loop: a claim slower than a lease is given up. Rows it may have
                # claimed meanwhile come back through their lease.
                jobs = await within(
                    self.claim(limit), settings.lease.total_seconds(), on_timeout=self._claim_hung
                )
                failures = 0
                self.health.db_ok = True
            except (psycopg.Error, TimeoutError) as exc:
                failures += 1
                self.health.db_ok = False
                why = str(exc)
                self.health.last_error = f"claim failed: {why}"
                delay = min(0.2 * 2**failures, 10.0)
                log.warning(
                    "claim failed, retrying in %.1fs: %s",
                    delay,
                    why,
                    extra={"action": "claim_failed"},
                )
                with contextlib.suppress(TimeoutError):  # a shutdown does not wait it out
                    await asyncio.wait_for(self._stopped.wait(), timeout=delay)
                more = True
                continue
            more = len(jobs) == limit
            if jobs:
                self._start(jobs)
            if not more:
                await self.refresh_next_due()

    def _claim_hung(self) -> None:
        self.health.db_ok = False
        self.health.last_error = "claim failed: the database did not answer within a lease"

    async def claim(self, limit: int) -> list[Job]:
        """Claim up to `limit` due rows and load their contexts (two round trips in all)."""
        lease_until = time.monotonic() + self._lease_margin()
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                q("claim"),
                {"limit": limit, "worker": self.worker, "lease": self.settings.lease},
            )
            rows = await cur.fetchall()
            if not rows:
                return []
            jobs = [Job.from_row(row) for row in rows]
            lead_ids = list({job.lead_id for job in jobs})
            await cur.execute(q("lead_contexts"), {"lead_ids": lead_ids})
            contexts = {row["lead_id"]: row["context"] for row in await cur.fetchall()}
        for job in jobs:
            job.context = contexts.get(job.lead_id)
            job.lease_until = lease_until
        now = datetime.now(UTC)
        for job in jobs:
            self.metrics.pickup_seconds.observe(max(0.0, (now - job.scheduled_at).total_seconds()))
        self.metrics.attempts.inc(len(jobs))
        self.metrics.batches.inc()
        log.info(
            "Loaded %d/%d lead contexts in batch",
            len(contexts),
            len(lead_ids),
            extra={"action": "batch_claimed", "messages": len(jobs), "in_flight": self.held},
        )
        return jobs

    def _lease_margin(self) -> float:
        """How long a lease taken (or renewed) now surely holds: its length, less a margin
        for the clock of the statement that took it."""
        lease = self.settings.lease.total_seconds()
        return lease - min(1.0, lease / 10)

    def _start(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._held[job.id] = job
            self._tasks[job.id] = asyncio.create_task(self._run(job))

    async def refresh_next_due(self) -> None:
        """Read when the next future row comes due (for the wake-up timer)."""
        try:
            async with self.pool.connection() as conn:
                cur = await conn.execute(q("next_due"))
                row = await cur.fetchone()
            self.next_due = row[0] if row else None
            if self.next_due is not None and self.on_next_due is not None:
                self.on_next_due(self.next_due)
        except psycopg.Error as exc:
            log.warning("next due lookup failed: %s", exc, extra={"action": "next_due_failed"})

    # ----------------------------------------------------------------------------------------
    # One message
    # ----------------------------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        try:
            async with self._slots:
                if self._stopping:
                    # Shutdown began before this message started: hand it back untouched.
                    await self._submit_finish(_Finish(job.id, "pending", None, 1, None), job)
                    return
                self.metrics.in_flight.inc()
                try:
                    outcome = await self._process(job)
                finally:
                    self.metrics.in_flight.dec()
                self.metrics.outcome(outcome).inc()
                self.metrics.processing_seconds.observe(time.monotonic() - job.claimed_at)
        except LeaseLost:
            log.warning(
                "lease lost, leaving the message to its new owner",
                extra={"action": "lease_lost", "message_id": str(job.id)},
            )
        except Exception as exc:
            if is_data_error(exc):
                # Postgres refused something of this message's own (it ran alone, so it is
                # this one): fail it with the reason rather than leave it to its lease, where
                # every new owner would meet the same refusal after sending again.
                reason = shorten(clean_text(f"the database refused this message's data: {exc}"))
                with contextlib.suppress(Exception):  # else its lease hands it back
                    await self._fail_now(job, reason)
                    self.metrics.outcome("failed").inc()
            elif isinstance(exc, psycopg.Error):
                # Our writes could not reach the database for the whole lease; the row will be
                # taken back by whoever is alive then. Nothing is lost.
                log.error(
                    "database write failed for a message; its lease will hand it back: %s",
                    exc,
                    extra={"action": "message_db_error", "message_id": str(job.id)},
                )
            else:  # a bug outside the provider calls: still give it an outcome
                log.exception(
                    "unexpected error while finishing a message",
                    extra={"action": "message_error", "message_id": str(job.id)},
                )
                error = f"unexpected error: {type(exc).__name__}: {exc}"
                with contextlib.suppress(Exception):  # else its lease hands it back
                    await self._retry_or_fail(job, error)
        finally:
            self._held.pop(job.id, None)
            self._tasks.pop(job.id, None)
            self._room.set()

    async def _process(self, job: Job) -> str:
        """Take one message to an outcome; returns the outcome for metrics and logs."""
        ctx = job.context
        if job.campaign_status == "archived":
            return await self._skip(job, "skipped: the campaign is archived")
        if ctx is None:
            return await self._fail_now(job, f"lead {job.lead_id} does not exist")
        if ctx.get("opted_out"):
            return await self._skip(job, "skipped: the lead opted out")
        number = normalize_phone(ctx.get("phone"))
        if number is None:
            return await self._fail_now(job, "invalid phone number: not 10 to 15 digits")
        instance = job.campaign_instance or self.settings.evolution_instance or "sandbox"

        return await self._attempt(job, ctx, instance, number)

    async def _attempt(self, job: Job, ctx: dict[str, Any], instance: str, number: str) -> str:
        """Pace, write, split and send one message; returns its outcome."""
        try:
            if await self.instances.is_down(instance):
                return await self._defer(
                    job,
                    Wait(datetime.now(UTC) + self.settings.instance_recheck, "instance down"),
                )
            # A message that has begun is finished: its window and cap were judged when its
            # first part went out, and its remaining parts are not held to them.
            if job.paced and job.parts_sent == 0:
                wait = await self._pace_start(job)
                if wait is not None:
                    return await self._defer(job, wait)
            parts = await self._parts(job, ctx)
            await self._send_parts(job, instance, number, parts)
        except LeaseLost:
            raise
        except StopBetweenParts:
            await self._submit_finish(_Finish(job.id, "pending", None, 1, None), job)
            return "handed back"
        except GateClosed as exc:
            return await self._hold_back(job, exc.gate.remaining, exc.gate.reason, "held back")
        except MustWait as exc:
            return await self._defer(job, exc.wait)
        except InstanceMissingError:
            self.instances.mark(instance, "missing")
            return await self._defer(
                job, Wait(datetime.now(UTC) + self.settings.instance_recheck, "instance down")
            )
        except EmptyReplyError as exc:
            return await self._fail_now(job, f"the LLM gave an empty reply after retries: {exc}")
        except UnsplittableReply as exc:
            what = (
                "the content"
                if job.content is not None and job.content.strip()
                else "the LLM reply"
            )
            why = "has no text to send" if type(exc) is UnsplittableReply else "cannot be sent"
            return await self._fail_now(job, f"{what} {why}: {exc}")
        except PermanentProviderError as exc:
            return await self._fail_now(job, f"{exc.provider}: {exc}")
        except HoldBackError as exc:
            return await self._hand_back(job, exc)
        except RateLimitedError as exc:
            return await self._hand_back(job, exc)
        except UncertainDeliveryError as exc:
            return await self._uncertain(job, len(job.parts or ()), exc)
        except ProviderError as exc:
            return await self._retry_or_fail(job, f"{exc.provider}: {exc}")
        except (psycopg.Error, UnicodeError):
            raise
        except Exception as exc:  # a bug or an unexpected reply: the message still gets an outcome
            log.exception(
                "unexpected error", extra={"action": "message_error", "message_id": str(job.id)}
            )
            return await self._retry_or_fail(job, f"unexpected error: {type(exc).__name__}: {exc}")
        log.info(
            "message sent to %s (%d parts)",
            mask_phone(number),
            len(parts),
            extra={"action": "message_sent", "message_id": str(job.id), "parts": len(parts)},
        )
        return "sent"

    # ----------------------------------------------------------------------------------------
    # Pacing
    # ----------------------------------------------------------------------------------------

    async def _pace_start(self, job: Job) -> Wait | None:
        """The campaign's window and daily cap, atomic in SQL. On success the message holds a
        slot of today's cap for as long as it is processing or sent, or once a part of it went
        out; back in the queue before that, whoever moved it, it holds nothing (0005)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                q("pace_start"), {"campaign_id": job.campaign_id, "message_id": job.id}
            )
            row = await cur.fetchone()
        assert row is not None
        go, until, reason, _ = row
        return None if go else Wait(until, reason)

    async def _take_gap(self, job: Job, instance: str) -> Wait | None:
        """Take the instance's next send slot; a wait of under half a second is slept through."""
        assert job.gap is not None
        until = datetime.now(UTC)
        for _ in range(3):
            async with self.pool.connection() as conn:
                cur = await conn.execute(
                    q("take_gap"), {"instance": instance, "min": job.gap[0], "max": job.gap[1]}
                )
                row = await cur.fetchone()
            assert row is not None
            if row[0]:
                return None
            until = row[1]
            remaining = (until - datetime.now(UTC)).total_seconds()
            if remaining > 0.5:
                break
            await asyncio.sleep(max(remaining, 0.0))
        return Wait(until, "gap")

    async def _gap_sent(self, job: Job, instance: str) -> None:
        """The first part was accepted: the next message through this instance goes a whole
        gap after this send, even if the send came late for its booking."""
        assert job.gap is not None
        try:
            async with self.pool.connection() as conn:
                await conn.execute(
                    q("gap_sent"), {"instance": instance, "min": job.gap[0], "max": job.gap[1]}
                )
        except psycopg.Error as exc:  # the booking taken before the send still spaces it
            log.warning(
                "could not stamp the gap after a send: %s",
                exc,
                extra={"action": "gap_stamp_failed", "message_id": str(job.id)},
            )

    async def _defer(self, job: Job, wait: Wait) -> str:
        """Not now: back to pending, due when it may go, attempt refunded, reason recorded."""
        await self._submit_finish(_Finish(job.id, "pending", wait.until, 1, None, wait.reason), job)
        log.info(
            "message waits until %s (%s)",
            wait.until.isoformat(timespec="seconds"),
            wait.reason,
            extra={"action": "message_deferred", "message_id": str(job.id), "reason": wait.reason},
        )
        return "deferred"

    async def _parts(self, job: Job, ctx: dict[str, Any]) -> list[str]:
        """The message's parts: stored ones on a resume, else from its content or the LLM,
        stored before the first part goes out so a retry never writes a different text."""
        if job.parts is not None:
            return job.parts
        settings = self.settings
        text: str | None = None
        if job.content is not None and job.content.strip():
            parts = split_content(
                job.content, max_parts=settings.max_parts, max_chars=settings.max_part_chars
            )
        else:
            text, parts = await self._write(job, ctx)
        self._check(job)
        await self._guarded(self._store, _Store(job.id, text, parts), job)
        job.parts = parts
        return parts

    async def _write(self, job: Job, ctx: dict[str, Any]) -> tuple[str, list[str]]:
        """Ask the LLM and split its reply; a reply with nothing to send is asked again, with
        the quick retries' backoff, before the message fails for it."""
        settings = self.settings
        for retry in range(settings.quick_retries + 1):
            text = clean_text(await self._generate(job, ctx))
            try:
                parts = split_reply(
                    text, max_parts=settings.max_parts, max_chars=settings.max_part_chars
                )
                # JSON escapes (`\u0000`, a lone `\ud800`) decode to what Postgres refuses.
                parts = [c for part in parts if (c := clean_text(part).strip())]
                if not parts:
                    raise UnsplittableReply("the reply has nothing but NUL bytes to send")
                return text, parts
            except UnsplittableReply as exc:
                if retry == settings.quick_retries:
                    raise
                pause = min(
                    settings.quick_retry_base.total_seconds() * 2**retry,
                    settings.quick_retry_max.total_seconds(),
                )
                log.warning(
                    "the LLM reply has nothing to send, asking again in %.1fs: %s",
                    pause,
                    exc,
                    extra={"action": "llm_reply_unsplittable", "message_id": str(job.id)},
                )
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    async def _generate(self, job: Job, ctx: dict[str, Any]) -> str:
        system = (job.campaign_prompt or "").strip()
        system = (system + "\n\n" if system else "") + FORMAT_INSTRUCTIONS.replace(
            "{max_parts}", str(self.settings.max_parts)
        )
        user = json.dumps({"lead": ctx}, ensure_ascii=False, default=str)
        model = job.campaign_model or self.settings.model
        if self._on_request is not None:
            self._on_request(job)
        return await self._call(
            self.llm_gate,
            "llm",
            job,
            lambda: self.llm.generate(model=model, system=system, user=user),
        )

    async def _send_parts(self, job: Job, instance: str, number: str, parts: list[str]) -> None:
        delay = self.settings.part_delay.total_seconds()
        first = job.parts_sent
        for index in range(first, len(parts)):
            if index > first and delay > 0:
                await asyncio.sleep(delay)
            if self._past_grace:
                raise StopBetweenParts()
            self._check(job)
            text = parts[index]
            # A paced instance: the gap is taken right before each try of the first part (a
            # rate-limit wait in between takes a fresh one), and stamped again once it is
            # accepted, so the spacing holds from the real send, not from the booking.
            gapped = job.gap is not None and index == 0

            async def send(text: str = text) -> SentPart:
                # From here until the part is recorded, a shutdown lets the task finish.
                job.sending = True
                return await self.sender.send_text(instance=instance, number=number, text=text)

            try:
                sent = await self._call(
                    self.sender_gate,
                    "sender",
                    job,
                    send,
                    before=(lambda: self._take_gap(job, instance)) if gapped else None,
                )
                # An accepted part is recorded before any other write, and its record is
                # retried through a lost connection: the process knows the provider's id.
                final = index == len(parts) - 1
                await self._guarded(
                    self._record, _Record(job.id, index, sent.provider_message_id, final), job
                )
            finally:
                job.sending = False
            job.parts_sent = index + 1
            self.metrics.parts_sent.inc()
            if gapped:
                await self._gap_sent(job, instance)

    async def _call(
        self,
        gate: Gate,
        provider: str,
        job: Job,
        call: Callable[[], Awaitable[T]],
        *,
        before: Callable[[], Awaitable[Wait | None]] | None = None,
    ) -> T:
        """One provider call through its gate. A rate limit holds the whole listener and is
        waited out in place (spending nothing) when short; longer holds are raised, and a
        message that finds the gate closed for longer is handed back (GateClosed), so no
        message sits `processing` through a long hold. `before` runs right before each try;
        a wait it returns defers the message (MustWait)."""
        while True:
            if not await gate.wait(longest=_MAX_IN_PLACE_WAIT):
                raise GateClosed(gate)
            self._check(job)
            if before is not None and (wait := await before()) is not None:
                raise MustWait(wait)
            started = time.monotonic()
            try:
                result = await call()
            except RateLimitedError as exc:
                self._observe(provider, started, exc)
                seconds = exc.retry_after
                if seconds is None or seconds <= 0:
                    # No usable Retry-After (missing, 0, a date already past): back off
                    # exponentially over the episode rather than ask again at once.
                    seconds = rate_limit_backoff(
                        gate.episode_hits + 1,
                        self.settings.rate_limit_base,
                        timedelta(seconds=_MAX_IN_PLACE_WAIT),
                    ).total_seconds()
                gate.hold(seconds, f"{provider} rate limit (HTTP {exc.status})")
                self.metrics.holds.labels(provider=provider, kind="rate_limit").inc()
                if seconds > _MAX_IN_PLACE_WAIT:
                    exc.retry_after = seconds
                    raise
                continue
            except HoldBackError as exc:
                self._observe(provider, started, exc)
                seconds = exc.retry_after or self.settings.hold.total_seconds()
                gate.hold(seconds, f"{provider} refused: {exc}", loud=True)
                self.metrics.holds.labels(provider=provider, kind="hold_back").inc()
                exc.retry_after = seconds
                raise
            except ProviderError as exc:
                self._observe(provider, started, exc)
                raise
            self._observe(provider, started, None)
            gate.passed()
            return result

    def _observe(self, provider: str, started: float, error: ProviderError | None) -> None:
        self.metrics.provider_latency(provider).observe(time.monotonic() - started)
        if error is not None:
            status = str(error.status or 0)
            self.metrics.provider_errors.labels(provider=provider, status=status).inc()

    def _check(self, job: Job) -> None:
        if job.lost:
            raise LeaseLost()

    # ----------------------------------------------------------------------------------------
    # Outcomes other than sent
    # ----------------------------------------------------------------------------------------

    async def _skip(self, job: Job, reason: str) -> str:
        await self._submit_finish(_Finish(job.id, "skipped", None, 0, reason), job)
        log.info(reason, extra={"action": "message_skipped", "message_id": str(job.id)})
        return "skipped"

    async def _fail_now(self, job: Job, reason: str) -> str:
        await self._submit_finish(_Finish(job.id, "failed", None, 0, reason), job)
        log.warning(
            "message failed: %s",
            reason,
            extra={"action": "message_failed", "message_id": str(job.id)},
        )
        return "failed"

    async def _retry_or_fail(self, job: Job, error: str) -> str:
        decision = after_failure(job.attempts, self.settings.retry_delays, error)
        if decision.kind == "retry" and decision.delay is not None:
            when = datetime.now(UTC) + decision.delay
            await self._submit_finish(_Finish(job.id, "pending", when, 0, decision.last_error), job)
            log.warning(
                decision.last_error,
                extra={
                    "action": "message_retry",
                    "message_id": str(job.id),
                    "attempt": job.attempts,
                },
            )
            return "retry"
        return await self._fail_now(job, decision.last_error)

    async def _uncertain(self, job: Job, parts: int, exc: UncertainDeliveryError) -> str:
        """A send got no answer: its part may have been delivered. It is sent once more at
        most (on the next try), never a third time: then the message fails saying so."""
        part = job.parts_sent
        sends = await self._guarded_execute(
            job, "note_uncertain", {"id": job.id, "part_no": part, "worker": self.worker}
        )
        label = f"part {part + 1} of {parts}" if parts else f"part {part + 1}"
        if sends >= _MAX_UNCERTAIN_SENDS:
            return await self._fail_now(
                job,
                f"{exc.provider}: {label} may have been delivered: its send got no answer "
                f"{sends} times, so it is not sent again ({exc})",
            )
        return await self._retry_or_fail(job, f"{exc.provider}: {exc}")

    async def _hand_back(self, job: Job, exc: RateLimitedError | HoldBackError) -> str:
        """The provider is holding us back: not the message's failure. It goes back to the
        queue, its attempt refunded, due when the hold ends."""
        seconds = exc.retry_after or self.settings.hold.total_seconds()
        note = f"held back by {exc.provider} (HTTP {exc.status}): {exc}"
        reason = "rate limit" if isinstance(exc, RateLimitedError) else "held back"
        return await self._hold_back(job, seconds, note, reason)

    async def _hold_back(self, job: Job, seconds: float, note: str, reason: str) -> str:
        when = datetime.now(UTC) + timedelta(seconds=max(seconds, 0.0))
        await self._submit_finish(_Finish(job.id, "pending", when, 1, note, reason), job)
        return "held"

    async def _submit_finish(self, item: _Finish, job: Job) -> None:
        await self._guarded(self._finish, item, job)

    async def _guarded(self, writer: GroupCommit[W], item: W, job: Job) -> None:
        """Submit one guarded write (see `_retrying`); LeaseLost when the row is not ours."""
        matched, retried = await self._retrying(job, lambda: writer.submit(item))
        if matched:
            return
        # After a lost answer the first try may have gone through: a part already recorded
        # is recorded.
        if retried and isinstance(item, _Record) and await self._recorded(item):
            return
        raise LeaseLost()

    async def _recorded(self, item: _Record) -> bool:
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("parts_sent"), {"id": item.id})
            row = await cur.fetchone()
        return row is not None and row[0] > item.part_no

    async def _guarded_execute(self, job: Job, name: str, params: dict[str, Any]) -> int:
        """One guarded single-row statement returning a number; LeaseLost when no row."""

        async def execute() -> int | None:
            async with self.pool.connection() as conn:
                cur = await conn.execute(q(name), params)
                row = await cur.fetchone()
            return None if row is None else int(row[0])

        value, _ = await self._retrying(job, execute)
        if value is None:
            raise LeaseLost()
        return value

    async def _retrying(self, job: Job, write: Callable[[], Awaitable[R]]) -> tuple[R, bool]:
        """Run a guarded write; on a lost connection run it again, with backoff, for as long
        as the message's lease holds (a blip must not give up what the process knows, such
        as an accepted part's id). Returns the result and whether it took more than one try."""
        pause = _WRITE_RETRY_FIRST
        retried = False
        while True:
            try:
                return await write(), retried
            except Exception as exc:
                if not is_connection_error(exc) or time.monotonic() + pause > job.lease_until:
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
    # Batched writes (group commit)
    # ----------------------------------------------------------------------------------------

    async def _execute_returning_ids(self, name: str, params: dict[str, Any]) -> set[Hashable]:
        """Run one batched write. Each is a single guarded statement (state, owner, part
        number), so when Postgres picks it as the victim of a deadlock with another of our
        writes it is simply run again."""
        for retry in range(_DEADLOCK_RETRIES + 1):
            try:
                async with self.pool.connection() as conn:
                    cur = await conn.execute(q(name), params)
                    return {row[0] for row in await cur.fetchall()}
            except psycopg.errors.DeadlockDetected:
                if retry == _DEADLOCK_RETRIES:
                    raise
                log.info(
                    "%s was a deadlock victim, running it again",
                    name,
                    extra={"action": "deadlock_retry", "statement": name},
                )
                # Let the other side, already waiting, take the rows and finish first.
                await asyncio.sleep(0.05 * (retry + 1))
        raise AssertionError("unreachable")

    async def _flush_store(self, items: list[_Store]) -> set[Hashable]:
        items = sorted(items, key=_by_id)  # every batched write locks rows in id order
        return await self._execute_returning_ids(
            "store_parts",
            {
                "ids": [i.id for i in items],
                "texts": [None if i.text is None else clean_text(i.text) for i in items],
                "parts": [json.dumps(i.parts, ensure_ascii=False) for i in items],
                "worker": self.worker,
            },
        )

    async def _flush_record(self, items: list[_Record]) -> set[Hashable]:
        items = sorted(items, key=_by_id)  # every batched write locks rows in id order
        return await self._execute_returning_ids(
            "record_parts",
            {
                "ids": [i.id for i in items],
                "part_nos": [i.part_no for i in items],
                "provider_ids": [clean_text(i.provider_id) for i in items],
                "finals": [i.final for i in items],
                "worker": self.worker,
            },
        )

    async def _flush_finish(self, items: list[_Finish]) -> set[Hashable]:
        items = sorted(items, key=_by_id)  # every batched write locks rows in id order
        return await self._execute_returning_ids(
            "finish",
            {
                "ids": [i.id for i in items],
                "statuses": [i.status for i in items],
                "scheduled": [i.scheduled_at for i in items],
                "refunds": [i.refund for i in items],
                "errors": [
                    None if i.last_error is None else clean_text(i.last_error) for i in items
                ],
                "reasons": [i.wait_reason for i in items],
                "worker": self.worker,
            },
        )

    # ----------------------------------------------------------------------------------------
    # Leases and shutdown
    # ----------------------------------------------------------------------------------------

    async def renew_leases(self) -> None:
        """Extend the lease of every message still held; mark the ones taken from us."""
        ids = list(self._held)
        if not ids:
            return
        lease_until = time.monotonic() + self._lease_margin()
        kept = await self._execute_returning_ids(
            "renew_leases", {"ids": ids, "worker": self.worker, "lease": self.settings.lease}
        )
        for message_id in ids:
            job = self._held.get(message_id)
            if job is None:
                continue
            if message_id in kept:
                job.lease_until = lease_until
            else:
                job.lost = True

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
        self._past_grace = True
        unfinished = list(self._tasks)
        late = list(self._tasks.values())
        for message_id, task in list(self._tasks.items()):
            job = self._held.get(message_id)
            if job is None or not job.sending:
                task.cancel()  # in a wait, a pause, the LLM or a pacing call: nothing in the air
        await asyncio.gather(*late, return_exceptions=True)
        leftover = list(set(self._held) | set(unfinished))
        if leftover:
            items = [_Finish(i, "pending", None, 1, None) for i in leftover]
            for retry in range(3):
                try:
                    await self._flush_finish(items)
                except psycopg.Error as exc:
                    if retry < 2 and is_connection_error(exc):
                        await asyncio.sleep(0.2 * (retry + 1))
                        continue
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
                break
            self._held.clear()
