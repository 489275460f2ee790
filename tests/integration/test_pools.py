"""Sender pools, the SQL rules on a controllable clock: which number a message goes
through (sticky, soonest free, spread), gaps in fractions of a second, caps and warm-up,
failover, holds per number. The daemon-level tests are in test_pools_daemon.py."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest

from tests.helpers import enqueue, make_campaign, make_leads

Conn = psycopg.Connection[Any]
WARMUP = [2, 3, 4, 5, 6]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def pick(
    db: Conn,
    message: UUID,
    pool: list[str],
    when: datetime,
    *,
    own: str | None = None,
    gap: tuple[float, float] | None = None,
    book: bool = True,
    horizon: float = 2.0,
) -> tuple[Any, ...]:
    row = db.execute(
        "SELECT instance, go, slot_at, wait_until, reason FROM listener_pick_sender("
        "%s, %s::text[], %s::text, %s::numeric, %s::numeric, %s::numeric, %s::integer[],"
        " NULL::text, %s, %s)",
        (message, pool, own, *(gap or (None, None)), horizon, WARMUP, book, when),
    ).fetchone()
    assert row is not None
    return tuple(row)


def working(db: Conn, campaign: UUID, n: int, *, prefix: str = "55119") -> list[UUID]:
    """n messages of the campaign, claimed by worker `w` (processing, no part out)."""
    ids = enqueue(db, campaign, make_leads(db, n, prefix=prefix))
    db.execute(
        "UPDATE campaign_messages SET status = 'processing', attempts = 1, locked_by = 'w',"
        " locked_until = now() + interval '1 minute' WHERE id = ANY(%s)",
        (ids,),
    )
    return ids


def send(db: Conn, message: UUID, instance: str, when: datetime) -> None:
    """The message went out through `instance` at `when` (its first part recorded)."""
    db.execute(
        "UPDATE campaign_messages SET status = 'sent', sent_at = %s, parts_sent = 1,"
        " instance = %s, locked_by = NULL, locked_until = NULL WHERE id = %s",
        (when, instance, message),
    )
    db.execute(
        "INSERT INTO message_parts (message_id, part_no, instance, provider_message_id, sent_at)"
        " VALUES (%s, 0, %s, %s, %s)",
        (message, instance, f"id-{message}", when),
    )


def test_bad_pools_and_limits_are_refused_with_named_rules(db: Conn) -> None:
    for pool, rule in (
        ([], "campaigns_instances_must_be_distinct_names"),
        (["a", "a"], "campaigns_instances_must_be_distinct_names"),
        (["a", " "], "campaigns_instances_must_be_distinct_names"),
        (["a", None], "campaigns_instances_must_be_distinct_names"),
    ):
        with pytest.raises(psycopg.errors.CheckViolation, match=rule):
            make_campaign(db, instances=pool)
    for fields, rule in (
        ({"name": "a", "daily_cap": 0}, "sender_instances_daily_cap_must_be_positive"),
        ({"name": "a", "hourly_cap": -1}, "sender_instances_hourly_cap_must_be_positive"),
        (
            {"name": "a", "daily_cap": 10, "hourly_cap": 11},
            "sender_instances_hourly_cap_must_not_exceed_daily_cap",
        ),
        ({"name": " "}, "sender_instances_name_must_not_be_blank"),
    ):
        cols = ", ".join(fields)
        marks = ", ".join(["%s"] * len(fields))
        with pytest.raises(psycopg.errors.CheckViolation, match=rule):
            db.execute(
                f"INSERT INTO sender_instances ({cols}) VALUES ({marks})",  # type: ignore[arg-type]
                list(fields.values()),
            )
    # Gaps take fractions of a second; min above max is still refused.
    make_campaign(db, gap_min_seconds=0.25, gap_max_seconds=0.5)
    with pytest.raises(psycopg.errors.CheckViolation):
        make_campaign(db, gap_min_seconds=0.5, gap_max_seconds=0.25)


def test_messages_spread_over_the_pool_and_each_number_keeps_its_gap(db: Conn) -> None:
    campaign = make_campaign(db, instances=["a", "b", "c"])
    now = at("2026-11-25 10:00:00-03")
    # No gap: every number is free; the one that sent least recently goes.
    picks = [pick(db, m, ["a", "b", "c"], now)[0] for m in working(db, campaign, 6)]
    assert sorted(picks[:3]) == ["a", "b", "c"] and picks[3:] == picks[:3]
    # A gap of 0.25-0.5 s per number: three messages go at once, one per number; the fourth
    # gets the number free soonest, booked at its turn (within the horizon).
    gapped = make_campaign(db, instances=["x", "y", "z"], gap_min_seconds=0.25, gap_max_seconds=0.5)
    ms = working(db, gapped, 5, prefix="55229")
    first = [pick(db, m, ["x", "y", "z"], now, gap=(0.25, 0.5)) for m in ms[:3]]
    assert sorted(p[0] for p in first) == ["x", "y", "z"]
    assert all(p[1] is True and p[2] == now for p in first)
    fourth = pick(db, ms[3], ["x", "y", "z"], now, gap=(0.25, 0.5))
    assert fourth[1] is True
    assert timedelta(seconds=0.25) <= fourth[2] - now <= timedelta(seconds=0.5)
    # The number it took next sends a whole gap after its booking.
    row = db.execute(
        "SELECT next_send_at FROM listener_instances WHERE instance = %s", (fourth[0],)
    ).fetchone()
    assert row is not None
    assert timedelta(seconds=0.25) <= row[0] - fourth[2] <= timedelta(seconds=0.5)
    # Further than the horizon: nothing booked, come back at the turn.
    far = pick(db, ms[4], ["x", "y", "z"], now, gap=(0.25, 0.5), horizon=0.1)
    assert far[1] is False and far[4] == "gap" and far[3] > now
    kept_none = db.execute("SELECT instance FROM campaign_messages WHERE id = %s", (ms[4],))
    assert kept_none.fetchone() == (None,)
    # A booked message keeps its number on its row.
    kept = db.execute("SELECT instance FROM campaign_messages WHERE id = %s", (ms[3],)).fetchone()
    assert kept == (fourth[0],)


def test_a_lead_keeps_the_number_that_already_talked_with_it_in_any_campaign(db: Conn) -> None:
    earlier = make_campaign(db, instance="b")
    pooled = make_campaign(db, instances=["a", "b", "c"])
    [lead] = make_leads(db, 1)
    [old] = enqueue(db, earlier, [lead])
    send(db, old, "b", at("2026-11-20 10:00-03"))
    [new] = enqueue(db, pooled, [lead])
    now = at("2026-11-25 10:00-03")
    # b was used more recently than a and c would be by LRU: stickiness wins.
    for _ in range(3):
        assert pick(db, new, ["a", "b", "c"], now, book=False)[0] == "b"
    assert pick(db, new, ["a", "b", "c"], now)[0] == "b"
    # An older message through message_parts only (sent before 0009 kept the number on rows).
    db.execute("UPDATE campaign_messages SET instance = NULL WHERE id = %s", (old,))
    assert pick(db, new, ["a", "b", "c"], now)[0] == "b"
    # Its number held: another one of the pool; not in the pool: the soonest free.
    hold(db, "b", now)
    assert pick(db, new, ["a", "b", "c"], now)[0] in ("a", "c")
    assert pick(db, new, ["a", "c"], now)[0] in ("a", "c")


def hold(
    db: Conn,
    instance: str,
    when: datetime,
    reason: str = "instance down",
    *,
    seen: datetime | None = None,
) -> tuple[bool, int] | None:
    """Hold the number as a listener does (pacing/store.py): the hold marked, then its
    messages moved in batches (of two, here) until one moves less; (began, moved in all), or
    None when the state read (`seen`) is older than the number's last release. (Messages
    aside already that take the number's new reason are not counted as moved.)"""
    row = db.execute(
        "SELECT began, runner FROM listener_hold_sender_v2(%s, %s, %s, %s, %s, %s, 't',"
        " interval '1 minute')",
        (
            instance,
            reason,
            when + timedelta(minutes=1),
            when + timedelta(hours=1),
            seen or when,
            when,
        ),
    ).fetchone()
    if row is None:
        return None
    began, runner = row
    assert runner is True
    moved = 0
    while True:
        batch = db.execute(
            "SELECT moved, mine"
            " FROM listener_defer_held_batch(%s, NULL, 't', interval '1 minute', 2)",
            (instance,),
        ).fetchone()
        assert batch is not None and batch[1] is True
        moved += batch[0]
        if batch[0] < 2:
            ended = db.execute(
                "DELETE FROM listener_sender_holds WHERE instance = %s AND started_moved"
                " RETURNING moved",
                (instance,),
            ).fetchone()
            assert ended is not None and ended[0] <= moved
            return began, ended[0]


