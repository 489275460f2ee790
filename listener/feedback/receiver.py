"""The delivery-feedback receiver: Evolution posts its webhooks here (docs/design.md,
"Delivery feedback"). `POST /webhooks/evolution` (and `/webhooks/evolution/<event-with-dashes>` in
by-events mode) on LISTENER_WEBHOOK_HOST:LISTENER_WEBHOOK_PORT, on when LISTENER_WEBHOOK_SECRET
is set.

A request is authenticated (a JWT signed with the secret, or the secret itself in
`X-Listener-Token`; anything else is 401 and writes nothing), parsed (feedback.parse; a bad body
is 400), and its events stored through group commit: the requests that arrive while a batch is
being written go together in the next one, so a burst costs a few round trips. Storing is a
plain insert into `webhook_inbox` (statuses, replies) and `sent_events` (`send.message`), which
waits for no lock: the answer comes once the events are committed there (none lost), in
milliseconds. The applier, off the request path, takes the inbox in batches and applies them
(the part's status, the roll-up on campaign_messages, the lead and its pending messages),
deleting them in the same transaction: an acknowledged event is applied exactly when its
application commits, even across a crash. Every write is idempotent, so Evolution's retries
change nothing. A database that is away answers 503, which Evolution retries; never a 500 loop.

The receiver runs on its own thread, event loop and connection pool: a listener sending at
full speed keeps its own loop busy, and an answer must not wait behind hundreds of sends'
callbacks. What it tells the processor (a restricted instance) goes to the daemon's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import threading
import zlib
from collections.abc import Awaitable, Callable, Hashable
from datetime import timedelta
from typing import Any, TypeVar

import psycopg
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from psycopg_pool import AsyncConnectionPool

from listener.batch import GroupCommit
from listener.db import again_on_rollback, make_pool
from listener.feedback.deadletter import SetAside, transient
from listener.feedback.events import (
    RESTRICTING_REASONS,
    STATUSES,
    Authenticator,
    BadEvent,
    ConnectionChange,
    Event,
    Reply,
    SentEvent,
    StatusUpdate,
    is_opt_out,
    parse,
)
from listener.feedback.inbound import MAX_DEPTH, check_events, nesting_within
from listener.periodic import Periodic
from listener.phones import mask_phone, stored_forms
from listener.queries import q
from listener.serving import serve_app
from listener.settings import Settings, format_duration
from listener.text import clean_text, cut

log = logging.getLogger(__name__)

R = TypeVar("R")

PATH = "/webhooks/evolution"
# The events the receiver stores (feedback.parse reads every other event as none).
EVENTS = ("messages.update", "messages.upsert", "send.message", "connection.update")
# Evolution's bodies are small (no media: base64 is off); anything bigger is not for us.
MAX_BODY = 1024 * 1024
# Content-Encodings the receiver decodes (anything else is 415).
_ENCODINGS = frozenset({"", "identity", "gzip", "x-gzip", "deflate"})
# Kept statuses are matched with their parts this often (an update may outrun the record).
EARLY_INTERVAL = 1.0
# The inbox is applied as soon as events come in, and at least this often (rows left by a
# failed turn or another listener).
APPLY_INTERVAL = 1.0
# At stop, the inbox is applied for at most this long (what is left waits for the next start).
SETTLE_AT_STOP = 5.0
# Inbox rows applied per transaction.
STATUS_BATCH = 1000
REPLY_BATCH = 100
# `send.message` events older than a day are pruned this often.
PRUNE_INTERVAL = 3600.0
# Every instance with recent first parts is checked for stale PENDING ones this often.
STALE_INTERVAL = 60.0


class WebhookMetrics:
    """The receiver's counters, in the listener's registry (served on /metrics)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "listener_webhook_events_total",
            "Webhook events stored, by event",
            ["event"],
            registry=registry,
        )
        self.rejected = Counter(
            "listener_webhook_rejected_total",
            "Webhook requests refused, by reason",
            ["reason"],
            registry=registry,
        )
        self.statuses = Counter(
            "listener_delivery_statuses_total",
            "Delivery statuses received, by status",
            ["status"],
            registry=registry,
        )
        self.replies = Counter("listener_replies_total", "Replies from leads", registry=registry)
        self.opt_outs = Counter(
            "listener_opt_outs_total", "Replies that opted a lead out", registry=registry
        )
        self.skipped = Counter(
            "listener_reply_skips_total",
            "Pending messages skipped because their lead replied or opted out",
            registry=registry,
        )
        self.clamped = Counter(
            "listener_event_times_clamped_total",
            "Webhook event times moved to a true bound: later than their receipt (future), or"
            " before the send they are about (before_send)",
            ["reason"],
            registry=registry,
        )
        self.restrictions = Counter(
            "listener_instance_restrictions_total",
            "Instances held because WhatsApp restricted or logged out the number",
            ["reason"],
            registry=registry,
        )
        # The children the request path counts with, looked up once (a lookup costs more than
        # the increment).
        self.event_count = {name: self.events.labels(event=name) for name in EVENTS}
        self.status_count = {status: self.statuses.labels(status=status) for status in STATUSES}


