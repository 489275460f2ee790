"""The webhook inbox: writing it (on the request path) and applying it (off it); docs/design.md,
"Delivery feedback".

Storing is a plain insert into `webhook_inbox` (statuses, replies) and `sent_events`
(`send.message`) through group commit: the requests that arrive while a batch is being written
go together in the next one, so a burst costs a few round trips, and the insert waits for no
lock (the receiver answers once it commits: none lost, in milliseconds). The applier takes the
inbox in batches and applies them (the part's status, the roll-up on campaign_messages, the
lead and its pending messages), deleting them in the same transaction: an acknowledged event
is applied exactly when its application commits, even across a crash. Every write is
idempotent, so Evolution's retries change nothing; a deadlock's victim runs again
(db.again_on_rollback), a row that cannot be applied is set aside (deadletter.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from listener.batch import GroupCommit
from listener.db import again_on_rollback
from listener.feedback.deadletter import SetAside, transient
from listener.feedback.events import (
    ConnectionChange,
    Event,
    Reply,
    SentEvent,
    StatusUpdate,
    is_opt_out,
)
from listener.feedback.metrics import WebhookMetrics
from listener.feedback.restrictions import Restrictions
from listener.phones import mask_phone, stored_forms
from listener.queries import q
from listener.settings import Settings
from listener.text import clean_text

log = logging.getLogger(__name__)

# Inbox rows applied per transaction.
STATUS_BATCH = 1000
REPLY_BATCH = 100


class Inbox:
    """The inbox of one receiver: its batched writes and its applier."""

    def __init__(
        self,
        settings: Settings,
        pool: Callable[[], AsyncConnectionPool],
        registry: CollectorRegistry,
        metrics: WebhookMetrics,
        restrictions: Restrictions,
        *,
        on_replies: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self._pool = pool
        self.metrics = metrics
        self.restrictions = restrictions
        self.set_aside = SetAside(pool, registry)
        # Called (on the daemon's loop) once replies to classify were filed.
        self.on_replies = on_replies
        # The daemon's loop, once the receiver starts.
        self.main: asyncio.AbstractEventLoop | None = None
        # One request whose events Postgres refuses fails alone: the others of its batch are
        # written again without it.
        self._writes: GroupCommit[list[Event]] = GroupCommit(
            self._flush, key=id, isolate=about_the_data
        )
        self._applying = asyncio.Lock()

    # ----------------------------------------------------------------------------------------
    # Writing
    # ----------------------------------------------------------------------------------------

    async def store(self, events: list[Event]) -> int:
        """Store every event of one request before it is answered: a plain insert, with the
        other requests of the moment (they are idempotent once applied: a retry changes
        nothing). A closed connection is judged at once (not stored). Returns how many events
        now wait in the inbox to be applied."""
        stored: list[Event] = []
        for event in events:
            if isinstance(event, ConnectionChange):
                await self.restrictions.connection_changed(event)
                self.metrics.event_count["connection.update"].inc()
                continue
            if isinstance(event, StatusUpdate):
                self.metrics.status_count[event.status].inc()
                self.metrics.event_count["messages.update"].inc()
            elif isinstance(event, Reply):
                self.metrics.event_count["messages.upsert"].inc()
            else:
                self.metrics.event_count["send.message"].inc()
            stored.append(event)
        if stored:
            await self._writes.submit(stored)
        return len(stored)

    async def _flush(self, requests: list[list[Event]]) -> set[Hashable]:
        items = [event for events in requests for event in events]
        inbox = [i for i in items if isinstance(i, StatusUpdate | Reply)]
        sent = [i for i in items if isinstance(i, SentEvent)]
        words = self.settings.opt_out_words
        params: dict[str, list[Any]] = {
            "kinds": [],
            "instances": [],
            "ids": [],
            "statuses": [],
            "phones": [],
            "opt_outs": [],
            "ats": [],
            "texts": [],
        }
        for item in inbox:
            status = isinstance(item, StatusUpdate)
            params["kinds"].append("status" if status else "reply")
            params["instances"].append(clean_text(item.instance))
            if isinstance(item, StatusUpdate):
                params["ids"].append(clean_text(item.provider_id))
                params["statuses"].append(item.status)
                params["phones"].append(None)
                params["opt_outs"].append(None)
                params["texts"].append(None)
                params["ats"].append(None)  # at its receipt (the row's, in the database)
            else:
                params["ids"].append(None)
                params["statuses"].append(None)
                params["phones"].append(item.phones[0])
                params["opt_outs"].append(is_opt_out(item.text, words))
                params["texts"].append(clean_text(item.text))
                params["ats"].append(item.at)
        params["sent_instances"] = [clean_text(i.instance) for i in sent]
        params["sent_ids"] = [clean_text(i.provider_id) for i in sent]
        params["sent_numbers"] = [i.number for i in sent]
        params["sent_texts"] = [clean_text(i.text) for i in sent]
        async with self._pool().connection() as conn:
            await conn.execute(q("webhook_inbox"), params)
        return {id(events) for events in requests}

    # ----------------------------------------------------------------------------------------
    # Applying
    # ----------------------------------------------------------------------------------------

    async def settle(self) -> tuple[int, int]:
        """Apply the inbox until it is empty (of rows no other listener is applying); returns
        the statuses and replies applied. One at a time: a call made while the applier runs
        waits for it, so it returns once everything stored before it is applied. A row that
        cannot be applied fails alone and is set aside (listener/feedback/deadletter.py); the rows
        behind it go on."""
        statuses = replies = 0
        async with self._applying:
            while True:
                taken_statuses = await self._apply_kind("status", STATUS_BATCH)
                taken_replies = await self._apply_kind("reply", REPLY_BATCH)
                statuses += taken_statuses
                replies += taken_replies
                if taken_statuses < STATUS_BATCH and taken_replies < REPLY_BATCH:
                    break
            await self.set_aside.retry_suspects(
                {"status": self._apply_statuses, "reply": self._apply_replies}
            )
        return statuses, replies

    async def _apply_kind(self, kind: str, limit: int) -> int:
        """The oldest fresh rows of `kind` in one transaction; when that fails for the rows'
        sake, the same rows split until the failing ones stand alone."""
        apply = self._apply_statuses if kind == "status" else self._apply_replies
        # A deadlock's victim (a reply's writes and a status roll-up meeting on one message, or
        # the sender's writes) rolled back, and every apply is idempotent: it runs again.
        name = f"webhook_apply_{kind}"
        try:
            return await again_on_rollback(lambda: apply(None), name=name, pause=0.01)
        except Exception as exc:
            if transient(exc):
                raise
        return await self.set_aside.isolate(
            kind, lambda ids: again_on_rollback(lambda: apply(ids), name=name, pause=0.01), limit
        )

    async def _apply_statuses(self, ids: list[int] | None = None) -> int:
        """The oldest fresh statuses (or these ones) applied and deleted in one transaction."""
        async with self._pool().connection() as conn:
            async with conn.transaction():
                if ids is None:
                    cur = await conn.execute(q("webhook_apply_statuses"), {"limit": STATUS_BATCH})
                else:
                    cur = await conn.execute(q("webhook_apply_status_ids"), {"ids": ids})
                row = await cur.fetchone()
            taken, errors = (int(row[0]), row[1] or []) if row else (0, [])
            if row:
                self._clamped(int(row[2] or 0), int(row[3] or 0))
            for instance in errors:
                await self.restrictions.check(conn, instance)
        return taken

    async def _apply_replies(self, ids: list[int] | None = None) -> int:
        """The oldest fresh replies of the inbox (or these ones), in the order they came, in
        one transaction; said (logged, counted) once it commits."""
        done = []
        async with self._pool().connection() as conn, conn.transaction():
            if ids is None:
                cur = await conn.execute(q("webhook_take_replies"), {"limit": REPLY_BATCH})
            else:
                cur = await conn.execute(q("webhook_take_reply_ids"), {"ids": ids})
            taken = sorted(await cur.fetchall())
            future = before = 0
            for _, phone, opt_out, at, instance, text, ahead in taken:
                cur = await conn.execute(
                    q("webhook_reply"),
                    {
                        "phones": list(stored_forms(phone, self.settings.default_region)),
                        "phone": phone,
                        "opt_out": opt_out,
                        "at": at,
                        "instance": instance,
                        "text": text,
                    },
                )
                rows = await cur.fetchall()
                future += bool(ahead)
                before += bool(rows and rows[0][3])
                done.append((phone, bool(opt_out), rows))
        self._clamped(future, before)
        for phone, opt_out, rows in done:
            self._said_reply(phone, opt_out, rows)
        if self.on_replies is not None and any(rows and not o for _, o, rows in done):
            main = self.main
            if main is None or main is asyncio.get_running_loop():
                self.on_replies()
            else:
                main.call_soon_threadsafe(self.on_replies)
        return len(taken)

    def _clamped(self, future: int, before_send: int) -> None:
        """Count event times that were clamped (once their application committed)."""
        if future:
            self.metrics.clamped.labels(reason="future").inc(future)
        if before_send:
            self.metrics.clamped.labels(reason="before_send").inc(before_send)

    def _said_reply(self, digits: str, opt_out: bool, rows: list[Any]) -> None:
        phone = mask_phone(digits)
        if not rows:
            log.debug("a reply from %s matches no lead", phone, extra={"action": "reply_unknown"})
            return
        skipped = int(rows[0][2])
        self.metrics.replies.inc()
        self.metrics.skipped.inc(skipped)
        if opt_out:
            self.metrics.opt_outs.inc()
        log.info(
            "%s %s: %d pending messages skipped",
            phone,
            "opted out" if opt_out else "replied",
            skipped,
            extra={
                "action": "lead_opted_out" if opt_out else "lead_replied",
                "lead_id": str(rows[0][0]),
                "skipped": skipped,
            },
        )

    async def apply_early(self) -> tuple[int, int]:
        """Apply kept statuses whose part is now recorded; drop those past 10 minutes."""
        async with self._pool().connection() as conn:
            cur = await conn.execute(q("webhook_early"))
            row = await cur.fetchone()
        applied, dropped = (int(row[0]), int(row[1])) if row else (0, 0)
        if row:
            self._clamped(0, int(row[2] or 0))
        if dropped:
            log.debug(
                "dropped %d delivery statuses whose part never showed up",
                dropped,
                extra={"action": "statuses_dropped", "dropped": dropped},
            )
        return applied, dropped

    async def prune(self) -> None:
        async with self._pool().connection() as conn:
            await conn.execute(q("prune_sent_events"))


def about_the_data(exc: BaseException) -> bool:
    """Whether an error is about the rows written (it fails again, alone, whenever it is
    tried: a value out of range, an index row too big, text psycopg cannot encode), not about
    the database's state (gone, restarting, a deadlock, a timeout): rows are isolated and set
    aside for the first kind only."""
    if isinstance(exc, psycopg.errors.ProgramLimitExceeded):
        return True
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return False
    return isinstance(exc, psycopg.Error | ValueError)
