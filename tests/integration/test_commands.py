"""`listener replay`, `listener stats` and `listener demo` through the command line, on a real
Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg.types.json import Jsonb

from listener import logs
from listener.commands.cli import entry
from listener.commands.migrate import migrate
from listener.commands.migration_files import FUNCTIONS, load_migrations, migrations_dir
from listener.db import stop_embedded
from tests.daemon_harness import running
from tests.helpers import await_until, make_campaign, make_leads, make_run

# The columns of a message, to compare rows before and after a command.
SNAPSHOT = (
    "SELECT id, status, attempts, scheduled_at, last_error, locked_by, locked_until, updated_at,"
    " generated_text, parts, parts_sent, provider_message_ids, sent_at"
    " FROM campaign_messages ORDER BY id"
)


@pytest.fixture
def cli_db(db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """DATABASE_URL points at the test's database, for commands run through `entry`."""
    monkeypatch.setenv("DATABASE_URL", db_url)
    return db_url


def message(
    db: psycopg.Connection[Any],
    campaign: UUID,
    *,
    status: str = "failed",
    lead: UUID | None = None,
    run: UUID | None = None,
    attempts: int = 4,
    last_error: str | None = "llm: boom",
    changed: str = "now() - interval '1 minute'",
    **fields: Any,
) -> UUID:
    """Insert one message in the given state; `changed` is the SQL of its updated_at."""
    values: dict[str, Any] = {
        "campaign_id": campaign,
        "lead_id": lead or uuid.uuid4(),
        "run_id": run,
        "status": status,
        "attempts": attempts,
        "last_error": last_error,
        **fields,
    }
    if status == "processing":
        values.setdefault("locked_by", "someone")
        values.setdefault("locked_until", "2999-01-01")
    if status == "sent":
        values.setdefault("sent_at", "now()")
    cols = ", ".join([*values, "updated_at"])
    marks = ", ".join(["%s"] * len(values) + [changed])
    row = db.execute(
        f"INSERT INTO campaign_messages ({cols}) VALUES ({marks}) RETURNING id",  # type: ignore[arg-type]
        list(values.values()),
    ).fetchone()
    assert row is not None
    return UUID(str(row[0]))


def status_of(db: psycopg.Connection[Any], message_id: UUID) -> str:
    row = db.execute("SELECT status FROM campaign_messages WHERE id = %s", (message_id,)).fetchone()
    assert row is not None
    return str(row[0])


def lines(text: str) -> list[str]:
    return text.strip().splitlines()


# --------------------------------------------------------------------------------------------
# replay
# --------------------------------------------------------------------------------------------


