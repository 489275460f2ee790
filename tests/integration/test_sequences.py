"""Sequences: follow-up steps sent to a silent lead, each its wait after the one
before, and stopped, with the reason, for a lead who replied, opted out, was handed off or
never received the step before."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest

from listener.testing import Reply, http_settings, serve_fakes, status_data
from tests.daemon_harness import running
from tests.helpers import await_until, enqueue, make_campaign, make_leads, make_run
from tests.integration.test_webhooks import _reply, free_port, listening, settle

Conn = psycopg.Connection[Any]


def add_steps(db: Conn, campaign: UUID, *waits: str, prompt: str | None = None) -> None:
    """Steps 2, 3, ... of `campaign`, each `wait` after the one before."""
    for step, wait in enumerate(waits, start=2):
        db.execute(
            "INSERT INTO campaign_steps (campaign_id, step, wait, prompt) VALUES (%s, %s, %s, %s)",
            (campaign, step, wait, prompt),
        )


def wrote(db: Conn, lead: UUID, kind: str = "other") -> None:
    """The lead wrote back now, a reply classified as `kind`."""
    db.execute(
        "INSERT INTO lead_replies (lead_id, instance, phone, text, received_at, kind,"
        " classified_at) VALUES (%s, 'main', '5511900000000', 'Oi', now(), %s, now())",
        (lead, kind),
    )


def rows(db: Conn) -> list[tuple[Any, ...]]:
    """Every message: (lead, step, status, last_error, sent_at, run, instance, previous)."""
    return db.execute(
        "SELECT lead_id, step, status, last_error, sent_at, run_id, instance, previous_id"
        " FROM campaign_messages ORDER BY lead_id, step"
    ).fetchall()


def finished(db: Conn, expected: int) -> bool:
    row = db.execute(
        "SELECT count(*) FILTER (WHERE status IN ('sent', 'failed', 'skipped')), count(*)"
        " FROM campaign_messages"
    ).fetchone()
    assert row is not None
    return bool(row[0] == row[1] == expected)


async def test_a_silent_lead_gets_every_step_each_its_wait_after_the_one_before(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db, instance="numero-a")
    add_steps(db, campaign, "1 second", "2 seconds", prompt="Follow up.")
    run = make_run(db, campaign)
    [lead] = make_leads(db, 1)
    async with serve_fakes() as fakes:
        enqueue(db, campaign, [lead], run_id=run)
        async with running(db_url, **http_settings(fakes)):
            await await_until(lambda: finished(db, 3), timeout=30)
    got = rows(db)
    assert [(r[1], r[2]) for r in got] == [(1, "sent"), (2, "sent"), (3, "sent")]
    assert {r[5] for r in got} == {run}  # same run
    assert {r[6] for r in got} == {"numero-a"}  # same number
    assert got[1][7] is not None and got[2][7] is not None
    # Each step at least its wait after the one before (the rows say so; no timing here).
    assert got[1][4] - got[0][4] >= timedelta(seconds=1)
    assert got[2][4] - got[1][4] >= timedelta(seconds=2)
    # The run counts the steps it grew.
    assert db.execute("SELECT total_count, sent_count FROM campaign_runs").fetchone() == (3, 3)
    # The LLM wrote steps 2 and 3 knowing the earlier steps, with the step's own prompt.
    requests = [
        {m["role"]: m["content"] for m in r["body"]["messages"]} for r in fakes.llm_requests
    ]
    assert len(requests) == 3
    first_texts = [r["user"] for r in requests]
    assert "earlier_steps" not in first_texts[0]
    step1_text = db.execute(
        "SELECT generated_text FROM campaign_messages WHERE step = 1"
    ).fetchone()
    assert step1_text is not None and step1_text[0]
    assert "earlier_steps" in first_texts[1]
    assert "Follow up." in requests[1]["system"] and "follow-up number 1" in requests[1]["system"]
    assert "Be brief." in requests[0]["system"]
    assert "follow-up number 2" in requests[2]["system"]


async def test_the_step_is_created_once_when_its_record_runs_again(db_url: str, db: Conn) -> None:
    """A second step row for the same previous message is refused by the database."""
    campaign = make_campaign(db)
    add_steps(db, campaign, "1 hour")
    [lead] = make_leads(db, 1)
    async with running(db_url):
        enqueue(db, campaign, [lead])
        await await_until(
            lambda: db.execute("SELECT count(*) FROM campaign_messages").fetchone() == (2,)
        )
    [_first, second] = rows(db)
    assert second[1] == 2 and second[2] == "pending" and second[7] is not None
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute(
            "INSERT INTO campaign_messages (campaign_id, lead_id, step, previous_id)"
            " VALUES (%s, %s, 2, %s)",
            (campaign, lead, second[7]),
        )


async def test_a_message_sent_again_makes_no_second_step_and_records_its_send(
    db_url: str, db: Conn
) -> None:
    """A back end that puts a sent message back in the queue (sent is final for the listener,
    not for its users) has it sent again: its record finds the step it made the first time
    and makes none, and the send is recorded, not refused by the step's unique index."""
    campaign = make_campaign(db)
    add_steps(db, campaign, "1 hour")
    [lead] = make_leads(db, 1)
    [first] = enqueue(db, campaign, [lead], content="Olá")
    async with running(db_url):
        await await_until(
            lambda: db.execute("SELECT count(*) FROM campaign_messages").fetchone() == (2,)
        )
        db.execute(
            "UPDATE campaign_messages SET status = 'pending', parts = NULL, parts_sent = 0,"
            " sent_at = NULL, scheduled_at = now() WHERE id = %s",
            (first,),
        )
        await await_until(
            lambda: (
                db.execute(
                    "SELECT status, parts_sent FROM campaign_messages WHERE id = %s", (first,)
                ).fetchone()
                == ("sent", 1)
            )
        )
    got = rows(db)
    assert [(r[1], r[2], r[3]) for r in got] == [(1, "sent", None), (2, "pending", None)]
    assert got[1][7] == first


