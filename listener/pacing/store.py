"""The pacing rooms' SQL: a campaign's window and daily cap, each sender number's slot, its
holds, and a campaign's hold moved aside in batches. The rules themselves are SQL functions
(migrations/functions/), atomic across listeners; this store only asks them.

A message's own writes (its parts, its outcome) are the queue's store's; this one touches a
message only to book it a slot or move it out of the claim's way while it must wait."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from psycopg_pool import AsyncConnectionPool

from listener.flow import Stop, Wait
from listener.jobs import Job
from listener.pacing.health import PickedSender
from listener.queries import q
from listener.settings import Settings


class SenderStore:
    """The database side of pacing and sender pools, for one worker."""

    def __init__(self, pool: AsyncConnectionPool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings
        self.worker = settings.worker_id

    # ----------------------------------------------------------------------------------------
    # Pacing: the bookings (the rules are SQL functions, atomic across listeners)
    # ----------------------------------------------------------------------------------------

    async def pace_start(self, job: Job, zones: list[str] | None = None) -> Wait | None:
        """The campaign's window and daily cap (for a campaign in its leads' zones, judged in
        the lead's own zone, else in `zones`, its phone number's). On success the message holds
        a slot of today's cap for as long as it is processing or sent, or once a part of it
        went out."""
        params = {"campaign_id": job.claim.campaign_id, "message_id": job.id, "zones": zones}
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("pace_start"), params)
            row = await cur.fetchone()
        assert row is not None
        go, until, reason, _ = row
        return None if go else Wait(until, reason)

    # ----------------------------------------------------------------------------------------
    # Sender pools: the number, its slot, its holds (see pool.py; the rules are SQL functions)
    # ----------------------------------------------------------------------------------------

    async def pick_sender(
        self,
        job: Job,
        pool: list[str],
        *,
        own: str | None,
        horizon: float,
        book: bool,
    ) -> PickedSender:
        """The number of `pool` the message goes through and when; with `book`, its slot is
        taken (atomic across listeners: the candidates' rows are locked)."""
        gap = job.claim.gap or (None, None)
        params = {
            "message_id": job.id,
            "pool": pool,
            "own": own,
            "min": gap[0],
            "max": gap[1],
            "horizon": horizon,
            "warmup": list(self.settings.warmup),
            "default_instance": self.settings.evolution_instance,
            "book": book,
        }
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("pick_sender"), params)
            row = await cur.fetchone()
        assert row is not None
        return PickedSender(*row)

    async def retake_gap(
        self, instance: str, gap: tuple[float, float], horizon: float
    ) -> tuple[datetime | None, datetime | None]:
        """Book the number's next slot again: (slot, None), or (None, when to come back)."""
        params = {"instance": instance, "min": gap[0], "max": gap[1], "horizon": horizon}
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("retake_gap"), params)
            row = await cur.fetchone()
        assert row is not None
        go, slot, until = row
        return (slot, None) if go else (None, until)

    async def send_wait(self, job: Job, instance: str, gap_min: float) -> tuple[float, bool]:
        """At its slot, right before a first part: (seconds, True) when the number is reserved
        for this send from `seconds` on (once the previous send through it was answered a gap
        ago), or (seconds, False) to ask again then (another send is on its way). Stop when
        the message's lead opted out or was handed off meanwhile (read in the same call, after
        the number's row is locked; nothing is reserved then)."""
        params = {
            "instance": instance,
            "min": gap_min,
            "stale": self.settings.send_timeout.total_seconds(),
            "message_id": job.id,
        }
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("send_wait"), params)
            row = await cur.fetchone()
            assert row is not None
            wait, reserved, stop = row
            if stop is not None:  # nothing was reserved
                raise Stop("skipped", stop)
        return float(wait), bool(reserved)

    async def send_answered(
        self, instance: str, gap: tuple[float, float] | None, ago: float
    ) -> None:
        """A first part through the number was answered `ago` seconds ago (accepted or
        failed): the next one waits a gap from then; with `gap`, the number's next slot moves
        a whole gap after it."""
        params = {
            "instance": instance,
            "min": gap[0] if gap else 0,
            "max": gap[1] if gap else None,
            "ago": max(ago, 0.0),
        }
        async with self.pool.connection() as conn:
            await conn.execute(q("send_answered"), params)

    async def hold_sender(
        self, instance: str, reason: str, until: datetime, backstop: datetime, seen_at: datetime
    ) -> tuple[bool, int] | None:
        """Hold a number in the database and move its waiting messages out of the claim's way,
        in batches of `hold_batch` (as a campaign's hold: short statements that skip rows
        others hold, the number's row locked only while the hold is marked): (whether this
        began the hold, messages moved), or None when the state read is older than the
        number's last release (it is back; read it again). A move cut off is left in
        listener_sender_holds and taken up by `resume_holds`; one under way (this listener's
        own, for another message, included) moves this hold's messages too (0 moved here)."""
        params: dict[str, Any] = {
            "instance": instance,
            "reason": reason,
            "until": until,
            "backstop": backstop,
            "seen_at": seen_at,
            "worker": self.worker,
            "lease": self.settings.lease,
        }
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("hold_sender"), params)
            row = await cur.fetchone()
        if row is None:
            return None
        began, runner = row
        moved = await self._move_sender(instance) if runner else 0
        return bool(began), moved or 0

    async def _move_sender(self, instance: str) -> int | None:
        """Move a number's waiting messages, then end the move; None when it was taken from
        us. An end that finds the number filed again meanwhile goes on with its messages."""
        params: dict[str, Any] = {
            "instance": instance,
            "default_instance": self.settings.evolution_instance,
            "worker": self.worker,
            "lease": self.settings.lease,
        }
        return await self._move("hold_sender_batch", "hold_sender_end", params, refiled=True)

    async def sender_limited(self, instance: str) -> bool:
        """Whether `instance` has a row of limits (caps, warm-up, enabled)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("sender_limited"), {"instance": instance})
            row = await cur.fetchone()
        return bool(row and row[0])

    async def held_due(self, recheck: timedelta) -> list[tuple[str, str]]:
        """The held numbers due to be asked again (their next ask is booked meanwhile)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("held_due"), {"recheck": recheck})
            return [(row[0], row[1]) for row in await cur.fetchall()]

    async def release_sender(self, instance: str) -> int:
        """End a number's hold; returns how many waiting messages became due."""
        params = {"instance": instance, "default_instance": self.settings.evolution_instance}
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("release_sender"), params)
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def hold_campaign(self, campaign_id: UUID, wait: Wait) -> int | None:
        """A hold of the whole campaign (window, cap, budget): its other due, unstarted
        messages wait with it, moved aside in batches of `hold_batch` (each a short statement
        that skips rows others hold, so the claim and lease renewals never wait behind it).
        Returns how many were moved, or None when another listener is moving them. A move cut
        off (a lost connection) is left in listener_campaign_holds, and taken up again by
        `resume_holds` once this worker's lease on it has passed."""
        params: dict[str, Any] = {
            "campaign_id": campaign_id,
            "reason": wait.reason,
            "until": wait.until,
            "worker": self.worker,
            "lease": self.settings.lease,
        }
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("hold_campaign_begin"), params)
            row = await cur.fetchone()
        if row is None:
            return None
        params["until"] = row[0]
        return await self._move_held(params)

    async def resume_holds(self) -> list[tuple[UUID | str, str, int]]:
        """Take up the holds whose runner was cut off mid-move and move the rest of their
        messages: (campaign, reason, moved in all) for each campaign's, (number, its hold's
        reason, moved in all) for each number's."""
        taker = {"worker": self.worker, "lease": self.settings.lease}
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("holds_to_resume"), taker)
            holds = await cur.fetchall()
            cur = await conn.execute(q("sender_holds_to_resume"), taker)
            numbers = [(str(row[0]), str(row[1])) for row in await cur.fetchall()]
        done: list[tuple[UUID | str, str, int]] = []
        for instance, reason in numbers:
            moved = await self._move_sender(instance)
            if moved is not None:
                done.append((instance, reason, moved))
        for campaign_id, reason, until in holds:
            params: dict[str, Any] = {
                "campaign_id": campaign_id,
                "reason": reason,
                "until": until,
                "worker": self.worker,
                "lease": self.settings.lease,
            }
            moved = await self._move_held(params)
            if moved is not None:
                done.append((campaign_id, reason, moved))
        return done

    async def _move_held(self, params: dict[str, Any]) -> int | None:
        """Move a campaign hold's messages, then end the hold; None when it was taken from us
        meanwhile (an end that finds nothing of ours means the same)."""
        return await self._move("hold_campaign_batch", "hold_campaign_end", params, refiled=False)

    async def _move(
        self, batch: str, end: str, params: dict[str, Any], *, refiled: bool
    ) -> int | None:
        """The batch loop of a hold's move: `batch` moves up to `hold_batch` rows a statement
        (each on a pool connection taken for that statement only) and says whether the move
        is still ours; once a batch comes up short, `end` ends it and returns how many were
        moved in all. An end that returns no row means, with `refiled`, that the hold was
        filed again meanwhile (go on: its messages are next), else that it was taken from us."""
        params = {**params, "limit": self.settings.hold_batch}
        while True:
            async with self.pool.connection() as conn:
                cur = await conn.execute(q(batch), params)
                row = await cur.fetchone()
            assert row is not None
            moved, mine = row
            if not mine:
                return None
            if moved < params["limit"]:
                async with self.pool.connection() as conn:
                    cur = await conn.execute(q(end), params)
                    row = await cur.fetchone()
                if row is not None:
                    return int(row[0])
                if not refiled:
                    return None
