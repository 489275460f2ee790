"""Holds (docs/design.md, "Pacing and sender pools"): what a listener does while a number
cannot send, or a whole campaign may not.

- A number this listener finds down (not connected, missing, restricted, unknown to
  Evolution) is held once, in the database, and the messages that cannot go without it are
  moved out of the claim's way in short batches (`hold`, `hold_soon`).
- `recheck`, a periodic job: held numbers are asked again (not their messages); one that is
  back has its waiting messages made due at once.
- `spread`: a hold of a whole campaign (its window, its cap, its budget) found by one message
  is passed to its other due messages, instead of each being claimed and put back: moved aside
  in short batches by a task of its own (the claim passes over the campaign meanwhile), and
  taken up again by `resume_holds` when a listener was cut off mid-move (a number's too).

`Senders` (pool.py) extends this with the choice of a number and its slot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from uuid import UUID

import psycopg

from listener.flow import Wait
from listener.jobs import Job
from listener.metrics import Metrics
from listener.pacing.health import InstanceHealth
from listener.pacing.store import SenderStore
from listener.settings import Settings

log = logging.getLogger(__name__)

#: How far the messages of a held number are moved: a listener makes them due as soon as the
#: number is back; this only bounds the wait if no listener runs meanwhile.
BACKSTOP = timedelta(hours=1)

#: A campaign hold ending this much later than one already passed on is not passed on again.
_SPREAD_AGAIN = timedelta(minutes=1)

#: Holds of a whole campaign, passed to its other messages at once.
CAMPAIGN_HOLDS = frozenset({"window", "cap", "budget"})

_UP = ("open", "unknown")

UNKNOWN_TO_EVOLUTION = "unknown to Evolution"
#: Why a number is held: not connected, restricted by WhatsApp, or unknown to Evolution (404);
#: the database's `listener_number_holds()` is the same list (a test holds the two together).
NUMBER_HOLDS = ("instance down", "instance restricted", UNKNOWN_TO_EVOLUTION)


class Holds:
    """The holds of numbers and campaigns, for one listener."""

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

    # ----------------------------------------------------------------------------------------
    # Holds: the number is checked, not its messages
    # ----------------------------------------------------------------------------------------

    async def _up(self, names: list[str]) -> list[str]:
        """The numbers among `names` whose state lets them send; each one found down is held
        in the database (once), which puts its messages aside."""
        if len(names) == 1:  # the common case, without gather's tasks
            known = self.health.fresh(names[0])
            states = [known if known is not None else await self.health.state(names[0])]
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
        that is back has its hold ended and its waiting messages made due."""
        for name, reason in await self.store.held_due(self.settings.instance_recheck):
            if self.health.held_until(name) is not None:
                continue  # a timed hold of this listener (a restriction): asked when it ends
            self.health.forget(name)
            if await self.health.state(name) not in _UP:
                # Still down: the stored reason follows what is true now (a number held as
                # restricted that Evolution now answers 404 for was deleted, and the other way
                # round), and so do its messages aside (the hold's batches relabel them); a
                # restriction that reads `close` stays a restriction.
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