async def test_a_step_is_skipped_for_a_lead_who_replied_opted_out_or_was_handed_off(
    db_url: str, db: Conn
) -> None:
    """Step 2 waits an hour; each lead's state changes after step 1 went out, then step 2 is
    made due (no clock raced: the row is moved)."""
    campaign = make_campaign(db)
    add_steps(db, campaign, "1 hour")
    leads = make_leads(db, 4)
    replied, opted, handed, silent = leads
    async with running(db_url):
        enqueue(db, campaign, leads)
        await await_until(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM campaign_messages WHERE step = 2 AND status = 'pending'"
                    " AND scheduled_at > now() + interval '50 minutes'"
                ).fetchone()
                == (4,)
            )
        )
    wrote(db, replied)
    db.execute("UPDATE leads SET opted_out = true WHERE id = %s", (opted,))
    db.execute("UPDATE leads SET handoff_at = now() WHERE id = %s", (handed,))
    db.execute("UPDATE campaign_messages SET scheduled_at = now() WHERE step = 2")
    async with running(db_url):
        await await_until(lambda: finished(db, 8))
    step2 = {r[0]: (r[2], r[3]) for r in rows(db) if r[1] == 2}
    assert step2[replied] == ("skipped", "skipped: the lead replied")
    assert step2[opted] == ("skipped", "skipped: the lead opted out")
    assert step2[handed] == ("skipped", "skipped: the lead was handed off")
    assert step2[silent] == ("sent", None)


async def test_a_reply_before_the_step_was_due_skips_it_unless_the_campaign_goes_on(
    db_url: str, db: Conn
) -> None:
    stopping = make_campaign(db)
    going = make_campaign(db, stop_on_reply=False)
    for campaign in (stopping, going):
        add_steps(db, campaign, "0 seconds")
    [lead] = make_leads(db, 1)
    db.execute(
        "INSERT INTO campaign_messages (campaign_id, lead_id, status, sent_at, generated_text)"
        " VALUES (%s, %s, 'sent', now() - interval '1 minute', 'Oi'),"
        "        (%s, %s, 'sent', now() - interval '1 minute', 'Oi')",
        (stopping, lead, going, lead),
    )
    firsts = dict(db.execute("SELECT campaign_id, id FROM campaign_messages").fetchall())
    wrote(db, lead)
    for campaign, first in firsts.items():
        db.execute(
            "INSERT INTO campaign_messages (campaign_id, lead_id, step, previous_id)"
            " VALUES (%s, %s, 2, %s)",
            (campaign, lead, first),
        )
    async with running(db_url):
        await await_until(lambda: finished(db, 4))
    got = dict(
        db.execute(
            "SELECT campaign_id, status || ' ' || COALESCE(last_error, '') FROM campaign_messages"
            " WHERE step = 2"
        ).fetchall()
    )
    assert got[stopping] == "skipped skipped: the lead replied"
    assert got[going].startswith("sent")


