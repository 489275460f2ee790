"""Wake-ups: the LISTEN connection turns NOTIFY into a wake of the claim loop, and an
APScheduler date job wakes it when the next future row comes due.

The LISTEN connection is the one thing that can fail silently (a half-open TCP connection
raises nothing, a frozen database answers nothing), so it has keepalives and is checked every
LISTENER_HEALTH_INTERVAL with a query under a short timeout (`check_timeout`); a check that
fails or does not answer in time marks LISTEN down at once and counts as a lost connection.
After any loss it reconnects with backoff, LISTENs again and wakes the claim loop, since
notifications sent while it was away are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from listener.db import CHANNEL, CONNECT_TIMEOUT, connect, within
from listener.errors import DatabaseError
from listener.metrics import Health
from listener.queries import q
from listener.settings import Settings

log = logging.getLogger(__name__)

_WAKE_JOB = "wake-next-due"


def check_timeout(interval: float) -> float:
    """How long a health check of the database may take: short (a loaded machine answers
    `SELECT 1` in milliseconds), at most 2 s, and never so short that a busy event loop
    fails it."""
    return min(max(interval, 1.0), 2.0)


#: A wake-up this far past its time without having fired is taken as lost.
_LOST_WAKE = timedelta(seconds=5)


class WakeTimer:
    """One APScheduler date job at the earliest known future due time."""

    def __init__(self, scheduler: AsyncIOScheduler, wake: Callable[[], None]) -> None:
        self._scheduler = scheduler
        self._wake = wake
        self._at: datetime | None = None

    @property
    def at(self) -> datetime | None:
        if self._at is not None and self._at <= datetime.now(UTC):
            self._at = None
        return self._at

    def _fire(self) -> None:
        self._at = None
        self._wake()

    def schedule(self, due: datetime) -> None:
        """Wake at `due` unless an earlier wake-up is already set. A wake-up whose time has
        just passed but that has not fired yet (the loop was busy) is kept: replacing it with
        a later one would leave the rows due meanwhile waiting for that one (or the poll)."""
        current = self._at
        if current is not None and current < datetime.now(UTC) - _LOST_WAKE:
            current = None  # long past and never fired: lost with its job
        if current is not None and current <= due:
            return
        self._at = due
        self._scheduler.add_job(
            self._fire,
            "date",
            run_date=due,
            id=_WAKE_JOB,
            replace_existing=True,
            misfire_grace_time=None,
        )


class NotifyListener:
    """Holds the LISTEN connection for the life of the daemon."""

    def __init__(
        self,
        url: str,
        settings: Settings,
        health: Health,
        *,
        on_due: Callable[[], None],
        on_future: Callable[[datetime], None],
    ) -> None:
        self._url = url
        self._settings = settings
        self._health = health
        self._on_due = on_due
        self._on_future = on_future
        self._stopping = False
        self.connected = asyncio.Event()
        self.notifications = 0

    def stop(self) -> None:
        self._stopping = True

    def handle(self, payload: str) -> None:
        """A notification carries the earliest due time of its statement (epoch seconds)."""
        self.notifications += 1
        try:
            due = datetime.fromtimestamp(float(payload), UTC)
        except (ValueError, OverflowError):
            self._on_due()  # an unexpected payload: look for work anyway
            return
        if due <= datetime.now(UTC):
            self._on_due()
        else:
            self._on_future(due)

    async def run(self) -> None:
        """LISTEN, reconnecting with backoff until stopped."""
        delay = 0.1
        interval = self._settings.health_interval.total_seconds()
        while not self._stopping:
            conn: psycopg.AsyncConnection[dict[str, object]] | None = None
            try:
                conn = await connect(self._url, connect_timeout=CONNECT_TIMEOUT)
                await conn.execute(f"LISTEN {CHANNEL}")
                self._health.listen_ok = True
                self._health.db_ok = True
                self.connected.set()
                if delay > 0.1:
                    log.info("LISTEN connection is back", extra={"action": "listen_reconnected"})
                delay = 0.1
                # Notifications sent while we were away are gone: look for due rows now.
                self._on_due()
                while not self._stopping:
                    started = time.monotonic()
                    async for notify in conn.notifies(timeout=interval):
                        self.handle(notify.payload)
                        if self._stopping or time.monotonic() - started >= interval:
                            break
                    if self._stopping:
                        break
                    await self._check(conn)
            except (psycopg.Error, DatabaseError, OSError, TimeoutError) as exc:
                self._health.listen_ok = False
                self.connected.clear()
                self._health.last_error = f"LISTEN connection lost: {exc}"
                log.warning(
                    "LISTEN connection lost, reconnecting in %.1fs: %s",
                    delay,
                    exc,
                    extra={"action": "listen_lost"},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                if conn is not None:
                    with contextlib.suppress(psycopg.Error, OSError, TimeoutError):
                        await asyncio.wait_for(conn.close(), timeout=2)

    async def _check(self, conn: psycopg.AsyncConnection[dict[str, object]]) -> None:
        timeout = check_timeout(self._settings.health_interval.total_seconds())
        why = f"the LISTEN connection did not answer its health check within {timeout:g}s"

        def down() -> None:
            self._health.listen_ok = False
            self._health.last_error = why

        async def listening() -> dict[str, object] | None:
            cur = await conn.execute(q("listen_check"), {"channel": CHANNEL})
            return await cur.fetchone()

        try:
            row = await within(listening(), timeout, on_timeout=down)
        except TimeoutError:
            raise TimeoutError(why) from None
        if not row or row["n"] != 1:
            raise DatabaseError("the connection is no longer listening")
        self._health.listen_ok = True
