"""`listener run`: wire the pool, the LISTEN connection, the timers and the processor together,
and stop cleanly on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from datetime import datetime
from typing import Any

import psycopg
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from psycopg_pool import AsyncConnectionPool

from listener.db import make_pool, redact
from listener.metrics import Health, Metrics, serve
from listener.processor import Processor
from listener.providers.base import LLM, Sender
from listener.queries import q
from listener.settings import Settings, format_duration
from listener.wakeup import NotifyListener, WakeTimer

log = logging.getLogger(__name__)


def build_providers(settings: Settings, pool: AsyncConnectionPool) -> tuple[LLM, Sender]:
    """The providers the settings choose."""
    llm: LLM
    sender: Sender
    if settings.llm == "sandbox":
        from listener.providers.sandbox import SandboxLLM

        llm = SandboxLLM()
    else:
        from listener.providers.llm import OpenRouterLLM

        llm = OpenRouterLLM(settings)
    if settings.sender == "sandbox":
        from listener.providers.sandbox import SandboxSender

        sender = SandboxSender(pool)
    else:
        from listener.providers.sender import EvolutionSender

        sender = EvolutionSender(settings)
    return llm, sender


class Daemon:
    """One listener: everything `listener run` starts, and its orderly stop."""

    def __init__(
        self, settings: Settings, url: str, *, llm: LLM | None = None, sender: Sender | None = None
    ) -> None:
        self.settings = settings
        self.url = url
        self.metrics = Metrics()
        self.health = Health(stuck_after=max(30.0, settings.poll_interval.total_seconds() * 3))
        self.pool = make_pool(url, settings)
        self._llm = llm
        self._sender = sender
        self.processor: Processor | None = None
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self._stop = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.listener: NotifyListener | None = None

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        settings = self.settings
        log.info(
            "listener starting",
            extra={
                "action": "starting",
                "worker": settings.worker_id,
                "database": redact(self.url),
                "llm": settings.llm,
                "sender": settings.sender,
                "concurrency": settings.concurrency,
            },
        )
        if settings.metrics_port:
            # First, so a port already taken ends the start with one clear line.
            self._runner = await serve(
                self.metrics, self.health, settings.metrics_host, settings.metrics_port
            )
        try:
            await self.pool.open(wait=False)
            if self._llm is None or self._sender is None:
                llm, sender = build_providers(settings, self.pool)
                self._llm = self._llm or llm
                self._sender = self._sender or sender
            processor = Processor(
                settings,
                self.pool,
                self._llm,
                self._sender,
                metrics=self.metrics,
                health=self.health,
            )
            self.processor = processor
            timer = WakeTimer(self.scheduler, processor.wake.set)
            processor.on_next_due = timer.schedule
            self.listener = NotifyListener(
                self.url, settings, self.health, on_due=processor.wake.set, on_future=timer.schedule
            )
            self._schedule_jobs(processor, timer)
            if settings.sweep_max_age.total_seconds() > 0:
                # Before the first claim, so rows past the age limit are skipped, not sent late.
                await self._guard(self.sweep, "sweep")()
            self.scheduler.start()
        except BaseException:
            # A start that fails halfway must not leave the pool's or the server's tasks
            # behind: the process would hang instead of exiting with the error.
            await self._close_resources()
            raise
        listen_task = asyncio.create_task(self.listener.run(), name="listen")
        claim_task = asyncio.create_task(processor.claim_loop(), name="claim")
        stop_task = asyncio.create_task(self._stop.wait(), name="stop")
        try:
            done, _ = await asyncio.wait(
                {listen_task, claim_task, stop_task}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task is not stop_task and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            log.info("stopping: no more claims", extra={"action": "stopping"})
            grace = settings.shutdown_grace.total_seconds()
            deadline = time.monotonic() + grace
            processor.stop_claiming()
            # Let a claim already under way finish (its rows are then handed back by the
            # drain); one stuck past the grace period is cancelled, its rows left to the lease.
            _, late = await asyncio.wait({claim_task}, timeout=max(grace, 1.0))
            for task in late:
                task.cancel()
            await processor.drain(max(deadline - time.monotonic(), 0.0))
            self.listener.stop()
            for task in (listen_task, claim_task, stop_task):
                task.cancel()
            await asyncio.gather(listen_task, claim_task, stop_task, return_exceptions=True)
            await self._close_resources()
            log.info("listener stopped", extra={"action": "stopped"})

    async def _close_resources(self) -> None:
        """Stop the scheduler, the metrics server, the provider clients and the pool."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for provider in (self._llm, self._sender):
            if provider is not None:
                with contextlib.suppress(Exception):
                    await provider.aclose()
        await self.pool.close()

    def _schedule_jobs(self, processor: Processor, timer: WakeTimer) -> None:
        settings = self.settings
        lease = settings.lease.total_seconds()
        self.scheduler.add_job(
            self._guard(processor.renew_leases, "renew_leases"),
            "interval",
            seconds=max(lease / 3, 0.05),
            id="renew-leases",
            max_instances=1,
            coalesce=True,
        )
        self.scheduler.add_job(
            self._guard(self.rescue, "rescue"),
            "interval",
            seconds=settings.rescue_interval.total_seconds(),
            id="rescue",
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now().astimezone(),
        )
        if settings.sweep_max_age.total_seconds() > 0:
            self.scheduler.add_job(
                self._guard(self.sweep, "sweep"),
                "interval",
                seconds=settings.sweep_interval.total_seconds(),
                id="sweep",
                max_instances=1,
                coalesce=True,
            )
        self.scheduler.add_job(
            self._guard(self._refresh, "refresh"),
            "interval",
            seconds=settings.poll_interval.total_seconds(),
            id="poll",
            max_instances=1,
            coalesce=True,
        )
        self._timer = timer

    def _guard(self, job: Any, name: str) -> Any:
        async def run() -> None:
            try:
                await job()
            except psycopg.Error as exc:
                self.health.db_ok = False
                self.health.last_error = f"{name} failed: {exc}"
                log.warning("%s failed: %s", name, exc, extra={"action": f"{name}_failed"})

        return run

    async def _refresh(self) -> None:
        """The slow safety net: wake the claim loop, re-arm the timer, update the backlog."""
        assert self.processor is not None
        self.processor.wake.set()
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("backlog"))
            row = await cur.fetchone()
        self.metrics.backlog.set(row[0] if row else 0)
        self.health.db_ok = True
        if self.processor.next_due is not None:
            self._timer.schedule(self.processor.next_due)

    async def rescue(self) -> int:
        """Take back rows whose worker died (their lease expired)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                q("rescue_expired"), {"max_attempts": self.settings.max_attempts}
            )
            rows = await cur.fetchall()
        if rows:
            failed = sum(1 for row in rows if row[1] == "failed")
            log.warning(
                "took back %d messages whose worker stopped (%d failed on their last attempt)",
                len(rows),
                failed,
                extra={"action": "rescued", "messages": len(rows), "failed": failed},
            )
        return len(rows)

    async def sweep(self) -> int:
        """The seed's sweep of old pending rows, with the age limit of the settings."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("sweep_old"), {"max_age": self.settings.sweep_max_age})
            row = await cur.fetchone()
        skipped = int(row[0]) if row else 0
        log.info(
            "sweep skipped %d messages older than %s",
            skipped,
            format_duration(self.settings.sweep_max_age),
            extra={"action": "swept", "skipped": skipped},
        )
        return skipped


async def run_daemon(settings: Settings, url: str) -> None:
    """Run until SIGTERM/SIGINT, then drain and return (exit code 0)."""
    daemon = Daemon(settings, url)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_stop)
    await daemon.run()