def limits(db: Conn, name: str, **fields: Any) -> None:
    values = {"name": name, **fields}
    cols = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    db.execute(
        f"INSERT INTO sender_instances ({cols}) VALUES ({marks})",  # type: ignore[arg-type]
        list(values.values()),
    )


def test_caps_and_warm_up_on_a_controllable_clock(db: Conn) -> None:
    campaign = make_campaign(db, instances=["warm"])
    limits(db, "warm", daily_cap=5, warmup_started_on=date(2026, 11, 1))
    ms = working(db, campaign, 12)

    def day(n: int, hour: int = 10) -> datetime:
        return at(f"2026-11-{n:02d} {hour:02d}:00-03")

    # Day 1: the warm-up's first value (2) is the cap.
    assert pick(db, ms[0], ["warm"], day(1))[1] is True
    send(db, ms[0], "warm", day(1))
    assert pick(db, ms[1], ["warm"], day(1))[1] is True  # booked: counts while on its way
    refused = pick(db, ms[2], ["warm"], day(1, 11))
    assert refused[1:] == (False, None, day(2, 0), "sender cap")
    send(db, ms[1], "warm", day(1, 10))
    # Day 5: the fifth value (6), but daily_cap 5 is smaller and wins.
    for i in range(2, 7):
        assert pick(db, ms[i], ["warm"], day(5))[1] is True, i
        send(db, ms[i], "warm", day(5))
    assert pick(db, ms[7], ["warm"], day(5, 20))[4] == "sender cap"
    # After the schedule: its own daily_cap (5) alone; yesterday's sends do not count.
    db.execute("UPDATE sender_instances SET daily_cap = 3 WHERE name = 'warm'")
    for i in range(7, 10):
        assert pick(db, ms[i], ["warm"], day(20))[1] is True, i
        send(db, ms[i], "warm", day(20))
    assert pick(db, ms[10], ["warm"], day(20, 23))[3] == day(21, 0)
    # No daily cap after the schedule: no limit.
    db.execute("UPDATE sender_instances SET daily_cap = NULL WHERE name = 'warm'")
    assert pick(db, ms[10], ["warm"], day(20, 23))[1] is True


