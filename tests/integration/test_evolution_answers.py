"""What a real Evolution 2.3.7 showed, through a running listener and the fake
Evolution on 127.0.0.1: the answers of an instance that is not ready, event times against
Evolution's skewed `date_time`, and the smaller points."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from listener.daemon import Daemon
from listener.stats import collect_stats
from listener.testing import UNREADY, http_settings, reply_data, serve_fakes, status_data
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
