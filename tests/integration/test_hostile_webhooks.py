"""Nothing the receiver acknowledged may block the rest, and no request gets a 500 or
writes a traceback. Hostile and absurd requests on a real receiver and a real Postgres."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import random
import string
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client import generate_latest

from listener.commands.stats import collect_stats, render
from listener.feedback.events import SentEvent, sign_jwt
from listener.testing import FakeProviders, connection_data, reply_data, status_data, webhook_body
from tests.helpers import await_until, make_campaign
from tests.integration.test_status_page import page_client  # noqa: F401 (a fixture)
from tests.integration.test_webhooks import SECRET, listening, one, parts_of, send_one

Conn = psycopg.Connection[Any]


async def raw_post(
    fakes: FakeProviders, headers: list[tuple[bytes, bytes]], body: bytes, path: str = ""
) -> int:
    """POST exactly these bytes (headers that are not UTF-8 included) to the receiver; its
    status code."""
    url = fakes.webhook_url.removeprefix("http://")
    hostport, _, base = url.partition("/")
    host, _, port = hostport.partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = [
        f"POST /{base}{path} HTTP/1.1".encode(),
        f"Host: {hostport}".encode(),
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        b"Connection: close",
    ]
    head += [name + b": " + value for name, value in headers]
    writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return int(answer.split(b" ", 2)[1])


def bearer() -> tuple[bytes, bytes]:
    return (b"Authorization", f"Bearer {sign_jwt(SECRET)}".encode())


def body_of(event: str, data: Any, **fields: Any) -> bytes:
    return json.dumps({**webhook_body(event, data), **fields}).encode()


# A 12,000-character id Postgres cannot compress (its index row would pass 8,191 bytes).
HUGE_ID = "".join(random.Random(23).choices(string.ascii_letters + string.digits, k=12_000))


def nested_jwt(depth: int) -> str:
    def enc(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = enc(b"[" * depth + b"]" * depth)
    claims = enc(json.dumps({"exp": int(time.time()) + 600}).encode())
    return f"{header}.{claims}.{enc(b'x' * 32)}"


def tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[str]:
    """Every captured record that carries a traceback or says a task's error was lost."""
    for record in caplog.records:
        text = record.getMessage()
        if record.exc_info or "Traceback" in text or "never retrieved" in text:
            yield f"{record.name}: {text}"


async def test_hostile_requests_get_4xx_and_write_no_traceback(
    db_url: str, db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    signed = [bearer()]
    deep = b'{"event": "messages.update", "instance": "main", "data": ' + b"[" * 5000
    deep += b"]" * 5000 + b"}"
    plain = body_of("messages.update", status_data("EVO-PLAIN", "READ"))
    bomb = gzip.compress(b" " * (20 * 1024 * 1024))
    gz, br, bad = ([*signed, (b"Content-Encoding", e)] for e in (b"gzip", b"br", b"g\xffzip"))
    async with listening(db_url) as (daemon, fakes):
        cases: list[tuple[str, list[tuple[bytes, bytes]], bytes, int]] = [
            ("token with a \\xff byte", [(b"X-Listener-Token", b"se\xffcret")], plain, 401),
            ("token of bytes only", [(b"X-Listener-Token", b"\xff\xfe\x80")], plain, 401),
            ("bearer with a \\xff byte", [(b"Authorization", b"Bearer a.\xff.c")], plain, 401),
            (
                "JWT header nested 1,500 deep",
                [(b"Authorization", f"Bearer {nested_jwt(1500)}".encode())],
                plain,
                401,
            ),
            (  # over aiohttp's 8 KB for a header line: its parser answers 400, in one log line
                "JWT header nested 50,000 deep",
                [(b"Authorization", f"Bearer {nested_jwt(50_000)}".encode())],
                plain,
                400,
            ),
            ("body nested 5,000 deep", signed, deep, 400),
            ("gzip encoding on a plain body", gz, plain, 400),
            ("an encoding we do not decode", br, plain, 415),
            ("encoding with a \\xff byte", bad, plain, 415),
            ("a gzip bomb", gz, bomb, 413),
            ("a body that is not UTF-8", signed, b'{"event": "\xff\xfe"}', 400),
            (
                "a keyId of 12,000 characters",
                signed,
                body_of("messages.update", status_data(HUGE_ID, "READ")),
                400,
            ),
            (
                "an instance name of 200 KB",
                signed,
                body_of("messages.update", status_data("EVO-1", "READ"), instance="i" * 200_000),
                400,
            ),
            (
                "a messageTimestamp no clock can hold",
                signed,
                body_of(
                    "messages.upsert",
                    {**reply_data("5511987650000", "oi"), "messageTimestamp": 10**30},
                ),
                None,
            ),
        ]
        for name, headers, body, expected in cases:
            status = await raw_post(fakes, headers, body)
            if expected is None:
                assert status < 500, name
            else:
                assert status == expected, name
        # An HTTP request aiohttp itself cannot parse: a 400, in one line.
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.settings.webhook_port)
        writer.write(b"POST /webhooks/evolution HTTP/1.1\r\nContent-Length: x\xff\r\n\r\n")
        assert (await reader.read()).split(b" ", 2)[1] == b"400"
        writer.close()
        # A gzip body Evolution could send is decoded and stored.
        zipped = gzip.compress(body_of("messages.update", status_data("EVO-ZIP", "READ")))
        assert await raw_post(fakes, [*signed, (b"Content-Encoding", b"gzip")], zipped) == 200
        receiver = daemon.webhooks
        assert receiver is not None
        await receiver.call(receiver.settle)
        kept = "SELECT provider_message_id FROM delivery_updates_early"
        assert [r[0] for r in db.execute(kept).fetchall()] == ["EVO-ZIP"]
    assert list(tracebacks(caplog)) == []


