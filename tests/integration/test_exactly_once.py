"""Exactly once to the lead's phone: odd bytes, graceful stops, database blips,
long holds and unanswered sends must never repeat or drop a part."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from listener.jobs import Finish
from listener.phones import normalize_phone
from listener.providers.sandbox import SandboxLLM, SandboxSender
from listener.queries import q
from listener.queue.processor import Processor
from listener.queue.writes import is_data_error
from listener.testing import Reply, http_settings, serve_fakes
from tests.daemon_harness import fast_settings, running
from tests.helpers import await_until, enqueue, make_campaign, make_leads, statuses

Conn = psycopg.Connection[Any]


def parts_by_number(fakes: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for send in fakes.accepted():
        out.setdefault(send["number"], []).append(send["text"])
    return out


def no_repeats(fakes: Any) -> bool:
    return all(max(Counter(parts).values()) == 1 for parts in parts_by_number(fakes).values())


def one(db: Conn, sql: str, *params: Any) -> Any:
    row = db.execute(sql, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row


# --------------------------------------------------------------------------------------------
# 1. Odd bytes
# --------------------------------------------------------------------------------------------


async def test_nul_bytes_from_the_llm_and_the_sender_harm_no_other_message(
    db_url: str, db: Conn
) -> None:
    """A NUL in one reply, in a provider id and in a provider's error text: every other message
    of the batch is sent once; the reply that is nothing but NULs fails alone."""
    campaign = make_campaign(db)
    leads = make_leads(db, 20)
    async with serve_fakes() as fakes:
        plain = fakes.llm_text

        def llm_text(body: dict[str, Any]) -> str:
            name = json.loads(body["messages"][-1]["content"])["lead"]["name"]
            if name == "Lead 3":
                return '{"messages": ["Olá\\u0000 Lead 3, \\ud800parte 1."]}'
            if name == "Lead 4":
                return '{"messages": ["\\u0000\\u0000"]}'
            return plain(body)

        fakes.llm_text = llm_text  # type: ignore[method-assign]
        fakes.send_script.append(Reply(201, {"key": {"id": "EVO\u0000odd"}, "status": "PENDING"}))
        fakes.send_script.append(
            Reply(
                400,
                {"status": 400, "response": {"message": [{"exists": False, "jid": "x\u0000y"}]}},
            )
        )
        async with running(db_url, concurrency=20, quick_retries=1, **http_settings(fakes)):
            enqueue(db, campaign, leads)
            await await_until(lambda: statuses(db) == {"sent": 18, "failed": 2}, timeout=30)
    errors = [r[0] for r in db.execute("SELECT last_error FROM campaign_messages").fetchall()]
    assert sum(1 for e in errors if e and "no text to send" in e) == 1
    assert sum(1 for e in errors if e and "not on WhatsApp" in e) == 1
    stored = one(
        db,
        "SELECT m.parts->>0 FROM campaign_messages m JOIN leads l ON l.id = m.lead_id"
        " WHERE l.name = 'Lead 3'",
    )[0]
    assert stored == "Olá Lead 3, \ufffdparte 1."
    ids = [r[0] for r in db.execute("SELECT provider_message_ids->>0 FROM campaign_messages")]
    assert "EVOodd" in ids
    assert no_repeats(fakes)
    assert one(db, "SELECT max(attempts) FROM campaign_messages")[0] == 1


async def test_a_nul_byte_in_a_provider_error_reaches_last_error_clean(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db)
    enqueue(db, campaign, make_leads(db, 1))
    async with serve_fakes() as fakes:
        error = Reply(500, {"status": 500, "response": {"message": "boom\u0000 \udc00here"}})
        fakes.send_script.extend([error] * 8)
        async with running(db_url, retry_delays="20ms,20ms,20ms", **http_settings(fakes)):
            await await_until(lambda: statuses(db) == {"failed": 1}, timeout=20)
    last_error = one(db, "SELECT last_error FROM campaign_messages")[0]
    assert "boom \ufffdhere" in last_error


async def test_a_batched_write_refused_for_one_row_runs_the_others_alone(db_url: str) -> None:
    """Postgres refuses one row of a batched finish (a CHECK): the other rows of the same
    statement are written, and only the bad one gets the error."""
    settings = fast_settings(worker_id="w1")
    async with AsyncConnectionPool(db_url, open=False, kwargs={"autocommit": True}) as pool:
        await pool.open()
        with psycopg.connect(db_url, autocommit=True) as db:
            campaign = make_campaign(db)
            ids = enqueue(db, campaign, make_leads(db, 3))
            db.execute(
                "UPDATE campaign_messages SET status = 'processing', locked_by = 'w1',"
                " locked_until = now() + interval '1 minute', attempts = 1"
            )
            processor = Processor(settings, pool, SandboxLLM(), SandboxSender(pool))
            results = await asyncio.gather(
                processor.store._finish.submit(Finish(ids[0], "failed", None, 0, "first")),
                processor.store._finish.submit(Finish(ids[1], "no such status", None, 0, "bad")),
                processor.store._finish.submit(Finish(ids[2], "failed", None, 0, "third")),
                return_exceptions=True,
            )
            assert results[0] is True and results[2] is True
            assert isinstance(results[1], psycopg.IntegrityError) and is_data_error(results[1])
            rows = dict(db.execute("SELECT id, status FROM campaign_messages").fetchall())
            assert rows == {ids[0]: "failed", ids[1]: "processing", ids[2]: "failed"}


# --------------------------------------------------------------------------------------------
# 2. A graceful stop
# --------------------------------------------------------------------------------------------


async def test_a_stop_during_a_send_records_that_part_and_stops_before_the_next(
    db_url: str, db: Conn
) -> None:
    """The grace ends while part 1 is in the air: the part is let finish and recorded, the
    message is handed back before part 2, and the next listener sends parts 2 and 3 only."""
    campaign = make_campaign(db)
    [message] = enqueue(db, campaign, make_leads(db, 1))
    async with serve_fakes() as fakes:
        fakes.reply_parts = 3
        fakes.send_delay = 1.0
        async with running(db_url, shutdown_grace="100ms", **http_settings(fakes)) as daemon:
            await await_until(lambda: one(db, "SELECT parts IS NOT NULL FROM campaign_messages")[0])
            await asyncio.sleep(0.1)  # part 1 is in the air (the send takes 1 s)
            daemon.request_stop()
        row = one(db, "SELECT status, parts_sent, attempts FROM campaign_messages")
        assert row == ("pending", 1, 0)
        fakes.send_delay = 0.0
        async with running(db_url, **http_settings(fakes)):
            await await_until(lambda: statuses(db) == {"sent": 1}, timeout=15)
    [parts] = parts_by_number(fakes).values()
    assert parts == ["Olá Lead 1, parte 1.", "Olá Lead 1, parte 2.", "Olá Lead 1, parte 3."]
    assert one(db, "SELECT attempts FROM campaign_messages WHERE id = %s", message)[0] == 1


async def test_a_stop_during_the_last_send_records_it_and_creates_the_next_step_once(
    db_url: str, db: Conn
) -> None:
    """The grace ends while the last part is in the air (its record creates step 2): the part
    is recorded with its step, and the next listener sends step 2 once, and nothing twice."""
    campaign = make_campaign(db)
    db.execute(
        "INSERT INTO campaign_steps (campaign_id, step, wait) VALUES (%s, 2, '0 seconds')",
        (campaign,),
    )
    enqueue(db, campaign, make_leads(db, 1))
    async with serve_fakes() as fakes:
        fakes.send_delay = 1.0
        async with running(db_url, shutdown_grace="100ms", **http_settings(fakes)) as daemon:
            await await_until(lambda: one(db, "SELECT parts IS NOT NULL FROM campaign_messages")[0])
            await asyncio.sleep(0.1)  # the only part is in the air (the send takes 1 s)
            daemon.request_stop()
        assert db.execute(
            "SELECT step, status FROM campaign_messages ORDER BY step"
        ).fetchall() == [(1, "sent"), (2, "pending")]
        fakes.send_delay = 0.0
        async with running(db_url, **http_settings(fakes)):
            await await_until(lambda: statuses(db) == {"sent": 2}, timeout=15)
    [parts] = parts_by_number(fakes).values()
    assert parts == ["Olá Lead 1, parte 1.", "Olá Lead 1, parte 2.1."]


# --------------------------------------------------------------------------------------------
# 3. A message that has begun is finished
# --------------------------------------------------------------------------------------------


def begun(db: Conn, campaign: UUID, lead: UUID, *, due_ago: timedelta) -> UUID:
    """A pending message whose first of two parts was accepted earlier."""
    return UUID(
        str(
            one(
                db,
                "INSERT INTO campaign_messages (campaign_id, lead_id, scheduled_at, parts,"
                " parts_sent, provider_message_ids, generated_text, attempts)"
                ' VALUES (%s, %s, now() - %s, \'["first", "second"]\', 1, \'["EVO1"]\','
                " 'first second', 1) RETURNING id",
                campaign,
                lead,
                due_ago,
            )[0]
        )
    )


async def test_the_sweep_never_skips_a_message_that_has_begun(db_url: str, db: Conn) -> None:
    campaign = make_campaign(db)
    first, second = make_leads(db, 2)
    started = begun(db, campaign, first, due_ago=timedelta(days=3))
    [untouched] = enqueue(db, campaign, [second], delay_seconds=-3 * 86400)
    skipped = one(db, "SELECT mark_old_campaign_messages_as_skipped(interval '1 day')")[0]
    assert skipped == 1
    rows = dict(db.execute("SELECT id, status FROM campaign_messages").fetchall())
    assert rows == {started: "pending", untouched: "skipped"}


async def test_a_begun_message_finishes_outside_its_send_window(db_url: str, db: Conn) -> None:
    now = datetime.now(UTC)
    opens = (now + timedelta(hours=6)).strftime("%H:%M")
    closes = (now + timedelta(hours=7)).strftime("%H:%M")
    campaign = make_campaign(
        db, send_window_start=opens, send_window_end=closes, send_timezone="UTC"
    )
    [lead] = make_leads(db, 1)
    begun(db, campaign, lead, due_ago=timedelta(minutes=1))
    async with serve_fakes() as fakes, running(db_url, **http_settings(fakes)):
        await await_until(lambda: statuses(db) == {"sent": 1}, timeout=15)
    assert [s["text"] for s in fakes.accepted()] == ["second"]


# --------------------------------------------------------------------------------------------
# 4. A database blip
# --------------------------------------------------------------------------------------------


async def test_a_dropped_connection_between_the_answer_and_the_record_repeats_nothing(
    db_url: str, db: Conn
) -> None:
    """Every connection of the listener is cut right as the provider accepts a part: the live
    process still knows the id, records it once the database answers, and sends nothing twice."""
    campaign = make_campaign(db)
    enqueue(db, campaign, make_leads(db, 5))
    cuts = 0

    def cut(_: dict[str, Any]) -> None:
        nonlocal cuts
        if cuts < 2:
            cuts += 1
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND starts_with(application_name, 'listener')"
            )

    async with serve_fakes() as fakes:
        fakes.reply_parts = 2
        fakes.on_accept = cut
        async with running(db_url, lease="20s", **http_settings(fakes)):
            await await_until(lambda: statuses(db) == {"sent": 5}, timeout=30)
    assert cuts == 2
    assert no_repeats(fakes)
    assert sum(len(p) for p in parts_by_number(fakes).values()) == 10
    assert one(db, "SELECT max(attempts) FROM campaign_messages")[0] == 1


async def test_a_dropped_connection_as_the_last_part_is_recorded_creates_one_next_step(
    db_url: str, db: Conn
) -> None:
    """Connections cut right as the provider accepts a message's last part (whose record
    creates its next step): the record is run again once the database answers, and every lead
    has exactly one step 2, sent once."""
    campaign = make_campaign(db)
    db.execute(
        "INSERT INTO campaign_steps (campaign_id, step, wait) VALUES (%s, 2, '0 seconds')",
        (campaign,),
    )
    enqueue(db, campaign, make_leads(db, 5))
    cuts = 0

    def cut(_: dict[str, Any]) -> None:
        nonlocal cuts
        if cuts < 3:
            cuts += 1
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND starts_with(application_name, 'listener')"
            )

    async with serve_fakes() as fakes:
        fakes.on_accept = cut
        async with running(db_url, lease="20s", **http_settings(fakes)):
            await await_until(lambda: statuses(db) == {"sent": 10}, timeout=30)
    assert cuts == 3
    assert no_repeats(fakes)
    assert sum(len(p) for p in parts_by_number(fakes).values()) == 10
    per_lead = db.execute(
        "SELECT count(*) FILTER (WHERE step = 2) FROM campaign_messages GROUP BY lead_id"
    ).fetchall()
    assert per_lead == [(1,)] * 5


def test_the_rescue_gives_back_the_attempt_of_a_live_owner_only(db_url: str, db: Conn) -> None:
    """A lease lost by a worker still connected (to a database blip) spends no attempt; a
    lease lost by a worker that died keeps the attempt it spent."""
    campaign = make_campaign(db)
    alive, dead = enqueue(db, campaign, make_leads(db, 2))
    db.execute(
        "UPDATE campaign_messages SET status = 'processing', attempts = 2,"
        " locked_until = now() - interval '1 second',"
        " locked_by = CASE WHEN id = %s THEN 'alive-1' ELSE 'dead-1' END",
        (alive,),
    )
    with psycopg.connect(db_url, application_name="listener alive-1"):
        rescued = db.execute(
            q("rescue_expired"), {"max_attempts": 4, "window": timedelta(minutes=2)}
        ).fetchall()
    assert len(rescued) == 2
    rows = {r[0]: r[1:] for r in db.execute("SELECT id, status, attempts FROM campaign_messages")}
    assert rows == {alive: ("pending", 1), dead: ("pending", 2)}


# --------------------------------------------------------------------------------------------
# 6. A long rate-limit hold
# --------------------------------------------------------------------------------------------


async def test_a_long_429_hands_back_every_waiter_not_only_the_one_refused(
    db_url: str, db: Conn
) -> None:
    """An hour's Retry-After on one send: the other message, half sent and waiting for the
    gate, is handed back too instead of sitting `processing` for the hour."""
    campaign = make_campaign(db)
    enqueue(db, campaign, make_leads(db, 2))
    async with serve_fakes() as fakes:
        fakes.reply_parts = 2
        fakes.send_script.extend(
            [
                Reply(delay=0.01),  # one message's part 1
                Reply(delay=1.0),  # the other's part 1, still in the air when the 429 comes
                Reply(429, {"error": "slow down"}, headers={"Retry-After": "3600"}),
            ]
        )
        async with running(db_url, concurrency=2, **http_settings(fakes)):
            await await_until(
                lambda: (
                    one(
                        db,
                        "SELECT count(*) FROM campaign_messages"
                        " WHERE status = 'pending' AND parts_sent = 1",
                    )[0]
                    == 2
                ),
                timeout=15,
            )
            rows = db.execute(
                "SELECT wait_reason, attempts, scheduled_at > now() + interval '50 minutes'"
                " FROM campaign_messages"
            ).fetchall()
    assert sorted(rows) == [("held back", 0, True), ("rate limit", 0, True)]
    waiting = db.execute(q("stats_waiting")).fetchall()
    assert {r[2] for r in waiting} == {"held back", "rate limit"}  # not "retry"
    assert no_repeats(fakes)


# --------------------------------------------------------------------------------------------
# 7. Unanswered sends
# --------------------------------------------------------------------------------------------


async def test_a_part_whose_send_never_answers_is_sent_twice_at_most(db_url: str, db: Conn) -> None:
    """The sender delivers each part but answers after the timeout: the part goes out on the
    first try and once more, never on the third or fourth; then the message fails saying the
    part may have been delivered."""
    campaign = make_campaign(db)
    enqueue(db, campaign, make_leads(db, 1))
    async with serve_fakes() as fakes:
        fakes.send_delay = 1.0
        async with running(
            db_url, send_timeout="200ms", retry_delays="50ms,50ms,50ms", **http_settings(fakes)
        ):
            await await_until(lambda: statuses(db) == {"failed": 1}, timeout=20)
            await asyncio.sleep(1.2)  # let the last send the fake is still sleeping on land
    error, attempts = one(db, "SELECT last_error, attempts FROM campaign_messages")
    assert "may have been delivered" in error
    assert attempts == 2
    assert len(fakes.accepted()) == 2


@pytest.mark.parametrize("answer", ["504", "timeout"])
async def test_uncertain_sends_count_across_listeners(db_url: str, db: Conn, answer: str) -> None:
    """The count of unanswered sends lives on the row: a second listener taking the message
    over does not send the part a third time."""
    campaign = make_campaign(db)
    [message] = enqueue(db, campaign, make_leads(db, 1))
    db.execute(
        "UPDATE campaign_messages SET uncertain_part = 0, uncertain_sends = 1, attempts = 1"
        " WHERE id = %s",
        (message,),
    )
    async with serve_fakes() as fakes:
        if answer == "504":
            fakes.send_script.append(Reply(504, {"error": "gateway timeout"}))
        else:
            fakes.send_delay = 1.0
        async with running(db_url, send_timeout="200ms", **http_settings(fakes)):
            await await_until(lambda: statuses(db) == {"failed": 1}, timeout=20)
    assert len(fakes.sends) == 1
    assert "may have been delivered" in one(db, "SELECT last_error FROM campaign_messages")[0]


async def test_a_part_in_the_air_when_its_worker_died_is_looked_up_before_it_is_sent_again(
    db_url: str, db: Conn
) -> None:
    """A worker dies (its lease runs out, it is not connected) with a begun message: its next
    part may have gone out. The rescue counts it as a send that got no answer, so the next
    worker looks it up first: found, it is recorded and not sent again; not found, it is sent
    (the second time); and a part that already had a send without an answer is not sent a
    third time."""
    campaign = make_campaign(db)
    found, lost, twice = enqueue(db, campaign, make_leads(db, 3), content="x")
    db.execute(
        "UPDATE campaign_messages SET status = 'processing', attempts = 1,"
        """ parts = '["Parte um.", "Parte dois."]', parts_sent = 0,"""
        " locked_by = 'ghost-1', locked_until = now() - interval '1 second'"
    )
    db.execute(
        "UPDATE campaign_messages SET uncertain_part = 0, uncertain_sends = 1,"
        " uncertain_at = now() - interval '1 minute' WHERE id = %s",
        (twice,),
    )
    numbers = {
        mid: normalize_phone(
            one(
                db,
                "SELECT l.phone FROM campaign_messages m JOIN leads l ON l.id = m.lead_id"
                " WHERE m.id = %s",
                mid,
            )[0]
        )
        for mid in (found, lost, twice)
    }
    async with serve_fakes() as fakes:
        # What the dead worker got out before it died: the first part of one message.
        async with httpx.AsyncClient() as client:
            answer = await client.post(
                f"{fakes.url}/message/sendText/main",
                headers={"apikey": "evo-test-secret"},
                json={"number": numbers[found], "text": "Parte um."},
            )
        assert answer.status_code == 201
        async with running(db_url, **http_settings(fakes)):
            await await_until(lambda: statuses(db) == {"sent": 2, "failed": 1}, timeout=20)
        texts = {
            mid: [s["text"] for s in fakes.accepted() if s["number"] == number]
            for mid, number in numbers.items()
        }
        assert len(fakes.find_requests) >= 3  # every one of them was looked up first
    assert texts == {
        found: ["Parte um.", "Parte dois."],  # the dead worker's, then the rest
        lost: ["Parte um.", "Parte dois."],
        twice: [],
    }
    assert one(db, "SELECT status FROM campaign_messages WHERE id = %s", found)[0] == "sent"
    error = one(db, "SELECT last_error FROM campaign_messages WHERE id = %s", twice)[0]
    assert "part 1 of 2 may have been delivered" in error


async def test_a_last_part_in_the_air_when_its_worker_died_creates_one_next_step(
    db_url: str, db: Conn
) -> None:
    """A worker dies with the last part of step 1 in the air, the part whose record creates
    step 2: for one lead it had gone out, for the other not. The next worker looks each up
    first: the one found is recorded (not sent again), the other sent; each record creates
    its lead's step 2 once, and step 2 goes out once."""
    campaign = make_campaign(db)
    db.execute(
        "INSERT INTO campaign_steps (campaign_id, step, wait) VALUES (%s, 2, '0 seconds')",
        (campaign,),
    )
    found, lost = enqueue(db, campaign, make_leads(db, 2), content="x")
    db.execute(
        "UPDATE campaign_messages SET status = 'processing', attempts = 1,"
        """ parts = '["Olá, tudo bem?"]', parts_sent = 0,"""
        " locked_by = 'ghost-1', locked_until = now() - interval '1 second'"
    )
    numbers = {
        mid: normalize_phone(
            one(
                db,
                "SELECT l.phone FROM campaign_messages m JOIN leads l ON l.id = m.lead_id"
                " WHERE m.id = %s",
                mid,
            )[0]
        )
        for mid in (found, lost)
    }
    async with serve_fakes() as fakes:
        async with httpx.AsyncClient() as client:  # what the dead worker got out
            answer = await client.post(
                f"{fakes.url}/message/sendText/main",
                headers={"apikey": "evo-test-secret"},
                json={"number": numbers[found], "text": "Olá, tudo bem?"},
            )
        assert answer.status_code == 201
        async with running(db_url, **http_settings(fakes)):
            await await_until(lambda: statuses(db) == {"sent": 4}, timeout=20)
        texts = {
            mid: [s["text"] for s in fakes.accepted() if s["number"] == number]
            for mid, number in numbers.items()
        }
        assert len(fakes.find_requests) >= 2  # each was looked up first
    assert no_repeats(fakes)
    for mid in (found, lost):
        assert len(texts[mid]) == 2 and texts[mid][0] == "Olá, tudo bem?", texts[mid]
    steps = db.execute(
        "SELECT previous_id, count(*) FROM campaign_messages WHERE step = 2 GROUP BY previous_id"
    ).fetchall()
    assert sorted(steps) == sorted([(found, 1), (lost, 1)])
