"""Campaign pacing: send windows, daily caps, gaps per instance, instance health."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from listener.testing import Reply, http_settings, serve_fakes
from tests.daemon_harness import running
from tests.helpers import await_until, enqueue, make_campaign, make_leads, statuses

Conn = psycopg.Connection[Any]
SP = "America/Sao_Paulo"


def opens(db: Conn, start: str | None, end: str | None, days: list[int] | None, at: str) -> Any:
    row = db.execute(
        "SELECT listener_window_opens(%s::time, %s::time, %s, %s::smallint[], %s::timestamptz)",
        (start, end, SP, days, at),
    ).fetchone()
    assert row is not None
    return row[0]


def test_window_opening_times_with_a_controllable_clock(db: Conn) -> None:
    def at(text: str) -> datetime:
        return datetime.fromisoformat(text)

    # Inside the window: now. After it: tomorrow's opening. Weekend: Monday's.
    assert opens(db, "09:00", "18:00", None, "2026-11-25 10:00-03") == at("2026-11-25 10:00-03")
    assert opens(db, "09:00", "18:00", None, "2026-11-25 19:00-03") == at("2026-11-26 09:00-03")
    assert opens(db, "09:00", "18:00", [1, 2, 3, 4, 5], "2026-11-28 10:00-03") == at(
        "2026-11-30 09:00-03"
    )
    # A window across midnight, and days without hours.
    assert opens(db, "22:00", "02:00", None, "2026-11-25 01:00-03") == at("2026-11-25 01:00-03")
    assert opens(db, "22:00", "02:00", None, "2026-11-25 03:00-03") == at("2026-11-25 22:00-03")
    assert opens(db, None, None, [7], "2026-11-25 03:00-03") == at("2026-11-29 00:00-03")
    # No pacing at all: always open.
    assert opens(db, None, None, None, "2026-11-25 03:00-03") == at("2026-11-25 03:00-03")


def claimed(db: Conn, campaign: Any, n: int, *, lease_seconds: float = 60.0) -> list[Any]:
    """n messages of the campaign, taken by a worker `w` whose lease ends in lease_seconds."""
    ids = enqueue(db, campaign, make_leads(db, n))
    db.execute(
        "UPDATE campaign_messages SET status = 'processing', attempts = 1, locked_by = 'w',"
        " locked_until = now() + make_interval(secs => %s) WHERE id = ANY(%s)",
        (lease_seconds, ids),
    )
    return ids


def pace(db: Conn, campaign: Any, message: Any, at: str) -> tuple[Any, ...]:
    row = db.execute(
        "SELECT go, wait_until, reason, cap_day FROM listener_pace_start(%s, %s, %s)",
        (campaign, message, at),
    ).fetchone()
    assert row is not None
    return tuple(row)


def held(db: Conn) -> dict[Any, date]:
    """The cap slots held: messages that took one and are processing or sent, or reached the
    lead with a part already."""
    rows = db.execute(
        "SELECT id, cap_day FROM campaign_messages WHERE cap_day IS NOT NULL"
        " AND (status IN ('processing', 'sent') OR parts_sent > 0)"
    )
    return {r[0]: r[1] for r in rows.fetchall()}


def test_daily_cap_counts_per_local_day(db: Conn) -> None:
    campaign = make_campaign(db, daily_cap=2, send_window_start="09:00", send_window_end="18:00")
    m1, m2, m3, m4 = claimed(db, campaign, 4)

    assert pace(db, campaign, m1, "2026-11-25 10:00-03")[0] is True
    assert pace(db, campaign, m2, "2026-11-25 11:00-03")[3] == date(2026, 11, 25)
    assert pace(db, campaign, m2, "2026-11-25 11:05-03")[0] is True  # its own slot is no rival
    go, until, reason, _ = pace(db, campaign, m3, "2026-11-25 12:00-03")
    assert (go, reason) == (False, "cap")
    assert until == datetime.fromisoformat("2026-11-26 09:00-03")
    assert held(db) == {m1: date(2026, 11, 25), m2: date(2026, 11, 25)}
    # m1 goes back to the queue (a retry, a deferral, a hand-back): its slot comes free.
    db.execute("UPDATE campaign_messages SET status = 'pending' WHERE id = %s", (m1,))
    assert pace(db, campaign, m3, "2026-11-25 12:30-03")[0] is True
    # Claimed again, m1 must win a slot anew like any other message: the cap is full.
    db.execute("UPDATE campaign_messages SET status = 'processing' WHERE id = %s", (m1,))
    assert pace(db, campaign, m1, "2026-11-25 13:00-03")[2] == "cap"
    assert held(db) == {m2: date(2026, 11, 25), m3: date(2026, 11, 25)}
    db.execute("UPDATE campaign_messages SET status = 'pending' WHERE id = %s", (m1,))
    # A sent message keeps its slot for good; a new local day is a new cap.
    db.execute("UPDATE campaign_messages SET status = 'sent', sent_at = now() WHERE id = %s", (m2,))
    assert held(db) == {m2: date(2026, 11, 25), m3: date(2026, 11, 25)}
    assert pace(db, campaign, m4, "2026-11-26 09:30-03")[3] == date(2026, 11, 26)
    go, _, reason, _ = pace(db, campaign, m4, "2026-11-26 20:00-03")
    assert (go, reason) == (False, "window")


def test_a_window_across_midnight_has_one_cap_not_two(db: Conn) -> None:
    campaign = make_campaign(
        db,
        daily_cap=1,
        send_window_start="22:00",
        send_window_end="02:00",
        send_timezone="UTC",
    )
    m1, m2 = claimed(db, campaign, 2)
    assert pace(db, campaign, m1, "2026-11-25 23:00Z")[3] == date(2026, 11, 25)
    # After midnight, still the window that began on the 25th: its cap is spent.
    go, until, reason, _ = pace(db, campaign, m2, "2026-11-26 00:30Z")
    assert (go, reason) == (False, "cap")
    assert until == datetime.fromisoformat("2026-11-26 22:00Z")
    assert pace(db, campaign, m2, "2026-11-26 22:30Z")[3] == date(2026, 11, 26)


def test_a_dead_workers_cap_slots_come_back_with_its_rows(db: Conn) -> None:
    from listener.queries import q

    campaign = make_campaign(db, daily_cap=2)
    now = datetime.now(UTC).isoformat()
    m1, m2 = claimed(db, campaign, 2, lease_seconds=-1)  # its worker died; the lease is over
    assert pace(db, campaign, m1, now)[0] is True
    assert pace(db, campaign, m2, now)[0] is True
    [m3] = claimed(db, campaign, 1)
    assert pace(db, campaign, m3, now)[2] == "cap"
    taken_back = db.execute(
        q("rescue_expired"), {"max_attempts": 4, "window": timedelta(minutes=2)}
    ).fetchall()
    assert sorted(r[0] for r in taken_back) == sorted([m1, m2])
    assert held(db) == {}
    assert pace(db, campaign, m3, now)[0] is True  # the cap is whole again


def test_a_message_partly_sent_keeps_its_slot_and_a_stale_one_is_dropped_by_the_claim(
    db: Conn,
) -> None:
    from listener.queries import q

    campaign = make_campaign(db, daily_cap=1)
    now = datetime.now(UTC).isoformat()
    first, second = claimed(db, campaign, 2)
    assert pace(db, campaign, first, now)[0] is True
    # Part 1 reached the lead, part 2 failed: back to the queue for a retry, but that lead was
    # messaged today, so the slot stays taken.
    db.execute(
        "UPDATE campaign_messages SET status = 'pending', parts_sent = 1 WHERE id = %s", (first,)
    )
    assert pace(db, campaign, second, now)[2] == "cap"
    # A message that took a slot and went back before any part went out holds nothing, and
    # the claim drops its stale day so it does not count while it is being worked on.
    db.execute("UPDATE campaign_messages SET status = 'pending' WHERE id = %s", (second,))
    db.execute("UPDATE campaign_messages SET cap_day = current_date WHERE id = %s", (second,))
    db.execute("UPDATE campaign_messages SET parts_sent = 0 WHERE id = %s", (first,))
    claimed_rows = db.execute(
        q("claim"), {"limit": 10, "worker": "w2", "lease": timedelta(seconds=30)}
    ).fetchall()
    assert len(claimed_rows) == 2
    assert held(db) == {}


def test_bad_pacing_settings_are_refused_by_the_table(db: Conn) -> None:
    for fields in (
        {"send_timezone": "Mars/Olympus"},
        {"send_window_start": "09:00"},
        {"send_days": [0]},
        {"daily_cap": -1},
        {"gap_min_seconds": 10, "gap_max_seconds": 5},
    ):
        with pytest.raises(psycopg.errors.DatabaseError):
            make_campaign(db, **fields)


async def test_rows_outside_the_window_wait_and_go_when_it_opens(db_url: str, db: Conn) -> None:
    now = datetime.now(UTC)
    opens = (now + timedelta(seconds=2)).replace(microsecond=0)
    start, end = opens.time(), (now + timedelta(hours=1)).time()
    campaign = make_campaign(db, send_window_start=start, send_window_end=end, send_timezone="UTC")
    leads = make_leads(db, 3)
    async with running(db_url):
        enqueue(db, campaign, leads)
        await await_until(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM campaign_messages WHERE wait_reason = 'window'"
                ).fetchone()
                == (3,)
            )
        )
        rows = db.execute(
            "SELECT status, attempts, scheduled_at > now() FROM campaign_messages"
        ).fetchall()
        assert rows == [("pending", 0, True)] * 3
        await await_until(lambda: statuses(db).get("sent") == 3, timeout=10)
    sent = db.execute("SELECT min(sent_at), bool_and(wait_reason IS NULL) FROM campaign_messages")
    first, cleared = sent.fetchone()  # type: ignore[misc]
    # Compared as instants, not times of day, so a window opening just before midnight holds.
    assert first >= opens
    assert cleared is True


async def test_the_daily_cap_holds_across_two_listeners(db_url: str, db: Conn) -> None:
    campaign = make_campaign(db, daily_cap=3)
    leads = make_leads(db, 10)
    async with running(db_url, worker_id="a"), running(db_url, worker_id="b"):
        enqueue(db, campaign, leads)
        await await_until(lambda: statuses(db) == {"sent": 3, "pending": 7}, timeout=15)
        await asyncio.sleep(0.3)
        assert statuses(db) == {"sent": 3, "pending": 7}
    waiting = db.execute(
        "SELECT count(*) FROM campaign_messages WHERE status = 'pending'"
        " AND wait_reason = 'cap' AND attempts = 0 AND scheduled_at > now() + interval '1 minute'"
    ).fetchone()
    assert waiting == (7,)
    assert len(held(db)) == 3
    assert db.execute("SELECT count(*) FROM sandbox_outbox").fetchone() == (3,)


async def test_a_message_handed_back_at_shutdown_gives_back_its_cap_slot(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db, daily_cap=1)
    [message] = enqueue(db, campaign, make_leads(db, 1))
    async with serve_fakes() as fakes:
        # The LLM call outlives the grace period: nothing is in the air, so it is cancelled.
        fakes.llm_delay = 3.0
        async with running(db_url, shutdown_grace="100ms", **http_settings(fakes)):
            await await_until(lambda: bool(held(db)))
        row = db.execute(
            "SELECT status, attempts FROM campaign_messages WHERE id = %s", (message,)
        ).fetchone()
        assert row == ("pending", 0)
        assert held(db) == {}
        fakes.llm_delay = 0.0
        async with running(db_url, **http_settings(fakes)):
            await await_until(lambda: statuses(db) == {"sent": 1}, timeout=15)
    # The slot's day is the campaign's local day of the send (not of this line, which may fall
    # after midnight).
    row = db.execute("SELECT sent_at FROM campaign_messages WHERE id = %s", (message,)).fetchone()
    assert row is not None
    assert held(db) == {message: row[0].astimezone(ZoneInfo(SP)).date()}


async def test_two_listeners_never_send_through_one_instance_closer_than_the_gap(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db, instance="shared", gap_min_seconds=1, gap_max_seconds=1)
    leads = make_leads(db, 4)
    async with serve_fakes() as fakes:
        settings = http_settings(fakes)
        async with (
            running(db_url, worker_id="a", **settings),
            running(db_url, worker_id="b", **settings),
        ):
            enqueue(db, campaign, leads)
            await await_until(lambda: statuses(db).get("sent") == 4, timeout=20)
    times = sorted(s["at"] for s in fakes.accepted())
    assert len(times) == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.95, gaps
    assert db.execute("SELECT max(attempts) FROM campaign_messages").fetchone() == (1,)


async def test_the_gap_counts_from_the_real_send_after_a_rate_limit_wait(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db, instance="shared", gap_min_seconds=2, gap_max_seconds=2)
    leads = make_leads(db, 2)
    async with serve_fakes() as fakes:
        # The first send is refused for 1.5 s after its booking: waited out in place.
        fakes.send_script.append(Reply(429, {"error": {"message": "slow"}}, {"Retry-After": "1.5"}))
        async with running(db_url, **http_settings(fakes)):
            enqueue(db, campaign, leads)
            await await_until(lambda: statuses(db).get("sent") == 2, timeout=20)
    times = sorted(s["at"] for s in fakes.accepted())
    assert len(times) == 2
    assert times[1] - times[0] >= 1.95, times


def test_messages_refused_a_gap_come_back_spread_out_not_all_at_once(db: Conn) -> None:
    at = datetime.now(UTC)

    def take(when: datetime) -> tuple[Any, ...]:
        row = db.execute(
            "SELECT go, wait_until FROM listener_take_gap_v2('busy', 120, 300, 0, %s)", (when,)
        ).fetchone()
        assert row is not None
        return tuple(row)

    assert take(at)[0] is True
    waits = [take(at)[1] for _ in range(200)]  # 200 messages turned away in one slot's wait
    first = min(waits)
    spread = [(w - first).total_seconds() for w in waits]
    assert waits[0] == first  # the first in line comes back when the slot frees
    assert len(set(waits)) > 190  # not one thundering herd at the same instant
    assert max(spread) > 60 * 210  # spread over the time 200 gaps will take (~210 s each)
    assert sum(1 for x in spread if x < 210) < 20  # only a few wake for the next slot


async def test_a_disconnected_instance_holds_its_messages_and_resumes(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 3)
    async with serve_fakes() as fakes:
        fakes.state = "close"
        settings = {
            **http_settings(fakes),
            "instance_check_ttl": "100ms",
            "instance_recheck": "300ms",
        }
        async with running(db_url, **settings):
            enqueue(db, campaign, leads)
            await await_until(
                lambda: (
                    db.execute(
                        "SELECT count(*) FROM campaign_messages WHERE wait_reason = 'instance down'"
                    ).fetchone()
                    == (3,)
                )
            )
            assert fakes.sends == [] and fakes.llm_requests == []
            assert db.execute("SELECT max(attempts) FROM campaign_messages").fetchone() == (0,)
            fakes.state = "open"
            await await_until(lambda: statuses(db).get("sent") == 3, timeout=10)
    assert db.execute("SELECT max(attempts) FROM campaign_messages").fetchone() == (1,)


async def test_a_missing_instance_holds_only_its_own_messages(db_url: str, db: Conn) -> None:
    ghost = make_campaign(db, instance="ghost")
    main = make_campaign(db, instance="main")
    ghost_leads = make_leads(db, 2, prefix="55229")
    main_leads = make_leads(db, 20)
    async with serve_fakes() as fakes:
        fakes.send_script.extend([Reply(404, {"status": 404, "error": "Not Found"})] * 2)
        async with running(db_url, hold="30s", **http_settings(fakes)):
            enqueue(db, ghost, ghost_leads)
            await await_until(  # both ghost messages refused (404) and put back
                lambda: statuses(db) == {"pending": 2} and len(fakes.sends) == 2
            )
            started = time.monotonic()
            enqueue(db, main, main_leads)
            await await_until(lambda: len(fakes.accepted()) == 20, timeout=10)
            took = time.monotonic() - started
            ghost_rows = db.execute(
                "SELECT status, attempts, wait_reason FROM campaign_messages"
                " WHERE campaign_id = %s",
                (ghost,),
            ).fetchall()
    assert took < 5  # not held back listener-wide for LISTENER_HOLD (30 s)
    assert ghost_rows == [("pending", 0, "unknown to Evolution")] * 2
    assert len([s for s in fakes.sends if s["instance"] == "ghost"]) == 2


async def test_a_waiting_instance_does_not_slow_the_others(db_url: str, db: Conn) -> None:
    slow = make_campaign(db, instance="slow", gap_min_seconds=60, gap_max_seconds=60)
    fast = make_campaign(db, instance="fast")
    leads = make_leads(db, 23)
    async with serve_fakes() as fakes, running(db_url, **http_settings(fakes)):
        started = time.monotonic()
        enqueue(db, slow, leads[:3])
        enqueue(db, fast, leads[3:])
        await await_until(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM campaign_messages"
                    " WHERE campaign_id = %s AND status = 'sent'",
                    (fast,),
                ).fetchone()
                == (20,)
            ),
            timeout=10,
        )
        elapsed = time.monotonic() - started
    assert elapsed < 5
    slow_rows = db.execute(
        "SELECT status, wait_reason, count(*) FROM campaign_messages WHERE campaign_id = %s"
        " GROUP BY 1, 2 ORDER BY 1",
        (slow,),
    ).fetchall()
    assert slow_rows == [("pending", "gap", 2), ("sent", None, 1)]
    assert [s["instance"] for s in fakes.accepted()].count("slow") == 1


def test_stats_show_what_waits_per_campaign_and_why(
    db_url: str, db: Conn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from listener.commands.cli import entry

    capped = make_campaign(db, name="Capped")
    paused = make_campaign(db, name="Paused", status="paused")
    leads = make_leads(db, 4)
    enqueue(db, capped, leads[:2], delay_seconds=3600)
    enqueue(db, paused, leads[2:])
    db.execute("UPDATE campaign_messages SET wait_reason = 'cap' WHERE campaign_id = %s", (capped,))
    monkeypatch.setenv("DATABASE_URL", db_url)
    assert entry(["stats", "--json"]) == 0
    waiting = json.loads(capsys.readouterr().out)["waiting"]
    assert [(w["campaign"], w["reason"], w["count"]) for w in waiting] == [
        ("Capped", "cap", 2),
        ("Paused", "paused", 2),
    ]
    assert entry(["stats"]) == 0
    text = capsys.readouterr().out
    assert "waiting, per campaign and why" in text and "Capped" in text