def test_an_hourly_cap_and_the_day_of_the_numbers_campaigns(db: Conn) -> None:
    make_campaign(db, instances=["h"], send_timezone="UTC")
    campaign = make_campaign(db, instances=["h", "other"], send_timezone="UTC")
    limits(db, "h", hourly_cap=2)
    ms = working(db, campaign, 4)
    now = at("2026-11-25 10:10Z")
    for m in ms[:2]:
        assert pick(db, m, ["h"], now)[1] is True
        send(db, m, "h", now)
    assert pick(db, ms[2], ["h"], now)[3] == at("2026-11-25 11:00Z")
    # With another number in the pool, the capped one is passed over.
    assert pick(db, ms[2], ["h", "other"], now)[0] == "other"
    # Campaigns of the number disagree on the time zone: America/Sao_Paulo's hours.
    make_campaign(db, instances=["h"], send_timezone="Asia/Kolkata")  # +05:30
    row = db.execute(
        "SELECT listener_sender_timezone('h', NULL), listener_sender_timezone('other', NULL)"
    ).fetchone()
    assert row == ("America/Sao_Paulo", "UTC")


def test_failover_moves_unstarted_messages_only_and_a_dead_pool_holds(db: Conn) -> None:
    campaign = make_campaign(db, instances=["a", "b"])
    now = datetime.now(UTC)  # enabling a number wakes its messages at the database's now()
    started, waiting, fresh = enqueue(db, campaign, make_leads(db, 3))
    db.execute(
        "UPDATE campaign_messages SET parts_sent = 1, instance = 'a', parts = '[\"x\", \"y\"]'"
        " WHERE id = %s",
        (started,),
    )
    db.execute("UPDATE campaign_messages SET scheduled_at = %s", (now - timedelta(minutes=1),))
    # a is held: the started message waits for it (moved out of the claim's way); the others
    # can still go through b, so they stay due.
    assert hold(db, "a", now) == (True, 1)
    rows = dict(
        db.execute("SELECT id, wait_reason FROM campaign_messages").fetchall()  # type: ignore[arg-type]
    )
    assert rows == {started: "instance down", waiting: None, fresh: None}
    assert pick(db, started, ["a", "b"], now, own="a")[1:] == (
        False,
        None,
        now + timedelta(minutes=1),
        "instance down",
    )
    assert pick(db, fresh, ["a", "b"], now)[:2] == ("b", True)
    # b disabled too: nothing can send; the pool's messages wait for a sender, nothing taken.
    limits(db, "b", enabled=False)
    assert pick(db, fresh, ["a", "b"], now)[:2] == (None, False)
    assert pick(db, fresh, ["a", "b"], now)[4] == "no sender"
    assert hold(db, "a", now) == (False, 2)  # held already; the due ones now have no sender
    rows = dict(
        db.execute("SELECT id, wait_reason FROM campaign_messages").fetchall()  # type: ignore[arg-type]
    )
    assert rows == {started: "instance down", waiting: "no sender", fresh: "no sender"}
    # b enabled again: the messages waiting for a sender are due at once (not the started one,
    # which waits for a).
    db.execute("UPDATE sender_instances SET enabled = true WHERE name = 'b'")
    due = db.execute(
        "SELECT id FROM campaign_messages WHERE scheduled_at <= now() AND wait_reason IS NULL"
    ).fetchall()
    assert sorted(r[0] for r in due) == sorted([waiting, fresh])
    # a is back: its hold ends and the started message is due.
    row = db.execute("SELECT listener_release_sender('a', NULL, now())").fetchone()
    assert row == (1,)
    assert db.execute(
        "SELECT wait_reason FROM campaign_messages WHERE id = %s", (started,)
    ).fetchone() == (None,)