async def test_a_step_after_an_undelivered_one_is_skipped_when_feedback_is_on(
    db_url: str, db: Conn
) -> None:
    """With delivery feedback on, step 2 goes only when step 1's first part was delivered."""
    campaign = make_campaign(db)
    add_steps(db, campaign, "0 seconds")
    delivered, undelivered = make_leads(db, 2)
    for lead, status in ((delivered, "DELIVERY_ACK"), (undelivered, "SERVER_ACK")):
        row = db.execute(
            "INSERT INTO campaign_messages (campaign_id, lead_id, status, sent_at, parts,"
            " parts_sent, generated_text) VALUES (%s, %s, 'sent', now(), '[\"Oi\"]', 1, 'Oi')"
            " RETURNING id",
            (campaign, lead),
        ).fetchone()
        assert row is not None
        db.execute(
            "INSERT INTO message_parts (message_id, part_no, instance, provider_message_id,"
            " status) VALUES (%s, 0, 'sandbox', %s, %s)",
            (row[0], f"EVO{lead.hex[:8]}", status),
        )
        db.execute(
            "INSERT INTO campaign_messages (campaign_id, lead_id, step, previous_id, instance)"
            " VALUES (%s, %s, 2, %s, 'sandbox')",
            (campaign, lead, row[0]),
        )
    port = free_port()
    async with running(
        db_url, webhook_secret="s3cret", webhook_host="127.0.0.1", webhook_port=port
    ):
        await await_until(lambda: finished(db, 4))
    got = {r[0]: (r[2], r[3]) for r in rows(db) if r[1] == 2}
    assert got[undelivered] == ("skipped", "skipped: the previous step was not delivered")
    assert got[delivered] == ("sent", None)


async def test_a_sequence_goes_on_after_an_away_message_and_waits_for_a_reply_s_kind(
    db_url: str, db: Conn
) -> None:
    """Delivery feedback on, step 2 an hour after step 1: the lead whose only reply was an away
    message gets step 2; the one who wrote as a person does not; the one whose reply cannot
    be classified yet waits for its kind; the silent one gets it."""
    async with listening(db_url, classify_retry="1h", quick_retries=0) as (daemon, fakes):
        campaign = make_campaign(db)
        add_steps(db, campaign, "1 hour")
        away, person, unknown, silent = make_leads(db, 4)
        phone = dict(db.execute("SELECT id, phone FROM leads").fetchall())
        enqueue(db, campaign, [away, person, unknown, silent], content="Olá!")
        await await_until(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM campaign_messages WHERE step = 2 AND status = 'pending'"
                ).fetchone()
                == (4,)
            )
        )
        for send in fakes.accepted():
            data = status_data(send["id"], "DELIVERY_ACK", send["number"])
            assert await fakes.post_webhook("messages.update", data) == 200
        fakes.classify_script.append(Reply(500, {"error": {"code": 500, "message": "down"}}))
        await _reply(fakes, phone[unknown], "Hmm")  # its classification fails first
        await settle(daemon)
        await await_until(
            lambda: db.execute("SELECT attempts FROM lead_replies").fetchone() == (1,)
        )
        await _reply(fakes, phone[away], "Olá! Agradecemos seu contato, retornaremos em breve.")
        await _reply(fakes, phone[person], "Oi, recebi")
        await settle(daemon)
        await await_until(
            lambda: (
                db.execute("SELECT count(*) FROM lead_replies WHERE kind IS NOT NULL").fetchone()
                == (2,)
            )
        )
        db.execute("UPDATE campaign_messages SET scheduled_at = now() WHERE status = 'pending'")
        await await_until(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM campaign_messages WHERE step = 2 AND status <> 'pending'"
                ).fetchone()
                == (3,)
            )
        )
        waiting = db.execute(
            "SELECT wait_reason, scheduled_at > now() FROM campaign_messages"
            " WHERE step = 2 AND lead_id = %s",
            (unknown,),
        ).fetchone()
    got = {r[0]: (r[2], r[3]) for r in rows(db) if r[1] == 2}
    assert got[away] == ("sent", None)
    assert got[silent] == ("sent", None)
    assert got[person] == ("skipped", "skipped: the lead replied")
    assert got[unknown][0] == "pending" and waiting == ("reply unclassified", True)


def unread_reply(db: Conn, lead: UUID) -> UUID:
    """The lead wrote back now, a reply whose kind is not known yet (its classification not
    due for a day: the test applies its kind itself)."""
    row = db.execute(
        "INSERT INTO lead_replies (lead_id, instance, phone, text, received_at, next_try_at)"
        " VALUES (%s, 'main', '5511900000000', 'Oi', now(), now() + interval '1 day')"
        " RETURNING id",
        (lead,),
    ).fetchone()
    assert row is not None
    return UUID(str(row[0]))


