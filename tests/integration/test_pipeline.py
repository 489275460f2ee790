"""The pipeline of docs/design.md through real HTTP providers faked on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
import json
from datetime import datetime, timedelta, tzinfo
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from listener.providers.sandbox import SandboxLLM, SandboxSender
from listener.queries import q
from listener.queue.processor import Processor
from listener.testing import http_settings, serve_fakes
from tests.daemon_harness import fast_settings, running
from tests.helpers import (
    await_until,
    enqueue,
    make_campaign,
    make_leads,
    make_run,
    statuses,
)

Conn = psycopg.Connection[Any]


async def test_rows_are_written_by_the_llm_and_sent_in_order(db_url: str, db: Conn) -> None:
    campaign = make_campaign(db, prompt="Apresente a Acme.", model="acme/model-1")
    leads = make_leads(db, 4)
    async with serve_fakes() as fakes:
        fakes.reply_parts = 3
        async with running(db_url, **http_settings(fakes)):
            enqueue(db, campaign, leads)
            await await_until(lambda: statuses(db).get("sent") == 4)
    # One LLM request per message, with the campaign's model, prompt and the lead's context.
    assert len(fakes.llm_requests) == 4
    request = fakes.llm_requests[0]
    assert request["headers"]["Authorization"] == "Bearer sk-test-secret"
    body = request["body"]
    assert body["model"] == "acme/model-1"
    assert body["messages"][0]["role"] == "system"
    assert "Apresente a Acme." in body["messages"][0]["content"]
    assert json.loads(body["messages"][1]["content"])["lead"]["company"].startswith("Acme")
    # Every part once, in order, per number.
    by_number: dict[str, list[str]] = {}
    for send in fakes.accepted():
        by_number.setdefault(send["number"], []).append(send["text"])
    assert len(by_number) == 4
    for texts in by_number.values():
        assert [t.split("parte ")[1] for t in texts] == ["1.", "2.", "3."]
    rows = db.execute(
        "SELECT parts_sent, jsonb_array_length(parts), jsonb_array_length(provider_message_ids),"
        " generated_text IS NOT NULL, sent_at IS NOT NULL, locked_by FROM campaign_messages"
    ).fetchall()
    assert all(r == (3, 3, 3, True, True, None) for r in rows)


async def test_burst_of_1000_inserts_in_one_statement_is_sent_completely(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db)
    run = make_run(db, campaign)
    leads = make_leads(db, 1000)
    async with serve_fakes() as fakes:
        fakes.reply_parts = 2
        # A lease far beyond the test: no row can be rescued back to pending (which would
        # rightly notify again), so every notification the listener gets is the insert's.
        async with running(db_url, concurrency=50, lease="600s", **http_settings(fakes)) as daemon:
            enqueue(db, campaign, leads, run_id=run)
            await await_until(lambda: statuses(db).get("sent") == 1000, timeout=120)
            assert daemon.listener is not None
            notifications = daemon.listener.notifications
    sends = fakes.accepted()
    assert len(sends) == 2000
    pairs = [(s["number"], s["text"]) for s in sends]
    assert len(set(pairs)) == 2000  # each part exactly once
    order: dict[str, list[str]] = {}
    for number, text in pairs:
        order.setdefault(number, []).append(text)
    assert all(t[0].endswith("parte 1.") and t[1].endswith("parte 2.") for t in order.values())
    # One NOTIFY for the whole statement, not one per row; sending (pending -> processing ->
    # sent) adds none, since only rows becoming due notify.
    assert notifications == 1
    run_row = db.execute(
        "SELECT status, total_count, sent_count, finished_at IS NOT NULL FROM campaign_runs"
    ).fetchone()
    assert run_row == ("completed", 1000, 1000, True)


def test_one_notify_per_statement_carrying_the_earliest_due_time(db_url: str, db: Conn) -> None:
    """A statement that makes many rows due sends exactly one NOTIFY, whose payload is the
    earliest due time among them (epoch seconds); a statement that makes none due sends none."""
    campaign = make_campaign(db)
    leads = make_leads(db, 1000)
    with psycopg.connect(db_url, autocommit=True) as listen:
        listen.execute("LISTEN campaign_messages")

        def payloads() -> list[str]:
            # Notifications of committed statements are already queued on the connection.
            return [n.payload for n in listen.notifies(timeout=0.5)]

        ids = enqueue(db, campaign, leads, delay_seconds=60)
        earliest = db.execute(
            "SELECT extract(epoch FROM min(scheduled_at))::float FROM campaign_messages"
        ).fetchone()
        assert earliest is not None
        inserted = payloads()
        assert len(inserted) == 1
        assert float(inserted[0]) == earliest[0]

        db.execute("UPDATE campaign_messages SET scheduled_at = scheduled_at + interval '1 hour'")
        assert len(payloads()) == 1  # re-dated pending rows: one wake-up for them all

        db.execute("UPDATE campaign_messages SET status = 'failed' WHERE id = ANY(%s)", (ids,))
        assert payloads() == []  # nothing became due

        db.execute("UPDATE campaign_messages SET status = 'pending' WHERE id = ANY(%s)", (ids,))
        assert len(payloads()) == 1


async def test_future_rows_go_out_at_their_time_and_not_before(db_url: str, db: Conn) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 2)
    # The safety-net poll is far beyond the test: only the timer armed for the rows' due time
    # can send them within the wait below.
    async with running(db_url, poll_interval="600s"):
        enqueue(db, campaign, leads, delay_seconds=4.0)
        await asyncio.sleep(1.0)  # well before they are due
        assert statuses(db) == {"pending": 2}
        await await_until(lambda: statuses(db).get("sent") == 2, timeout=20)
    late = db.execute("SELECT bool_and(sent_at >= scheduled_at) FROM campaign_messages").fetchone()
    assert late == (True,)  # never before their time


async def test_each_future_row_is_woken_at_its_time_with_a_slow_poll(db_url: str, db: Conn) -> None:
    """The timer knows only the earliest due time; once it fires (or on start) the next one
    must be armed at once, not at the next poll (here ten minutes away, so the wait below
    can only end through the timer)."""
    campaign = make_campaign(db)
    a, b, c = make_leads(db, 3)
    enqueue(db, campaign, [a], delay_seconds=1.0)  # due while nothing has started yet
    async with running(db_url, poll_interval="600s"):
        enqueue(db, campaign, [b], delay_seconds=2.0)
        enqueue(db, campaign, [c], delay_seconds=3.0)  # later than the armed timer: not armed
        await await_until(lambda: statuses(db).get("sent") == 3, timeout=20)
    late = db.execute("SELECT bool_and(sent_at >= scheduled_at) FROM campaign_messages").fetchone()
    assert late == (True,)


def test_rows_due_beyond_the_wake_horizon_send_no_notify(db_url: str, db: Conn) -> None:
    """The insert trigger wakes the listeners only for rows due within the wake horizon (1
    hour): a row due later, such as a follow-up step created days ahead by a send's record,
    is found by the listeners' poll instead (the next test)."""
    campaign = make_campaign(db)
    leads = make_leads(db, 3)
    with psycopg.connect(db_url, autocommit=True) as listen:
        listen.execute("LISTEN campaign_messages")

        def payloads() -> list[str]:
            return [n.payload for n in listen.notifies(timeout=0.5)]

        enqueue(db, campaign, leads[:1], delay_seconds=2 * 3600)
        assert payloads() == []
        enqueue(db, campaign, leads[1:2], delay_seconds=3600 - 60)
        assert len(payloads()) == 1
        # The horizon is the session's (or the database's) listener.notify_horizon when set.
        db.execute("SET listener.notify_horizon = '1 min'")
        enqueue(db, campaign, leads[2:], delay_seconds=120)
        db.execute("RESET listener.notify_horizon")
        assert payloads() == []


