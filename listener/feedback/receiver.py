"""The delivery-feedback receiver: Evolution posts its webhooks here (docs/design.md,
"Delivery feedback"). `POST /webhooks/evolution` (and `/webhooks/evolution/<event-with-dashes>` in
by-events mode) on LISTENER_WEBHOOK_HOST:LISTENER_WEBHOOK_PORT, on when LISTENER_WEBHOOK_SECRET
is set.

A request is authenticated (a JWT signed with the secret, or the secret itself in
`X-Listener-Token`; anything else is 401 and writes nothing), parsed (feedback.parse; a bad body
is 400), and its events stored in the inbox (inbox.py) before it is answered; the inbox's
applier, off the request path, is woken. A database that is away answers 503, which Evolution
retries; never a 500 loop.

The receiver runs on its own thread, event loop and connection pool: a listener sending at
full speed keeps its own loop busy, and an answer must not wait behind hundreds of sends'
callbacks. Its periodic jobs (the applier, kept statuses, the prune, the restriction check) run
there on listener/periodic.py's runner. What it tells the processor (a restricted instance,
replies to classify) goes to the daemon's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import threading
import zlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg
from aiohttp import web
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from listener.db import make_pool
from listener.feedback.events import Authenticator, BadEvent, Event, parse
from listener.feedback.inbound import MAX_DEPTH, check_events, nesting_within
from listener.feedback.inbox import Inbox, about_the_data
from listener.feedback.metrics import WebhookMetrics
from listener.feedback.restrictions import OnRestricted, Restrictions
from listener.periodic import Periodic
from listener.serving import serve_app
from listener.settings import Settings
from listener.text import cut

log = logging.getLogger(__name__)

R = TypeVar("R")

PATH = "/webhooks/evolution"
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
# `send.message` events older than a day are pruned this often.
PRUNE_INTERVAL = 3600.0
# Every instance with recent first parts is checked for stale PENDING ones this often.
STALE_INTERVAL = 60.0


class WebhookReceiver:
    """The receiver of one listener: its HTTP app, its batched writes and its periodic jobs."""

    def __init__(
        self,
        settings: Settings,
        url: str,
        registry: CollectorRegistry,
        *,
        on_restricted: OnRestricted | None = None,
        on_replies: Callable[[], None] | None = None,
    ) -> None:
        secret = settings.webhook_secret
        assert secret is not None
        self._auth = Authenticator(secret.get_secret_value().strip())
        self.settings = settings
        self.url = url
        self.pool: AsyncConnectionPool | None = None
        self.metrics = WebhookMetrics(registry)
        self.restrictions = Restrictions(settings, lambda: self._db, self.metrics, on_restricted)
        self.inbox = Inbox(
            settings,
            lambda: self._db,
            registry,
            self.metrics,
            self.restrictions,
            on_replies=on_replies,
        )
        self._applier: Periodic | None = None
        self._runner: web.AppRunner | None = None
        self._jobs: list[Periodic] = []
        self._said_malformed = False
        self._said_error = False
        self._said_db = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
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
        self.inbox.main = self.restrictions.main = asyncio.get_running_loop()
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
            Periodic("prune_sent", self.inbox.prune, PRUNE_INTERVAL),
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
        if served and self.pool is not None:
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
            if about_the_data(exc):
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
    # The inbox and the restriction check (on the receiver's loop)
    # ----------------------------------------------------------------------------------------

    async def store(self, events: list[Event]) -> None:
        """Store the events of one request in the inbox, and wake its applier."""
        if await self.inbox.store(events) and self._applier is not None:
            self._applier.wake()

    async def settle(self) -> tuple[int, int]:
        """Apply the inbox until it is empty; the statuses and replies applied."""
        return await self.inbox.settle()

    async def apply_early(self) -> tuple[int, int]:
        """Apply kept statuses whose part is now recorded; the applied and the dropped."""
        return await self.inbox.apply_early()

    async def check_stale(self) -> None:
        """The restriction check of every instance with recent first parts."""
        await self.restrictions.check_stale()


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
