"""Sender pools through running listeners and the fake Evolution: failover, a pool
with nothing healthy, holds that cost nothing per recheck, two listeners against gaps and caps,
the sticky sender across campaigns."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import defaultdict
from typing import Any

import psycopg
import pytest

from listener.testing import FakeProviders, http_settings, serve_fakes
from tests.daemon_harness import running
from tests.helpers import await_until, enqueue, make_campaign, make_leads, statuses

Conn = psycopg.Connection[Any]

QUICK_HEALTH = {"instance_check_ttl": "50ms", "instance_recheck": "100ms"}


def count(db: Conn, where: str, *params: Any) -> int:
    row = db.execute(
        f"SELECT count(*) FROM campaign_messages WHERE {where}",  # type: ignore[arg-type]
        params,
    ).fetchone()
    assert row is not None
    return int(row[0])


def through(fakes: FakeProviders) -> dict[str, list[float]]:
    """Accepted first parts per instance: their arrival times, in order."""
    times: dict[str, list[float]] = defaultdict(list)
    for send in fakes.accepted():
        times[send["instance"]].append(send["at"])
    return {name: sorted(ts) for name, ts in times.items()}


async def test_a_pool_with_no_healthy_number_holds_without_spending_then_fails_over(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db, instances=["a", "b"])
    leads = make_leads(db, 6)
    async with serve_fakes() as fakes:
        fakes.states = {"a": "close", "b": "close"}
        async with running(db_url, **http_settings(fakes), **QUICK_HEALTH):
            enqueue(db, campaign, leads)
            await await_until(lambda: count(db, "wait_reason = 'no sender'") == 6)
            assert fakes.sends == [] and fakes.llm_requests == []
            assert count(db, "attempts > 0") == 0
            # b comes back: every message goes through it, a stays out of the pool.
            fakes.states["b"] = "open"
            await await_until(lambda: statuses(db).get("sent") == 6, timeout=15)
    assert {s["instance"] for s in fakes.accepted()} == {"b"}
    rows = db.execute("SELECT DISTINCT instance, max(attempts) FROM campaign_messages GROUP BY 1")
    assert rows.fetchall() == [("b", 1)]


async def test_failover_moves_unstarted_messages_and_a_started_one_waits_for_its_number(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db, instances=["a", "b"])
    leads = make_leads(db, 5)
    [started, *fresh] = enqueue(db, campaign, leads)
    # Its first part went out through a; the second has not.
    db.execute(
        'UPDATE campaign_messages SET parts = \'["one", "two"]\', parts_sent = 1,'
        " instance = 'a', attempts = 1 WHERE id = %s",
        (started,),
    )
    async with serve_fakes() as fakes:
        fakes.states = {"a": "close"}
        async with running(db_url, **http_settings(fakes), **QUICK_HEALTH):
            db.execute("UPDATE campaign_messages SET scheduled_at = now()")  # wake the listener
            await await_until(lambda: statuses(db).get("sent") == 4, timeout=15)
            await await_until(lambda: count(db, "wait_reason = 'instance down'") == 1)
            assert {s["instance"] for s in fakes.accepted()} == {"b"}
            row = db.execute(
                "SELECT status, parts_sent, instance FROM campaign_messages WHERE id = %s",
                (started,),
            ).fetchone()
            assert row == ("pending", 1, "a")
            # a is back: the started message finishes through it, and only it.
            fakes.states["a"] = "open"
            await await_until(lambda: statuses(db).get("sent") == 5, timeout=15)
    sends_a = [s for s in fakes.accepted() if s["instance"] == "a"]
    assert [s["text"] for s in sends_a] == ["two"]
    fresh_rows = db.execute(
        "SELECT DISTINCT instance FROM campaign_messages WHERE id = ANY(%s)", (fresh,)
    ).fetchall()
    assert fresh_rows == [("b",)]


async def test_a_held_number_costs_no_claims_writes_or_log_lines_per_recheck(
    db_url: str, db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    campaign = make_campaign(db, instance="down")
    leads = make_leads(db, 300)
    async with serve_fakes() as fakes:
        fakes.state = "close"
        async with running(db_url, **http_settings(fakes), **QUICK_HEALTH) as daemon:
            registry = daemon.metrics.registry

            def claims() -> float:
                return registry.get_sample_value("listener_attempts_total") or 0.0

            enqueue(db, campaign, leads)
            await await_until(lambda: count(db, "wait_reason = 'instance down'") == 300)
            # Holding 300 messages took a handful of claims, not 300.
            assert claims() <= 30, claims()
            held = {"instance": "down", "reason": "instance down"}
            assert registry.get_sample_value("listener_sender_held", held) == 1
            last_write = "SELECT max(updated_at) FROM campaign_messages"
            before = (claims(), db.execute(last_write).fetchone())
            caplog.clear()
            with caplog.at_level(logging.INFO):
                await asyncio.sleep(1.5)  # about 15 rechecks of the number
                after = (
                    claims(),
                    db.execute(last_write).fetchone(),
                )
                lines = [
                    r
                    for r in caplog.records
                    if r.name.startswith("listener") and r.levelno >= logging.INFO
                ]
            assert after == before  # no claim, no write on a message
            assert len(lines) <= 2, [r.getMessage() for r in lines]
            assert fakes.sends == [] and fakes.llm_requests == []
            # Back: its whole backlog is released at once and goes.
            fakes.state = "open"
            await await_until(lambda: statuses(db).get("sent") == 300, timeout=60)
            assert registry.get_sample_value("listener_sender_held", held) == 0
    assert db.execute("SELECT max(attempts) FROM campaign_messages").fetchone() == (1,)


async def test_two_listeners_never_break_a_gap_or_a_cap_of_the_pool(db_url: str, db: Conn) -> None:
    campaign = make_campaign(
        db, instances=["a", "b", "c"], gap_min_seconds=0.2, gap_max_seconds=0.3
    )
    db.execute("INSERT INTO sender_instances (name, daily_cap) VALUES ('c', 2)")
    leads = make_leads(db, 24)
    async with serve_fakes() as fakes:
        settings = http_settings(fakes)
        async with (
            running(db_url, worker_id="one", **settings),
            running(db_url, worker_id="two", **settings),
        ):
            enqueue(db, campaign, leads, content="Olá!")
            await await_until(lambda: statuses(db).get("sent") == 24, timeout=30)
    times = through(fakes)
    assert len(times["c"]) == 2
    assert len(times["a"]) + len(times["b"]) == 22
    for name, ts in times.items():
        gaps = [b - a for a, b in itertools.pairwise(ts)]
        assert min(gaps, default=1.0) >= 0.2, (name, gaps)
    assert db.execute("SELECT max(attempts) FROM campaign_messages").fetchone() == (1,)


async def test_the_same_number_talks_with_a_lead_across_campaigns(db_url: str, db: Conn) -> None:
    first = make_campaign(db, instance="b")
    pooled = make_campaign(db, instances=["a", "b", "c"])
    leads = make_leads(db, 7)
    async with serve_fakes() as fakes, running(db_url, **http_settings(fakes)):
        enqueue(db, first, leads[:1], content="Oi")
        await await_until(lambda: statuses(db).get("sent") == 1)
        enqueue(db, pooled, leads, content="De novo")
        await await_until(lambda: statuses(db).get("sent") == 8)
    rows = dict(
        db.execute(  # type: ignore[arg-type]
            "SELECT lead_id, instance FROM campaign_messages WHERE campaign_id = %s", (pooled,)
        ).fetchall()
    )
    assert rows[leads[0]] == "b"
    # The others spread over the pool.
    assert set(rows.values()) == {"a", "b", "c"}


async def test_a_closed_window_holds_the_campaigns_messages_with_one_claim_batch(
    db_url: str, db: Conn
) -> None:
    from datetime import UTC, datetime, timedelta

    opens = datetime.now(UTC) + timedelta(hours=2)
    campaign = make_campaign(
        db,
        send_window_start=opens.time().replace(microsecond=0),
        send_window_end=(opens + timedelta(hours=1)).time().replace(microsecond=0),
        send_timezone="UTC",
    )
    leads = make_leads(db, 300)
    async with running(db_url) as daemon:
        registry = daemon.metrics.registry
        enqueue(db, campaign, leads)
        await await_until(lambda: count(db, "wait_reason = 'window'") == 300)
        claims = registry.get_sample_value("listener_attempts_total") or 0.0
    # The first messages found the window closed and took the campaign's other 290 with them.
    assert claims <= 30, claims
    assert count(db, "attempts = 0 AND scheduled_at > now() + interval '1 hour'") == 300


async def test_a_restriction_from_delivery_feedback_is_held_at_once_and_shown(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db, instances=["banned", "fine"])
    async with running(db_url) as daemon:
        assert daemon.processor is not None
        daemon.processor.restrict("banned", "banned (403)", 3600.0)
        await await_until(
            lambda: (
                db.execute(
                    "SELECT held_reason, held_until > now() + interval '50 minutes'"
                    " FROM listener_instances WHERE instance = 'banned'"
                ).fetchone()
                == ("instance restricted", True)
            )
        )
        enqueue(db, campaign, make_leads(db, 4), content="Oi")
        await await_until(lambda: statuses(db).get("sent") == 4)
    assert db.execute("SELECT DISTINCT instance FROM campaign_messages").fetchall() == [("fine",)]


async def test_the_default_numbers_caps_hold_campaigns_that_name_no_number(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db)  # no instance, no pool: the default one (sandbox here)
    db.execute("INSERT INTO sender_instances (name, daily_cap) VALUES ('sandbox', 2)")
    async with running(db_url):
        enqueue(db, campaign, make_leads(db, 5), content="Oi")
        await await_until(
            lambda: statuses(db).get("sent") == 2 and count(db, "wait_reason = 'sender cap'") == 3
        )
    assert db.execute("SELECT count(*) FROM sandbox_outbox").fetchone() == (2,)


async def test_a_hundred_messages_for_a_closed_number_ask_its_state_once_per_recheck(
    db_url: str, db: Conn
) -> None:
    # A batch for a closed number once asked connectionState once per message, all in the
    # same millisecond (each missed the cache that only the answer fills).
    campaign = make_campaign(db, instance="t1")
    leads = make_leads(db, 100)
    async with serve_fakes() as fakes:
        fakes.states = {"t1": "close"}
        settings = {"concurrency": 100, "instance_check_ttl": "1h", "instance_recheck": "1h"}
        async with running(db_url, **http_settings(fakes), **settings) as daemon:
            enqueue(db, campaign, leads, content="Olá")
            await await_until(lambda: count(db, "wait_reason = 'instance down'") == 100)
            assert fakes.state_calls == {"t1": 1}
            # Back: one recheck asks once, and the 100 messages it releases ask no more.
            fakes.states["t1"] = "open"
            db.execute("UPDATE listener_instances SET held_until = now() WHERE instance = 't1'")
            assert daemon.processor is not None
            await daemon.processor.senders.recheck()
            await await_until(lambda: statuses(db).get("sent") == 100, timeout=30)
            assert fakes.state_calls == {"t1": 2}
    assert db.execute("SELECT max(attempts) FROM campaign_messages").fetchone() == (1,)