async def test_a_row_due_beyond_the_wake_horizon_goes_out_at_its_time(
    db_url: str, db: Conn
) -> None:
    """A row inserted without a NOTIFY (due beyond the horizon, here shortened to 1 s for the
    inserting session) is found by the poll, which arms the wake-up timer for its due time:
    it goes out then, and not before. Without the poll's look the row would never be sent."""
    campaign = make_campaign(db)
    (lead,) = make_leads(db, 1)
    async with running(db_url, poll_interval="500ms") as daemon:
        assert daemon.listener is not None and daemon.processor is not None
        processor = daemon.processor
        heard = daemon.listener.notifications
        db.execute("SET listener.notify_horizon = '1s'")
        enqueue(db, campaign, [lead], delay_seconds=6.0)
        db.execute("RESET listener.notify_horizon")
        row = db.execute("SELECT scheduled_at FROM campaign_messages").fetchone()
        assert row is not None
        # The poll (every 0.5 s, the row due in 6 s) reads the next due time: the timer's.
        await await_until(lambda: processor.next_due == row[0], timeout=5)
        assert statuses(db) == {"pending": 1}
        await await_until(lambda: statuses(db).get("sent") == 1, timeout=30)
        assert daemon.listener.notifications == heard  # no NOTIFY woke it


