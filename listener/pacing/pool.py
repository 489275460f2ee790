"""Sender pools (docs/design.md, "Pacing and sender pools"): which WhatsApp number a message goes
through, when, and what its messages do while a number cannot send. The rules that must hold
across listeners (sticky sender, soonest free number, gap, caps, warm-up) are one SQL function
with row locks (migrations/functions/listener_pick_sender.sql); this module asks it at the right
moments:

- `check`, before any work on a message: is some number of its pool up? A number this listener
  finds down (not connected, missing, restricted) is held once, in the database, and the
  messages that cannot go without it are moved out of the claim's way in short batches.
  For a message that still needs the LLM and a pool with choices or limits, a first reading of
  the pool says whether it can go soon at all, so no text is written for a message that waits.
- `book`, right before the first part: the number and its slot, booked. A slot within
  `HORIZON` is slept for in place, so the number's next message is ready when its slot opens
  (handing it back and claiming it again would leave the number idle meanwhile).
- the holds of numbers and campaigns (`recheck`, `spread`, `resume_holds`): holds.py, which
  `Senders` extends.

A single-number campaign without a gap or limits never calls the database here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from uuid import UUID

import psycopg

from listener.flow import MustWait, Wait
from listener.jobs import Job
from listener.metrics import Metrics
from listener.pacing.health import InstanceHealth
from listener.pacing.holds import BACKSTOP, NUMBER_HOLDS, Holds
from listener.pacing.store import SenderStore
from listener.settings import Settings

log = logging.getLogger(__name__)

#: A number's turn at most this many seconds away is booked and slept for in place.
HORIZON = 2.0

#: Waits logged once per episode (here, or by the gate or writer that found them), not once
#: per message.
QUIET_WAITS = frozenset(
    {
        *NUMBER_HOLDS,
        "no sender",
        "sender cap",
        "gap",
        "budget",
        "window",
        "cap",
    }
)

_AT_ONCE: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()


class Senders(Holds):
    """The numbers of each message's pool, for one listener (its holds: `Holds`)."""

    def __init__(
        self,
        settings: Settings,
        store: SenderStore,
        health: InstanceHealth,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(settings, store, health, metrics)
        # When each message's first part was answered (monotonic), until its stamp.
        self._answered: dict[UUID, float] = {}
        # Whether the default number has limits (None: not read yet).
        self._default_limited: bool | None = None

    def pool(self, job: Job) -> list[str]:
        """The campaign's numbers: its pool, else its instance, else the default one; a
        follow-up step goes through the number its sequence went through."""
        if job.claim.step_instance:
            return [job.claim.step_instance]
        if job.claim.campaign_instances:
            return list(job.claim.campaign_instances)
        return [job.claim.campaign_instance or self.settings.evolution_instance or "sandbox"]

    def _paced(self, job: Job, pool: list[str]) -> bool:
        return len(pool) > 1 or job.claim.gap is not None or job.plan.sender_limits

    async def _default_limits(self, job: Job) -> None:
        """A campaign that names no number sends through the default one, whose limits the
        claim does not look up: known here, read at the first such message and again at
        every recheck."""
        if job.claim.campaign_instances or job.claim.campaign_instance or job.plan.sender_limits:
            return
        if self._default_limited is None:
            await self._read_default_limits()
        job.plan.sender_limits = bool(self._default_limited)

    async def _read_default_limits(self) -> None:
        default = self.settings.evolution_instance or "sandbox"
        self._default_limited = await self.store.sender_limited(default)

    async def recheck(self) -> None:
        """The holds' recheck (`Holds.recheck`), and whether the default number has limits,
        read again."""
        await self._read_default_limits()
        await super().recheck()

    # ----------------------------------------------------------------------------------------
    # Before any work, and right before the first part
    # ----------------------------------------------------------------------------------------

    async def check(self, job: Job) -> str:
        """The number the message goes through as far as is known before any work (its own
        once a part may have reached the lead); MustWait when no number of its pool can send
        (nothing spent)."""
        await self._default_limits(job)
        pool = self.pool(job)
        if self.metrics is not None:  # its numbers get labels of their own on /metrics
            self.metrics.sender_held.know(pool)
        own = job.plan.sender_instance
        names = [own] if own else pool
        up = await self._up(names)
        if not up:
            reason = self.health.wait_reason(names[0]) if len(names) == 1 else "no sender"
            raise MustWait(Wait(datetime.now(UTC) + BACKSTOP, reason))
        if own is not None:
            # Started: only its own number will do, and it may have been disabled or held by
            # another listener (the database knows).
            picked = await self.store.pick_sender(job, pool, own=own, horizon=HORIZON, book=False)
            if not picked.go:
                raise MustWait(self._wait(job, [own], picked.wait_until, picked.reason))
            return own
        if not self._paced(job, pool):
            return up[0]
        needs_llm = job.plan.parts is None and not (job.claim.content and job.claim.content.strip())
        if needs_llm and (len(pool) > 1 or job.plan.sender_limits):
            picked = await self.store.pick_sender(job, pool, own=None, horizon=HORIZON, book=False)
            if not picked.go:
                raise MustWait(self._wait(job, pool, picked.wait_until, picked.reason))
            assert picked.instance is not None
            return picked.instance
        return up[0]

    async def book(self, job: Job, instance: str) -> str:
        """Right before the first part: the number it goes through, its slot booked and waited
        for (MustWait when the number's turn is further than HORIZON, or none can send).
        Later parts go through the same number without a gap."""
        if job.plan.parts_sent > 0:
            return instance
        own = job.plan.sender_instance
        if own is not None:  # a first part that may have gone out is sent again through it
            if (
                job.claim.gap is not None
                and (wait := await self.retake(own, job.claim.gap)) is not None
            ):
                raise MustWait(wait)
            return own
        pool = self.pool(job)
        if not self._paced(job, pool):
            return instance
        picked = await self.store.pick_sender(job, pool, own=None, horizon=HORIZON, book=True)
        if not picked.go or picked.instance is None:
            raise MustWait(self._wait(job, pool, picked.wait_until, picked.reason))
        job.plan.sender_instance = picked.instance
        await _sleep_until(picked.slot_at)
        return picked.instance

    def before_retry(self, job: Job, instance: str) -> Callable[[], Awaitable[Wait | None]] | None:
        """For the first part's send: nothing before its first try (`book` took the slot); a
        try after a rate-limit wait books a fresh slot, so the gap holds from the real send."""
        gap = job.claim.gap
        if gap is None or job.plan.parts_sent > 0:
            return None
        tries = 0

        async def before() -> Wait | None:
            nonlocal tries
            tries += 1
            return None if tries == 1 else await self.retake(instance, gap)

        return before

    async def retake(self, instance: str, gap: tuple[float, float]) -> Wait | None:
        """Book the number's next slot and wait for it, or say when to come back."""
        slot, until = await self.store.retake_gap(instance, gap, HORIZON)
        if slot is None:
            assert until is not None
            return Wait(until, "gap")
        await _sleep_until(slot)
        return None

    def sending(self, job: Job, instance: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Around each try of a paced message's first part: it leaves only once the previous
        send through the number was answered a whole `gap_min_seconds` ago (so no two arrive
        closer, however late the previous one left); a try that fails counts as answered.
        Any other send goes at once (a shared no-op: nothing made per part)."""
        gap = job.claim.gap
        if gap is None or job.plan.parts_sent > 0:
            return _AT_ONCE
        return self._spaced(job, instance, gap)

    @contextlib.asynccontextmanager
    async def _spaced(
        self, job: Job, instance: str, gap: tuple[float, float]
    ) -> AsyncIterator[None]:
        while True:  # the database's clock says when: no local event can say it sooner
            wait, reserved = await self.store.send_wait(job, instance, gap[0])
            if reserved:
                break
            await asyncio.sleep(wait)
        try:
            if wait > 0:
                await asyncio.sleep(wait)
            yield
        except BaseException:
            with contextlib.suppress(psycopg.Error):  # else the mark goes stale in a send's time
                await self.store.send_answered(instance, None, 0.0)
            raise
        self._answered[job.id] = time.monotonic()

    async def sent(self, job: Job, instance: str) -> None:
        """The first part was accepted through `instance` (and recorded): the next message
        through it goes a whole gap after the answer, even if it came late for its booking."""
        answered = self._answered.pop(job.id, None)
        if job.claim.gap is not None:
            ago = time.monotonic() - answered if answered is not None else 0.0
            await self.store.send_answered(instance, job.claim.gap, ago)

    def _wait(self, job: Job, pool: list[str], until: datetime | None, reason: str | None) -> Wait:
        """A wait the pool function gave; a pool with no number to send through waits for
        one to be back (a listener makes its messages due then), logged once."""
        now = datetime.now(UTC)
        reason = reason or "no sender"
        if reason in ("no sender", *NUMBER_HOLDS):
            until = now + BACKSTOP
            self._once(
                ("pool", tuple(pool), reason),
                until,
                "no number of the pool %s can send (%s): its messages wait until one is back",
                ",".join(pool),
                reason,
            )
        elif reason == "sender cap":
            assert until is not None
            self._once(
                ("cap", tuple(pool)),
                until,
                "the numbers of the pool %s reached their caps: messages wait until %s",
                ",".join(pool),
                until.isoformat(timespec="seconds"),
            )
        return Wait(until or now + BACKSTOP, reason)


async def _sleep_until(when: datetime | None) -> None:
    if when is None:
        return
    delay = (when - datetime.now(UTC)).total_seconds()
    if delay > 0:
        await asyncio.sleep(delay)