async def test_outside_names_are_cleaned_before_the_log_and_the_database(
    db_url: str, db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    # A lone surrogate (a JSON \ud800 escape) in a restricted instance's name killed the task
    # that holds the number ("Task exception was never retrieved"); a NUL went to the log.
    caplog.set_level(logging.DEBUG)
    async with listening(db_url) as (daemon, fakes):
        for name in ("lone\ud800surrogate", "nul\x00byte"):
            body = webhook_body("connection.update", connection_data(name, "close", 401))
            assert await raw_post(fakes, [bearer()], json.dumps(body).encode()) == 200
        held = "SELECT instance FROM listener_instances WHERE held_reason IS NOT NULL ORDER BY 1"
        await await_until(lambda: len(db.execute(held).fetchall()) == 2, timeout=10)
        assert [r[0] for r in db.execute(held).fetchall()] == ["lone\ufffdsurrogate", "nulbyte"]
        # A status for a part, then an id with a NUL and a surrogate: stored cleaned.
        mid = await send_one(db, fakes)
        assert mid
        data = status_data("EVO\x00-\udc00", "READ")
        assert await fakes.post_webhook("messages.update", data) == 200
        receiver = daemon.webhooks
        assert receiver is not None
        await receiver.call(receiver.settle)
        early = "SELECT provider_message_id FROM delivery_updates_early"
        assert [r[0] for r in db.execute(early).fetchall()] == ["EVO-\ufffd"]
    for record in caplog.records:
        text = record.getMessage()
        assert "\x00" not in text and "\ud800" not in text, text
    assert list(tracebacks(caplog)) == []


@pytest.mark.parametrize(
    ("poison", "event", "data"),
    [
        (
            "the year 1",
            "messages.upsert",
            {"date_time": "0001-01-01T00:00:00+14:00"},
        ),
        (
            "the year 10,000",
            "messages.upsert",
            {"date_time": "9999-12-31T23:59:59-14:00"},
        ),
        ("a 12,000-character keyId", "messages.update", {}),
    ],
)
async def test_after_a_poison_event_an_opt_out_and_a_status_apply(
    db_url: str, db: Conn, poison: str, event: str, data: dict[str, Any]
) -> None:
    async with listening(db_url) as (daemon, fakes):
        mid = await send_one(db, fakes)
        [part] = (s["id"] for s in fakes.accepted())
        lead = one(db, "SELECT lead_id FROM campaign_messages WHERE id = %s", mid)
        phone = one(db, "SELECT phone FROM leads WHERE id = %s", lead)
        waiting = make_campaign(db, name="later")
        db.execute(
            "INSERT INTO campaign_messages (campaign_id, lead_id, scheduled_at)"
            " VALUES (%s, %s, now() + interval '1 day')",
            (waiting, lead),
        )
        if event == "messages.upsert":
            body = body_of(event, reply_data("5511987650000", "oi"), **data)
        else:
            body = body_of(event, status_data(HUGE_ID, "READ"))
        # Refused at the door (400), or taken with a sane time (if the receiver does not read
        # `date_time`): never a 5xx, and never a row that blocks the inbox.
        assert await raw_post(fakes, [bearer()], body) in (200, 400), poison
        assert await fakes.post_webhook("messages.upsert", reply_data(phone, "Sair 🙏")) == 200
        assert await fakes.post_webhook("messages.update", status_data(part, "READ")) == 200
        started = time.monotonic()
        await await_until(
            lambda: (
                parts_of(db) == {part: "READ"}
                and one(db, "SELECT opted_out FROM leads WHERE id = %s", lead)
            ),
            timeout=10,
        )
        assert time.monotonic() - started < 10
        assert one(db, "SELECT status FROM campaign_messages WHERE campaign_id = %s", waiting) == (
            "skipped"
        )
        await await_until(lambda: one(db, "SELECT count(*) FROM webhook_inbox") == 0, timeout=10)
        assert daemon.webhooks is not None


async def test_a_send_message_postgres_refuses_fails_alone_not_its_group_commit(
    db_url: str, db: Conn
) -> None:
    # Past the door's checks (stored directly): the group commit that writes it with others
    # fails, and each request is written again alone; only the bad one gets the error.
    async with listening(db_url) as (daemon, _):
        receiver = daemon.webhooks
        assert receiver is not None
        good = [SentEvent("main", f"3EB0GOOD{i}", "5511987654321", "oi") for i in range(5)]
        bad = SentEvent("main", HUGE_ID, "5511987654321", "oi")

        async def together() -> list[Any]:
            stores = [receiver.store([event]) for event in (*good[:2], bad, *good[2:])]
            return await asyncio.gather(*stores, return_exceptions=True)

        results = await receiver.call(together)
        assert [isinstance(r, psycopg.Error) for r in results] == [False] * 2 + [True] + [False] * 3
        assert isinstance(results[2], psycopg.errors.ProgramLimitExceeded)
        stored = db.execute("SELECT provider_message_id FROM sent_events ORDER BY 1").fetchall()
        assert [r[0] for r in stored] == [e.provider_id for e in good]


POISON_ROWS = {
    # What a receiver before the door's checks acknowledged (or what gets past them): each
    # fails on every turn of the applier, and used to stop every event behind it for good.
    "the year 1": (
        "INSERT INTO webhook_inbox (kind, instance, phone, opt_out, at)"
        " VALUES ('reply', 'main', '5511900000099', false, '0001-01-01T00:00:00+14:00')"
    ),
    "a 12,000-character keyId": (
        "INSERT INTO webhook_inbox (kind, instance, provider_message_id, status, at)"
        f" VALUES ('status', 'main', '{HUGE_ID}', 'READ', now())"
    ),
}


# A reply timed in the year 10,000 was poison too (no client reads it back); it is applied at its
# receipt now, as every time later than its receipt is (clamped and counted), not set aside.
YEAR_10000 = (
    "INSERT INTO webhook_inbox (kind, instance, phone, opt_out, at)"
    " VALUES ('reply', 'main', %s, true, '9999-12-31T23:59:59-14:00')"
)


async def test_a_reply_timed_in_the_year_10000_applies_at_its_receipt(
    db_url: str, db: Conn
) -> None:
    async with listening(db_url) as (daemon, fakes):
        mid = await send_one(db, fakes)
        lead = one(db, "SELECT lead_id FROM campaign_messages WHERE id = %s", mid)
        phone = one(
            db, "SELECT regexp_replace(phone, '[^0-9]', '', 'g') FROM leads WHERE id = %s", lead
        )
        db.execute(YEAR_10000, (phone,))
        await await_until(lambda: one(db, "SELECT opted_out FROM leads WHERE id = %s", lead))
        assert one(db, "SELECT opted_out_at <= now() FROM leads WHERE id = %s", lead)
        assert one(db, "SELECT count(*) FROM webhook_inbox") == 0
        assert dead_letters(db) == []
        metrics = generate_latest(daemon.metrics.registry).decode()
        assert 'listener_event_times_clamped_total{reason="future"} 1.0' in metrics


def dead_letters(db: Conn) -> list[tuple[Any, ...]]:
    return [
        tuple(r)
        for r in db.execute(
            "SELECT kind, attempts, error FROM webhook_dead_letters ORDER BY id"
        ).fetchall()
    ]


@pytest.mark.parametrize("poison", list(POISON_ROWS))
async def test_an_acknowledged_poison_row_is_set_aside_and_the_rows_behind_it_apply(
    db_url: str,
    db: Conn,
    poison: str,
    page_client: httpx.AsyncClient,  # noqa: F811 (the fixture imported above)
) -> None:
    async with listening(db_url) as (daemon, fakes):
        mid = await send_one(db, fakes)
        [part] = (s["id"] for s in fakes.accepted())
        lead = one(db, "SELECT lead_id FROM campaign_messages WHERE id = %s", mid)
        phone = one(
            db, "SELECT regexp_replace(phone, '[^0-9]', '', 'g') FROM leads WHERE id = %s", lead
        )
        # The poison first, then in the same moment an opt-out and a status behind it.
        with db.transaction():
            db.execute(POISON_ROWS[poison])
            db.execute(
                "INSERT INTO webhook_inbox (kind, instance, phone, opt_out, at)"
                " VALUES ('reply', 'main', %s, true, now())",
                (phone,),
            )
            db.execute(
                "INSERT INTO webhook_inbox (kind, instance, provider_message_id, status, at)"
                " VALUES ('status', 'main', %s, 'READ', now())",
                (part,),
            )
        started = time.monotonic()
        await await_until(
            lambda: (
                parts_of(db) == {part: "READ"}
                and one(db, "SELECT opted_out FROM leads WHERE id = %s", lead)
            ),
            timeout=10,
        )
        applied_in = time.monotonic() - started
        # Tried alone a few times (a turn a second), then set aside with its error.
        await await_until(lambda: len(dead_letters(db)) == 1, timeout=15)
        [(kind, attempts, error)] = dead_letters(db)
        assert (kind, attempts) == ("status" if "keyId" in poison else "reply", 3)
        assert error
        assert one(db, "SELECT count(*) FROM webhook_inbox") == 0
        # Counted on /metrics, shown by `listener stats` and on the status page.
        metrics = generate_latest(daemon.metrics.registry).decode()
        assert f'listener_webhook_dead_letters_total{{kind="{kind}"}} 1.0' in metrics
    assert applied_in < 10
    figures = await collect_stats(db_url, timedelta(hours=1))
    assert (figures.dead_letters.in_window, figures.dead_letters.total) == (1, 1)
    shown = render(figures)
    assert "webhook events set aside (webhook_dead_letters): 1 in the window, 1 in all" in shown
    assert f"  {kind}  " in shown.split("webhook events set aside")[1]
    page = (await page_client.get("/")).text
    assert "Webhook events set aside" in page and "1 in all, 1 in the last day" in page


async def test_instance_names_from_outside_never_become_label_values_of_their_own(
    db_url: str, db: Conn
) -> None:
    """Restrictions posted for numbers no campaign names are counted under instance="other"
    on /metrics (how many such numbers are held), so posts cannot grow the label set; a number
    a campaign names keeps its own label."""
    async with listening(db_url) as (daemon, fakes):
        await send_one(db, fakes, instance="ours")  # a campaign of this listener names it
        strangers = [f"stranger-{i}" for i in range(40)]
        for name in [*strangers, "ours"]:
            body = webhook_body("connection.update", connection_data(name, "close", 401))
            assert await raw_post(fakes, [bearer()], json.dumps(body).encode()) == 200
        held = "SELECT count(*) FROM listener_instances WHERE held_reason IS NOT NULL"
        await await_until(lambda: one(db, held) == 41, timeout=20)
        registry = daemon.metrics.registry

        def samples() -> dict[tuple[str, str], float]:
            return {
                (s.labels["instance"], s.labels["reason"]): s.value
                for metric in registry.collect()
                if metric.name == "listener_sender_held"
                for s in metric.samples
            }

        await await_until(lambda: sum(samples().values()) == 41)
        by_instance = {name for name, _ in samples()}
        assert by_instance == {"ours", "other"}, by_instance
        assert sum(v for (name, _), v in samples().items() if name == "other") == 40
        assert b"stranger" not in generate_latest(registry)
