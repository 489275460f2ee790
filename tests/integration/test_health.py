"""/healthz under a database that freezes: connections stay open and nothing answers.

The listener reaches Postgres through a loopback proxy (tests/proxy.py) that stops forwarding
bytes on demand. Health must notice within a few health intervals, say so, and recover once
the database answers again; periodic jobs stuck meanwhile are skipped quietly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from tests.daemon_harness import running
from tests.helpers import await_until, enqueue, make_campaign, make_leads, statuses
from tests.integration.test_metrics import free_port
from tests.proxy import FreezingProxy

# The health interval of these tests, and the bound health must keep: far above the interval
# plus the check's own timeout (about 1.3 s in all), far below what psycopg's cancellation of a
# frozen query takes (about 10 s) when the check waits for it.
INTERVAL = "300ms"
NOTICE_BOUND = 6.0


@pytest.fixture
def proxy(db_url: str) -> Iterator[FreezingProxy]:
    with FreezingProxy.to(db_url) as p:
        yield p


async def _health(client: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    response = await client.get("/healthz")
    return response.status_code, response.json()


async def _wait_health(
    client: httpx.AsyncClient, want: Any, timeout: float
) -> tuple[float, dict[str, Any]]:
    """Poll /healthz until `want(status, body)`; return how long it took and the body."""
    started = time.monotonic()
    while True:
        status, body = await _health(client)
        if want(status, body):
            return time.monotonic() - started, body
        if time.monotonic() - started > timeout:
            raise AssertionError(f"/healthz still {status} {body} after {timeout}s")
        await asyncio.sleep(0.05)


async def test_health_turns_503_soon_after_the_database_freezes_and_200_after_it_thaws(
    db_url: str, db: psycopg.Connection[Any], proxy: FreezingProxy
) -> None:
    port = free_port()
    campaign = make_campaign(db)
    leads = make_leads(db, 2)
    async with (
        running(
            proxy.url(db_url),
            metrics_port=port,
            metrics_host="127.0.0.1",
            health_interval=INTERVAL,
        ),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        await _wait_health(client, lambda status, _: status == 200, timeout=10)
        proxy.freeze()
        took, body = await _wait_health(
            client,
            lambda status, body: status == 503 and not body["database"] and not body["listen"],
            timeout=30,
        )
        assert took < NOTICE_BOUND, f"/healthz took {took:.1f}s to notice the freeze"
        assert body["last_error"]  # says what failed
        proxy.unfreeze()
        took, body = await _wait_health(client, lambda status, _: status == 200, timeout=30)
        assert took < NOTICE_BOUND + 10, f"/healthz took {took:.1f}s to recover"
        assert body == {"ok": True, "database": True, "listen": True, "loop": True, **body}
        # And the listener works again: a message inserted now is sent.
        enqueue(db, campaign, leads)
        await await_until(lambda: statuses(db).get("sent") == 2, timeout=30)


async def test_loop_turns_false_while_the_claim_hangs_and_true_when_it_returns(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    # A long lease: whatever bounds a claim by its lease does not end this one first.
    async with running(db_url, health_interval=INTERVAL, lease="60s", poll_interval="1s") as d:
        await await_until(lambda: d.health.ok)
        with db.transaction():
            # The claim (at the next poll, 1 s) waits on this lock while the database answers
            # everything else: only `loop` can tell.
            db.execute("LOCK TABLE campaign_messages IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            await await_until(lambda: not d.health.loop_ok, timeout=60)
            took = time.monotonic() - started
            # Not turned for 10 s is stuck (or three health intervals); it used to take 30 s
            # at the least (90 s with the default poll interval).
            assert took < 20, f"loop took {took:.1f}s to turn false"
            assert d.health.db_ok and d.health.listen_ok and not d.health.ok
        await await_until(lambda: d.health.loop_ok and d.health.ok, timeout=30)


async def test_jobs_stuck_on_a_frozen_database_are_skipped_without_a_log_line_per_run(
    db_url: str, proxy: FreezingProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="apscheduler")
    caplog.set_level(logging.INFO, logger="listener")
    # Leases renewed every 100 ms, the poll and rescue every 200 ms: each is still stuck on
    # the frozen database dozens of times during the freeze.
    async with running(
        proxy.url(db_url),
        health_interval=INTERVAL,
        lease="1s",
        rescue_interval="200ms",
        poll_interval="200ms",
    ) as daemon:
        await await_until(lambda: daemon.health.ok)
        proxy.freeze()
        await asyncio.sleep(4)
        proxy.unfreeze()
        await await_until(lambda: daemon.health.ok, timeout=30)
        await asyncio.sleep(1)
    spam = [r for r in caplog.records if "maximum number of running instances" in r.getMessage()]
    assert spam == []
    # One warning per job and episode at most, for the jobs the freeze caught.
    overlaps = [r for r in caplog.records if getattr(r, "action", "") == "job_overlap"]
    per_job: dict[str, int] = {}
    for record in overlaps:
        job = str(getattr(record, "job", ""))
        per_job[job] = per_job.get(job, 0) + 1
    assert overlaps, "a job stuck on the frozen database is reported once"
    assert all(n == 1 for n in per_job.values()), per_job
    assert all(r.levelno <= logging.WARNING for r in overlaps)
    listener_warnings = [
        r for r in caplog.records if r.name.startswith("listener") and r.levelno >= logging.WARNING
    ]
    # A freeze of 4 s with jobs every 100-300 ms: a handful of lines, not one per run.
    assert len(listener_warnings) < 25, [r.getMessage() for r in listener_warnings]
