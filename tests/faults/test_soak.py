"""A scripted soak (issue 7): real listener processes against Postgres and fault-injecting
providers. While a few thousand messages drain, a listener is killed with SIGKILL, every
Postgres backend of the database is terminated, and the providers answer with 429s, 5xx,
timeouts and dropped connections. Then: every message ended `sent` or `failed` with a reason,
nothing is left `processing`, no part went out twice beyond what DESIGN.md allows (one part per
message in flight at the kill), and the counts of `campaign_runs` match the messages."""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from typing import Any

import psycopg

from tests.e2e.test_processes import listener_env, parts_per_number, start
from tests.fakes import serve_fakes
from tests.helpers import await_until, enqueue, make_campaign, make_leads, make_run, statuses

Conn = psycopg.Connection[Any]

MESSAGES = 2000
FAULT_RATE = 0.04


async def test_soak_with_kills_backend_restarts_and_provider_faults(db_url: str, db: Conn) -> None:
    campaign = make_campaign(db)
    run = make_run(db, campaign)
    leads = make_leads(db, MESSAGES)
    rng = random.Random(7)
    faults_on = True

    def chaos(endpoint: str) -> str | None:
        if not faults_on or rng.random() >= FAULT_RATE:
            return None
        return rng.choice(["429", "500", "timeout", "drop"])

    async with serve_fakes() as fakes:
        fakes.reply_parts = 2
        fakes.chaos = chaos
        fakes.timeout_sleep = 0.4
        env = listener_env(
            db_url,
            fakes,
            LISTENER_CONCURRENCY="20",
            LISTENER_LLM_TIMEOUT="250ms",
            LISTENER_SEND_TIMEOUT="250ms",
            LISTENER_QUICK_RETRIES="1",
            LISTENER_RETRY_DELAYS="100ms,200ms,300ms",
            LISTENER_RATE_LIMIT_BASE="20ms",
            LISTENER_HEALTH_INTERVAL="300ms",
            LISTENER_LOG_LEVEL="WARNING",
        )
        first, second = await start(env), await start(env)
        processes = [first, second]
        try:
            enqueue(db, campaign, leads, run_id=run)

            def done() -> int:
                return sum(statuses(db).get(s, 0) for s in ("sent", "failed"))

            await await_until(lambda: done() >= MESSAGES // 4, timeout=120)
            first.kill()  # SIGKILL mid-batch: its rows stay `processing` until the lease ends
            await first.wait()
            processes.append(await start(env))

            await await_until(lambda: done() >= MESSAGES // 2, timeout=120)
            killed = db.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
            assert killed is not None and killed[0] > 0

            await await_until(lambda: done() >= MESSAGES * 3 // 4, timeout=120)
            faults_on = False  # let everything converge
            await await_until(lambda: done() == MESSAGES, timeout=120)
        finally:
            for proc in processes[1:]:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            codes = [await asyncio.wait_for(p.wait(), 30) for p in processes[1:]]
        assert codes == [0, 0]
        assert fakes.faults > 0

    counts = statuses(db)
    assert counts.get("processing", 0) == 0 and counts.get("pending", 0) == 0
    assert counts.get("sent", 0) + counts.get("failed", 0) == MESSAGES
    no_reason = db.execute(
        "SELECT count(*) FROM campaign_messages WHERE status = 'failed' AND last_error IS NULL"
    ).fetchone()
    assert no_reason == (0,)

    # Parts: every sent message's parts arrived in order; a part arrived twice only for a
    # message in flight when the listener was killed, and at most one part per message.
    texts = parts_per_number(fakes)
    sent_numbers = {
        r[0]
        for r in db.execute(
            "SELECT l.phone FROM campaign_messages m JOIN leads l ON l.id = m.lead_id"
            " WHERE m.status = 'sent'"
        ).fetchall()
    }
    assert sent_numbers <= set(texts)
    repeated = 0
    for parts in texts.values():
        deduped = [p for i, p in enumerate(parts) if i == 0 or parts[i - 1] != p]
        assert deduped in (["1."], ["1.", "2."]), parts
        extra = sum(n - 1 for n in Counter(parts).values())
        assert extra <= 1
        repeated += extra
    assert repeated <= 40  # at most the messages the killed listener held (2 x concurrency)

    run_row = db.execute(
        "SELECT status, total_count, sent_count, failed_count, skipped_count FROM campaign_runs"
    ).fetchone()
    assert run_row == ("completed", MESSAGES, counts.get("sent", 0), counts.get("failed", 0), 0)
