"""The status page (`GET /` on the metrics port) against a real Postgres: its counts are the
database's, user input is escaped, phone numbers are masked, a held instance shows its reason,
every section is there, and its stylesheet is served by the daemon."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
from aiohttp import web

from listener.db import make_pool
from listener.metrics import Health, Metrics, serve
from listener.phones import mask_phone
from listener.testing import serve_fakes
from listener.web import Snapshot, StatusPage, render
from tests.daemon_harness import fast_settings, running
from tests.helpers import await_until, make_campaign, make_leads
from tests.status_scene import (
    HOSTILE_NAME,
    arrange,
    expected,
    figure,
    held_instance_settings,
    instance_row,
    shown,
)

Conn = psycopg.Connection[Any]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def page_client(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The page served as the daemon serves it, on a pool of its own (no listener running)."""
    pool = make_pool(db_url, fast_settings())
    await pool.open(wait=True)
    runner: web.AppRunner = await serve(
        Metrics(), Health(), "127.0.0.1", 0, routes=StatusPage(pool).routes()
    )
    port = runner.addresses[0][1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            yield client
    finally:
        await runner.cleanup()
        await pool.close()


async def test_the_page_counts_what_the_database_holds(
    db: Conn, page_client: httpx.AsyncClient
) -> None:
    scene = arrange(db)
    want = expected(db)
    response = await page_client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    for campaign in (scene.hostile, scene.paused, scene.held):
        figures = shown(page, campaign)
        assert figures["waits"] == want["waits"][str(campaign)]
    assert shown(page, scene.hostile)["waits"] == {
        "in flight": 2,
        "retry": 1,
        "window": 2,
    }
    assert shown(page, scene.paused)["waits"] == {"paused": 3}
    assert shown(page, scene.hostile)["runs"] == want["runs"][str(scene.hostile)] == (5, 13)
    assert shown(page, scene.paused)["runs"] is None  # no run: no progress bar
    assert figure(page, "due-now") == want["due"] == 2
    assert figure(page, "in-flight") == want["in_flight"] == 2
    assert figure(page, "sent-hour") == want["sent_hour"] == 5
    assert 'data-used="5" data-cap="10"' in page  # today's cap: the five sent hold slots
    assert "other-host:42:abc" in page  # in flight per listener
    chart = re.search(r'<svg id="throughput".*?</svg>', page, re.S)
    assert chart is not None and chart.group(0).count("<rect ") == 60  # a bar a minute


async def test_campaign_names_and_reasons_are_escaped_and_phones_masked(
    db: Conn, page_client: httpx.AsyncClient
) -> None:
    scene = arrange(db)
    db.execute(
        "UPDATE campaign_messages SET last_error = %s WHERE status = 'skipped'",
        ('<img src=x onerror="alert(1)"> skipped',),
    )
    page = (await page_client.get("/")).text
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;co&lt;/b&gt;" in page
    assert page.count("<script") == 0  # the page runs no script at all
    failed = scene.phones[5:7]
    for phone in scene.phones:
        assert phone not in page
    for phone in failed:  # the failures name the lead, masked, and so does the stored reason
        assert page.count(mask_phone(phone)) == 2
    assert f"number {mask_phone(failed[0])} is not on WhatsApp" in page
    assert HOSTILE_NAME not in page


async def test_the_page_is_read_only_and_says_so_to_the_browser(
    db: Conn, page_client: httpx.AsyncClient
) -> None:
    arrange(db)
    before = db.execute(
        "SELECT count(*), max(xmin::text::bigint) FROM campaign_messages"
    ).fetchone()
    response = await page_client.get("/")
    assert response.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert re.search(r'<meta http-equiv="refresh" content="\d+">', response.text)
    assert (await page_client.post("/")).status_code == 405
    after = db.execute("SELECT count(*), max(xmin::text::bigint) FROM campaign_messages").fetchone()
    assert before == after


async def test_a_held_instance_shows_its_reason(db_url: str, db: Conn) -> None:
    port = free_port()
    scene = arrange(db, held_instance="acme-2")
    async with serve_fakes() as fakes:
        settings = held_instance_settings(fakes, port)
        async with (
            running(db_url, **settings),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
        ):
            await await_until(
                lambda: (
                    db.execute(
                        "SELECT count(*) FROM campaign_messages WHERE campaign_id = %s"
                        " AND wait_reason = 'instance down'",
                        (scene.held,),
                    ).fetchone()
                    == (2,)
                )
            )
            page = (await client.get("/")).text
    row = instance_row(page, "acme-2")
    assert "held: close" in row
    assert re.search(r"instance down <b>2</b>", row)
    assert shown(page, scene.held)["waits"] == {"instance down": 2}
    assert "this listener" in page and "acme-1" in page
    assert fakes.sends == []


async def test_a_provider_hold_shows_with_its_reason(db_url: str, db: Conn) -> None:
    port = free_port()
    async with running(db_url, metrics_port=port, metrics_host="127.0.0.1") as daemon:
        assert daemon.processor is not None
        daemon.processor.sender_gate.hold(300, "sender 429: slow down (5511987654321)")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            page = (await client.get("/")).text
    assert "holding back from sender" in page
    assert "sender 429: slow down" in page
    assert "5511987654321" not in page and mask_phone("5511987654321") in page


async def test_the_funnel_and_the_spend_against_the_budget(db_url: str, db: Conn) -> None:
    scene = arrange(db)
    db.execute(
        "UPDATE campaign_messages SET delivered_at = now(), cost_usd = 0.0015, "
        "prompt_tokens = 100, completion_tokens = 20 WHERE status = 'sent'"
    )
    db.execute(
        "UPDATE campaign_messages SET read_at = now() WHERE id IN (SELECT id FROM "
        "campaign_messages WHERE status = 'sent' LIMIT 2)"
    )
    db.execute(
        "UPDATE campaigns SET budget_usd = 0.005, spent_usd = 0.0075 WHERE id = %s",
        (scene.hostile,),
    )
    snapshot = await _fresh_snapshot(db_url)
    funnel = snapshot.funnel[scene.hostile]
    assert (funnel["sent"], funnel["delivered"], funnel["read"], funnel["replied"]) == (5, 5, 2, 0)
    page = render(snapshot)
    assert 'id="funnel"' in page and 'id="spend"' in page
    assert (
        '<td class="n">$0.0075</td><td class="n"><span class="bad">$0.0050 reached</span>' in page
    )


async def test_the_page_counts_replies_by_kind(db_url: str, db: Conn) -> None:
    """The replies of the last day per campaign, by kind, with those being classified and the
    leads handed off (a lead who asked twice counts once); an older reply and one answering
    another campaign are not this campaign's."""
    scene = arrange(db)
    leads = make_leads(db, 6, prefix="55218")
    replies = [
        (leads[0], scene.hostile, "interested", "0"),
        (leads[0], scene.hostile, "question", "0"),
        (leads[1], scene.hostile, "question", "0"),
        (leads[2], scene.hostile, "auto_reply", "0"),
        (leads[3], scene.hostile, "auto_reply", "0"),
        (leads[4], scene.hostile, None, "0"),
        (leads[5], scene.hostile, "not_interested", "2 days"),  # older than the page's day
        (leads[5], scene.paused, "opt_out", "0"),  # another campaign's
    ]
    for lead, campaign, kind, age in replies:
        db.execute(
            "INSERT INTO lead_replies (lead_id, campaign_id, instance, phone, text, received_at,"
            " kind) VALUES (%s, %s, 'acme-1', '5521', 'x', now() - %s::interval, %s)",
            (lead, campaign, age, kind),
        )
    db.execute("UPDATE leads SET handoff_at = now() WHERE id = ANY (%s)", (leads[:2],))
    snapshot = await _fresh_snapshot(db_url)
    page = render(snapshot)
    assert 'id="replies"' in page
    row = re.search(rf'<tr data-replies="{scene.hostile}">(.*?)</tr>', page, re.S)
    assert row is not None
    cells = {
        kind: int(value.replace(",", ""))
        for kind, value in re.findall(r'data-kind="([a-z_]+)">([\d,]+)', row.group(1))
    }
    assert cells == {
        "replies": 6,
        "interested": 1,
        "question": 2,
        "not_now": 0,
        "not_interested": 0,
        "opt_out": 0,
        "auto_reply": 2,
        "wrong_person": 0,
        "other": 0,
        "unclassified": 1,
        "handed_off": 2,
    }
    assert "auto reply" in page and "handed off" in page
    other = re.search(rf'<tr data-replies="{scene.paused}">(.*?)</tr>', page, re.S)
    assert other is not None and 'data-kind="opt_out">1 ' in other.group(1)


async def _fresh_snapshot(db_url: str) -> Snapshot:
    pool = make_pool(db_url, fast_settings())
    await pool.open(wait=True)
    try:
        return await StatusPage(pool).snapshot()
    finally:
        await pool.close()


async def test_pools_and_the_numbers_own_limits(db_url: str, db: Conn) -> None:
    scene = arrange(db)
    snapshot = await _fresh_snapshot(db_url)
    assert "<th>pool</th>" not in render(snapshot)  # no campaign has a pool yet
    db.execute("UPDATE campaigns SET instances = '{acme-1,acme-3}' WHERE id = %s", (scene.hostile,))
    db.execute(
        "INSERT INTO sender_instances VALUES ('acme-3', 200, 30, '2026-11-20', true), "
        "('acme-4', NULL, NULL, NULL, false)"
    )
    page = render(await _fresh_snapshot(db_url))
    assert "<th>pool</th>" in page and "<td>acme-1, acme-3</td>" in page
    assert "200/day, 30/hour, warming up since 2026-11-20" in instance_row(page, "acme-3")
    assert "disabled" in instance_row(page, "acme-4")


async def test_the_stylesheet_is_served_by_the_daemon(page_client: httpx.AsyncClient) -> None:
    page = await page_client.get("/")
    assert '<link rel="stylesheet" href="/static/status.css">' in page.text
    assert "style-src 'self'" in page.headers["content-security-policy"]
    assert "style=" not in page.text  # no inline style: the policy allows the stylesheet only
    css = await page_client.get("/static/status.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert "section.wide" in css.text and "svg.bar" in css.text


async def test_without_a_database_the_page_says_so_with_a_503() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"postgresql://postgres@127.0.0.1:{s.getsockname()[1]}/nothing"
    pool = make_pool(dead, fast_settings())
    await pool.open(wait=False)
    runner = await serve(
        Metrics(), Health(), "127.0.0.1", 0, routes=StatusPage(pool, timeout=0.3).routes()
    )
    try:
        port = runner.addresses[0][1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            response = await client.get("/")
    finally:
        await runner.cleanup()
        await pool.close()
    assert response.status_code == 503
    assert "Could not read the database" in response.text
    assert "default-src 'none'" in response.headers["content-security-policy"]


async def test_a_restricted_number_shows_its_reason_and_when_its_hold_ends(
    db_url: str, db: Conn
) -> None:
    port = free_port()
    async with running(db_url, metrics_port=port, metrics_host="127.0.0.1") as daemon:
        assert daemon.processor is not None
        daemon.processor.restrict("acme-9", "3 of the last 10 first parts failed", 2 * 3600)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            page = (await client.get("/")).text
    row = instance_row(page, "acme-9")
    assert "held: restricted: 3 of the last 10 first parts failed" in row
    assert re.search(r"checked again in (1h 59m|2h)", row)


async def test_each_number_shows_what_went_through_it(
    db: Conn, page_client: httpx.AsyncClient
) -> None:
    arrange(db)
    # The delivery records of the five sent messages: three sent within the hour, two before.
    db.execute(
        "INSERT INTO message_parts (message_id, part_no, instance, provider_message_id, sent_at) "
        "SELECT id, 0, 'acme-1', 'EVO' || row_number() OVER (ORDER BY sent_at DESC), "
        "CASE WHEN row_number() OVER (ORDER BY sent_at DESC) <= 3 THEN now() "
        "ELSE now() - interval '3 hours' END "
        "FROM campaign_messages WHERE status = 'sent'"
    )
    db.execute(  # a second part counts no second message
        "INSERT INTO message_parts (message_id, part_no, instance, provider_message_id) "
        "SELECT message_id, 1, instance, provider_message_id || '-2' FROM message_parts"
    )
    page = (await page_client.get("/")).text
    assert re.search(r'<td class="n sends">3 / 5</td>', instance_row(page, "acme-1"))
    assert re.search(r'<td class="n sends">0 / 0</td>', instance_row(page, "acme-2"))


async def test_a_failed_leads_phone_is_masked_as_the_number_it_was_sent_to(
    db_url: str, db: Conn
) -> None:
    """The failures list masks the parsed number, as the logs do (in the listener's region),
    not the form the back end stored; a number that does not parse shows its own digits."""
    campaign = make_campaign(db, name="Lisboa")
    # A Portuguese mobile in national form gains +351; a Brazilian national form is no
    # valid number in Portugal, and shows its own digits, as does a number too short.
    stored = {"912 345 678": "351912345678", "(21) 99876-5432": "21998765432", "12-345": "12345"}
    for phone in stored:
        db.execute(
            "WITH l AS (INSERT INTO leads (name, phone) VALUES ('L', %s) RETURNING id)"
            " INSERT INTO campaign_messages (campaign_id, lead_id, status, attempts, last_error)"
            " SELECT %s, id, 'failed', 4, 'provider said no' FROM l",
            (phone, campaign),
        )
    port = free_port()
    settings = {"metrics_port": port, "metrics_host": "127.0.0.1", "default_region": "PT"}
    async with (
        running(db_url, **settings),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        page = (await client.get("/")).text
    for phone, digits in stored.items():
        assert mask_phone(digits) in page, (phone, digits)
        assert mask_phone(phone) not in page, phone
