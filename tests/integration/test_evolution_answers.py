"""What a real Evolution 2.3.7 showed, through a running listener and the fake
Evolution on 127.0.0.1: the answers of an instance that is not ready, event times against
Evolution's skewed `date_time`, and the smaller points."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from listener.commands.cli import entry
from listener.commands.stats import collect_stats
from listener.daemon import Daemon
from listener.testing import (
    UNREADY,
    connection_data,
    http_settings,
    reply_data,
    serve_fakes,
    status_data,
)
from tests.daemon_harness import running
from tests.helpers import await_until, enqueue, make_campaign, make_leads, statuses
from tests.integration.test_webhooks import listening, settle

Conn = psycopg.Connection[Any]


def row(db: Conn, sql: str, *args: Any) -> tuple[Any, ...] | None:
    return db.execute(sql, args).fetchone()  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", sorted(UNREADY))
async def test_a_send_refused_as_not_ready_holds_the_number_and_spends_nothing(
    db_url: str, db: Conn, kind: str
) -> None:
    # The state read said `open` (a moment before, or a stale read); the send says otherwise.
    cid = make_campaign(db, instance="t1")
    async with serve_fakes() as fakes:
        fakes.unready = {"t1": kind}
        fakes.states = {"t1": "open"}
        settings = {**http_settings(fakes), "instance_recheck": "1h"}
        async with running(db_url, **settings):
            [mid] = enqueue(db, cid, make_leads(db, 1), content="Olá")
            sql = "SELECT status, attempts, wait_reason FROM campaign_messages WHERE id = %s"
            await await_until(lambda: row(db, sql, mid) == ("pending", 0, "instance down"))
            assert len(fakes.sends) == 1  # no quick retry, no retry ladder
            held = "SELECT held_reason FROM listener_instances WHERE instance = 't1'"
            await await_until(lambda: row(db, held) == ("instance down",))


async def test_an_instance_evolution_has_not_loaded_is_held_before_any_send(
    db_url: str, db: Conn
) -> None:
    # Its connectionState answers `{"instance": {"instanceName": "t1"}}`, with no state.
    cid = make_campaign(db, instance="t1")
    async with serve_fakes() as fakes:
        fakes.unready = {"t1": "not_loaded"}
        async with running(db_url, **http_settings(fakes), instance_recheck="1h"):
            [mid] = enqueue(db, cid, make_leads(db, 1), content="Olá")
            sql = "SELECT status, attempts, wait_reason FROM campaign_messages WHERE id = %s"
            await await_until(lambda: row(db, sql, mid) == ("pending", 0, "instance down"))
            assert fakes.sends == []


THREE_HOURS = 3 * 3600.0


def clamped(daemon: Daemon, reason: str) -> float:
    value = daemon.metrics.registry.get_sample_value(
        "listener_event_times_clamped_total", {"reason": reason}
    )
    return value or 0.0


async def test_event_times_never_precede_their_send_under_a_date_time_three_hours_early(
    db_url: str, db: Conn
) -> None:
    # Evolution's `date_time` under its Dockerfile's TZ=America/Sao_Paulo: local time with a Z.
    async with listening(db_url) as (daemon, fakes):
        fakes.date_time_skew = -THREE_HOURS
        cid = make_campaign(db, name="Skew")
        enqueue(db, cid, make_leads(db, 3), content="Olá")
        await await_until(lambda: statuses(db).get("sent") == 3)
        [first, second, third] = fakes.accepted()
        for send, status in ((first, "READ"), (second, "DELIVERY_ACK"), (third, "PLAYED")):
            assert await fakes.post_webhook("messages.update", status_data(send["id"], status))
        # A reply with its true time, and an opt-out whose own time is before the send.
        now = int(time.time())
        await fakes.post_webhook("messages.upsert", reply_data(first["number"], "Oi"))
        early = reply_data(second["number"], "SAIR", timestamp=now - int(THREE_HOURS))
        await fakes.post_webhook("messages.upsert", early)
        await settle(daemon)
        assert clamped(daemon, "before_send") == 1
        assert clamped(daemon, "future") == 0
    rows = db.execute(
        "SELECT m.sent_at, m.delivered_at, m.read_at, m.replied_at, l.last_reply_at,"
        " l.opted_out_at FROM campaign_messages m JOIN leads l ON l.id = m.lead_id"
    ).fetchall()
    assert len(rows) == 3
    for sent_at, *times in rows:
        assert all(t is None or t >= sent_at for t in times), (sent_at, times)
    assert sum(r[1] is not None for r in rows) == 3  # delivered
    assert sum(r[3] is not None for r in rows) == 2  # replied
    assert sum(r[5] is not None for r in rows) == 1  # opted out
    [funnel] = (await collect_stats(db_url, timedelta(hours=1))).funnel
    assert funnel.median_delivery_seconds is not None and funnel.median_delivery_seconds > 0
    assert funnel.median_read_seconds is not None and funnel.median_read_seconds > 0
    assert (funnel.delivered, funnel.read, funnel.replied, funnel.opted_out) == (3, 2, 2, 1)


async def test_a_reply_time_in_the_future_is_clamped_to_its_receipt_and_counted(
    db_url: str, db: Conn
) -> None:
    async with listening(db_url) as (daemon, fakes):
        cid = make_campaign(db)
        enqueue(db, cid, make_leads(db, 1), content="Olá")
        await await_until(lambda: statuses(db).get("sent") == 1)
        [send] = fakes.accepted()
        # A protobuf Long, as some versions serialise messageTimestamp: an hour ahead.
        ahead = int(time.time()) + 3600
        stamp = {"low": ahead, "high": 0, "unsigned": False}
        await fakes.post_webhook(
            "messages.upsert", reply_data(send["number"], "Oi", timestamp=stamp)
        )
        await settle(daemon)
        assert clamped(daemon, "future") == 1
    replied, last, now = row(
        db,
        "SELECT m.replied_at, l.last_reply_at, now() FROM campaign_messages m"
        " JOIN leads l ON l.id = m.lead_id",
    ) or (None, None, None)
    assert replied is not None and last == replied
    assert replied <= now


async def test_a_number_held_as_restricted_that_evolution_then_deletes_says_so(
    db_url: str, db: Conn
) -> None:
    # Logged out (401): held as restricted; then Evolution answers 404 for it (deleted).
    async with listening(db_url, instance_recheck="100ms") as (_, fakes):
        make_campaign(db, instance="t1")
        closed = connection_data("t1", "close", 401)
        assert await fakes.post_webhook("connection.update", closed, instance="t1") == 200
        held = "SELECT held_reason FROM listener_instances WHERE instance = 't1'"
        await await_until(lambda: row(db, held) == ("instance restricted",))
        fakes.missing = {"t1"}
        await await_until(lambda: row(db, held) == ("unknown to Evolution",))


async def test_the_messages_of_a_held_number_wait_for_its_reason_as_it_changes(
    db_url: str, db: Conn
) -> None:
    # Held as restricted, its messages put aside as restricted; Evolution then answers 404 for
    # it (deleted): the messages already aside say so too, still aside, nothing spent.
    async with listening(db_url, instance_recheck="100ms") as (_, fakes):
        cid = make_campaign(db, instance="t1")
        closed = connection_data("t1", "close", 401)
        assert await fakes.post_webhook("connection.update", closed, instance="t1") == 200
        held = "SELECT held_reason FROM listener_instances WHERE instance = 't1'"
        await await_until(lambda: row(db, held) == ("instance restricted",))
        enqueue(db, cid, make_leads(db, 3), content="Olá")
        waiting = (
            "SELECT count(*) FILTER (WHERE status = 'pending' AND attempts = 0"
            "                          AND scheduled_at > now() + interval '1 minute'),"
            "       array_agg(DISTINCT wait_reason)"
            "  FROM campaign_messages"
        )
        await await_until(lambda: row(db, waiting) == (3, ["instance restricted"]))
        fakes.missing = {"t1"}
        await await_until(lambda: row(db, held) == ("unknown to Evolution",))
        await await_until(lambda: row(db, waiting) == (3, ["unknown to Evolution"]))
        assert fakes.sends == []


@pytest.mark.parametrize("found_by", ["state", "send"])
async def test_a_404_is_unknown_to_evolution_not_instance_down(
    db_url: str, db: Conn, found_by: str
) -> None:
    # A mistyped instance name: its connectionState (or, after a stale `open`, its send) is 404.
    cid = make_campaign(db, instance="typo")
    async with serve_fakes() as fakes:
        fakes.missing = {"typo"}
        if found_by == "send":
            fakes.states = {"typo": "open"}
        async with running(db_url, **http_settings(fakes), instance_recheck="1h"):
            [mid] = enqueue(db, cid, make_leads(db, 1), content="Olá")
            sql = "SELECT status, attempts, wait_reason FROM campaign_messages WHERE id = %s"
            await await_until(lambda: row(db, sql, mid) == ("pending", 0, "unknown to Evolution"))
            held = "SELECT held_reason FROM listener_instances WHERE instance = 'typo'"
            await await_until(lambda: row(db, held) == ("unknown to Evolution",))
    assert len(fakes.sends) == (1 if found_by == "send" else 0)


def test_stats_say_unknown_for_a_number_nothing_says_is_connected(
    db_url: str, db: Conn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_campaign(db, name="never used", instance="never")
    used = make_campaign(db, name="used", instance="used")
    [mid] = enqueue(db, used, make_leads(db, 1))
    db.execute(
        "INSERT INTO message_parts (message_id, part_no, instance, provider_message_id)"
        " VALUES (%s, 0, 'used', 'EVO1')",
        (mid,),
    )
    monkeypatch.setenv("DATABASE_URL", db_url)
    assert entry(["stats", "--json"]) == 0
    numbers = {n["instance"]: n for n in json.loads(capsys.readouterr().out)["senders"]}
    assert numbers["never"]["state"] == "unknown"
    assert numbers["used"]["state"] == "open"


async def test_a_timed_out_send_to_a_lid_chat_is_found_by_its_number_and_sent_once(
    db_url: str, db: Conn
) -> None:
    # Evolution stores a send to a number it knows by a lid under the lid, the number in
    # `key.remoteJidAlt`; findMessages matches remoteJid OR remoteJidAlt.
    async with listening(db_url) as (_, fakes):
        fakes.lid_chats = {"5511900000001": "123456789012345"}
        fakes.deliver_then_timeout = 1
        fakes.timeout_sleep = 0.05
        cid = make_campaign(db)
        [mid] = enqueue(db, cid, make_leads(db, 1), content="Olá")
        await await_until(lambda: row(db, "SELECT status FROM campaign_messages") == ("sent",))
        assert [s["number"] for s in fakes.sends] == ["5511900000001"]
        [request] = fakes.find_requests
        assert request["where"]["key"]["remoteJidAlt"] == "5511900000001@s.whatsapp.net"
        parts = "SELECT provider_message_id FROM message_parts WHERE message_id = %s"
        assert row(db, parts, mid) == (fakes.sends[0]["id"],)