class WebhookReceiver:
    """The receiver of one listener: its HTTP app, its batched writes and its periodic jobs."""

    def __init__(
        self,
        settings: Settings,
        url: str,
        registry: CollectorRegistry,
        *,
        on_restricted: Callable[[str, str, float | None], bool] | None = None,
        on_replies: Callable[[], None] | None = None,
    ) -> None:
        secret = settings.webhook_secret
        assert secret is not None
        self._auth = Authenticator(secret.get_secret_value().strip())
        self.settings = settings
        self.url = url
        self.pool: AsyncConnectionPool | None = None
        self.metrics = WebhookMetrics(registry)
        self.set_aside = SetAside(lambda: self._db, registry)
        self.on_restricted = on_restricted
        # Called (on the daemon's loop) once replies to classify were filed.
        self.on_replies = on_replies
        # One request whose events Postgres refuses fails alone: the others of its batch are
        # written again without it.
        self._inbox: GroupCommit[list[Event]] = GroupCommit(
            self._flush_inbox, key=id, isolate=_about_the_data
        )
        self._applying: asyncio.Lock | None = None
        self._applier: Periodic | None = None
        self._runner: web.AppRunner | None = None
        self._jobs: list[Periodic] = []
        self._said_malformed = False
        self._said_error = False
        self._said_db = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    # ----------------------------------------------------------------------------------------
    # HTTP
    # ----------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._never_500])
        app.router.add_post(PATH, self.handle)
        app.router.add_post(PATH + "/{event}", self.handle)
        return app

    async def start(self) -> None:
        """Start the receiver's thread; returns once it listens (a port it cannot take is a
        ConfigurationError here)."""
        self._main = asyncio.get_running_loop()
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._thread_main, args=(started,), name="webhooks", daemon=True
        )
        self._thread.start()
        await asyncio.wrap_future(started)

    def _thread_main(self, started: concurrent.futures.Future[None]) -> None:
        loop: asyncio.AbstractEventLoop
        try:
            import uvloop

            loop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover - a dependency, but asyncio's loop works too
            loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(started))
        finally:
            loop.close()

    async def _serve(self, started: concurrent.futures.Future[None]) -> None:
        self._stop = asyncio.Event()
        try:
            await self._open()
        except BaseException as exc:
            await self._cleanup()
            started.set_exception(exc)
            return
        started.set_result(None)
        await self._stop.wait()
        await self._cleanup()

    async def _open(self) -> None:
        host, port = self.settings.webhook_host, self.settings.webhook_port
        self._applying = asyncio.Lock()
        self.pool = make_pool(self.url, self.settings, min_size=1, max_size=4)
        await self.pool.open(wait=False)
        # Content-Encoding is decoded here (_decoded), bounded, not by aiohttp's parser: its
        # failures are logged with a traceback per request.
        self._runner = await serve_app(
            self.app(), host, port, "LISTENER_WEBHOOK", auto_decompress=False
        )
        # The inbox is applied as soon as events come in (a wake) and on an interval (rows
        # left by a failed turn or another listener); at once at start, for what an earlier
        # run acknowledged and left. Its turns overlap under a heavy inflow: said in debug.
        self._applier = Periodic("apply_inbox", self.settle, APPLY_INTERVAL, first=0, quiet=True)
        self._jobs = [
            self._applier,
            Periodic("early_statuses", self.apply_early, EARLY_INTERVAL),
            Periodic("prune_sent", self.prune, PRUNE_INTERVAL),
            Periodic("stale_pending", self.check_stale, STALE_INTERVAL),
        ]
        for job in self._jobs:
            job.start()
        log.info(
            "delivery feedback: Evolution webhooks on %s:%s%s",
            host,
            port,
            PATH,
            extra={"action": "webhooks_started", "port": port},
        )

    async def _cleanup(self) -> None:
        served = self._runner is not None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        tasks = [task for job in self._jobs for task in job.cancel()]
        await asyncio.gather(*tasks, return_exceptions=True)
        self._jobs = []
        if served and self.pool is not None and self._applying is not None:
            # What was acknowledged is applied before the listener stops (else at its next
            # start: the rows stay in the inbox).
            with contextlib.suppress(psycopg.Error, TimeoutError):
                await asyncio.wait_for(self.settle(), SETTLE_AT_STOP)
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    @property
    def _db(self) -> AsyncConnectionPool:
        assert self.pool is not None, "the receiver is not running"
        return self.pool

    async def call(self, work: Callable[[], Awaitable[R]]) -> R:
        """Run `work` on the receiver's loop (its pool lives there) from another loop."""
        assert self._loop is not None

        async def run() -> R:
            return await work()

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), self._loop))

    async def close(self) -> None:
        """Stop the server and its jobs, close its pool, end its thread."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                loop.call_soon_threadsafe(stop.set)
        await asyncio.to_thread(thread.join, 10)
        self._thread = None

    async def handle(self, request: web.Request) -> web.Response:
        """One webhook post: 2xx once its events are stored, 4xx for what we refuse (401 without
        the secret, 413 too big, 415 an encoding we do not decode, 400 a body we cannot read or
        an event out of bounds), 503 while the database is away; never a 500."""
        headers = request.headers
        if not self._auth.check(headers.get("Authorization"), headers.get("X-Listener-Token")):
            self.metrics.rejected.labels(reason="auth").inc()
            return web.json_response({"error": "unauthorized"}, status=401)
        encoding = headers.get("Content-Encoding", "").strip().lower()
        if encoding not in _ENCODINGS:
            self.metrics.rejected.labels(reason="encoding").inc()
            return web.json_response(
                {"error": "unsupported Content-Encoding (gzip, deflate or none)"}, status=415
            )
        try:
            raw = _decoded(await request.read(), encoding)
        except (web.HTTPRequestEntityTooLarge, _TooLarge):
            self.metrics.rejected.labels(reason="too_large").inc()
            return web.json_response({"error": "body too large"}, status=413)
        except zlib.error:
            return self._malformed(BadEvent(f"the body is not {encoding}"))
        if not nesting_within(raw):
            return self._malformed(BadEvent(f"JSON nested deeper than {MAX_DEPTH}"))
        try:
            body = json.loads(raw)
            events = check_events(parse(body, request.match_info.get("event")))
        except (ValueError, RecursionError, ArithmeticError) as exc:
            # json.JSONDecodeError, UnicodeDecodeError and BadEvent are ValueErrors; a number
            # too big for a time is an ArithmeticError.
            return self._malformed(exc)
        try:
            await self.store(events)
        except (psycopg.Error, ValueError) as exc:
            if _about_the_data(exc):
                # Checked events should never get here; if one does, it fails alone (group
                # commit retries the others without it) and is refused, not acknowledged.
                self.metrics.rejected.labels(reason="unstorable").inc()
                log.warning(
                    "a webhook event could not be stored (answered 400): %s",
                    cut(exc, 200),
                    extra={"action": "webhook_unstorable"},
                )
                return web.json_response({"error": "an event cannot be stored"}, status=400)
            if not self._said_db:
                self._said_db = True
                log.warning(
                    "could not store webhook events (Evolution will retry): %s",
                    cut(exc, 200),
                    extra={"action": "webhook_db_error"},
                )
            self.metrics.rejected.labels(reason="database").inc()
            return web.json_response({"error": "try again"}, status=503)
        self._said_db = False
        return web.Response(
            body=b'{"ok": true, "events": %d}' % len(events), content_type="application/json"
        )

    @web.middleware
    async def _never_500(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """The last guard: an error nobody foresaw is a deliberate 503 (Evolution retries),
        logged with its traceback once, then in one line; never aiohttp's 500 and a traceback
        per request."""
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception as exc:
            self.metrics.rejected.labels(reason="error").inc()
            log.error(
                "webhook request failed (answered 503): %s: %s",
                type(exc).__name__,
                cut(exc, 200),
                exc_info=not self._said_error,
                extra={"action": "webhook_error"},
            )
            self._said_error = True
            return web.json_response({"error": "try again"}, status=503)

    def _malformed(self, exc: Exception) -> web.Response:
        self.metrics.rejected.labels(reason="malformed").inc()
        why = str(exc) if isinstance(exc, BadEvent) else f"not JSON: {type(exc).__name__}"
        # str(BadEvent) names fields and sizes, never the values that came
        if not self._said_malformed:
            self._said_malformed = True
            log.warning(
                "malformed webhook body (answered 400; later ones are logged at debug): %s",
                why,
                extra={"action": "webhook_malformed"},
            )
        else:
            log.debug("malformed webhook body: %s", why, extra={"action": "webhook_malformed"})
        return web.json_response({"error": f"malformed body: {why}"}, status=400)

    # ----------------------------------------------------------------------------------------
    # Writing the events
    # ----------------------------------------------------------------------------------------

    async def store(self, events: list[Event]) -> None:
        """Store every event of one request before it is answered: a plain insert, with the
        other requests of the moment (they are idempotent once applied: a retry changes
        nothing)."""
        stored: list[Event] = []
        for event in events:
            if isinstance(event, ConnectionChange):
                await self._connection(event)
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
            await self._inbox.submit(stored)
            if self._applier is not None:
                self._applier.wake()

    async def _flush_inbox(self, requests: list[list[Event]]) -> set[Hashable]:
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
        async with self._db.connection() as conn:
            await conn.execute(q("webhook_inbox"), params)
        return {id(events) for events in requests}

    async def _connection(self, event: ConnectionChange) -> None:
        if event.state != "close" or event.reason not in RESTRICTING_REASONS:
            return
        reason = f"{RESTRICTING_REASONS[event.reason]} ({event.reason})"
        if await self._restrict(event.instance, reason, None):
            self.metrics.restrictions.labels(reason=str(event.reason)).inc()

    async def _restrict(self, instance: str, reason: str, seconds: float | None) -> bool:
        """Hold the instance in the processor, on the daemon's loop."""
        callback, main = self.on_restricted, self._main
        if callback is None:
            return False
        if main is None or main is asyncio.get_running_loop():
            return callback(instance, reason, seconds)

        async def run() -> bool:
            return callback(instance, reason, seconds)

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), main))

    # ----------------------------------------------------------------------------------------
    # Applying the inbox
    # ----------------------------------------------------------------------------------------

    async def settle(self) -> tuple[int, int]:
        """Apply the inbox until it is empty (of rows no other listener is applying); returns
        the statuses and replies applied. One at a time: a call made while the applier runs
        waits for it, so it returns once everything stored before it is applied. A row that
        cannot be applied fails alone and is set aside (listener/feedback/deadletter.py); the rows
        behind it go on."""
        assert self._applying is not None, "the receiver is not running"
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
        async with self._db.connection() as conn:
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
                await self._check(conn, instance)
        return taken

    async def _check(self, conn: psycopg.AsyncConnection[Any], instance: str) -> None:
        """Hold the instance when too many of its last 10 first parts ended in ERROR or stay
        PENDING too long: WhatsApp restricts a number from new chats (error 463) while its
        connection still says `open`."""
        cur = await conn.execute(
            q("restrict_check"), {"instance": instance, **self._restrict_window()}
        )
        row = await cur.fetchone()
        if row is not None:
            await self._judge(instance, int(row[0]), int(row[1]))

    def _restrict_window(self) -> dict[str, timedelta]:
        """The alarm, and how far back first parts count: a part older than the hold plus the
        alarm has had its hold already (else a number would be held again each minute)."""
        settings = self.settings
        return {
            "alarm": settings.pending_alarm,
            "window": settings.restrict_hold + settings.pending_alarm,
        }

    async def _judge(self, instance: str, errors: int, stale: int) -> None:
        settings = self.settings
        if errors + stale < settings.restrict_errors:
            return
        why = (
            f"{errors} of its last 10 first parts ended in ERROR and {stale} are still PENDING "
            f"after {format_duration(settings.pending_alarm)}"
        )
        label = "errors" if errors >= stale else "pending"
        seconds = settings.restrict_hold.total_seconds()
        if await self._restrict(instance, why, seconds):
            self.metrics.restrictions.labels(reason=label).inc()

    async def check_stale(self) -> None:
        """The restriction check of every instance with recent first parts (sent within the
        hold plus the alarm), whichever listener sent them (a restarted one included)."""
        async with self._db.connection() as conn:
            cur = await conn.execute(q("restrict_check_all"), self._restrict_window())
            rows = await cur.fetchall()
        for instance, errors, stale in rows:
            await self._judge(str(instance), int(errors), int(stale))

    async def _apply_replies(self, ids: list[int] | None = None) -> int:
        """The oldest fresh replies of the inbox (or these ones), in the order they came, in
        one transaction; said (logged, counted) once it commits."""
        done = []
        async with self._db.connection() as conn, conn.transaction():
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
            main = self._main
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

    # ----------------------------------------------------------------------------------------
    # Periodic jobs
    # ----------------------------------------------------------------------------------------

    async def apply_early(self) -> tuple[int, int]:
        """Apply kept statuses whose part is now recorded; drop those past 10 minutes."""
        async with self._db.connection() as conn:
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
        async with self._db.connection() as conn:
            await conn.execute(q("prune_sent_events"))


def _about_the_data(exc: BaseException) -> bool:
    """Whether an error is about the rows written (it fails again, alone, whenever it is
    tried: a value out of range, an index row too big, text psycopg cannot encode), not about
    the database's state (gone, restarting, a deadlock, a timeout): rows are isolated and set
    aside for the first kind only."""
    if isinstance(exc, psycopg.errors.ProgramLimitExceeded):
        return True
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return False
    return isinstance(exc, psycopg.Error | ValueError)


class _TooLarge(Exception):
    """A compressed body that inflates past MAX_BODY."""


def _decoded(raw: bytes, encoding: str) -> bytes:
    """The body without its Content-Encoding, at most MAX_BODY bytes (a small gzip may inflate
    to gigabytes). zlib.error when it is not what its header says."""
    if encoding in ("", "identity"):
        return raw
    inflater = zlib.decompressobj(32 + zlib.MAX_WBITS)  # a gzip or a zlib header, found by zlib
    body = inflater.decompress(raw, MAX_BODY + 1)
    if len(body) > MAX_BODY or inflater.unconsumed_tail:
        raise _TooLarge
    if not inflater.eof:
        raise zlib.error("truncated")
    return body
