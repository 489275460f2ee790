"""A lead's stop reaches messages already in flight: an opt-out or a hand-off to a person that
comes while the message is with the LLM, or while it waits for its number's turn, is read again
right before the first part goes, and the lead receives none of it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from listener.daemon import Daemon
from listener.flow import Stop
from listener.jobs import Job
from listener.pacing.store import SenderStore
from listener.queue.store import Store
from listener.testing import FakeProviders, http_settings, reply_data, serve_fakes
from tests.daemon_harness import fast_settings, running
from tests.helpers import await_until, enqueue, make_campaign

Conn = psycopg.Connection[Any]
SECRET = "in-flight-test-secret"
PHONE = "5511987654325"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def listening(db_url: str, **overrides: Any) -> AsyncIterator[tuple[Daemon, FakeProviders]]:
    """The fakes, and a listener sending through them with its webhook receiver on."""
    async with serve_fakes() as fakes:
        port = free_port()
        fakes.webhook_url = f"http://127.0.0.1:{port}/webhooks/evolution"
        fakes.webhook_secret = SECRET
        settings: dict[str, Any] = {
            **http_settings(fakes),
            "webhook_secret": SECRET,
            "webhook_host": "127.0.0.1",
            "webhook_port": port,
            **overrides,
        }
        async with running(db_url, **settings) as daemon:
            yield daemon, fakes


def one(db: Conn, sql: str, *args: Any) -> Any:
    row = db.execute(sql, args).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0] if len(row) == 1 else tuple(row)


def out_of_processing(db: Conn, message: UUID) -> Callable[[], bool]:
    """Whether the message has left `processing` (sent, skipped or back in the queue)."""
    return lambda: (
        one(db, "SELECT status FROM campaign_messages WHERE id = %s", message) != "processing"
    )


def make_lead(db: Conn, phone: str = PHONE) -> UUID:
    return UUID(
        str(one(db, "INSERT INTO leads (name, phone) VALUES ('Ana', %s) RETURNING id", phone))
    )


async def test_a_lead_who_opts_out_while_the_llm_writes_receives_none_of_it(
    db_url: str, db: Conn
) -> None:
    async with listening(db_url) as (daemon, fakes):
        fakes.reply_parts = 2
        fakes.llm_release = asyncio.Event()  # the LLM answers when the test says so
        campaign = make_campaign(db)
        [message] = enqueue(db, campaign, [make_lead(db)])
        await await_until(lambda: fakes.llm_calls == 1)
        # The lead writes "Sair 🙏" while its message is with the LLM.
        status = await fakes.post_webhook("messages.upsert", reply_data(PHONE, "Sair 🙏"))
        assert status == 200
        receiver = daemon.webhooks
        assert receiver is not None
        await receiver.call(receiver.settle)  # the receiver's inbox applied
        assert one(db, "SELECT opted_out FROM leads") is True
        assert one(db, "SELECT status FROM campaign_messages") == "processing"
        fakes.llm_release.set()
        await await_until(out_of_processing(db, message))
        assert fakes.sends == []
        row = one(
            db,
            "SELECT status, last_error, parts, parts_sent, prompt_tokens, cost_usd > 0, attempts"
            " FROM campaign_messages WHERE id = %s",
            message,
        )
        # Skipped with the reason, nothing stored to send, the LLM's cost kept.
        assert row == ("skipped", "skipped: the lead opted out", None, 0, 120, True, 1)
        assert one(db, "SELECT spent_usd > 0 FROM campaigns WHERE id = %s", campaign) is True


async def test_a_lead_handed_off_while_the_llm_writes_receives_none_of_it(
    db_url: str, db: Conn
) -> None:
    async with serve_fakes() as fakes, running(db_url, **http_settings(fakes)):
        fakes.reply_parts = 2
        fakes.llm_release = asyncio.Event()  # the LLM answers when the test says so
        campaign = make_campaign(db)
        lead = make_lead(db)
        [message] = enqueue(db, campaign, [lead])
        await await_until(lambda: fakes.llm_calls == 1)
        # The lead's reply is classified `interested` while its message is with the LLM: the
        # hand-off (reply_classified, as the classifier applies it) commits meanwhile. The
        # reply is not due for the listener's own classifier (it would wait on the held LLM).
        reply = one(
            db,
            "INSERT INTO lead_replies (lead_id, campaign_id, message_id, instance, phone, text,"
            " received_at, next_try_at) VALUES (%s, %s, %s, 'main', %s, 'Quero saber mais',"
            " now(), now() + interval '1 hour') RETURNING id",
            lead,
            campaign,
            message,
            PHONE,
        )
        handed = one(
            db,
            "SELECT handed_off FROM reply_classified(%s, 'interested', NULL, 0, 0, 0, NULL)",
            reply,
        )
        assert handed is True
        assert one(db, "SELECT status FROM campaign_messages WHERE id = %s", message) == (
            "processing"
        )
        fakes.llm_release.set()
        await await_until(out_of_processing(db, message))
        assert fakes.sends == []
        row = one(
            db,
            "SELECT status, last_error, parts, parts_sent, prompt_tokens, cost_usd > 0, attempts"
            " FROM campaign_messages WHERE id = %s",
            message,
        )
    # Skipped with the reason, nothing stored to send, the LLM's cost kept.
    assert row == ("skipped", "skipped: the lead was handed off", None, 0, 120, True, 1)
    assert one(db, "SELECT spent_usd > 0 FROM campaigns WHERE id = %s", campaign) is True


async def test_a_message_made_after_the_lead_was_handed_off_is_not_stopped_by_it(
    db_url: str, db: Conn
) -> None:
    """Only a hand-off since the message was made stops it there (one made later, a new
    campaign's, is the operator's choice)."""
    lead = make_lead(db)
    db.execute("UPDATE leads SET handoff_at = now() - interval '1 day' WHERE id = %s", (lead,))
    campaign = make_campaign(db)
    async with serve_fakes() as fakes, running(db_url, **http_settings(fakes)):
        [message] = enqueue(db, campaign, [lead], content="Olá!")
        await await_until(
            lambda: one(db, "SELECT status FROM campaign_messages WHERE id = %s", message) == "sent"
        )
    assert len(fakes.sends) == 1


async def test_a_lead_who_opts_out_while_its_message_waits_for_its_number_receives_none(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db, instance="main", gap_min_seconds=0.1, gap_max_seconds=0.1)
    lead = make_lead(db)
    # Another send through the number is on its way: the message waits right before its
    # first part, its text stored.
    db.execute(
        "INSERT INTO listener_instances (instance, sending_since) VALUES ('main', now())"
        " ON CONFLICT (instance) DO UPDATE SET sending_since = now()"
    )
    async with serve_fakes() as fakes, running(db_url, **http_settings(fakes)):
        [message] = enqueue(db, campaign, [lead], content="Olá! Tudo bem?")
        await await_until(
            lambda: one(db, "SELECT parts IS NOT NULL FROM campaign_messages") is True
        )
        db.execute("UPDATE leads SET opted_out = true, opted_out_at = now() WHERE id = %s", (lead,))
        # The other send was answered: the number is free again.
        db.execute("UPDATE listener_instances SET sending_since = NULL WHERE instance = 'main'")
        await await_until(out_of_processing(db, message))
    assert fakes.sends == []
    assert one(db, "SELECT status, last_error FROM campaign_messages") == (
        "skipped",
        "skipped: the lead opted out",
    )


async def test_an_opt_out_committed_while_the_number_is_locked_is_seen_when_it_frees(
    db_url: str, db: Conn
) -> None:
    """The lead opts out while the listener's check of the number waits on the number's row
    (locked here by another transaction, as a send's bookkeeping may hold it), and the number
    is freed after: the stop is read after that lock, so the lead receives none. Read in the
    statement that began before the wait (its snapshot older than the opt-out), it was sent."""
    campaign = make_campaign(db, instance="main", gap_min_seconds=0.1, gap_max_seconds=0.1)
    lead = make_lead(db)
    # Another send through the number is on its way: the message asks again and again.
    db.execute(
        "INSERT INTO listener_instances (instance, sending_since) VALUES ('main', now())"
        " ON CONFLICT (instance) DO UPDATE SET sending_since = now()"
    )
    with psycopg.connect(db_url) as holder:
        async with serve_fakes() as fakes, running(db_url, **http_settings(fakes)):
            [message] = enqueue(db, campaign, [lead], content="Olá! Tudo bem?")
            # Its slot booked, it asks whether the number is free (and is told to ask again).
            asking = (
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND query LIKE %s"
            )
            await await_until(lambda: one(db, asking, "%listener_send_wait%") == 1)
            holder.execute("SELECT 1 FROM listener_instances WHERE instance = 'main' FOR UPDATE")
            # Its next ask waits on the row the holder locked.
            await await_until(
                lambda: (
                    one(db, asking + " AND wait_event_type = 'Lock'", "%listener_send_wait%") == 1
                )
            )
            db.execute(
                "UPDATE leads SET opted_out = true, opted_out_at = now() WHERE id = %s", (lead,)
            )
            holder.execute("UPDATE listener_instances SET sending_since = NULL")
            holder.commit()
            await await_until(out_of_processing(db, message))
    assert fakes.sends == []
    assert one(db, "SELECT status, last_error FROM campaign_messages") == (
        "skipped",
        "skipped: the lead opted out",
    )
    assert one(db, "SELECT sending_since FROM listener_instances") is None


async def test_a_number_reserved_for_a_send_whose_lead_opted_out_is_let_go(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db, instance="main")
    lead = make_lead(db)
    [message] = enqueue(db, campaign, [lead], content="Olá!")
    settings = fast_settings(worker_id="w1")
    db.execute(
        "UPDATE campaign_messages SET status = 'processing', locked_by = 'w1',"
        " locked_until = now() + interval '1 minute' WHERE id = %s",
        (message,),
    )
    db.execute("UPDATE leads SET opted_out = true WHERE id = %s", (lead,))
    job = Job.of(
        id=message,
        campaign_id=campaign,
        lead_id=lead,
        attempts=1,
        content="Olá!",
        parts=None,
        parts_sent=0,
        scheduled_at=datetime.now(UTC),
        campaign_prompt=None,
        campaign_model=None,
        campaign_instance="main",
        campaign_status="active",
    )
    async with AsyncConnectionPool(db_url, kwargs={"autocommit": True}, open=False) as pool:
        store = Store(pool, settings)
        with pytest.raises(Stop) as stopped:
            await SenderStore(pool, settings).send_wait(job, "main", 0.1)
        assert stopped.value.reason == "skipped: the lead opted out"
        assert await store.lead_stop(job) == "skipped: the lead opted out"
        # A hand-off since the message was made stops it the same way, with its own reason.
        db.execute("UPDATE leads SET opted_out = false, handoff_at = now() WHERE id = %s", (lead,))
        with pytest.raises(Stop) as stopped:
            await SenderStore(pool, settings).send_wait(job, "main", 0.1)
        assert stopped.value.reason == "skipped: the lead was handed off"
        assert await store.lead_stop(job) == "skipped: the lead was handed off"
    # The number was reserved and let go in the same turn: the next send need not wait.
    assert one(db, "SELECT sending_since FROM listener_instances WHERE instance = 'main'") is None
