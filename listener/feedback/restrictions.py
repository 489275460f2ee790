"""Restrictions: a sender number judged restricted from what the events say, and held in the
processor (docs/design.md, "Delivery feedback").

WhatsApp restricts a number from new chats (error 463) while its connection still says `open`:
the sign is in the statuses, too many of an instance's last 10 first parts ended in ERROR or
stay PENDING too long. Each applied batch of statuses checks the instances it saw fail; every
instance with recent first parts is checked on an interval (a restarted listener's too). A
connection closed for a restricting reason (`connection.update`) holds the instance at once.
The hold itself is the processor's, called on the daemon's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from listener.feedback.events import RESTRICTING_REASONS, ConnectionChange
from listener.feedback.metrics import WebhookMetrics
from listener.queries import q
from listener.settings import Settings, format_duration

# The processor's hold: (instance, reason, seconds or None for until it connects) -> held.
OnRestricted = Callable[[str, str, float | None], bool]


class Restrictions:
    """The restriction judge of one receiver."""

    def __init__(
        self,
        settings: Settings,
        pool: Callable[[], AsyncConnectionPool],
        metrics: WebhookMetrics,
        on_restricted: OnRestricted | None,
    ) -> None:
        self.settings = settings
        self._pool = pool
        self.metrics = metrics
        self.on_restricted = on_restricted
        # The daemon's loop (where the processor lives), once the receiver starts.
        self.main: asyncio.AbstractEventLoop | None = None

    async def connection_changed(self, event: ConnectionChange) -> None:
        """A connection closed for a restricting reason (logged out, banned) holds the
        instance until it connects again."""
        if event.state != "close" or event.reason not in RESTRICTING_REASONS:
            return
        reason = f"{RESTRICTING_REASONS[event.reason]} ({event.reason})"
        if await self.restrict(event.instance, reason, None):
            self.metrics.restrictions.labels(reason=str(event.reason)).inc()

    async def restrict(self, instance: str, reason: str, seconds: float | None) -> bool:
        """Hold the instance in the processor, on the daemon's loop."""
        callback, main = self.on_restricted, self.main
        if callback is None:
            return False
        if main is None or main is asyncio.get_running_loop():
            return callback(instance, reason, seconds)

        async def run() -> bool:
            return callback(instance, reason, seconds)

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), main))

    async def check(self, conn: psycopg.AsyncConnection[Any], instance: str) -> None:
        """Hold the instance when too many of its last 10 first parts ended in ERROR or stay
        PENDING too long: WhatsApp restricts a number from new chats (error 463) while its
        connection still says `open`."""
        cur = await conn.execute(q("restrict_check"), {"instance": instance, **self._window()})
        row = await cur.fetchone()
        if row is not None:
            await self.judge(instance, int(row[0]), int(row[1]))

    def _window(self) -> dict[str, timedelta]:
        """The alarm, and how far back first parts count: a part older than the hold plus the
        alarm has had its hold already (else a number would be held again each minute)."""
        settings = self.settings
        return {
            "alarm": settings.pending_alarm,
            "window": settings.restrict_hold + settings.pending_alarm,
        }

    async def judge(self, instance: str, errors: int, stale: int) -> None:
        """Hold the instance for LISTENER_RESTRICT_HOLD when its failed and stale first parts
        reach LISTENER_RESTRICT_ERRORS."""
        settings = self.settings
        if errors + stale < settings.restrict_errors:
            return
        why = (
            f"{errors} of its last 10 first parts ended in ERROR and {stale} are still PENDING "
            f"after {format_duration(settings.pending_alarm)}"
        )
        label = "errors" if errors >= stale else "pending"
        seconds = settings.restrict_hold.total_seconds()
        if await self.restrict(instance, why, seconds):
            self.metrics.restrictions.labels(reason=label).inc()

    async def check_stale(self) -> None:
        """The restriction check of every instance with recent first parts (sent within the
        hold plus the alarm), whichever listener sent them (a restarted one included)."""
        async with self._pool().connection() as conn:
            cur = await conn.execute(q("restrict_check_all"), self._window())
            rows = await cur.fetchall()
        for instance, errors, stale in rows:
            await self.judge(str(instance), int(errors), int(stale))