async def test_a_reply_being_classified_holds_every_message_of_its_lead_step_1_included(
    db_url: str, db: Conn
) -> None:
    """A first message too, in a campaign without stop_on_reply too, waits for the kind of its
    lead's reply (a hand-off stops the lead everywhere); the kind wakes it: an away message
    lets it go, a question hands the lead off and skips it. A lead with no reply is not held."""
    stops = make_campaign(db, instance="numero-a")
    goes_on = make_campaign(db, instance="numero-a", stop_on_reply=False)
    away, asks, quiet = make_leads(db, 3)
    replies = {lead: unread_reply(db, lead) for lead in (away, asks)}
    async with serve_fakes() as fakes:
        enqueue(db, stops, [away, asks, quiet], content="Olá!")
        enqueue(db, goes_on, [away, asks], content="Oferta")
        async with running(db_url, **http_settings(fakes)):
            await await_until(
                lambda: (
                    db.execute(
                        "SELECT count(*) FILTER (WHERE status = 'sent'), count(*) FILTER (WHERE"
                        " status = 'pending' AND wait_reason = 'reply unclassified'"
                        " AND scheduled_at > now()) FROM campaign_messages"
                    ).fetchone()
                    == (1, 4)
                )
            )
        assert len(fakes.accepted()) == 1  # only the lead with no reply
        db.execute(
            "SELECT * FROM reply_classified(%s, 'auto_reply', NULL, 0, 0, 0, NULL)",
            (replies[away],),
        )
        db.execute(
            "SELECT * FROM reply_classified(%s, 'question', NULL, 0, 0, 0, NULL)",
            (replies[asks],),
        )
        # The kind woke the away message's lead's messages at once (not 30 s later).
        woken = db.execute(
            "SELECT count(*) FROM campaign_messages WHERE lead_id = %s AND status = 'pending'"
            " AND wait_reason IS NULL AND scheduled_at <= now()",
            (away,),
        ).fetchone()
        assert woken == (2,)
        async with running(db_url, **http_settings(fakes)):
            await await_until(lambda: finished(db, 5))
    got = {
        (r[0], r[1]): (r[2], r[3])
        for r in db.execute(
            "SELECT lead_id, campaign_id, status, last_error FROM campaign_messages"
        ).fetchall()
    }
    assert got[(away, stops)] == got[(away, goes_on)] == ("sent", None)
    assert got[(quiet, stops)] == ("sent", None)
    handed_off = ("skipped", "skipped: the lead was handed off")
    assert got[(asks, stops)] == got[(asks, goes_on)] == handed_off
    assert len(fakes.accepted()) == 3


async def test_a_kind_that_comes_while_the_message_is_put_back_leaves_no_wait(
    db_url: str, db: Conn
) -> None:
    """The classifier's wake finds only pending rows: a kind applied after the claim saw the
    reply unclassified, but before the message was put back to wait, must not leave it
    waiting the whole recheck (the demo's messages once waited 30 s for it)."""
    from datetime import UTC, datetime

    from psycopg_pool import AsyncConnectionPool

    from listener.jobs import Finish
    from listener.queue.sequences import UNCLASSIFIED_RECHECK
    from listener.queue.store import Store
    from tests.daemon_harness import fast_settings

    campaign = make_campaign(db)
    lead, other = make_leads(db, 2)
    reply = unread_reply(db, lead)
    unread_reply(db, other)  # this lead's reply stays unclassified: its message keeps waiting
    enqueue(db, campaign, [lead, other], content="Olá!")
    async with AsyncConnectionPool(db_url, open=False, kwargs={"autocommit": True}) as pool:
        await pool.open()
        store = Store(pool, fast_settings(worker_id="w"))
        jobs = (await store.claim(2)).jobs
        assert len(jobs) == 2
        db.execute(
            "SELECT * FROM reply_classified(%s, 'auto_reply', NULL, 0, 0, 0, NULL)", (reply,)
        )
        until = datetime.now(UTC) + UNCLASSIFIED_RECHECK
        for job in jobs:
            await store.finish(Finish(job.id, "pending", until, 1, None, "reply unclassified"), job)
    rows = {
        r[0]: (r[1], r[2], r[3])
        for r in db.execute(
            "SELECT lead_id, status, wait_reason, scheduled_at <= now() FROM campaign_messages"
        ).fetchall()
    }
    assert rows[lead] == ("pending", None, True)
    assert rows[other] == ("pending", "reply unclassified", False)
