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
- `recheck`, a periodic job: held numbers are asked again (not their messages); one that is
  back has its waiting messages made due at once.
- `spread`: a hold of a whole campaign (its window, its cap, its budget) found by one message
  is passed to its other due messages, instead of each being claimed and put back: moved aside
  in short batches by a task of its own (the claim passes over the campaign meanwhile), and
  taken up again by `resume_holds` when a listener was cut off mid-move (a number's too).

A single-number campaign without a gap or limits never calls the database here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from uuid import UUID

import psycopg

from listener.flow import MustWait, Wait
from listener.jobs import Job
from listener.metrics import Metrics
from listener.pacing.health import InstanceHealth
from listener.pacing.store import SenderStore
from listener.settings import Settings

log = logging.getLogger(__name__)

#: A number's turn at most this many seconds away is booked and slept for in place.
HORIZON = 2.0

#: How far the messages of a held number are moved: a listener makes them due as soon as the
#: number is back; this only bounds the wait if no listener runs meanwhile.
BACKSTOP = timedelta(hours=1)

#: Waits logged once per episode (here, or by the gate or writer that found them), not once
#: per message.
QUIET_WAITS = frozenset(
    {
        "instance down",
        "instance restricted",
        "unknown to Evolution",
        "no sender",
        "sender cap",
        "gap",
        "budget",
        "window",
        "cap",
    }
)

#: A campaign hold ending this much later than one already passed on is not passed on again.
_SPREAD_AGAIN = timedelta(minutes=1)

#: Holds of a whole campaign, passed to its other messages at once.
CAMPAIGN_HOLDS = frozenset({"window", "cap", "budget"})

_UP = ("open", "unknown")

UNKNOWN_TO_EVOLUTION = "unknown to Evolution"
#: Why a number is held: not connected, restricted by WhatsApp, or unknown to Evolution (404).
NUMBER_HOLDS = ("instance down", "instance restricted", UNKNOWN_TO_EVOLUTION)
_AT_ONCE: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()


class Senders:
    """The numbers of each message's pool, for one listener."""

    def __init__(
        self,
        settings: Settings,
        store: SenderStore,
        health: InstanceHealth,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.health = health
        self.metrics = metrics
        # Numbers this listener held in the database, with when (monotonic): within a state
        # read's lifetime, their messages are put aside without asking the database again.
        self._held: dict[str, float] = {}
        # Episodes already logged or spread: key -> until.
        self._told: dict[tuple[object, ...], datetime] = {}
        self._tasks: set[asyncio.Task[None]] = set()
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

    # ----------------------------------------------------------------------------------------
    # Holds: the number is checked, not its messages
    # ----------------------------------------------------------------------------------------

    async def _up(self, names: list[str]) -> list[str]:
        """The numbers among `names` whose state lets them send; each one found down is held
        in the database (once), which puts its messages aside."""
        if len(names) == 1:  # the common case, without gather's tasks
            states = [await self.health.state(names[0])]
        else:
            states = await asyncio.gather(*(self.health.state(name) for name in names))
        up: list[str] = []
        for name, state in zip(names, states, strict=True):
            if state in _UP:
                if self._held.pop(name, None) is not None:
                    self._gauge(name, 0)
                up.append(name)
            elif not await self._hold(name):
                # Released since that state was read (another listener found it back): read
                # it again.
                self.health.forget(name)
                if await self.health.state(name) in _UP:
                    up.append(name)
        return up

    def hold_soon(self, name: str) -> None:
        """A restriction reported by delivery feedback: hold the number in the database now
        (its messages put aside, `listener stats` shows it), not when its next message comes."""
        task = asyncio.get_running_loop().create_task(self.hold(name, fresh=True))
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._hold_done(name, done))

    def _hold_done(self, name: str, task: asyncio.Task[None]) -> None:
        """A hold that failed for a reason `hold` does not expect is said here, never left as
        "Task exception was never retrieved" (the next message through the number holds it)."""
        self._tasks.discard(task)
        if task.cancelled() or (exc := task.exception()) is None:
            return
        log.error(
            "could not hold sender instance %r: %s: %s",
            name[:80],
            type(exc).__name__,
            exc,
            extra={"action": "sender_hold_failed"},
        )

    async def hold(self, name: str, *, fresh: bool = False) -> None:
        """A send found the number down (missing, not connected): hold it now (`fresh`: even
        if this listener held it a moment ago, as the reason may be new)."""
        if fresh:
            self._held.pop(name, None)
        try:
            await self._hold(name)
        except psycopg.Error as exc:  # the next message through it holds it
            log.warning(
                "could not hold sender instance %s: %s",
                name,
                exc,
                extra={"action": "sender_hold_failed", "instance": name},
            )

    async def _hold(self, name: str) -> bool:
        """Hold the number in the database; False when the state read is stale."""
        now_mono = time.monotonic()
        since = self._held.get(name)
        if since is not None and now_mono - since < self.health.ttl:
            return True
        now = datetime.now(UTC)
        read_at = self.health.read_at(name)
        seen_at = now - timedelta(seconds=now_mono - read_at) if read_at is not None else now
        ends = self.health.held_until(name)
        until = (
            now + timedelta(seconds=ends - now_mono)
            if ends is not None
            else now + self.settings.instance_recheck
        )
        reason = self.health.wait_reason(name)
        result = await self.store.hold_sender(
            name, reason, until, max(until, now + BACKSTOP), seen_at
        )
        if result is None:
            return False
        began, moved = result
        self._held[name] = now_mono
        self._gauge(name, 1, reason)
        if began:
            log.info(
                "holding sender instance %s (%s): %d waiting messages put aside until it is back",
                name,
                reason,
                moved,
                extra={"action": "sender_held", "instance": name, "messages": moved},
            )
        return True

    def _gauge(self, name: str, value: int, reason: str | None = None) -> None:
        """`listener_sender_held`: 1 under the hold's reason; 0 under every reason when back."""
        if self.metrics is not None:
            reasons = (reason,) if reason is not None else NUMBER_HOLDS
            self.metrics.sender_held.set(name, value, reasons)

    async def recheck(self) -> None:
        """Ask the held numbers whose recheck is due (each taken by one listener); a number
        that is back has its hold ended and its waiting messages made due. (And read again
        whether the default number has limits.)"""
        await self._read_default_limits()
        for name, reason in await self.store.held_due(self.settings.instance_recheck):
            if self.health.held_until(name) is not None:
                continue  # a timed hold of this listener (a restriction): asked when it ends
            self.health.forget(name)
            if await self.health.state(name) not in _UP:
                # Still down: the stored reason follows what is true now (a number held as
                # restricted that Evolution now answers 404 for was deleted, and the other way
                # round); a restriction that reads `close` stays a restriction.
                now = self.health.wait_reason(name)
                if now != reason and UNKNOWN_TO_EVOLUTION in (now, reason):
                    self._gauge(name, 0)
                    await self.hold(name, fresh=True)
                continue
            self._held.pop(name, None)
            woken = await self.store.release_sender(name)
            self._gauge(name, 0)
            log.info(
                "sender instance %s is back (was: %s): %d waiting messages are due again",
                name,
                reason,
                woken,
                extra={"action": "sender_released", "instance": name, "messages": woken},
            )

    # ----------------------------------------------------------------------------------------
    # Holds of a whole campaign
    # ----------------------------------------------------------------------------------------

    async def spread(self, job: Job, wait: Wait) -> None:
        """A message found its whole campaign held (window, cap, budget): the campaign's other
        due messages that have not started wait too, moved aside once, in batches, by a task
        of its own (the message's slot is free meanwhile; see Store.hold_campaign)."""
        if wait.reason not in CAMPAIGN_HOLDS or job.plan.parts_sent > 0:
            return
        if job.claim.lead_clock and wait.reason != "budget":
            return  # judged in this lead's zone: the campaign's other leads may be in theirs
        key: tuple[object, ...] = ("campaign", job.claim.campaign_id, wait.reason)
        told = self._told.get(key)
        if told is not None and told >= wait.until - _SPREAD_AGAIN:
            return  # (a budget's recheck moves with each message's clock: not a new hold)
        self._remember(key, wait.until)
        task = asyncio.get_running_loop().create_task(self._hold_campaign(key, job, wait))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hold_campaign(self, key: tuple[object, ...], job: Job, wait: Wait) -> None:
        try:
            moved = await self.store.hold_campaign(job.claim.campaign_id, wait)
        except Exception as exc:
            if not isinstance(exc, psycopg.Error):
                self._told.pop(key, None)
                log.exception(
                    "moving the campaign's other messages aside failed",
                    extra={"action": "campaign_wait_failed"},
                )
                return
            # Cut off mid-move: the hold stays in the database and a listener takes it up
            # (resume_holds); cut off before it began: the next message of the campaign
            # begins it again.
            self._told.pop(key, None)
            log.warning(
                "could not move the campaign's other messages aside: %s",
                exc,
                extra={"action": "campaign_wait_failed"},
            )
            return
        if moved is not None and wait.reason != "budget":  # the writer says it once
            log.info(
                "campaign %s waits until %s (%s): %d more of its messages wait with it",
                job.claim.campaign_id,
                wait.until.isoformat(timespec="seconds"),
                wait.reason,
                moved,
                extra={"action": "campaign_wait", "reason": wait.reason, "messages": moved},
            )

    async def resume_holds(self) -> None:
        """A periodic job: holds of a campaign or a number whose listener was cut off mid-move
        are taken up, so their messages are never claimed and put back a few at a time."""
        for held, reason, moved in await self.store.resume_holds():
            what = "campaign" if isinstance(held, UUID) else "sender"
            log.info(
                "took up the hold of %s %s (%s) cut off mid-move: %d messages moved aside",
                what,
                held,
                reason,
                moved,
                extra={"action": f"{what}_hold_resumed", "reason": reason, "messages": moved},
            )

    async def aclose(self) -> None:
        """Wait briefly for holds under way (a stop); one cut off is taken up later."""
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=2)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    def _once(self, key: tuple[object, ...], until: datetime, message: str, *args: object) -> None:
        told = self._told.get(key)
        if told is not None and told >= until - BACKSTOP / 2:
            return
        self._remember(key, until)
        log.info(message, *args, extra={"action": "sender_wait"})

    def _remember(self, key: tuple[object, ...], until: datetime) -> None:
        if len(self._told) > 10_000:
            now = datetime.now(UTC)
            self._told = {k: v for k, v in self._told.items() if v > now}
        self._told[key] = until


async def _sleep_until(when: datetime | None) -> None:
    if when is None:
        return
    delay = (when - datetime.now(UTC)).total_seconds()
    if delay > 0:
        await asyncio.sleep(delay)