async def test_a_row_that_comes_due_while_a_claim_runs_is_woken_with_a_slow_poll(
    db_url: str, db: Conn
) -> None:
    """A row that comes due while a claim runs is neither claimed (the claim's time is that of
    its start) nor in the future once it returns: it must still be woken, not left for the poll
    (here ten minutes away, so the wait below can only end through the timer). A claim of a
    few milliseconds met this with the demo's follow-up steps, due a millisecond apart, and
    the last one waited the 30 s poll; here the first row's claim is made slow."""
    campaign = make_campaign(db)
    first, second = make_leads(db, 2)
    db.execute(
        "CREATE FUNCTION test_slow_claim() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN PERFORM pg_sleep(1.5); RETURN NEW; END $$"
    )
    db.execute(
        "CREATE TRIGGER test_slow_claim BEFORE UPDATE ON campaign_messages FOR EACH ROW"
        " WHEN (OLD.status = 'pending' AND NEW.status = 'processing' AND OLD.content = 'first')"
        " EXECUTE FUNCTION test_slow_claim()"
    )
    async with running(db_url, poll_interval="600s", lease="30s"):
        db.execute(
            "INSERT INTO campaign_messages (campaign_id, lead_id, content, scheduled_at)"
            " VALUES (%s, %s, 'first', now() + interval '1 second'),"
            " (%s, %s, 'second', now() + interval '1.5 seconds')",
            (campaign, first, campaign, second),
        )
        await await_until(lambda: statuses(db).get("sent") == 2, timeout=30)
    late = db.execute("SELECT bool_and(sent_at >= scheduled_at) FROM campaign_messages").fetchone()
    assert late == (True,)


