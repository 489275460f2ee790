"""The demo's run: a sandbox listener in this process (its settings, its ports), the guard
against a database where it could do harm, the sample campaign inserted and followed until
every message has an outcome, the hand-offs heard on listener_handoff, the stats gathered, and
the clean-up; Ctrl-C or SIGTERM ends the wait instead of killing it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING
from uuid import UUID

import psycopg

from listener.commands.demo.progress import DemoResult, Progress, handoff_line
from listener.commands.demo.sample import create_sample, sample_leads
from listener.commands.oneshot import Connection, connection, one
from listener.commands.stats import collect_stats
from listener.errors import ConfigurationError, DatabaseError, ListenerError
from listener.queries import q
from listener.settings import Settings, load_settings

if TYPE_CHECKING:
    from listener.daemon import Daemon


async def demo_guard(url: str) -> None:
    """Refuse to run the demo's sandbox listener where it could do harm: with another listener
    connected (it would send the sample messages for real) or with messages already queued
    (the sandbox would mark them sent)."""
    async with connection(url, "demo") as conn:
        row = await one(conn, "demo_guard", {})
    if row["listeners"]:
        raise ConfigurationError(
            "another listener is connected to this database and would send the demo's sample "
            "messages for real; run the demo on its own database (unset DATABASE_URL)"
        )
    if row["queued"]:
        raise ConfigurationError(
            f"this database has {row['queued']} queued messages that the demo's sandbox would "
            "take; run the demo on its own database (unset DATABASE_URL)"
        )


async def _progress(conn: Connection, run_id: UUID) -> Progress:
    row = await one(conn, "demo_progress", {"run_id": run_id})
    return Progress(
        total=row["total_count"],
        sent=row["sent_count"],
        failed=row["failed_count"],
        skipped=row["skipped_count"],
    )


async def run_demo(
    url: str,
    settings: Settings,
    *,
    leads: int = 30,
    keep: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    on_handoff: Callable[[tuple[str, str, str, str]], None] | None = None,
    on_result: Callable[[DemoResult], None] | None = None,
    serve: bool = False,
    stop: asyncio.Event | None = None,
    timeout: float = 45.0,
    poll: float = 0.1,
) -> DemoResult:
    """Run a sandbox listener in this process, insert a sample campaign with `leads` leads (and
    a follow-up step seconds later), report the run's counts every `poll` seconds until every
    message has an outcome, and gather the stats, a few delivered parts and the hand-offs
    announced on listener_handoff (each also given to `on_handoff` as it comes). With `serve`,
    the result goes to `on_result` and the listener and its status page stay up until `stop`
    (Ctrl-C). Then the listener stops (drained) and, unless `keep`, the sample rows are
    deleted. `stop` also ends the wait early."""
    if leads < 1:
        raise ConfigurationError("the demo needs at least one lead")
    stop = stop or asyncio.Event()
    from listener.daemon import Daemon  # aiohttp, APScheduler...: only the demo needs them

    daemon = Daemon(settings, url)
    task = asyncio.create_task(daemon.run(), name="demo-listener")
    created: tuple[UUID, UUID] | None = None
    handoffs: list[tuple[str, str, str, str]] = []

    def handed(handoff: tuple[str, str, str, str]) -> None:
        handoffs.append(handoff)
        if on_handoff is not None:
            on_handoff(handoff)

    try:
        try:
            async with (
                connection(url, "demo") as conn,
                _handoffs(url, handed) as listening,
            ):
                await _wait_listening(daemon, task)
                await listening
                started = time.monotonic()
                created = await create_sample(conn, sample_leads(leads))
                interrupted = await _follow(
                    conn, created[1], task, stop, on_progress, started + timeout, poll
                )
                if settings.webhooks_on and not interrupted:
                    # The last parts' delivery, reads and replies come a moment after them.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), FEEDBACK_WAIT)
                elapsed = time.monotonic() - started
                campaign_id, run_id = created
                progress = await _progress(conn, run_id)
                cur = await conn.execute(q("demo_samples"), {"run_id": run_id, "limit": 5})
                samples = [(row["number"], row["text"]) for row in await cur.fetchall()]
                # The stats window covers the demo, rounded up to whole seconds.
                stats = await collect_stats(url, timedelta(seconds=int(elapsed) + 2))
                result = DemoResult(
                    campaign_id=campaign_id,
                    run_id=run_id,
                    progress=progress,
                    elapsed=elapsed,
                    stats=stats,
                    samples=samples,
                    interrupted=interrupted,
                    handoffs=handoffs,
                )
                if serve and not interrupted:
                    if on_result is not None:
                        on_result(result)
                    await _serve_until(stop, task)
        finally:
            await _stop_daemon(daemon, task, settings)
    finally:
        if created is not None and not keep:
            async with connection(url, "demo cleanup") as conn:
                await conn.execute(q("demo_cleanup"), {"campaign_id": created[0]})
    return result


async def _serve_until(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    """Keep the demo's listener (and its status page) up until `stop`; a listener that ends
    by itself meanwhile is an error."""
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done() and not stop.is_set():
        task.result()
        raise ListenerError("the demo's listener stopped while serving")


@contextlib.asynccontextmanager
async def _handoffs(
    url: str, handed: Callable[[tuple[str, str, str, str]], None]
) -> AsyncIterator[asyncio.Future[None]]:
    """LISTEN on listener_handoff, as a back end would, for as long as the demo runs: each
    hand-off is read (who, what they wrote) and given to `handed`. Yields a future that is
    done once the LISTEN is in place."""
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def listen() -> None:
        # The notifies generator holds its connection: the lookups go through another one.
        async with (
            connection(url, "demo handoffs") as conn,
            connection(url, "demo handoffs") as lookup,
        ):
            await conn.execute("LISTEN listener_handoff")
            ready.set_result(None)
            async for note in conn.notifies():
                reply_id = json.loads(note.payload).get("reply_id")
                cur = await lookup.execute(q("demo_handoff"), {"reply_id": reply_id})
                row = await cur.fetchone()
                if row is not None:  # (not one of the demo's: nothing to say)
                    handed((row["name"] or "", row["phone"], row["text"], row["kind"]))

    task = asyncio.create_task(listen(), name="demo-handoffs")
    task.add_done_callback(lambda t: _ended(t, ready))
    try:
        yield ready
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _ended(task: asyncio.Task[None], ready: asyncio.Future[None]) -> None:
    """The hand-off listener ended: before it was listening, the demo fails with why."""
    if ready.done():
        return
    if task.cancelled():
        ready.set_exception(ListenerError("the demo's hand-off listener was cancelled"))
    else:
        ready.set_exception(task.exception() or ListenerError("the hand-off listener ended"))


async def _follow(
    conn: Connection,
    run_id: UUID,
    task: asyncio.Task[None],
    stop: asyncio.Event,
    on_progress: Callable[[Progress], None] | None,
    deadline: float,
    poll: float,
) -> bool:
    """Poll the run's counts until every message has an outcome; True when `stop` cut it short."""
    while True:
        progress = await _progress(conn, run_id)
        if on_progress is not None:
            on_progress(progress)
        if progress.finished:
            return False
        if stop.is_set():
            return True
        if task.done():
            task.result()
            raise ListenerError("the demo's listener stopped before the demo finished")
        if time.monotonic() > deadline:
            raise ListenerError(
                f"the demo did not finish in time ({progress.done}/{progress.total} messages done)"
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), poll)


