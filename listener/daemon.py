"""`listener run`: wire the pool, the LISTEN connection, the timers and the processor together,
and stop cleanly on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable

import psycopg
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from psycopg_pool import AsyncConnectionPool

from listener.db import make_pool, redact, within
from listener.feedback.receiver import WebhookReceiver
from listener.feedback.replies import Replies
from listener.metrics import Health, Metrics, serve
from listener.periodic import Periodic
from listener.providers.base import LLM, Sender
from listener.providers.classify import LLMClassifier, ReplyClassifier, RulesClassifier
from listener.queries import q
from listener.queue.processor import Processor
from listener.queue.wakeup import NotifyListener, WakeTimer, check_timeout
from listener.settings import Settings, format_duration
from listener.text import cut
from listener.web import Live, StatusPage, live_state

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
        from listener.providers.sandbox_feedback import SandboxFeedback

        feedback = SandboxFeedback(settings) if settings.webhooks_on else None
        sender = SandboxSender(pool, feedback=feedback)
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
        # The claim loop turns at least every 5 s when idle, and backs off at most 10 s after a
        # failed claim: not having turned for 10 s (or three health intervals) is stuck.
        self.health = Health(stuck_after=max(10.0, settings.health_interval.total_seconds() * 3))
        self.pool = make_pool(url, settings)
        self._llm = llm
        self._sender = sender
        self.processor: Processor | None = None
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self._stop = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.webhooks: WebhookReceiver | None = None
        self.listener: NotifyListener | None = None
        self._jobs: list[Periodic] = []
        self.replies: Replies | None = None
        self._extra_clients: list[LLM] = []
        self._database_answers = True

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
            page = StatusPage(self.pool, live=self.live, region=settings.default_region)
            self._runner = await serve(
                self.metrics,
                self.health,
                settings.metrics_host,
                settings.metrics_port,
                routes=page.routes(),
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
            # Lease renewal's and the rescue's own connections, opened before the first turn
            # of either (a connect under load outlasts a short rescue interval); a database
            # that does not answer yet holds the start up 2 s at most, they connect later.
            try:
                await within(processor.store.open_lanes(), 2.0, on_timeout=lambda: None)
            except TimeoutError:
                log.warning(
                    "lease renewal's and the rescue's connections are not open yet; they open "
                    "at their first use",
                    extra={"action": "lane_open_failed"},
                )
            await self._start_webhooks(processor)
            self.health.waiting = lambda: (
                # Every slot busy: the loop waits for room, not for the database. A provider
                # hold: it waits on purpose.
                processor.held >= settings.concurrency
                or processor.llm_gate.remaining > 0
                or processor.sender_gate.remaining > 0
            )
            timer = WakeTimer(self.scheduler, processor.wake.set)
            processor.on_next_due = timer.schedule
            self.listener = NotifyListener(
                self.url, settings, self.health, on_due=processor.wake.set, on_future=timer.schedule
            )
            self._schedule_jobs(processor, timer)
            if settings.sweep_max_age.total_seconds() > 0:
                # Before the first claim, so rows past the age limit are skipped, not sent late.
                await next(job for job in self._jobs if job.name == "sweep").run_now()
            self.scheduler.start()
            for job in self._jobs:
                job.start()
        except BaseException:
            # A start that fails halfway must not leave the pool's or the server's tasks
            # behind: the process would hang instead of exiting with the error.
            await self._close_resources()
            raise
        # What start-up made (modules, settings, the pool, the providers) lives as long as
        # the run: kept out of the cycle collector's scans, which otherwise walk it again and
        # again while messages flow (about 6 % of the listener's CPU per message). Unfrozen at
        # the end, so a process that runs listeners one after another (the tests) frees them.
        gc.freeze()
        listen_task = asyncio.create_task(self.listener.run(), name="listen")
        claim_task = asyncio.create_task(processor.claim_loop(), name="claim")
        stop_task = asyncio.create_task(self._stop.wait(), name="stop")
        classify_task = (
            asyncio.create_task(self.replies.run(self.health), name="classify")
            if self.replies is not None
            else None
        )
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
            if classify_task is not None:  # a reply half classified is taken again later
                if self.replies is not None:
                    self.replies.stop()
                classify_task.cancel()
                await asyncio.gather(classify_task, return_exceptions=True)
            # Let a claim already under way finish (its rows are then handed back by the
            # drain); one stuck past the grace period is cancelled, its rows left to the lease.
            _, late = await asyncio.wait({claim_task}, timeout=max(grace, 1.0))
            for task in late:
                task.cancel()
            await processor.drain(max(deadline - time.monotonic(), 0.0))
            await processor.senders.aclose()
            self.listener.stop()
            for task in (listen_task, claim_task, stop_task):
                task.cancel()
            await asyncio.gather(listen_task, claim_task, stop_task, return_exceptions=True)
            await self._close_resources()
            gc.unfreeze()
            log.info("listener stopped", extra={"action": "stopped"})

    def live(self) -> Live | None:
        """What the status page shows of this listener (None before the processor exists)."""
        processor = self.processor
        if processor is None:
            return None
        return live_state(self.settings, self.health.as_dict(), processor)

    async def _close_resources(self) -> None:
        """Stop the scheduler, the metrics server, the provider clients and the pool."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        running = [task for job in self._jobs for task in job.cancel()]
        if running:
            # A job stuck on a frozen database winds down within psycopg's cancel timeouts;
            # the pool's close does not wait for it longer than that either.
            await asyncio.wait(running, timeout=2)
        if self.processor is not None:
            await self.processor.store.aclose()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.webhooks is not None:
            await self.webhooks.close()
            self.webhooks = None
        for provider in (self._llm, self._sender, *self._extra_clients):
            if provider is not None:
                with contextlib.suppress(Exception):
                    await provider.aclose()
        await self.pool.close()

    async def _start_webhooks(self, processor: Processor) -> None:
        """The delivery-feedback receiver, when LISTENER_WEBHOOK_SECRET is set; else say once
        that feedback is off."""
        if not self.settings.webhooks_on:
            log.info(
                "delivery feedback is off: set LISTENER_WEBHOOK_SECRET (and point Evolution's "
                "webhook here with `listener webhook set`) to track delivery, replies and opt-outs",
                extra={"action": "webhooks_off"},
            )
            return
        # Replies understood: classified on this loop, off the receiver's fast answer; a reply
        # the receiver files wakes the classifier at once, the interval catches the rest.
        assert self._llm is not None
        self.replies = Replies(self.settings, self.pool, self._classifier(self._llm))
        self.webhooks = WebhookReceiver(
            self.settings,
            self.url,
            self.metrics.registry,
            on_restricted=processor.restrict,
            on_replies=self.replies.wake,
        )
        await self.webhooks.start()

    def _classifier(self, llm: LLM) -> ReplyClassifier:
        """The sandbox's rules with the sandbox LLM; else OpenRouter on
        LISTENER_CLASSIFIER_MODEL (through the listener's own client when it has one)."""
        if self.settings.llm == "sandbox":
            return RulesClassifier()
        from listener.providers.llm import OpenRouterLLM

        if not isinstance(llm, OpenRouterLLM):
            llm = OpenRouterLLM(self.settings)
            self._extra_clients.append(llm)
        return LLMClassifier(llm, self.settings.classifier_model)

    def _schedule_jobs(self, processor: Processor, timer: WakeTimer) -> None:
        """Every periodic job runs on listener/periodic.py's runner: a run still going when
        the next one is due is left alone and that turn skipped; a failure is said once per
        episode and marks the health when it is the database's."""
        settings = self.settings
        lease = settings.lease.total_seconds()
        self._job("renew_leases", processor.renew_leases, max(lease / 3, 0.05))
        # The rescue runs at once (rows a dead listener left), then on its interval.
        self._job("rescue", self.rescue, settings.rescue_interval.total_seconds(), first=0)
        self._job("refresh", self._refresh, settings.poll_interval.total_seconds())
        # The probe says itself when the database stops and starts answering.
        self._job("probe", self._probe, settings.health_interval.total_seconds(), quiet=True)
        # Held sender numbers are asked again (not their messages); see pacing/pool.py.
        self._job("recheck", processor.senders.recheck, settings.instance_recheck.total_seconds())
        # Holds of a campaign cut off mid-move are taken up (after their runner's lease).
        self._job("holds", processor.senders.resume_holds, max(lease / 2, 0.05))
        if settings.sweep_max_age.total_seconds() > 0:
            self._job("sweep", self.sweep, settings.sweep_interval.total_seconds())
        self._timer = timer

    def _job(
        self,
        name: str,
        work: Callable[[], Awaitable[object]],
        every: float,
        *,
        first: float | None = None,
        quiet: bool = False,
    ) -> Periodic:
        """`work` as a periodic job, started with the others (`quiet`: its skipped turns are
        debug lines only)."""

        def failed(exc: Exception) -> None:
            if isinstance(exc, psycopg.Error):
                self.health.db_ok = False
                self.health.last_error = f"{name} failed: {cut(str(exc), 200)}"

        job = Periodic(name, work, every, first=first, quiet=quiet, on_error=failed)
        self._jobs.append(job)
        return job

    async def _probe(self) -> None:
        """Ask the database a trivial question under a short timeout: a frozen database (a
        stalled network path, a stopped server) raises nothing, it only stops answering, and
        the queries waiting on it would keep /healthz green."""
        timeout = check_timeout(self.settings.health_interval.total_seconds())
        why = f"the database did not answer within {timeout:g}s"

        def down() -> None:
            self.health.db_ok = False
            self.health.last_error = why
            if self._database_answers:
                self._database_answers = False
                log.warning(why, extra={"action": "database_silent"})

        async def ping() -> None:
            async with self.pool.connection(timeout=timeout) as conn:
                await conn.execute(q("ping"))

        try:
            await within(ping(), timeout, on_timeout=down)
        except TimeoutError:
            return
        except psycopg.Error as exc:
            down()
            self.health.last_error = f"database check failed: {exc}"
            return
        self.health.db_ok = True
        if not self._database_answers:
            self._database_answers = True
            log.info("the database answers again", extra={"action": "database_back"})

    async def _refresh(self) -> None:
        """The slow safety net: wake the claim loop, re-arm the timer, update the backlog."""
        assert self.processor is not None
        self.processor.wake.set()
        self.metrics.backlog.set(await self.processor.store.backlog())
        self.health.db_ok = True
        if self.processor.next_due is not None:
            self._timer.schedule(self.processor.next_due)

    async def rescue(self) -> int:
        """Take back rows whose worker died (their lease expired)."""
        assert self.processor is not None
        rows = await self.processor.store.rescue()
        if rows:
            failed = sum(1 for row in rows if row[1] == "failed")
            log.warning(
                "took back %d messages whose lease expired (%d failed on their last attempt)",
                len(rows),
                failed,
                extra={"action": "rescued", "messages": len(rows), "failed": failed},
            )
        return len(rows)

    async def sweep(self) -> int:
        """The seed's sweep of old pending rows, with the age limit of the settings."""
        assert self.processor is not None
        skipped = await self.processor.store.sweep(self.settings.sweep_max_age)
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
