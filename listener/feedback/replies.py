"""Replies understood: the classifier's turn. The webhook receiver files every reply of a known
lead in `lead_replies` (and the opt-out words classify it at once); here, off the receiver's
fast answer, the replies whose kind is unknown are taken a batch at a time, classified, and
their kind applied in the database (`reply_classified`: what it stops, the hand-off and its
NOTIFY). A classifier that fails leaves the reply unclassified, tried again later with a
doubling pause; after `MAX_TRIES` it is kept as `other` (a person's reply: what
stop_on_reply stops stays stopped), never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from listener.errors import ProviderError
from listener.metrics import Health
from listener.providers.base import Usage
from listener.providers.classify import Classified, ReplyClassifier
from listener.queries import q
from listener.settings import Settings
from listener.text import clean_text

log = logging.getLogger(__name__)

# Replies taken per turn, classified this many at a time.
BATCH = 50
CONCURRENCY = 5
# A taken reply is passed over by other listeners this long (a dead one's come back then).
LEASE = timedelta(minutes=2)
# Tries before a reply that cannot be classified is kept as `other`.
MAX_TRIES = 8
# The longest pause between two tries.
RETRY_CAP = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Applied:
    """What a reply's kind did: the lead, the kind, messages skipped, whether it handed the
    lead off."""

    lead_id: UUID
    kind: str
    skipped: int
    handed_off: bool


def retry_delay(tries: int, first: timedelta) -> timedelta:
    """The pause after the `tries`-th failed try: `first`, doubling, at most RETRY_CAP."""
    pause: timedelta = first * 2 ** min(max(tries - 1, 0), 20)
    return min(pause, RETRY_CAP)


class Replies:
    """Classifies the replies whose kind is unknown, for one listener."""

    def __init__(
        self, settings: Settings, pool: AsyncConnectionPool, classifier: ReplyClassifier
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.classifier = classifier
        self._wake = asyncio.Event()
        self._stopping = False
        self._said_error = False

    def wake(self) -> None:
        """Replies were filed: classify them now (called on the listener's loop)."""
        self._wake.set()

    def stop(self) -> None:
        """End `run` at its next turn. Besides the task's cancel: on Python 3.11 a cancel that
        meets the wake-up inside `wait_for` can be swallowed, and the daemon's stop would then
        wait for the loop for ever."""
        self._stopping = True
        self._wake.set()

    async def run(self, health: Health) -> None:
        """Classify until cancelled: when woken, and every LISTENER_CLASSIFY_INTERVAL. A
        database error is logged once per episode and marks the health; the next turn tries
        again (the replies stay in the table)."""
        interval = self.settings.classify_interval.total_seconds()
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            if self._stopping:
                return
            try:
                while await self.classify_due() >= BATCH:
                    pass
            except psycopg.Error as exc:
                health.db_ok = False
                health.last_error = f"classify failed: {exc}"
                if not self._said_error:
                    self._said_error = True
                    log.warning(
                        "could not classify replies (kept, tried again): %s",
                        exc,
                        extra={"action": "classify_failed"},
                    )
            else:
                self._said_error = False

    async def classify_due(self) -> int:
        """One turn: take the due unclassified replies, classify them, apply their kinds;
        returns how many were taken."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(q("replies_take"), {"lease": LEASE, "limit": BATCH})
            rows = await cur.fetchall()
        if not rows:
            return 0
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(row: dict[str, Any]) -> None:
            async with gate:
                await self._classify(row)

        await asyncio.gather(*(one(row) for row in rows))
        return len(rows)

    async def _classify(self, row: dict[str, Any]) -> None:
        usage = Usage()

        def billed(call: Usage) -> None:
            nonlocal usage
            usage = usage + call

        try:
            result = await self.classifier.classify(
                text=row["text"], answered=row["answered"], on_usage=billed
            )
        except ProviderError as exc:
            await self._failed(row, exc, usage)
            return
        await self._apply(row["id"], result, usage, None)

    async def _failed(self, row: dict[str, Any], exc: ProviderError, usage: Usage) -> None:
        tries = int(row["attempts"])
        error = clean_text(f"could not classify the reply (try {tries}): {exc}")
        if tries >= MAX_TRIES:
            log.warning(
                "%s; kept as other after %d tries",
                error,
                tries,
                extra={"action": "reply_unclassifiable", "reply_id": str(row["id"])},
            )
            await self._apply(row["id"], Classified("other"), usage, error)
            return
        delay = retry_delay(tries, self.settings.classify_retry)
        log.warning(
            "%s; trying again in %ss",
            error,
            int(delay.total_seconds()),
            extra={"action": "reply_classify_retry", "reply_id": str(row["id"])},
        )
        async with self.pool.connection() as conn:
            await conn.execute(
                q("reply_unclassified"),
                {"id": row["id"], "error": error, "delay": delay, **_usage(usage)},
            )

    async def _apply(
        self, reply_id: UUID, result: Classified, usage: Usage, error: str | None
    ) -> Applied | None:
        params = {
            "id": reply_id,
            "kind": result.kind,
            "model": result.model,
            "error": error,
            **_usage(usage),
        }
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("reply_classified"), params)
            row = await cur.fetchone()
        if row is None:  # classified already (another listener)
            return None
        applied = Applied(row[0], row[1], int(row[2]), bool(row[3]))
        ids = {"reply_id": str(reply_id), "lead_id": str(applied.lead_id)}
        if applied.handed_off:
            log.info(
                "lead %s handed off (%s): %d pending messages skipped",
                applied.lead_id,
                applied.kind,
                applied.skipped,
                extra={"action": "lead_handed_off", "kind": applied.kind, **ids},
            )
        else:
            log.info(
                "reply classified %s: %d pending messages skipped",
                applied.kind,
                applied.skipped,
                extra={"action": "reply_classified", "kind": applied.kind, **ids},
            )
        return applied


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cost": usage.cost_usd,
    }
