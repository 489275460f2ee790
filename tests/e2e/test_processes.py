"""Whole listener processes: kill -9 mid-batch, and SIGTERM mid-batch."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from typing import Any

import psycopg

from listener.testing import FakeProviders, http_settings, serve_fakes
from tests.helpers import await_until, enqueue, make_campaign, make_leads, statuses

Conn = psycopg.Connection[Any]

ENV_NAMES = {
    "llm": "LISTENER_LLM",
    "sender": "LISTENER_SENDER",
    "openrouter_api_key": "OPENROUTER_API_KEY",
    "openrouter_base_url": "OPENROUTER_BASE_URL",
    "evolution_api_url": "EVOLUTION_API_URL",
    "evolution_api_key": "EVOLUTION_API_KEY",
    "evolution_instance": "EVOLUTION_INSTANCE",
}


def listener_env(db_url: str, fakes: FakeProviders, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTENER_", "OPENROUTER_"))}
    env.update({ENV_NAMES[k]: str(v) for k, v in http_settings(fakes).items()})
    env.update(
        {
            "DATABASE_URL": db_url,
            "LISTENER_METRICS_PORT": "0",
            "LISTENER_PART_DELAY_MS": "0",
            "LISTENER_LEASE": "1s",
            "LISTENER_RESCUE_INTERVAL": "200ms",
            "LISTENER_RETRY_DELAYS": "200ms,400ms,600ms",
            "LISTENER_QUICK_RETRY_BASE": "1ms",
            "LISTENER_QUICK_RETRY_MAX": "5ms",
            "LISTENER_SWEEP_MAX_AGE": "0s",
            "LISTENER_LOG_FORMAT": "json",
        }
    )
    env.update(extra)
    return env


# Each started listener's stderr, read as it comes: a pipe nobody reads fills up (64 KB) and
# then blocks the listener's next log line, which freezes it (a soak under load logs that much).
_STDERR: dict[int, tuple[bytearray, asyncio.Task[None]]] = {}


async def start(env: dict[str, str]) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "listener",
        "run",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    written = bytearray()

    async def drain() -> None:
        assert proc.stderr is not None
        while chunk := await proc.stderr.read(65536):
            written.extend(chunk)

    _STDERR[proc.pid] = (written, asyncio.create_task(drain()))
    return proc


async def stderr_of(proc: asyncio.subprocess.Process) -> str:
    """What a listener started by `start` wrote to stderr, once it has exited."""
    written, drained = _STDERR.pop(proc.pid)
    await proc.wait()
    await drained
    return written.decode(errors="replace")


def parts_per_number(fakes: FakeProviders) -> dict[str, list[str]]:
    sent: dict[str, list[str]] = {}
    for send in fakes.accepted():
        sent.setdefault(send["number"], []).append(send["text"].split("parte ")[1])
    return sent


async def test_kill_9_mid_batch_then_a_new_listener_sends_everything_once(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 20)
    async with serve_fakes() as fakes:
        fakes.reply_parts = 3
        fakes.send_delay = 0.1
        env = listener_env(db_url, fakes)
        first = await start(env)
        enqueue(db, campaign, leads)
        await await_until(lambda: len(fakes.accepted()) >= 8, timeout=30)
        first.kill()  # SIGKILL: no drain, no hand-back
        await first.wait()
        assert statuses(db).get("processing", 0) > 0
        second = await start(env)
        try:
            await await_until(lambda: statuses(db).get("sent") == 20, timeout=60)
        finally:
            second.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(second.wait(), 30) == 0
    assert statuses(db) == {"sent": 20}
    for parts in parts_per_number(fakes).values():
        counts = Counter(parts)
        # Each message's parts in order; at most one part repeated (the one in flight at the kill).
        assert [p for i, p in enumerate(parts) if i == 0 or parts[i - 1] != p] == ["1.", "2.", "3."]
        assert sum(n - 1 for n in counts.values()) <= 1
    # Only messages whose text was not stored yet (at most the 10 held) are written again.
    assert 20 <= len(fakes.llm_requests) <= 30
    stored_once = db.execute("SELECT count(*) FROM campaign_messages WHERE parts IS NOT NULL")
    assert stored_once.fetchone() == (20,)


async def test_kill_9_while_steps_are_created_creates_each_step_once(db_url: str, db: Conn) -> None:
    """A campaign with a follow-up step due at once: a listener killed mid-batch (some
    messages at their last part, whose record creates the next step) leaves no lead without
    its step 2 and none with two; every part arrives, at most one repeated per message."""
    campaign = make_campaign(db)
    db.execute(
        "INSERT INTO campaign_steps (campaign_id, step, wait) VALUES (%s, 2, '0 seconds')",
        (campaign,),
    )
    leads = make_leads(db, 20)
    async with serve_fakes() as fakes:
        fakes.reply_parts = 3
        fakes.send_delay = 0.1
        env = listener_env(db_url, fakes)
        first = await start(env)
        enqueue(db, campaign, leads)
        await await_until(lambda: len(fakes.accepted()) >= 14, timeout=30)
        first.kill()  # SIGKILL: no drain, no hand-back
        await first.wait()
        second = await start(env)
        try:
            await await_until(lambda: statuses(db).get("sent") == 40, timeout=60)
        finally:
            second.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(second.wait(), 30) == 0
    assert statuses(db) == {"sent": 40}
    steps = db.execute(
        "SELECT lead_id, array_agg(step ORDER BY step) FROM campaign_messages GROUP BY lead_id"
    ).fetchall()
    assert len(steps) == 20 and all(s == [1, 2] for _, s in steps)
    for parts in parts_per_number(fakes).values():
        deduped = [p for i, p in enumerate(parts) if i == 0 or parts[i - 1] != p]
        assert deduped == ["1.", "2.", "3.", "2.1.", "2.2.", "2.3."], parts
        assert sum(n - 1 for n in Counter(parts).values()) <= 1


async def test_sigterm_finishes_in_flight_hands_back_the_rest_and_exits_0(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 30)
    async with serve_fakes() as fakes:
        fakes.reply_parts = 3
        fakes.send_delay = 0.15
        env = listener_env(db_url, fakes, LISTENER_SHUTDOWN_GRACE="300ms", LISTENER_LEASE="30s")
        proc = await start(env)
        enqueue(db, campaign, leads)
        await await_until(lambda: len(fakes.accepted()) >= 4, timeout=30)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
        log = await stderr_of(proc)
    assert code == 0, log
    counts = statuses(db)
    assert counts.get("processing", 0) == 0
    assert counts.get("sent", 0) + counts.get("pending", 0) == 30
    assert counts.get("pending", 0) > 0
    # Handed back without spending their attempt, keeping the parts already accepted.
    leftovers = db.execute(
        "SELECT attempts, parts_sent, locked_by FROM campaign_messages WHERE status = 'pending'"
    ).fetchall()
    assert all(a == 0 and locked is None for a, _, locked in leftovers)
    assert '"handed_back"' in log or '"draining"' in log


async def test_a_metrics_port_already_taken_ends_the_start_with_one_line(db_url: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with serve_fakes() as fakes:
            env = listener_env(
                db_url,
                fakes,
                LISTENER_METRICS_PORT=str(port),
                LISTENER_METRICS_HOST="127.0.0.1",
                LISTENER_LOG_LEVEL="ERROR",
            )
            process = await start(env)
            err = await asyncio.wait_for(stderr_of(process), timeout=30)
    assert process.returncode == 2
    text = err.strip()
    assert len(text.splitlines()) == 1, text
    assert "LISTENER_METRICS_PORT" in text and str(port) in text