def test_messages_aside_take_their_numbers_new_reason_and_keep_their_time(db: Conn) -> None:
    pooled = make_campaign(db, instances=["a", "b"])
    alone = make_campaign(db, instances=["a"])
    now = datetime.now(UTC)  # a release wakes at the database's now()
    via_a, via_b, fresh = enqueue(db, pooled, make_leads(db, 3))
    own = enqueue(db, alone, make_leads(db, 5, prefix="55118"))
    for message, number in ((via_a, "a"), (via_b, "b"), (own[0], "a")):
        db.execute(
            "UPDATE campaign_messages SET parts_sent = 1, instance = %s WHERE id = %s",
            (number, message),
        )
    db.execute("UPDATE campaign_messages SET scheduled_at = %s", (now - timedelta(minutes=1),))
    assert hold(db, "a", now) == (True, 6)  # via_a and the lone campaign's five
    assert hold(db, "b", now) == (True, 2)  # via_b; fresh has no sender left
    before = dict(
        db.execute("SELECT id, scheduled_at FROM campaign_messages").fetchall()  # type: ignore[arg-type]
    )
    # a is found unknown to Evolution (it was down): what waits for a says so, in batches of
    # two; what waits for b, or for any sender of the pool, is left as it is. Nothing moves.
    assert hold(db, "a", now + timedelta(minutes=1), "unknown to Evolution") == (False, 0)
    rows = dict(
        db.execute("SELECT id, wait_reason FROM campaign_messages").fetchall()  # type: ignore[arg-type]
    )
    assert rows == {
        via_a: "unknown to Evolution",
        via_b: "instance down",
        fresh: "no sender",
        **{m: "unknown to Evolution" for m in own},
    }
    after = dict(
        db.execute("SELECT id, scheduled_at FROM campaign_messages").fetchall()  # type: ignore[arg-type]
    )
    assert after == before
    assert all(when > now for when in after.values())
    assert db.execute("SELECT count(*) FROM listener_sender_holds").fetchone() == (0,)
    # a is back: every message that waited for it is due (via_b still waits for b).
    row = db.execute("SELECT listener_release_sender('a', NULL, now())").fetchone()
    assert row == (7,)
    rows = dict(
        db.execute("SELECT id, wait_reason FROM campaign_messages").fetchall()  # type: ignore[arg-type]
    )
    assert rows == {m: ("instance down" if m == via_b else None) for m in rows}


def test_a_state_read_before_the_last_release_holds_nothing(db: Conn) -> None:
    now = at("2026-11-25 10:00-03")
    hold(db, "a", now)
    db.execute("SELECT listener_release_sender('a', NULL, %s)", (now + timedelta(seconds=5),))
    assert hold(db, "a", now, seen=now + timedelta(seconds=3)) is None
    assert db.execute("SELECT count(*) FROM listener_sender_holds").fetchone() == (0,)
    held = db.execute("SELECT held_reason FROM listener_instances WHERE instance = 'a'").fetchone()
    assert held == (None,)