async def _stop_daemon(daemon: Daemon, task: asyncio.Task[None], settings: Settings) -> None:
    """Ask the demo's listener to stop and wait for it to drain; its database errors become
    one-line DatabaseErrors."""
    daemon.request_stop()
    try:
        await asyncio.wait_for(task, timeout=settings.shutdown_grace.total_seconds() + 10)
    except psycopg.Error as exc:
        raise DatabaseError(f"the demo's listener failed: {exc}") from exc


async def _wait_listening(daemon: Daemon, task: asyncio.Task[None], limit: float = 15.0) -> None:
    """Wait until the listener's LISTEN is in place, so the sample insert wakes it."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if daemon.listener is not None and daemon.listener.connected.is_set():
            return
        if task.done():
            task.result()
            raise ListenerError("the demo's listener stopped while starting")
        await asyncio.sleep(0.01)
    raise ListenerError(f"the demo's listener did not start listening within {limit:.0f}s")


#: The status page's port in the demo when it is free (the metrics port's default).
DEMO_PAGE_PORT = 9464


#: How long the demo waits after the last send for its delivery feedback.
FEEDBACK_WAIT = 2.5


def free_port() -> int:
    """A free port on 127.0.0.1 (the demo's webhook receiver)."""
    return page_port(0)


def page_port(preferred: int = DEMO_PAGE_PORT) -> int:
    """A port on 127.0.0.1 for the demo's status page: `preferred` when free, else any free one
    (a listener already running here keeps its own)."""
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise ConfigurationError("no free port on 127.0.0.1 for the demo's status page")


def demo_settings(url: str, *, port: int = 0) -> Settings:
    """The demo listener's settings: sandbox providers, quick retries, quiet logs so the
    progress line stays readable, and the metrics port (with the status page) on `port` of
    127.0.0.1 only (0: none)."""
    return load_settings(
        llm="sandbox",
        sender="sandbox",
        database_url=url,
        metrics_port=port,
        metrics_host="127.0.0.1",
        part_delay="50ms",
        retry_delays="1s,2s,3s",
        shutdown_grace="5s",
        log_level="WARNING",
        # Delivery feedback: the sandbox sender reports deliveries, reads and a few replies
        # (one SAIR) to the listener's own receiver, on a free port of 127.0.0.1.
        webhook_secret=secrets.token_urlsafe(24),
        webhook_host="127.0.0.1",
        webhook_port=free_port(),
    )


async def demo(
    url: str,
    *,
    leads: int,
    keep: bool,
    check: bool,
    progress: Callable[[Progress], None],
    inform: Callable[[str], None],
    serve: bool = False,
    on_result: Callable[[DemoResult], None] | None = None,
    stop: asyncio.Event | None = None,
) -> DemoResult:
    """The command's work: migrate, refuse a database where the demo could do harm (`check`,
    for a database the demo does not own), then run the demo with Ctrl-C or SIGTERM ending the
    wait (the listener drains and the sample rows are cleaned up) instead of killing it. Each
    hand-off is told (`inform`) as it comes. With `serve`, the result goes to `on_result` and
    the listener and its status page stay up until Ctrl-C (or `stop`)."""
    from listener.commands.migrate import migrate

    applied = await migrate(url)
    if applied:
        inform(f"applied {len(applied)} migrations")
    if check:
        await demo_guard(url)
    port = page_port()
    inform(f"status page while the demo runs: http://127.0.0.1:{port}/")
    stop = stop or asyncio.Event()

    def result_ready(result: DemoResult) -> None:
        if on_result is not None:
            on_result(result)
        inform(f"serving the status page at http://127.0.0.1:{port}/ until Ctrl-C")

    with _on_interrupt(stop):
        return await run_demo(
            url,
            demo_settings(url, port=port),
            leads=leads,
            keep=keep,
            on_progress=progress,
            on_handoff=lambda handoff: inform("hand-off: " + handoff_line(handoff)),
            on_result=result_ready,
            serve=serve,
            stop=stop,
        )


@contextlib.contextmanager
def _on_interrupt(stop: asyncio.Event) -> Iterator[None]:
    """Ctrl-C or SIGTERM sets `stop` (so the demo drains and cleans up) instead of killing it."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, Windows
            continue
        installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
