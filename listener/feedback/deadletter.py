"""Poison set aside: an inbox row that cannot be applied never stays at the head of the line.

The applier (inbox.py) applies the inbox in batches. When a batch fails with an error that
is not the database's state (gone, a deadlock, a timeout), `SetAside.isolate` splits it in
halves until the failing row stands alone; the others are applied at once. A row that failed
alone counts an attempt (`webhook_inbox.attempts`), leaves the fresh batches, and is tried
again alone once a turn (`retry_suspects`); at POISON_ATTEMPTS it moves to
`webhook_dead_letters` with its error, counted (`listener_webhook_dead_letters_total`) and
logged. An acknowledged event is thus applied, or kept where an operator sees it, never lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import psycopg
from prometheus_client import CollectorRegistry, Counter
from psycopg_pool import AsyncConnectionPool

from listener.queries import q
from listener.text import cut

log = logging.getLogger(__name__)

# A row is tried this many times alone before it is set aside.
POISON_ATTEMPTS = 3
# Suspects are tried again alone at most this often (else a burst of turns would spend their
# attempts in milliseconds).
SUSPECT_INTERVAL = 1.0
SUSPECTS_PER_TURN = 20

Apply = Callable[[list[int]], Awaitable[int]]


def transient(exc: BaseException) -> bool:
    """An error of the database's state, not of the rows: the connection, a restart, a
    deadlock, a timeout. The rows stay as they are and the next turn tries them again."""
    if isinstance(exc, psycopg.errors.ProgramLimitExceeded):
        return False  # an index row too big: the row's own data
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


class SetAside:
    """Bisection of failed batches, attempts of suspects, and the dead-letter table."""

    def __init__(self, pool: Callable[[], AsyncConnectionPool], registry: CollectorRegistry):
        self._pool = pool
        self.dead = Counter(
            "listener_webhook_dead_letters_total",
            "Webhook events set aside in webhook_dead_letters (they could not be applied)",
            ["kind"],
            registry=registry,
        )
        self._suspects_at = 0.0

    async def isolate(self, kind: str, apply: Apply, limit: int) -> int:
        """A batch of `kind` failed: the same fresh rows, split until each failing one stands
        alone. Returns how many rows were taken (applied, or now suspects)."""
        async with self._pool().connection() as conn:
            cur = await conn.execute(q("webhook_fresh_ids"), {"kind": kind, "limit": limit})
            ids = [int(row[0]) for row in await cur.fetchall()]
        await self._bisect(apply, ids)
        return len(ids)

    async def _bisect(self, apply: Apply, ids: list[int]) -> None:
        if not ids:
            return
        try:
            await apply(ids)
        except Exception as exc:
            if transient(exc):
                raise
            if len(ids) == 1:
                await self.failed(ids[0], exc)
                return
            half = len(ids) // 2  # in order: replies are applied in the order they came
            await self._bisect(apply, ids[:half])
            await self._bisect(apply, ids[half:])

    async def retry_suspects(self, appliers: dict[str, Apply]) -> None:
        """Try each row that failed before once more, alone (at most once a SUSPECT_INTERVAL)."""
        now = time.monotonic()
        if now - self._suspects_at < SUSPECT_INTERVAL:
            return
        self._suspects_at = now
        async with self._pool().connection() as conn:
            cur = await conn.execute(q("webhook_suspects"), {"limit": SUSPECTS_PER_TURN})
            suspects = await cur.fetchall()
        for row_id, kind in suspects:
            apply = appliers.get(str(kind))
            if apply is not None:
                await self._bisect(apply, [int(row_id)])

    async def failed(self, row_id: int, exc: BaseException) -> None:
        """Count a failed attempt of one row; set it aside at POISON_ATTEMPTS."""
        error = cut(f"{type(exc).__name__}: {exc}", 500)
        params = {"id": row_id, "error": error, "max": POISON_ATTEMPTS}
        async with self._pool().connection() as conn:
            cur = await conn.execute(q("webhook_inbox_failed"), params)
            row = await cur.fetchone()
        if row is None:
            return  # applied or set aside meanwhile, by another listener
        dead, kind, instance = bool(row[0]), str(row[1]), cut(row[2])
        fields = {"inbox_id": row_id, "kind": kind, "instance": instance}
        if dead:
            self.dead.labels(kind=kind).inc()
            log.error(
                "a webhook %s event (instance %s, inbox id %d) could not be applied %d times;"
                " set aside in webhook_dead_letters: %s",
                kind,
                instance,
                row_id,
                POISON_ATTEMPTS,
                error,
                extra={"action": "webhook_dead_letter", **fields},
            )
        else:
            log.warning(
                "a webhook %s event (instance %s, inbox id %d) could not be applied; tried"
                " again alone, the rest goes on: %s",
                kind,
                instance,
                row_id,
                error,
                extra={"action": "webhook_apply_failed", **fields},
            )