async def test_the_wake_up_timer_reads_the_database_clock_not_the_hosts(
    db_url: str, db: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listener whose host clock runs a minute ahead of the database's still wakes for a row
    due in a few seconds (on the database's clock, which set its time): the next due time is
    looked for after the claim's own now(), not after the host's time (which would pass over
    it and leave it for the poll, ten minutes away here). The row is inserted before the
    listener starts and sends no NOTIFY (its wake horizon is a second for this insert), so
    only the start's claim and its next due time can arm the timer for it."""

    class AheadClock(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> AheadClock:
            return super().now(tz) + timedelta(minutes=1)

    monkeypatch.setattr("listener.queue.processor.datetime", AheadClock)
    campaign = make_campaign(db)
    (lead,) = make_leads(db, 1)
    db.execute("SET listener.notify_horizon = '1 second'")
    db.execute(
        "INSERT INTO campaign_messages (campaign_id, lead_id, content, scheduled_at)"
        " VALUES (%s, %s, 'soon', now() + interval '4 seconds')",
        (campaign, lead),
    )
    async with running(db_url, poll_interval="600s", lease="30s"):
        await await_until(lambda: statuses(db).get("sent") == 1, timeout=30)
    assert db.execute("SELECT sent_at >= scheduled_at FROM campaign_messages").fetchone() == (True,)


async def test_two_listeners_split_the_work_and_never_share_a_message(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 400)
    async with serve_fakes() as fakes:
        fakes.send_delay = 0.005
        settings = http_settings(fakes)
        async with (
            running(db_url, worker_id="a", concurrency=10, **settings) as a,
            running(db_url, worker_id="b", concurrency=10, **settings) as b,
        ):
            enqueue(db, campaign, leads)
            await await_until(lambda: statuses(db).get("sent") == 400, timeout=60)
    # Read the counters once both listeners have stopped: a row turns `sent` in the database a
    # moment before its worker task counts it, so reading them earlier races the last few.
    done_a = a.metrics.messages.labels(outcome="sent").value
    done_b = b.metrics.messages.labels(outcome="sent").value
    assert done_a + done_b == 400
    assert done_a > 0 and done_b > 0
    numbers = [s["number"] for s in fakes.accepted()]
    assert len(numbers) == len(set(numbers)) == 400
    assert db.execute("SELECT max(attempts) FROM campaign_messages").fetchone() == (1,)


class CountingCursor(psycopg.AsyncCursor[Any]):
    statements: list[str] = []
    pipelined: list[bool] = []

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        CountingCursor.statements.append(str(query))
        status = self.connection.info.pipeline_status
        CountingCursor.pipelined.append(status != psycopg.pq.PipelineStatus.OFF)
        return await super().execute(query, params, **kwargs)


async def test_a_batch_is_claimed_with_its_contexts_in_one_round_trip(
    db_url: str, db: Conn
) -> None:
    from psycopg_pool import AsyncConnectionPool

    campaign = make_campaign(db)
    leads = make_leads(db, 50)
    enqueue(db, campaign, leads)

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        conn.cursor_factory = CountingCursor

    CountingCursor.statements, CountingCursor.pipelined = [], []
    pool = AsyncConnectionPool(
        db_url, kwargs={"autocommit": True}, configure=configure, open=False, min_size=1
    )
    await pool.open()
    try:
        processor = Processor(fast_settings(), pool, SandboxLLM(), SandboxSender(pool))
        jobs = (await processor.claim(50)).jobs
    finally:
        await pool.close()
    assert len(jobs) == 50
    assert all(
        job.plan.context is not None and job.plan.context["id"] == str(job.claim.lead_id)
        for job in jobs
    )
    context_queries = [s for s in CountingCursor.statements if "listener_lead_contexts" in s]
    assert len(context_queries) == 1
    # The claim and the contexts together, sent in one pipeline with the claim's plan setting:
    # one round trip.
    assert CountingCursor.statements == [q("claim_plan"), context_queries[0]]
    assert CountingCursor.pipelined == [True, True]


async def test_a_context_function_that_fails_leaves_the_batch_unclaimed(
    db_url: str, db: Conn
) -> None:
    """The contexts load in the claim's statement: when listener_lead_contexts fails, no row
    is left leased to a worker that never got it (they stay pending, attempts untouched)."""
    from psycopg_pool import AsyncConnectionPool

    campaign = make_campaign(db)
    enqueue(db, campaign, make_leads(db, 3))
    db.execute(
        "CREATE OR REPLACE FUNCTION listener_lead_contexts(lead_ids uuid[],"
        " history_limit integer DEFAULT 5)"
        " RETURNS TABLE (lead_id uuid, context json) LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'context store is down'; END $$"
    )
    pool = AsyncConnectionPool(db_url, kwargs={"autocommit": True}, open=False, min_size=1)
    await pool.open()
    try:
        processor = Processor(fast_settings(), pool, SandboxLLM(), SandboxSender(pool))
        with pytest.raises(psycopg.errors.RaiseException):
            await processor.claim(50)
    finally:
        await pool.close()
    rows = db.execute("SELECT status, attempts, locked_by FROM campaign_messages").fetchall()
    assert rows == [("pending", 0, None)] * 3


async def test_a_message_with_content_is_sent_as_is_without_the_llm(db_url: str, db: Conn) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 2)
    async with serve_fakes() as fakes, running(db_url, **http_settings(fakes)):
        # What start-up made is kept out of the cycle collector's scans while it runs...
        assert gc.get_freeze_count() > 0
        enqueue(db, campaign, leads, content="Oi! Mensagem pronta.")
        await await_until(lambda: statuses(db).get("sent") == 2)
    # ...and handed back to it when the listener stops.
    assert gc.get_freeze_count() == 0
    assert fakes.llm_requests == []
    assert [s["text"] for s in fakes.accepted()] == ["Oi! Mensagem pronta."] * 2


async def test_opted_out_leads_and_archived_campaigns_are_skipped_with_a_reason(
    db_url: str, db: Conn
) -> None:
    active = make_campaign(db)
    archived = make_campaign(db, status="archived")
    leads = make_leads(db, 3)
    db.execute("UPDATE leads SET opted_out = true WHERE id = %s", (leads[0],))
    async with serve_fakes() as fakes, running(db_url, **http_settings(fakes)):
        enqueue(db, active, leads[:2])
        enqueue(db, archived, leads[2:])
        await await_until(lambda: sum(statuses(db).get(k, 0) for k in ("sent", "skipped")) == 3)
    rows = db.execute(
        "SELECT lead_id, status, last_error FROM campaign_messages ORDER BY status, last_error"
    ).fetchall()
    reasons = {r[0]: (r[1], r[2]) for r in rows}
    assert reasons[leads[0]] == ("skipped", "skipped: the lead opted out")
    assert reasons[leads[1]][0] == "sent"
    assert reasons[leads[2]] == ("skipped", "skipped: the campaign is archived")
    assert len(fakes.accepted()) == 1


async def test_paused_campaign_messages_wait_and_go_when_it_is_active_again(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db, status="paused")
    leads = make_leads(db, 3)
    # The poll is ten minutes away: only the campaign's NOTIFY can wake the listener in time.
    async with running(db_url, poll_interval="600s") as daemon:
        enqueue(db, campaign, leads)
        assert daemon.listener is not None
        await await_until(
            lambda: daemon.listener is not None and daemon.listener.notifications == 1
        )
        await asyncio.sleep(0.3)  # the claim the insert woke has passed them over
        assert statuses(db) == {"pending": 3}
        db.execute("UPDATE campaigns SET status = 'active' WHERE id = %s", (campaign,))
        await await_until(lambda: statuses(db).get("sent") == 3, timeout=20)


async def test_get_lead_full_context_includes_recent_messages(db_url: str, db: Conn) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 1)
    async with running(db_url):
        enqueue(db, campaign, leads, content="Primeira mensagem.")
        await await_until(lambda: statuses(db).get("sent") == 1)
    with db.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT context FROM get_lead_full_context(%s::uuid[])", ([leads[0]],)
        ).fetchone()
    assert row is not None
    assert [m["text"] for m in row["context"]["recent_messages"]] == ["Primeira mensagem."]
