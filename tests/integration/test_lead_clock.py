"""The lead's own clock: a campaign whose send_timezone is 'lead' judges its window, days and
daily cap in each lead's zone (leads.timezone, else its phone number's, else São Paulo's); a
lead whose number could be in several zones waits until the window is open in all of them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest

from listener.db import make_pool
from listener.pacing.health import phone_zones
from listener.web.page import StatusPage
from listener.web.render import render
from tests.daemon_harness import fast_settings, running
from tests.helpers import await_until, enqueue, make_campaign

Conn = psycopg.Connection[Any]

SAO_PAULO = "5511987654321"  # UTC-3
RIO_BRANCO = "5568999991234"  # UTC-5
NO_AREA = "5520912345678"  # Brazil, area code 20 unknown: Manaus, Noronha, Rio Branco, SP


def test_the_phone_number_tells_the_zone() -> None:
    assert phone_zones(SAO_PAULO) == ["America/Sao_Paulo"]
    assert phone_zones(RIO_BRANCO) == ["America/Rio_Branco"]
    assert phone_zones("5592988887777") == ["America/Manaus"]
    assert phone_zones(NO_AREA) == [
        "America/Manaus",
        "America/Noronha",
        "America/Rio_Branco",
        "America/Sao_Paulo",
    ]
    assert phone_zones("1") == [] and phone_zones("") == []


def lead(db: Conn, phone: str, timezone: str | None = None) -> UUID:
    row = db.execute(
        "INSERT INTO leads (name, phone, timezone) VALUES ('L', %s, %s) RETURNING id",
        (phone, timezone),
    ).fetchone()
    assert row is not None
    return UUID(str(row[0]))


def pace(db: Conn, campaign: UUID, message: UUID, at: datetime, zones: list[str] | None) -> Any:
    return db.execute(
        "SELECT go, wait_until, reason FROM listener_pace_start_v2(%s, %s, %s, %s)",
        (campaign, message, at, zones),
    ).fetchone()


def test_the_window_is_judged_in_each_lead_s_zone_on_a_set_clock(db: Conn) -> None:
    """At 12:30 UTC it is 09:30 in São Paulo, 07:30 in Rio Branco and 21:30 in Tokyo."""
    at = datetime(2026, 3, 4, 12, 30, tzinfo=UTC)  # a Wednesday
    campaign = make_campaign(
        db, send_timezone="lead", send_window_start="09:00", send_window_end="18:00"
    )
    leads = {
        "sp": lead(db, SAO_PAULO),
        "acre": lead(db, RIO_BRANCO),
        "unknown": lead(db, NO_AREA),
        "tokyo": lead(db, SAO_PAULO, "Asia/Tokyo"),  # its own zone wins over its number's
        "nothing": lead(db, "1"),  # no zone at all: the default, São Paulo
    }
    got = {}
    for name, lead_id in leads.items():
        [message] = enqueue(db, campaign, [lead_id])
        phone = db.execute("SELECT phone FROM leads WHERE id = %s", (lead_id,)).fetchone()
        assert phone is not None
        got[name] = pace(db, campaign, message, at, phone_zones(phone[0]))
    assert got["sp"] == (True, None, None)
    assert got["nothing"] == (True, None, None)
    assert got["acre"] == (False, datetime(2026, 3, 4, 14, 0, tzinfo=UTC), "window")
    # Open in São Paulo, not yet in Rio Branco or Manaus: it waits for the last to open.
    assert got["unknown"] == (False, datetime(2026, 3, 4, 14, 0, tzinfo=UTC), "window")
    assert got["tokyo"] == (False, datetime(2026, 3, 5, 0, 0, tzinfo=UTC), "window")
    # A campaign on one zone is not read in the lead's.
    fixed = make_campaign(
        db, send_timezone="America/Sao_Paulo", send_window_start="09:00", send_window_end="18:00"
    )
    [message] = enqueue(db, fixed, [leads["acre"]])
    assert pace(db, fixed, message, at, ["America/Rio_Branco"]) == (True, None, None)


def test_a_daily_cap_counts_the_lead_s_day(db: Conn) -> None:
    """At 02:00 UTC it is already Thursday in Tokyo and still Wednesday in São Paulo."""
    at = datetime(2026, 3, 5, 2, 0, tzinfo=UTC)
    campaign = make_campaign(db, send_timezone="lead", daily_cap=5)
    tokyo, sp = lead(db, SAO_PAULO, "Asia/Tokyo"), lead(db, SAO_PAULO)
    [first] = enqueue(db, campaign, [tokyo])
    [second] = enqueue(db, campaign, [sp])
    pace(db, campaign, first, at, None)
    pace(db, campaign, second, at, ["America/Sao_Paulo"])
    days = dict(db.execute("SELECT lead_id, cap_day FROM campaign_messages").fetchall())
    assert days[tokyo] == datetime(2026, 3, 5).date()
    assert days[sp] == datetime(2026, 3, 4).date()


def test_an_unknown_lead_zone_is_refused_on_write(db: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        lead(db, SAO_PAULO, "Mars/Olympus")


def etc_zone(local_hour: int, now: datetime) -> str:
    """A fixed-offset zone whose clock reads about `local_hour` now (Etc/GMT signs are
    inverted: Etc/GMT-5 is UTC+5)."""
    offset = (local_hour - now.hour + 12) % 24 - 12  # -12 .. +11
    return f"Etc/GMT{-offset:+d}" if offset else "Etc/GMT"


async def test_a_window_in_the_leads_zones_sends_to_one_and_holds_the_other_at_once(
    db_url: str, db: Conn
) -> None:
    """09:00-18:00 in each lead's zone, at one moment: a lead whose clock reads about 13:30
    gets its message, one whose clock reads about 01:30 waits for its own 09:00 (hours from
    either edge, so no clock is raced)."""
    now = datetime.now(UTC)
    campaign = make_campaign(
        db, send_timezone="lead", send_window_start="09:00", send_window_end="18:00"
    )
    inside = lead(db, SAO_PAULO, etc_zone(13, now))
    outside = lead(db, SAO_PAULO, etc_zone(1, now))
    async with running(db_url):
        enqueue(db, campaign, [inside, outside], content="Bom dia!")
        await await_until(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM campaign_messages WHERE status = 'sent'"
                    " OR wait_reason = 'window'"
                ).fetchone()
                == (2,)
            )
        )
    rows = {
        r[0]: r[1:]
        for r in db.execute(
            "SELECT lead_id, status, wait_reason, scheduled_at FROM campaign_messages"
        ).fetchall()
    }
    assert rows[inside][0] == "sent"
    status, reason, due = rows[outside]
    assert (status, reason) == ("pending", "window")
    # Its 09:00 is about 7.5 hours away (the window was not spread to the other lead).
    assert timedelta(hours=6) < due - now < timedelta(hours=9)


async def test_the_status_page_shows_a_campaign_on_its_leads_clocks(db_url: str, db: Conn) -> None:
    """A campaign in its leads' zones has no zone of its own: the page reads it on São Paulo's
    clock instead of failing on 'lead'."""
    campaign = make_campaign(
        db,
        name="Por fuso",
        send_timezone="lead",
        send_window_start="09:00",
        send_window_end="18:00",
        daily_cap=10,
    )
    enqueue(db, campaign, [lead(db, RIO_BRANCO)], delay_seconds=3600)
    pool = make_pool(db_url, fast_settings())
    await pool.open(wait=True)
    try:
        snapshot = await StatusPage(pool).snapshot()
    finally:
        await pool.close()
    [row] = [c for c in snapshot.campaigns if c["id"] == campaign]
    assert row["send_timezone"] == "lead" and row["cap_used"] == 0
    assert "Por fuso" in render(snapshot)