def test_replay_requeues_only_the_campaigns_failed_messages(
    cli_db: str, db: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    mine, other = make_campaign(db), make_campaign(db)
    a = message(db, mine)
    b = message(db, mine, locked_by="old-worker", locked_until="2000-01-01")
    c = message(db, other)
    skipped = message(db, mine, status="skipped", last_error="skipped: the lead opted out")

    assert entry(["replay", "--campaign", str(mine)]) == 0

    out = capsys.readouterr().out
    assert lines(out) == [f"re-queue failed messages of campaign {mine}", "re-queued 2 messages"]
    rows = db.execute(
        "SELECT id, status, attempts, last_error, locked_by, locked_until,"
        " scheduled_at > now() - interval '1 minute', updated_at > now() - interval '10 seconds'"
        " FROM campaign_messages WHERE id = ANY(%s)",
        ([a, b],),
    ).fetchall()
    assert sorted(row[1:] for row in rows) == [("pending", 0, None, None, None, True, True)] * 2
    assert status_of(db, c) == "failed"
    assert status_of(db, skipped) == "skipped"


def test_replay_by_run(
    cli_db: str, db: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    campaign = make_campaign(db)
    run_a, run_b = make_run(db, campaign), make_run(db, campaign)
    in_a = [message(db, campaign, run=run_a) for _ in range(3)]
    in_b = message(db, campaign, run=run_b)

    assert entry(["replay", "--run", str(run_a)]) == 0

    assert lines(capsys.readouterr().out) == [
        f"re-queue failed messages of run {run_a}",
        "re-queued 3 messages",
    ]
    assert {status_of(db, i) for i in in_a} == {"pending"}
    assert status_of(db, in_b) == "failed"
    # The run is open again: its three messages have no outcome any more.
    run = db.execute(
        "SELECT status, failed_count, total_count FROM campaign_runs WHERE id = %s", (run_a,)
    ).fetchone()
    assert run == ("running", 0, 3)


def test_replay_since_takes_only_recent_failures(
    cli_db: str, db: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    campaign = make_campaign(db)
    recent = message(db, campaign, changed="now() - interval '10 minutes'")
    never_updated = message(db, campaign, changed="NULL")  # created just now
    old = message(db, campaign, changed="now() - interval '2 hours'")

    assert entry(["replay", "--since", "1h"]) == 0

    out = lines(capsys.readouterr().out)
    assert out == [
        "re-queue failed messages that last changed in the last 1h",
        "re-queued 2 messages",
    ]
    assert status_of(db, recent) == status_of(db, never_updated) == "pending"
    assert status_of(db, old) == "failed"


def test_replay_skipped_only_with_include_skipped(
    cli_db: str, db: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    campaign = make_campaign(db)
    failed = message(db, campaign)
    skipped = message(db, campaign, status="skipped", last_error="skipped by the sweep")

    assert entry(["replay", "--campaign", str(campaign), "--include-skipped"]) == 0

    assert lines(capsys.readouterr().out) == [
        f"re-queue failed and skipped messages of campaign {campaign}",
        "re-queued 2 messages (failed 1, skipped 1)",
    ]
    assert status_of(db, failed) == status_of(db, skipped) == "pending"


def test_replay_by_ids_refuses_processing_sent_and_pending_rows(
    cli_db: str, db: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    campaign = make_campaign(db)
    failed = message(db, campaign)
    processing = message(db, campaign, status="processing", last_error=None)
    sent = message(db, campaign, status="sent", last_error=None, attempts=1)
    pending = message(db, campaign, status="pending", last_error=None, attempts=0)
    skipped = message(db, campaign, status="skipped")
    missing = uuid.uuid4()
    before = {row[0]: row for row in db.execute(SNAPSHOT).fetchall()}

    argv = ["replay"]
    for named in (failed, processing, sent, pending, skipped, missing):
        argv += ["--id", str(named)]
    assert entry(argv) == 0

    captured = capsys.readouterr()
    assert captured.err == ""
    assert lines(captured.out) == [
        "re-queue failed messages among 6 named id(s)",
        f"refused {processing}: it is processing (only failed and skipped messages are re-queued)",
        f"refused {sent}: it is sent (only failed and skipped messages are re-queued)",
        f"refused {pending}: it is pending (only failed and skipped messages are re-queued)",
        f"refused {skipped}: it is skipped (add --include-skipped to re-queue skipped messages)",
        f"not found {missing}: no such message",
        "re-queued 1 message",
    ]
    after = {row[0]: row for row in db.execute(SNAPSHOT).fetchall()}
    assert after[failed][1] == "pending"
    for untouched in (processing, sent, pending, skipped):
        assert after[untouched] == before[untouched]


def test_dry_run_changes_nothing(
    cli_db: str, db: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    campaign = make_campaign(db)
    for _ in range(4):
        message(db, campaign)
    message(db, campaign, status="skipped")
    before = db.execute(SNAPSHOT).fetchall()

    assert entry(["replay", "--campaign", str(campaign), "--dry-run"]) == 0
    assert entry(["replay", "--all", "--include-skipped", "--dry-run"]) == 0

    assert lines(capsys.readouterr().out) == [
        f"re-queue failed messages of campaign {campaign} (dry run)",
        "would re-queue 4 messages",
        "re-queue failed and skipped messages (all of them) (dry run)",
        "would re-queue 5 messages (failed 4, skipped 1)",
    ]
    assert db.execute(SNAPSHOT).fetchall() == before


def test_replay_keeps_the_text_parts_and_provider_ids(
    cli_db: str, db: psycopg.Connection[Any]
) -> None:
    campaign = make_campaign(db)
    replayed = message(
        db,
        campaign,
        generated_text='{"messages": ["um", "dois", "três"]}',
        parts=Jsonb(["um", "dois", "três"]),
        parts_sent=1,
        provider_message_ids=Jsonb(["P1"]),
    )

    assert entry(["replay", "--id", str(replayed)]) == 0

    row = db.execute(
        "SELECT status, attempts, generated_text, parts, parts_sent, provider_message_ids"
        " FROM campaign_messages WHERE id = %s",
        (replayed,),
    ).fetchone()
    assert row == (
        "pending",
        0,
        '{"messages": ["um", "dois", "três"]}',
        ["um", "dois", "três"],
        1,
        ["P1"],
    )


async def test_a_running_listener_sends_a_replayed_message_without_restart(
    cli_db: str, db: psycopg.Connection[Any]
) -> None:
    campaign = make_campaign(db)
    (lead,) = make_leads(db, 1)
    replayed = message(
        db,
        campaign,
        lead=lead,
        generated_text="first\n\nsecond",
        parts=Jsonb(["first", "second"]),
        parts_sent=1,
        provider_message_ids=Jsonb(["P1"]),
    )
    # A poll interval far beyond the test: only the trigger's NOTIFY can wake the listener.
    async with running(cli_db, poll_interval="600s"):
        code = await asyncio.to_thread(entry, ["replay", "--id", str(replayed)])
        assert code == 0
        await await_until(lambda: status_of(db, replayed) == "sent", timeout=10)

    # It resumed after its accepted part: only the second part went out.
    outbox = db.execute("SELECT text FROM sandbox_outbox").fetchall()
    assert outbox == [("second",)]
    row = db.execute(
        "SELECT parts_sent, provider_message_ids, attempts, last_error"
        " FROM campaign_messages WHERE id = %s",
        (replayed,),
    ).fetchone()
    assert row is not None
    assert row[0] == 2 and row[1][0] == "P1" and len(row[1]) == 2
    assert row[2:] == (1, None)


def test_replay_with_all_requeues_every_failed_message(
    cli_db: str, db: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = make_campaign(db), make_campaign(db)
    message(db, first)
    message(db, second)

    assert entry(["replay", "--all"]) == 0

    assert lines(capsys.readouterr().out) == [
        "re-queue failed messages (all of them)",
        "re-queued 2 messages",
    ]
    rows = db.execute("SELECT status, attempts, last_error FROM campaign_messages").fetchall()
    assert rows == [("pending", 0, None)] * 2


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["replay", "--campaign", "not-a-uuid"], "not a valid UUID"),
        (["replay", "--id", "1234"], "not a valid UUID"),
        (["replay", "--since", "soon"], "not a duration"),
        (["replay", "--since", "0s"], "longer than zero"),
        (["replay", "--bogus"], "No such option"),
        (["replay"], "refusing to re-queue without a filter"),
        (["replay", "--dry-run", "--include-skipped"], "--all"),
        (["replay", "--all", "--run", str(uuid.uuid4())], "cannot be combined"),
        (["stats", "--since", "an hour"], "not a duration"),
        (["stats", "--since", "30000000h"], "too long"),
        (["stats", "--since", "999999999999h"], "too long"),
        (["replay", "--since", "999999999999h"], "too long"),
        (["stats", "--window", "1h"], "No such option"),
        (["demo", "--leads", "0"], "--leads"),
        (["demo", "--leads", "many"], "--leads"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    cli_db: str,
    db: psycopg.Connection[Any],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    needle: str,
) -> None:
    campaign = make_campaign(db)
    message(db, campaign)
    before = db.execute(SNAPSHOT).fetchall()

    assert entry(argv) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1, captured.err
    assert needle in captured.err
    assert captured.err.startswith("listener:")
    assert db.execute(SNAPSHOT).fetchall() == before


@pytest.mark.parametrize(
    "argv", [["stats"], ["stats", "--json"], ["replay", "--all"], ["replay", "--all", "--dry-run"]]
)
def test_a_command_on_a_database_without_the_schema_says_to_migrate(
    empty_db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", empty_db_url)

    assert entry(argv) == 1

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "listener: the database has no listener schema: run `listener migrate`\n"


def test_run_on_a_database_without_the_schema_says_to_migrate_and_does_not_start(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in (
        ("DATABASE_URL", empty_db_url),
        ("LISTENER_LLM", "sandbox"),
        ("LISTENER_SENDER", "sandbox"),
        ("LISTENER_METRICS_PORT", "0"),
    ):
        monkeypatch.setenv(name, value)

    assert entry(["run"]) == 1

    err = capsys.readouterr().err
    assert err == "listener: the database has no listener schema: run `listener migrate`\n"


async def test_a_database_missing_the_newest_migration_says_to_migrate(
    empty_db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    migrations = load_migrations()
    older = tmp_path / "older"
    older.mkdir()
    for applied in migrations[:-1]:
        source = migrations_dir() / f"{applied.version}_{applied.name}.sql"
        shutil.copy(source, older / source.name)
    shutil.copytree(migrations_dir() / FUNCTIONS, older / FUNCTIONS)
    logs.setup("WARNING")  # quiet, and on this test's stderr (not an earlier test's)
    await migrate(empty_db_url, older)
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    newest = migrations[-1]

    assert await asyncio.to_thread(entry, ["stats"]) == 1

    err = capsys.readouterr().err
    if len(migrations) > 1:
        expected = f"the database lacks 1 migration ({newest.version}_{newest.name}.sql)"
    else:
        expected = "the database has no listener schema"
    assert err == f"listener: {expected}: run `listener migrate`\n"
    # And once migrated, the same command works.
    assert await asyncio.to_thread(entry, ["migrate"]) == 0
    assert await asyncio.to_thread(entry, ["stats"]) == 0


async def test_a_database_with_an_older_function_says_to_migrate(
    empty_db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A function file changed since it was applied (a new release, migrate not run yet)
    counts as a missing migration: the listener would call the old definition."""
    older = tmp_path / "older"
    shutil.copytree(migrations_dir(), older)
    rank = older / FUNCTIONS / "delivery_rank.sql"
    rank.write_text(rank.read_text().replace("WHEN 'READ' THEN 4", "WHEN 'READ' THEN 40"))
    logs.setup("WARNING")
    await migrate(empty_db_url, older)
    monkeypatch.setenv("DATABASE_URL", empty_db_url)

    assert await asyncio.to_thread(entry, ["stats"]) == 1

    err = capsys.readouterr().err
    expected = "the database lacks 1 migration (functions/delivery_rank.sql)"
    assert err == f"listener: {expected}: run `listener migrate`\n"
    assert await asyncio.to_thread(entry, ["migrate"]) == 0
    assert await asyncio.to_thread(entry, ["stats"]) == 0


# --------------------------------------------------------------------------------------------
# stats
# --------------------------------------------------------------------------------------------


def _known_rows(db: psycopg.Connection[Any]) -> None:
    """Rows whose figures are known: in the last hour, 3 sent (2 five minutes ago taking 2 s
    and 4 s, 1 twenty minutes ago taking 6 s), 1 failed, 1 skipped, 3 pending (one due 30 s
    ago waiting for a retry, one due 90 s ago, one waiting for a retry in 10 minutes); plus a
    message sent two hours ago that no figure of the last hour may count."""
    campaign = make_campaign(db)
    db.execute(
        "INSERT INTO campaign_messages"
        " (campaign_id, lead_id, status, attempts, last_error, created_at, scheduled_at, sent_at)"
        " SELECT %s, gen_random_uuid(), v.status, v.attempts, v.last_error,"
        "        now() + v.created, now() + v.scheduled, now() + v.sent"
        " FROM (VALUES"
        "  ('sent', 1, NULL, interval '-30 min', interval '-5 min -2 s', interval '-5 min'),"
        "  ('sent', 2, NULL, interval '-30 min', interval '-5 min -4 s', interval '-5 min'),"
        "  ('sent', 1, NULL, interval '-30 min', interval '-20 min -6 s', interval '-20 min'),"
        "  ('failed', 4, 'llm: boom', interval '-40 min', interval '-40 min', NULL),"
        "  ('skipped', 1, 'skipped: the lead opted out', interval '-40 min',"
        "   interval '-40 min', NULL),"
        "  ('pending', 2, 'sender: 503', interval '-10 min', interval '-30 s', NULL),"
        "  ('pending', 0, NULL, interval '-10 min', interval '-90 s', NULL),"
        "  ('pending', 1, 'llm: timeout', interval '-10 min', interval '10 min', NULL),"
        "  ('sent', 3, NULL, interval '-2 hours', interval '-2 hours', interval '-2 hours')"
        " ) AS v(status, attempts, last_error, created, scheduled, sent)",
        (campaign,),
    )


def test_stats_json_figures_on_known_rows(
    cli_db: str, db: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    _known_rows(db)

    assert entry(["stats", "--since", "1h", "--json"]) == 0

    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1
    figures = json.loads(out)
    assert figures["window_seconds"] == 3600
    sent = figures["sent"]
    assert sent["total"] == 3
    assert sent["avg_processing_seconds"] == pytest.approx(4.0)
    assert sent["per_minute_rate"] == pytest.approx(0.05)
    assert [m["count"] for m in sent["per_minute"]] == [2, 1]
    minutes = [m["minute"] for m in sent["per_minute"]]
    assert minutes == sorted(minutes, reverse=True)
    assert figures["by_status"] == {
        "pending": {"count": 3, "percentage": 37.5},
        "sent": {"count": 3, "percentage": 37.5},
        "failed": {"count": 1, "percentage": 12.5},
        "skipped": {"count": 1, "percentage": 12.5},
    }
    assert figures["retries"] == {"retried": 3, "waiting_retry": 2}
    assert figures["queue"]["due_backlog"] == 2
    assert 89.0 <= figures["queue"]["oldest_due_seconds"] < 100.0


def test_stats_window_is_a_parameter(
    cli_db: str, db: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    _known_rows(db)

    assert entry(["stats", "--since", "15m", "--json"]) == 0

    figures = json.loads(capsys.readouterr().out)
    assert figures["sent"]["total"] == 2
    assert figures["sent"]["avg_processing_seconds"] == pytest.approx(3.0)
    assert figures["sent"]["per_minute_rate"] == pytest.approx(2 / 15, abs=1e-3)
    # Only the pending rows were created in the last 15 minutes.
    assert figures["by_status"] == {"pending": {"count": 3, "percentage": 100.0}}
    assert figures["retries"] == {"retried": 1, "waiting_retry": 2}


def test_stats_table_for_people(
    cli_db: str, db: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    _known_rows(db)

    assert entry(["stats"]) == 0

    out = capsys.readouterr().out
    assert out.startswith("last 1h (since ")
    for pattern in (
        r"^sent\s+3$",
        r"^average processing time\s+4\.000 s$",
        r"^rate over the window\s+0\.05 per minute$",
        r"^  \d{4}-\d\d-\d\d \d\d:\d\d\s+2$",
        r"^  \d{4}-\d\d-\d\d \d\d:\d\d\s+1$",
        r"^  pending\s+3\s+37\.50$",
        r"^  sent\s+3\s+37\.50$",
        r"^  failed\s+1\s+12\.50$",
        r"^  skipped\s+1\s+12\.50$",
        r"^  total\s+8\s+100\.00$",
        r"^retried \(created in the window, attempts > 1\)\s+3$",
        r"^waiting for a retry \(pending with an error\)\s+2$",
        r"^due now \(backlog\)\s+2$",
        r"^oldest due message waiting for\s+(89|9\d)\.\d{3} s$",
    ):
        assert re.search(pattern, out, re.MULTILINE), pattern


def test_stats_of_an_empty_window(cli_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert entry(["stats", "--since", "5m"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("last 5m (since ")
    assert "none sent" in out and "none created" in out
    assert re.search(r"^average processing time\s+-$", out, re.MULTILINE)

    assert entry(["stats", "--since", "5m", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["sent"] == {
        "total": 0,
        "avg_processing_seconds": None,
        "per_minute_rate": 0.0,
        "per_minute": [],
    }
    assert figures["queue"] == {"due_backlog": 0, "oldest_due_seconds": None}


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------


def test_demo_runs_end_to_end_and_keeps_its_rows(
    cli_db: str, db: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert entry(["demo", "--leads", "12", "--keep"]) == 0

    captured = capsys.readouterr()
    # Step 1: every lead's message, the opted-out lead's skipped.
    first = dict(
        db.execute(
            "SELECT status, count(*) FROM campaign_messages WHERE step = 1 GROUP BY status"
        ).fetchall()
    )
    assert first == {"sent": 11, "skipped": 1}
    reason = db.execute(
        "SELECT last_error FROM campaign_messages WHERE step = 1 AND status = 'skipped'"
    ).fetchone()
    assert reason == ("skipped: the lead opted out",)
    # Step 2, seconds later, for each lead step 1 reached: sent, or stopped by the lead's reply.
    second = db.execute(
        "SELECT status, last_error FROM campaign_messages WHERE step = 2"
    ).fetchall()
    assert len(second) == 11
    assert {s for s, _ in second} <= {"sent", "skipped"}
    assert {e for s, e in second if s == "skipped"} <= {
        "skipped: the lead opted out",
        "skipped: the lead was handed off",
        "skipped: the lead replied",
    }
    counts = dict(
        db.execute("SELECT status, count(*) FROM campaign_messages GROUP BY status").fetchall()
    )
    sent, skipped, total = counts["sent"], counts.get("skipped", 0), 23
    assert sent + skipped == total
    # Two messages went with the content they were inserted with, the rest from the LLM.
    sources = db.execute(
        "SELECT count(*) FILTER (WHERE content IS NOT NULL),"
        " count(*) FILTER (WHERE generated_text IS NOT NULL) FROM campaign_messages"
    ).fetchone()
    assert sources == (2, sent - 2)
    assert db.execute("SELECT count(*) FROM sandbox_outbox").fetchone() == (sent,)
    run = db.execute("SELECT status, sent_count, skipped_count FROM campaign_runs").fetchone()
    assert run == ("completed", sent, skipped)
    # The sandbox leads replied in every kind they were given, classified by the rules.
    kinds = {r[0] for r in db.execute("SELECT kind FROM lead_replies")}
    assert kinds == {"opt_out", "interested", "question", "not_now"}

    assert f"{total} messages, done in" in captured.out
    assert f"{sent} sent, {skipped} skipped, 0 failed" in captured.out
    assert re.search(rf"^sent\s+{sent}$", captured.out, re.MULTILINE)
    assert "kept the demo's rows" in captured.out
    # The hand-offs were printed as they came and in the report, phones masked.
    assert "leads handed off to a person (NOTIFY listener_handoff)" in captured.out
    assert re.search(
        r'^hand-off: .+ \(55\d{3}\*+\d{3}\) wrote ".+" \(interested\)$', captured.err, re.MULTILINE
    )
    assert "replies per campaign by kind" in captured.out
    # On DATABASE_URL, the same settings show the data.
    assert re.search(
        r"^look at them with: (uv run )?listener stats --since 1h$", captured.out, re.MULTILINE
    )
    # Phones are masked: no lead's full number is printed.
    phones = [str(r[0]).replace(" ", "") for r in db.execute("SELECT phone FROM leads")]
    assert len(phones) == 12 and all(phone not in captured.out + captured.err for phone in phones)
    assert re.search(r"^  55\d{3}\*+\d{3}  \S", captured.out, re.MULTILINE)
    # The progress reached the end, on stderr, in plain lines (stderr is not a terminal here);
    # logs stayed quiet.
    assert "\r" not in captured.err
    progress = [line for line in captured.err.splitlines() if line.startswith("[")]
    assert progress[-1] == (
        "[" + "#" * 30 + f"] {total}/{total}  sent {sent}  skipped {skipped}  failed 0"
    )
    assert 1 <= len(progress) <= 22  # a line per tenth at most (the total grows with steps)
    assert "INFO" not in captured.err


def test_demo_cleans_up_and_runs_again(
    cli_db: str, db: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert entry(["demo", "--leads", "5"]) == 0
    assert entry(["demo", "--leads", "5"]) == 0

    out = capsys.readouterr().out
    campaigns = re.findall(r"^demo campaign (\S+): 9 messages", out, re.MULTILINE)
    assert len(set(campaigns)) == 2
    tables = ("campaigns", "campaign_runs", "campaign_messages", "leads", "sandbox_outbox")
    for table in (*tables, "campaign_steps", "lead_replies"):
        assert db.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table  # type: ignore[arg-type]


def test_demo_refuses_a_database_with_queued_messages(
    cli_db: str, db: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    campaign = make_campaign(db)
    message(db, campaign, status="pending", scheduled_at="2999-01-01", last_error=None)

    assert entry(["demo", "--leads", "3"]) == 2

    captured = capsys.readouterr()
    assert len(captured.err.splitlines()) == 1, captured.err
    assert "1 queued messages" in captured.err
    assert db.execute("SELECT count(*) FROM campaigns").fetchone() == (1,)


@dataclasses.dataclass(frozen=True)
class FreshMachineDemo:
    """`listener demo --leads 4 --keep` with nothing set: what it printed and left behind."""

    data_dir: Path
    code: int
    out: str
    err: str
    pgdata_after: set[str]  # the names in data_dir/demo/pgdata once the command returned


@pytest.fixture(scope="module")
def fresh_machine_demo() -> Iterator[FreshMachineDemo]:
    """One embedded-Postgres demo run (an initdb and a demo: the slowest command there is),
    shared by the tests that look at different things of it. Its LISTENER_DATA_DIR is outside
    pytest's own temporary folder: the embedded server runs as another user, and a pytest
    session started meanwhile makes that folder private to its owner again."""
    folder = Path(tempfile.mkdtemp(prefix="listener-test-data-"))
    out, err = io.StringIO(), io.StringIO()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.delenv("DATABASE_URL", raising=False)
            patch.setenv("LISTENER_DATA_DIR", str(folder))
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = entry(["demo", "--leads", "4", "--keep"])
        pgdata = folder / "demo" / "pgdata"
        yield FreshMachineDemo(
            folder, code, out.getvalue(), err.getvalue(), {p.name for p in pgdata.iterdir()}
        )
    finally:
        stop_embedded()
        shutil.rmtree(folder, ignore_errors=True)


def test_demo_on_a_fresh_machine_uses_an_embedded_postgres_and_stops_it(
    fresh_machine_demo: FreshMachineDemo,
) -> None:
    demo = fresh_machine_demo
    assert demo.code == 0, demo.err
    assert f"starting an embedded Postgres in {demo.data_dir / 'demo'}" in demo.err
    # 4 leads (one opted out), and step 2 for the 3 step 1 reached (one of them replied SAIR).
    assert "7 messages, done in" in demo.out
    assert re.search(r": [4-6] sent, [1-3] skipped, 0 failed", demo.out), demo.out
    assert "PG_VERSION" in demo.pgdata_after
    assert "postmaster.pid" not in demo.pgdata_after


def test_after_the_demo_the_printed_command_shows_its_data(
    fresh_machine_demo: FreshMachineDemo,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A newcomer's path: `listener demo --keep`, then `listener stats` with nothing set
    (another embedded database, never migrated), then the command the demo printed."""
    demo, data_dir = fresh_machine_demo, fresh_machine_demo.data_dir
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("LISTENER_DATA_DIR", str(data_dir))
    try:
        assert demo.code == 0, demo.err
        found = re.search(r"^look at them with: (.+)$", demo.out, re.MULTILINE)
        assert found is not None, demo.out
        command = found.group(1)
        assert re.fullmatch(
            rf"LISTENER_DATA_DIR={re.escape(str(data_dir / 'demo'))} (uv run )?listener stats"
            r" --since 1h",
            command,
        ), command

        # Nothing set: the data folder's own embedded database, which nobody migrated.
        assert entry(["stats"]) == 1
        # (Before it, the INFO line saying the embedded Postgres is used.)
        err = capsys.readouterr().err.splitlines()
        assert err[-1] == (
            "listener: the database has no listener schema: run `listener migrate`"
            f" (the demo's data is elsewhere: {command})"
        )
        assert all("INFO" in line for line in err[:-1]), err
        stop_embedded()

        # The printed command, as printed.
        environment, _, argv = command.partition(" ")
        name, _, value = environment.partition("=")
        monkeypatch.setenv(name, value)
        words = argv.split()
        code = entry([*words[words.index("listener") + 1 :], "--json"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        figures = json.loads(captured.out)
        # Step 1 to 3 of the 4 leads (one opted out), then the follow-ups not stopped.
        assert 3 <= figures["sent"]["total"] <= 6
        assert figures["by_status"]["skipped"]["count"] >= 1
        assert figures["sent"]["total"] + figures["by_status"]["skipped"]["count"] == 7
    finally:
        stop_embedded()