def test_stats_show_each_number_against_its_caps_and_its_state(
    db_url: str, db: Conn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from listener.commands.cli import entry

    campaign = make_campaign(db, instances=["a", "b", "c"])
    today = db.execute("SELECT (now() AT TIME ZONE 'America/Sao_Paulo')::date").fetchone()
    assert today is not None
    limits(db, "a", daily_cap=100, hourly_cap=10, warmup_started_on=today[0])
    limits(db, "c", enabled=False)
    [m] = enqueue(db, campaign, make_leads(db, 1))
    send(db, m, "a", datetime.now(UTC))
    until = datetime.now(UTC) + timedelta(hours=6)
    db.execute(
        "SELECT listener_hold_sender_v2('b', 'instance restricted', %s, %s, now(), now(), 't',"
        " interval '1 minute')",
        (until, until),
    )
    monkeypatch.setenv("DATABASE_URL", db_url)
    assert entry(["stats", "--json"]) == 0
    numbers = {n["instance"]: n for n in json.loads(capsys.readouterr().out)["senders"]}
    a, b, c = numbers["a"], numbers["b"], numbers["c"]
    # Day 1 of the warm-up: 20 a day (LISTENER_WARMUP's first value), under its own 100.
    assert (a["state"], a["sent_today"], a["day_cap"], a["warming_up"]) == ("open", 1, 20, True)
    assert (a["sent_hour"], a["hour_cap"]) == (1, 10)
    assert (b["state"], b["reason"]) == ("held", "instance restricted")
    assert datetime.fromisoformat(b["until"]) == until
    assert c["state"] == "disabled"
    assert entry(["stats"]) == 0
    text = capsys.readouterr().out
    assert (
        "sender numbers" in text and "1/20 warm-up" in text and "held (instance restricted)" in text
    )


def test_messages_turned_away_come_back_one_turn_apart(db: Conn) -> None:
    campaign = make_campaign(db, instances=["one"], gap_min_seconds=1, gap_max_seconds=1)
    ms = working(db, campaign, 14)
    now = at("2026-11-25 10:00:00-03")
    booked = [pick(db, m, ["one"], now, gap=(1, 1)) for m in ms[:3]]
    # Turns at now, +1 s, +2 s (the horizon is 2 s): booked.
    assert [b[2] - now for b in booked] == [timedelta(seconds=s) for s in (0, 1, 2)]
    # The next ones form a line: the k-th comes back k-1 turns after the first, which comes
    # back when the next free turn (+3 s) is within the horizon (+1 s), within a turn's jitter.
    back = [pick(db, m, ["one"], now, gap=(1, 1))[3] for m in ms[3:]]
    offsets = [(b - now).total_seconds() for b in back]
    for k, offset in enumerate(offsets):
        assert 1 + k <= offset <= 2 + k, offsets
    # Once the time the line was measured from has passed, a new line begins.
    later = now + timedelta(seconds=5)
    row = pick(db, ms[3], ["one"], later, gap=(1, 1), horizon=0.5)
    assert row[1] is True  # the number's turn (+3 s) is long past: booked at once
    assert row[2] == later


def test_a_number_released_while_its_hold_moves_messages_ends_the_move(db: Conn) -> None:
    campaign = make_campaign(db, instance="a")
    enqueue(db, campaign, make_leads(db, 5))
    now = datetime.now(UTC)
    db.execute("UPDATE campaign_messages SET scheduled_at = %s", (now - timedelta(minutes=1),))
    row = db.execute(
        "SELECT began, runner FROM listener_hold_sender_v2('a', 'instance down', %s, %s, %s, %s,"
        " 't', interval '1 minute')",
        (now + timedelta(minutes=1), now + timedelta(hours=1), now, now),
    ).fetchone()
    assert row == (True, True)
    batch = (
        "SELECT moved, mine FROM listener_defer_held_batch('a', NULL, 't', interval '1 minute', 2)"
    )
    assert db.execute(batch).fetchone() == (2, True)
    # Another listener's hold of the same number while the move runs leaves the move to it.
    other = db.execute(
        "SELECT began, runner FROM listener_hold_sender_v2('a', 'instance down', %s, %s, %s, %s,"
        " 'u', interval '1 minute')",
        (now + timedelta(minutes=1), now + timedelta(hours=1), now, now),
    ).fetchone()
    assert other == (False, False)
    # So does the same listener's (another message found the number down meanwhile): the
    # messages are moved once, by the move under way.
    again = db.execute(
        "SELECT began, runner FROM listener_hold_sender_v2('a', 'instance down', %s, %s, %s, %s,"
        " 't', interval '1 minute')",
        (now + timedelta(minutes=1), now + timedelta(hours=1), now, now),
    ).fetchone()
    assert again == (False, False)
    # The number is back: the move ends (the runner's next batch moves nothing) and the two
    # moved are due again.
    assert db.execute("SELECT listener_release_sender('a', NULL, now())").fetchone() == (2,)
    assert db.execute(batch).fetchone() == (0, False)
    assert db.execute("SELECT count(*) FROM listener_sender_holds").fetchone() == (0,)
    assert db.execute(
        "SELECT count(*) FROM campaign_messages WHERE wait_reason IS NULL AND scheduled_at <= now()"
    ).fetchone() == (5,)
