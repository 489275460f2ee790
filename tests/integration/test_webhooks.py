"""Delivery feedback: a fake Evolution on 127.0.0.1 posts real-shaped webhooks to the
listener's receiver, on a real Postgres."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest

from listener.commands.cli import entry
from listener.commands.demo import demo, report
from listener.commands.stats import collect_stats, render
from listener.daemon import Daemon
from listener.errors import ConfigurationError
from listener.feedback.events import sign_jwt
from listener.testing import (
    FakeProviders,
    Reply,
    connection_data,
    http_settings,
    reply_data,
    serve_fakes,
    status_data,
)
from tests.daemon_harness import running
from tests.helpers import await_until, enqueue, make_campaign, make_leads, statuses

Conn = psycopg.Connection[Any]
SECRET = "webhook-test-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def listening(db_url: str, **overrides: Any) -> AsyncIterator[tuple[Daemon, FakeProviders]]:
    """The fakes, and a listener sending through them with its receiver on."""
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


async def settle(daemon: Daemon) -> None:
    """Apply what the receiver acknowledged (it answers once an event is in its inbox, and
    applies the inbox off the request path): waits for a turn of the applier in progress."""
    receiver = daemon.webhooks
    assert receiver is not None
    await receiver.call(receiver.settle)


def parts_of(db: Conn) -> dict[str, str]:
    rows = db.execute("SELECT provider_message_id, status FROM message_parts").fetchall()
    return {r[0]: r[1] for r in rows}


def one(db: Conn, sql: str, *args: Any) -> Any:
    row = db.execute(sql, args).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0] if len(row) == 1 else row


async def send_one(db: Conn, fakes: FakeProviders, parts: int = 1, **campaign: Any) -> UUID:
    fakes.reply_parts = parts
    cid = make_campaign(db, **campaign)
    lead = make_leads(db, 1)
    before = statuses(db).get("sent", 0)
    [mid] = enqueue(db, cid, lead)  # written by the fake LLM, in `parts` parts
    await await_until(lambda: statuses(db).get("sent", 0) == before + 1)
    return mid


async def test_statuses_out_of_order_and_repeated_move_forward_only(db_url: str, db: Conn) -> None:
    async with listening(db_url) as (daemon, fakes):
        mid = await send_one(db, fakes, parts=2)
        first, second = (s["id"] for s in fakes.accepted())
        assert parts_of(db) == {first: "PENDING", second: "PENDING"}
        for key, status in [
            (first, "READ"),
            (first, "DELIVERY_ACK"),  # late: READ is never overwritten
            (first, "SERVER_ACK"),
            (first, "READ"),  # Evolution's retry of the same event
            (second, "SERVER_ACK"),
        ]:
            assert await fakes.post_webhook("messages.update", status_data(key, status)) == 200
        await settle(daemon)
        assert parts_of(db) == {first: "READ", second: "SERVER_ACK"}
        delivered, read = one(
            db, "SELECT delivered_at, read_at FROM campaign_messages WHERE id = %s", mid
        )
        assert delivered is None  # the second part is not delivered yet
        assert read is not None
        assert await fakes.post_webhook("messages.update", status_data(second, "DELIVERY_ACK"))
        await settle(daemon)
        assert one(db, "SELECT delivered_at FROM campaign_messages WHERE id = %s", mid)


async def test_error_is_final_and_rolled_up(db_url: str, db: Conn) -> None:
    async with listening(db_url) as (daemon, fakes):
        mid = await send_one(db, fakes)
        [part] = (s["id"] for s in fakes.accepted())
        for status in ("SERVER_ACK", "ERROR", "DELIVERY_ACK", "READ"):
            await fakes.post_webhook("messages.update", status_data(part, status))
        await settle(daemon)
        assert parts_of(db) == {part: "ERROR"}
        row = one(
            db,
            "SELECT delivery_error, delivered_at, read_at FROM campaign_messages WHERE id = %s",
            mid,
        )
        assert row == ("WhatsApp reported ERROR for part 1", None, None)


async def test_an_update_before_its_part_is_kept_and_applied(db_url: str, db: Conn) -> None:
    async with listening(db_url) as (daemon, fakes):
        # The fake's first id is known in advance: its update outruns the send.
        assert await fakes.post_webhook("messages.update", status_data("EVO00000001", "READ"))
        await settle(daemon)
        assert one(db, "SELECT count(*) FROM delivery_updates_early") == 1
        mid = await send_one(db, fakes)
        await await_until(lambda: parts_of(db) == {"EVO00000001": "READ"}, timeout=10)
        assert one(db, "SELECT count(*) FROM delivery_updates_early") == 0
        assert one(db, "SELECT read_at IS NOT NULL FROM campaign_messages WHERE id = %s", mid)


async def test_unknown_ids_change_nothing_and_are_dropped_after_ten_minutes(
    db_url: str, db: Conn
) -> None:
    async with listening(db_url) as (daemon, fakes):
        await send_one(db, fakes)
        assert await fakes.post_webhook("messages.update", status_data("NOPE", "READ")) == 200
        await settle(daemon)
        assert set(parts_of(db).values()) == {"PENDING"}
        db.execute("UPDATE delivery_updates_early SET received_at = now() - interval '11 min'")
        assert daemon.webhooks is not None
        assert await daemon.webhooks.call(daemon.webhooks.apply_early) == (0, 1)
        assert one(db, "SELECT count(*) FROM delivery_updates_early") == 0


async def test_the_answer_waits_for_no_lock_the_sender_holds(db_url: str, db: Conn) -> None:
    # The roll-up of a status writes its message's row, which the sender may be writing at that
    # moment: the answer comes once the event is in the inbox, the roll-up after the lock.
    async with listening(db_url) as (daemon, fakes):
        mid = await send_one(db, fakes)
        [part] = (s["id"] for s in fakes.accepted())
        with psycopg.connect(db_url) as holder:
            holder.execute("SELECT 1 FROM campaign_messages WHERE id = %s FOR UPDATE", (mid,))
            post = fakes.post_webhook("messages.update", status_data(part, "DELIVERY_ACK"))
            assert await asyncio.wait_for(post, timeout=10) == 200
            assert one(db, "SELECT count(*) FROM webhook_inbox") == 1  # stored, not applied
            assert parts_of(db) == {part: "PENDING"}
            holder.rollback()
        await settle(daemon)
        assert parts_of(db) == {part: "DELIVERY_ACK"}
        assert one(db, "SELECT delivered_at IS NOT NULL FROM campaign_messages WHERE id = %s", mid)
        assert one(db, "SELECT count(*) FROM webhook_inbox") == 0


async def test_events_acknowledged_and_left_in_the_inbox_are_applied(db_url: str, db: Conn) -> None:
    # A listener that answered and died before applying left its rows: another one applies them.
    async with listening(db_url) as (_, fakes):
        mid = await send_one(db, fakes)
        [part] = (s["id"] for s in fakes.accepted())
        db.execute(
            "INSERT INTO webhook_inbox (kind, instance, provider_message_id, status, at)"
            " VALUES ('status', 'main', %s, 'READ', now())",
            (part,),
        )
        await await_until(lambda: parts_of(db) == {part: "READ"})
        assert one(db, "SELECT read_at IS NOT NULL FROM campaign_messages WHERE id = %s", mid)
        await await_until(lambda: one(db, "SELECT count(*) FROM webhook_inbox") == 0)


async def test_a_stop_applies_what_was_acknowledged_before_it_ends(db_url: str, db: Conn) -> None:
    # A lock on the message's row keeps the applier's turn waiting, so the status is still in
    # the inbox when the stop begins. The stop cancels that turn and applies the inbox itself
    # (waiting for the lock, within its 5 s) before the listener ends, not at its next start.
    waiting = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock'"
    )
    with psycopg.connect(db_url) as holder:
        async with listening(db_url) as (daemon, fakes):
            mid = await send_one(db, fakes)
            [part] = (s["id"] for s in fakes.accepted())
            holder.execute("SELECT 1 FROM campaign_messages WHERE id = %s FOR UPDATE", (mid,))
            assert await fakes.post_webhook("messages.update", status_data(part, "READ")) == 200
            await await_until(lambda: one(db, waiting) == 1)  # the applier's turn, held
            assert one(db, "SELECT count(*) FROM webhook_inbox") == 1
            port = daemon.settings.webhook_port
            daemon.request_stop()

            def closed() -> bool:
                with socket.socket() as sock:
                    return sock.connect_ex(("127.0.0.1", port)) != 0

            await await_until(closed)  # the receiver is stopping
            # Released well after the stop cancelled the applier's turn (at once), so only the
            # stop's own apply can take the status; well within the 5 s it is given.
            await asyncio.sleep(0.5)
            holder.rollback()
        # Out of `listening`: the daemon has ended.
    assert parts_of(db) == {part: "READ"}
    assert one(db, "SELECT read_at IS NOT NULL FROM campaign_messages WHERE id = %s", mid)
    assert one(db, "SELECT count(*) FROM webhook_inbox") == 0


async def test_bad_and_missing_auth_is_401_and_writes_nothing(db_url: str, db: Conn) -> None:
    async with listening(db_url) as (daemon, fakes):
        data = status_data("EVO-X", "READ")
        expired = sign_jwt(SECRET, now=time.time() - 3600)
        for headers in (
            {},
            {"Authorization": f"Bearer {sign_jwt('another-secret')}"},
            {"Authorization": f"Bearer {expired}"},
            {"Authorization": "Bearer not.a.jwt"},
            {"Authorization": f"Basic {SECRET}"},
            {"X-Listener-Token": "wrong"},
        ):
            assert await fakes.post_webhook("messages.update", data, headers=headers) == 401
        await settle(daemon)
        assert one(db, "SELECT count(*) FROM webhook_inbox") == 0
        assert one(db, "SELECT count(*) FROM delivery_updates_early") == 0
        headers = {"X-Listener-Token": SECRET}
        assert await fakes.post_webhook("messages.update", data, headers=headers) == 200
        await settle(daemon)
        assert one(db, "SELECT count(*) FROM delivery_updates_early") == 1


async def test_malformed_bodies_are_400(db_url: str, db: Conn) -> None:
    async with listening(db_url) as (daemon, fakes):
        for raw in (b"{not json", b"[1, 2]", b'{"event": "messages.update", "instance": "main"}'):
            assert await fakes.post_webhook("messages.update", {}, raw=raw) == 400
        assert await fakes.post_webhook("messages.update", {"status": "READ"}) == 400
        # Events we do not track are fine.
        assert await fakes.post_webhook("presence.update", {"id": "x"}) == 200
        # By-events mode posts to /webhooks/evolution/<event-with-dashes>.
        data = status_data("EVO-BY-EVENTS", "DELIVERY_ACK")
        assert await fakes.post_webhook("messages.update", data, by_events=True) == 200
        await settle(daemon)
        assert one(db, "SELECT count(*) FROM delivery_updates_early") == 1


async def _reply(fakes: FakeProviders, number: str, text: str, **kw: Any) -> None:
    assert await fakes.post_webhook("messages.upsert", reply_data(number, text, **kw)) == 200


def lead_row(db: Conn, lead: UUID) -> tuple[Any, ...]:
    row = db.execute(
        "SELECT opted_out, opted_out_at IS NOT NULL, last_reply_at IS NOT NULL FROM leads"
        " WHERE id = %s",
        (lead,),
    ).fetchone()
    assert row is not None
    return tuple(row)


async def test_replies_stop_on_reply_and_opt_outs(db_url: str, db: Conn) -> None:
    async with listening(db_url) as (daemon, fakes):
        stop = make_campaign(db, name="stops")
        goes_on = make_campaign(db, name="goes on", stop_on_reply=False)
        # Stored with the ninth digit, one without; one replies from an @lid chat.
        leads = {}
        for name, phone in [
            ("ninth", "+55 (11) 98765-4321"),
            ("eight", "551187654322"),
            ("lid", "5511987654323"),
            ("quer", "5511987654324"),
            ("bang", "5511987654325"),
        ]:
            leads[name] = UUID(
                str(
                    one(
                        db,
                        "INSERT INTO leads (name, phone) VALUES (%s, %s) RETURNING id",
                        name,
                        phone,
                    )
                )
            )
        everyone = list(leads.values())
        sent = enqueue(db, stop, everyone, content="Olá!")
        await await_until(lambda: statuses(db).get("sent") == 5)
        later_stop = enqueue(db, stop, everyone, content="Segunda.", delay_seconds=3600)
        later_on = enqueue(db, goes_on, everyone, content="Outra.", delay_seconds=3600)

        # Replies a person wrote (kind `other`: see test_replies.py for the other kinds).
        await _reply(fakes, "551187654321", "Oi, recebi")  # without the ninth digit
        await _reply(fakes, "5511987654322", "Quem fala")  # with it, stored without
        await _reply(fakes, "5511987654323", "SAIR", lid=True)
        await _reply(fakes, "5511987654324", "Não quero sair")
        await _reply(fakes, "5511987654325", "sair!! 🙏")
        await _reply(fakes, "5511999999999", "unknown number")  # no lead: nothing
        await settle(daemon)
        # What a reply stops is decided once its kind is known (the classifier's turn).
        await await_until(
            lambda: (
                one(db, "SELECT count(*) FILTER (WHERE kind IS NULL), count(*) FROM lead_replies")
                == (0, 5)
            )
        )

        assert lead_row(db, leads["ninth"]) == (False, False, True)
        assert lead_row(db, leads["eight"]) == (False, False, True)
        assert lead_row(db, leads["lid"]) == (True, True, True)
        assert lead_row(db, leads["quer"]) == (False, False, True)
        assert lead_row(db, leads["bang"]) == (True, True, True)
        replied = db.execute(
            "SELECT count(*) FROM campaign_messages WHERE id = ANY(%s) AND replied_at IS NOT NULL",
            (sent,),
        ).fetchone()
        assert replied == (5,)

        def state(ids: list[UUID]) -> list[tuple[str, str | None]]:
            order = {m: i for i, m in enumerate(ids)}
            rows = db.execute(
                "SELECT id, status, last_error FROM campaign_messages WHERE id = ANY(%s)", (ids,)
            ).fetchall()
            return [(r[1], r[2]) for r in sorted(rows, key=lambda r: order[r[0]])]

        replied_ = ("skipped", "skipped: the lead replied")
        opted = ("skipped", "skipped: the lead opted out")
        pending = ("pending", None)
        # Stop on reply: every replying lead's pending messages in that campaign.
        assert state(later_stop) == [replied_, replied_, opted, replied_, opted]
        # stop_on_reply off: only opt-outs stop them.
        assert state(later_on) == [pending, pending, opted, pending, opted]
        # A retried event changes nothing.
        await _reply(fakes, "5511987654323", "SAIR", lid=True)
        await settle(daemon)
        assert state(later_on) == [pending, pending, opted, pending, opted]


async def test_a_401_close_holds_only_that_instance(db_url: str, db: Conn) -> None:
    async with listening(db_url) as (_, fakes):
        banned = make_campaign(db, name="banned", instance="banned")
        fine = make_campaign(db, name="fine", instance="fine")
        status = await fakes.post_webhook(
            "connection.update", connection_data("banned", "close", 401), instance="banned"
        )
        assert status == 200
        held = enqueue(db, banned, make_leads(db, 2, prefix="55319"), content="Olá")
        enqueue(db, fine, make_leads(db, 2, prefix="55329"), content="Olá")
        await await_until(lambda: statuses(db).get("sent") == 2)
        await await_until(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM campaign_messages WHERE id = ANY(%s)"
                    " AND status = 'pending' AND wait_reason = 'instance restricted'"
                    " AND attempts = 0",
                    (held,),
                ).fetchone()
                == (2,)
            )
        )
        assert {s["instance"] for s in fakes.sends} == {"fine"}


async def test_connection_closed_holds_the_number_and_spends_nothing(db_url: str, db: Conn) -> None:
    async with listening(db_url) as (_, fakes):
        fakes.send_script.append(
            Reply(
                500,
                {
                    "status": 500,
                    "error": "Internal Server Error",
                    "response": {"message": "Connection Closed"},
                },
            )
        )
        cid = make_campaign(db)
        [mid] = enqueue(db, cid, make_leads(db, 1), content="Olá")
        await await_until(
            lambda: (
                db.execute(
                    "SELECT status, attempts, wait_reason FROM campaign_messages WHERE id = %s",
                    (mid,),
                ).fetchone()
                == ("pending", 0, "instance down")
            )
        )
        assert len(fakes.sends) == 1  # no quick retry, no retry ladder


async def test_a_timed_out_send_found_by_its_send_message_event_is_sent_once(
    db_url: str, db: Conn
) -> None:
    async with listening(db_url) as (_, fakes):
        fakes.emit_sent = True
        fakes.find_nothing = True  # only the webhook can find it
        fakes.deliver_then_timeout = 1
        fakes.timeout_sleep = 0.05
        mid = await send_one(db, fakes)
        assert len(fakes.sends) == 1
        assert fakes.find_requests == []
        assert parts_of(db) == {fakes.sends[0]["id"]: "PENDING"}
        assert one(db, "SELECT attempts FROM campaign_messages WHERE id = %s", mid) == 2


async def test_a_timed_out_send_found_by_find_messages_is_sent_once(db_url: str, db: Conn) -> None:
    async with listening(db_url) as (_, fakes):
        fakes.deliver_then_timeout = 1
        fakes.timeout_sleep = 0.05
        await send_one(db, fakes)
        assert len(fakes.sends) == 1
        [request] = fakes.find_requests
        jid = fakes.sends[0]["number"] + "@s.whatsapp.net"
        assert request["where"]["key"] == {"remoteJid": jid, "remoteJidAlt": jid, "fromMe": True}
        assert parts_of(db) == {fakes.sends[0]["id"]: "PENDING"}


async def test_a_timed_out_send_not_found_is_sent_twice_never_more(db_url: str, db: Conn) -> None:
    async with listening(db_url) as (_, fakes):
        fakes.find_nothing = True
        fakes.deliver_then_timeout = 5
        fakes.timeout_sleep = 0.05
        cid = make_campaign(db)
        [mid] = enqueue(db, cid, make_leads(db, 1), content="Olá")
        await await_until(lambda: statuses(db).get("failed") == 1)
        assert len(fakes.sends) == 2
        error = one(db, "SELECT last_error FROM campaign_messages WHERE id = %s", mid)
        assert "may have been delivered" in error


async def test_three_errors_of_ten_first_parts_hold_the_number(db_url: str, db: Conn) -> None:
    async with listening(db_url, restrict_hold="1h") as (daemon, fakes):
        cid = make_campaign(db)
        enqueue(db, cid, make_leads(db, 10), content="Olá")
        await await_until(lambda: statuses(db).get("sent") == 10)
        ids = [s["id"] for s in fakes.accepted()]
        for key in ids[:2]:
            await fakes.post_webhook("messages.update", status_data(key, "ERROR"))
        for key in ids[3:]:
            await fakes.post_webhook("messages.update", status_data(key, "DELIVERY_ACK"))
        await settle(daemon)
        # Two ERRORs of ten: the number goes on.
        assert daemon.processor is not None
        assert await daemon.processor.instances.state("main") == "open"
        # The third: the number is held for LISTENER_RESTRICT_HOLD, nothing spent.
        await fakes.post_webhook("messages.update", status_data(ids[2], "ERROR"))
        await settle(daemon)
        [held] = enqueue(db, cid, make_leads(db, 1, prefix="55339"), content="Olá")
        await await_until(
            lambda: (
                db.execute(
                    "SELECT status, attempts, wait_reason FROM campaign_messages WHERE id = %s",
                    (held,),
                ).fetchone()
                == ("pending", 0, "instance restricted")
            )
        )
        assert len(fakes.sends) == 10


def first_parts(db: Conn, instance: str, n: int, status: str, age: str) -> None:
    """`n` messages sent through `instance` `age` ago (by some listener), their one part at
    `status` since."""
    cid = make_campaign(db, name=f"sent by {instance}", instance=instance)
    ids = enqueue(db, cid, make_leads(db, n, prefix=f"551{len(instance)}9"), content="Olá")
    db.execute(
        "UPDATE campaign_messages SET status = 'sent', parts_sent = 1,"
        " sent_at = now() - %s::interval WHERE id = ANY(%s)",
        (age, ids),
    )
    db.execute(
        "INSERT INTO message_parts (message_id, part_no, instance, provider_message_id, status,"
        " status_at, sent_at)"
        " SELECT m, 0, %s, %s || m::text, %s, now() - %s::interval, now() - %s::interval"
        " FROM unnest(%s::uuid[]) m",
        (instance, instance, status, age, age, ids),
    )


async def test_stale_pending_first_parts_hold_a_number_this_listener_never_sent_through(
    db_url: str, db: Conn
) -> None:
    # Sent by a listener that has since restarted: this one has not sent through any of them.
    # LISTENER_RESTRICT_HOLD 1h, LISTENER_PENDING_ALARM 10m.
    first_parts(db, "stale", 10, "PENDING", "20 minutes")
    first_parts(db, "young", 10, "PENDING", "2 minutes")  # not PENDING for long yet
    # Sent longer ago than the hold plus the alarm: the hold they caused is over, they do not
    # hold the number again (it sends, and its next first parts are judged).
    first_parts(db, "held before", 10, "PENDING", "75 minutes")
    first_parts(db, "fine", 10, "DELIVERY_ACK", "20 minutes")
    async with listening(db_url, restrict_hold="1h") as (daemon, fakes):
        receiver = daemon.webhooks
        assert receiver is not None
        await receiver.call(receiver.check_stale)
        restricted = daemon.metrics.registry.get_sample_value(
            "listener_instance_restrictions_total", {"reason": "pending"}
        )
        assert restricted == 1
        held = {}
        for instance in ("stale", "young", "held before", "fine"):
            cid = make_campaign(db, name=f"new on {instance}", instance=instance)
            [held[instance]] = enqueue(db, cid, make_leads(db, 1, prefix="55349"), content="Oi")
        await await_until(lambda: len(fakes.sends) == 3)
        await await_until(
            lambda: (
                db.execute(
                    "SELECT status, attempts, wait_reason FROM campaign_messages WHERE id = %s",
                    (held["stale"],),
                ).fetchone()
                == ("pending", 0, "instance restricted")
            )
        )
        assert {s["instance"] for s in fakes.sends} == {"young", "held before", "fine"}


async def test_webhook_set_configures_every_instance_in_use(
    db_url: str, db: Conn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_campaign(db, name="a", instance="sales")
    make_campaign(db, name="b", instance="support")
    make_campaign(db, name="c", instance="old", status="archived")
    # Pools: every number of one is configured, not only `instance`.
    make_campaign(db, name="d", instances=["t1", "t3"])
    make_campaign(db, name="e", instance="sales", instances=["t3", "t4"])
    make_campaign(db, name="f", instances=["gone"], status="archived")
    async with serve_fakes() as fakes:
        for name, value in {
            "DATABASE_URL": db_url,
            "EVOLUTION_API_URL": fakes.url,
            "EVOLUTION_API_KEY": "evo-test-secret",
            "EVOLUTION_INSTANCE": "main",
            "LISTENER_WEBHOOK_SECRET": SECRET,
        }.items():
            monkeypatch.setenv(name, value)
        url = "https://listener.example.com/webhooks/evolution"
        assert await asyncio.to_thread(entry, ["webhook", "set", "--url", url]) == 0
        assert [s["instance"] for s in fakes.webhook_sets] == [
            "main",
            "sales",
            "support",
            "t1",
            "t3",
            "t4",
        ]
        assert fakes.webhook_sets[0] == {
            "instance": "main",
            "apikey": "evo-test-secret",
            "webhook": {
                "enabled": True,
                "url": url,
                "headers": {"jwt_key": SECRET},
                "byEvents": False,
                "base64": False,
                "events": [
                    "MESSAGES_UPDATE",
                    "MESSAGES_UPSERT",
                    "SEND_MESSAGE",
                    "CONNECTION_UPDATE",
                ],
            },
        }
        argv = ["webhook", "set", "--instance", "other", "--url", url]
        assert await asyncio.to_thread(entry, argv) == 0
        assert fakes.webhook_sets[-1]["instance"] == "other"
        out = capsys.readouterr()
        assert "webhook set on support: " + url in out.out
        assert SECRET not in out.out + out.err
        # Bad input: one line, exit 2.
        assert await asyncio.to_thread(entry, ["webhook", "set", "--url", "ftp://x"]) == 2
        monkeypatch.delenv("LISTENER_WEBHOOK_SECRET")
        assert await asyncio.to_thread(entry, ["webhook", "set", "--url", url]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == (
            "listener: LISTENER_WEBHOOK_SECRET is required: Evolution signs its posts with it"
        )
        assert len(fakes.webhook_sets) == 7


async def test_stats_show_the_funnel_per_campaign(db_url: str, db: Conn) -> None:
    async with listening(db_url) as (daemon, fakes):
        cid = make_campaign(db, name="Funil")
        enqueue(db, cid, make_leads(db, 4), content="Olá")
        await await_until(lambda: statuses(db).get("sent") == 4)
        sends = fakes.accepted()
        kinds = ("READ", "DELIVERY_ACK", "SERVER_ACK", "ERROR")
        for send, status in zip(sends, kinds, strict=True):
            await fakes.post_webhook("messages.update", status_data(send["id"], status))
        await _reply(fakes, sends[0]["number"], "Tenho interesse")
        await _reply(fakes, sends[1]["number"], "PARAR")
        await settle(daemon)
    figures = await collect_stats(db_url, timedelta(hours=1))
    [funnel] = figures.funnel
    assert (funnel.campaign, funnel.sent, funnel.acked, funnel.delivered, funnel.read) == (
        "Funil",
        4,
        3,
        2,
        1,
    )
    assert (funnel.replied, funnel.opted_out, funnel.errors) == (2, 1, 1)
    assert funnel.median_delivery_seconds is not None
    assert figures.as_json()["funnel"][0]["rates_percent"]["delivered"] == 50.0
    text = render(figures)
    assert "delivery funnel per campaign" in text
    assert "2 (50%)" in text


async def test_the_demo_shows_the_funnel_and_an_opt_out(db_url: str, db: Conn) -> None:
    # The sandbox sender posts deliveries, reads and four replies to step 1 (the first "SAIR",
    # then an interested lead, a question, a "not now") to the demo listener's own receiver,
    # through the same endpoint as Evolution.
    result = await demo(
        db_url, leads=12, keep=True, check=True, progress=lambda _: None, inform=lambda _: None
    )
    [funnel] = result.stats.funnel
    sent = result.progress.sent  # the sample has a lead that cannot be sent to
    assert sent >= 11
    assert (funnel.sent, funnel.delivered, funnel.replied, funnel.opted_out) == (sent, sent, 4, 1)
    assert sorted(kind for *_, kind in result.handoffs) == ["interested", "question"]
    assert 0 < funnel.read <= sent
    assert one(db, "SELECT count(*) FROM leads WHERE opted_out_at IS NOT NULL") == 1
    assert "delivery funnel per campaign" in "\n".join(report(result, keep=True, data_dir=None))


async def test_without_a_secret_the_listener_runs_and_says_once_that_feedback_is_off(
    db_url: str, db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()
    async with running(db_url, webhook_port=port, webhook_host="127.0.0.1") as daemon:
        cid = make_campaign(db)
        enqueue(db, cid, make_leads(db, 2), content="Olá")
        await await_until(lambda: statuses(db).get("sent") == 2)
        assert daemon.webhooks is None
        with socket.socket() as probe:  # nothing listens on the webhook port
            assert probe.connect_ex(("127.0.0.1", port)) != 0
    off = [r for r in caplog.records if getattr(r, "action", None) == "webhooks_off"]
    assert len(off) == 1
    assert "delivery feedback is off" in off[0].getMessage()


async def test_a_taken_webhook_port_is_one_clear_error(db_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError, match="LISTENER_WEBHOOK_HOST/LISTENER_WEBHOOK_PORT"):
            async with running(
                db_url, webhook_secret=SECRET, webhook_host="127.0.0.1", webhook_port=port
            ):
                pass


async def test_the_secret_is_never_logged(
    db_url: str, db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with listening(db_url) as (_, fakes):
        await fakes.post_webhook("messages.update", {}, raw=b"{bad")
        await fakes.post_webhook("messages.upsert", reply_data("5511987650000", "SAIR"))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert SECRET not in text
    assert "5511987650000" not in text


async def test_a_fixed_line_that_whatsapp_refuses_says_it_is_a_fixed_line(
    db_url: str, db: Conn
) -> None:
    """Evolution's 400 for a number not on WhatsApp ends the message at once; when the lead's
    number is a fixed line (stored `11 3456-7890`, sent to 551134567890), the reason says so."""
    async with listening(db_url) as (_, fakes):
        jid = {"jid": "551134567890@s.whatsapp.net", "exists": False, "number": "551134567890"}
        fakes.send_script.append(
            Reply(400, {"status": 400, "error": "Bad Request", "response": {"message": [jid]}})
        )
        campaign = make_campaign(db)
        lead = one(
            db, "INSERT INTO leads (name, phone) VALUES ('Dora', '11 3456-7890') RETURNING id"
        )
        enqueue(db, campaign, [lead], content="Olá!")
        await await_until(lambda: statuses(db).get("failed") == 1)
        assert [s["number"] for s in fakes.sends] == ["551134567890"]
    error = one(db, "SELECT last_error FROM campaign_messages WHERE lead_id = %s", lead)
    assert "not on WhatsApp" in error
    assert "(a fixed line, not a mobile: most are not on WhatsApp)" in error


async def test_a_lead_stored_in_national_form_is_sent_to_and_matched_by_its_reply(
    db_url: str, db: Conn
) -> None:
    """`(11) 98765-4321` goes to 5511987654321; the reply from that JID finds the lead; a
    number not valid in Brazil fails at once with the reason (a fixed line that WhatsApp refuses:
    the test above)."""
    async with listening(db_url) as (daemon, fakes):
        campaign = make_campaign(db)
        stored = (
            ("Ana", "(11) 98765-4321"),
            ("Bia", "021 98765 4321"),
            ("Cid", "(11) 1234"),
            ("Eva", "0 15 31 98765-4321"),  # the trunk 0 and a carrier selection code
        )
        national, trunk, bad, carrier = (
            UUID(str(one(db, "INSERT INTO leads (name, phone) VALUES (%s, %s) RETURNING id", *r)))
            for r in stored
        )
        sent = enqueue(db, campaign, [national, trunk, bad, carrier], content="Olá!")
        await await_until(lambda: statuses(db).get("sent") == 3 and statuses(db).get("failed") == 1)
        assert sorted(s["number"] for s in fakes.accepted()) == [
            "5511987654321",
            "5521987654321",
            "5531987654321",
        ]
        error = one(db, "SELECT last_error FROM campaign_messages WHERE lead_id = %s", bad)
        assert error.startswith("invalid phone number") and "region BR" in error
        await _reply(fakes, "5511987654321", "Quem é?")
        await _reply(fakes, "552187654321", "Oi")  # the JID without the ninth digit
        await _reply(fakes, "5531987654321", "Olá")
        await settle(daemon)
        assert lead_row(db, national) == (False, False, True)
        assert lead_row(db, trunk) == (False, False, True)
        assert lead_row(db, carrier) == (False, False, True)
        assert (
            one(
                db,
                "SELECT count(*) FROM campaign_messages"
                " WHERE id = ANY(%s) AND replied_at IS NOT NULL",
                sent,
            )
            == 3
        )
