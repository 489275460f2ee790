"""The schema, its functions and triggers, `listener migrate`, and the seed's SQL (issue 2)."""

from __future__ import annotations

import asyncio
import re
import shutil
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from listener.errors import MigrationError
from listener.migrate import load_migrations, migrate, migrations_dir
from listener.queries import q
from tests.helpers import enqueue, make_campaign, make_leads, make_run

Conn = psycopg.Connection[Any]

#: The seed's SQL blocks, copied into the repository (tests read nothing outside it).
SEED_QUERIES = Path(__file__).resolve().parents[1] / "fixtures" / "seed_queries.md"


def seed_queries() -> dict[str, str]:
    """The SQL blocks of the seed's deploy document, by the heading above them."""
    text = SEED_QUERIES.read_text(encoding="utf-8")
    blocks: dict[str, str] = {}
    heading = ""
    inside = False
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("**") or line.startswith("#"):
            heading = line.strip("*# :")
        if line.strip() == "```sql":
            inside, current = True, []
        elif line.strip() == "```" and inside:
            inside = False
            blocks[heading] = "\n".join(current)
        elif inside:
            current.append(line)
    return blocks


def test_every_table_and_function_exists(db: Conn) -> None:
    tables = {r[0] for r in db.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
    assert {"leads", "campaigns", "campaign_runs", "campaign_messages"} <= tables
    functions = {r[0] for r in db.execute("SELECT proname FROM pg_proc")}
    assert {"get_lead_full_context", "mark_old_campaign_messages_as_skipped"} <= functions
    options = db.execute(
        "SELECT reloptions FROM pg_class WHERE relname = 'campaign_messages'"
    ).fetchone()
    assert options is not None and "autovacuum_vacuum_scale_factor=0.01" in options[0]


def test_defaults_and_constraints(db: Conn) -> None:
    campaign = make_campaign(db)
    lead = make_leads(db, 1)[0]
    row = db.execute(
        "INSERT INTO campaign_messages (campaign_id, lead_id) VALUES (%s, %s)"
        " RETURNING status, attempts, scheduled_at <= now(), created_at IS NOT NULL, id",
        (campaign, lead),
    ).fetchone()
    assert row is not None and row[:4] == ("pending", 0, True, True)
    assert isinstance(row[4], uuid.UUID)
    bad = [
        ("UPDATE campaign_messages SET status = 'lost'", psycopg.errors.CheckViolation),
        ("UPDATE campaign_messages SET attempts = -1", psycopg.errors.CheckViolation),
        ("UPDATE campaign_messages SET status = 'processing'", psycopg.errors.CheckViolation),
        ("UPDATE campaigns SET status = 'deleted'", psycopg.errors.CheckViolation),
        (
            "INSERT INTO campaign_messages (campaign_id, lead_id)"
            f" VALUES ('{uuid.uuid4()}', '{lead}')",
            psycopg.errors.ForeignKeyViolation,
        ),
        ("INSERT INTO leads (name) VALUES ('no phone')", psycopg.errors.NotNullViolation),
        ("INSERT INTO campaigns (prompt) VALUES ('no name')", psycopg.errors.NotNullViolation),
    ]
    for statement, error in bad:
        with pytest.raises(error):
            db.execute(statement)  # type: ignore[arg-type]


def test_lead_context_loads_every_lead_in_one_call(db: Conn) -> None:
    leads = make_leads(db, 3)
    missing = uuid.uuid4()
    rows = db.execute(
        "SELECT lead_id, context FROM get_lead_full_context(%s::uuid[])", ([*leads, missing],)
    ).fetchall()
    assert {r[0] for r in rows} == set(leads)
    context = rows[0][1]
    assert {"name", "phone", "company", "city", "opted_out", "recent_messages"} <= set(context)


def test_mark_old_messages_as_skipped_returns_the_count_and_keeps_rows(db: Conn) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 3)
    enqueue(db, campaign, leads[:2], delay_seconds=-7200)
    enqueue(db, campaign, leads[2:], delay_seconds=-60)
    skipped = db.execute("SELECT mark_old_campaign_messages_as_skipped(interval '1 hour')")
    assert skipped.fetchone() == (2,)
    rows = db.execute("SELECT status, count(*) FROM campaign_messages GROUP BY 1").fetchall()
    assert dict(rows) == {"skipped": 2, "pending": 1}
    assert db.execute("SELECT mark_old_campaign_messages_as_skipped()").fetchone() == (0,)


def test_the_sweep_spares_a_paused_campaign_until_it_is_active_again(db: Conn) -> None:
    paused = make_campaign(db, status="paused")
    active = make_campaign(db)
    enqueue(db, paused, make_leads(db, 2, prefix="55218"), delay_seconds=-3 * 86400)
    enqueue(db, active, make_leads(db, 1), delay_seconds=-3 * 86400)
    assert db.execute("SELECT mark_old_campaign_messages_as_skipped()").fetchone() == (1,)
    # A row back in the queue during the pause (a replay, a retry) carries no mark.
    db.execute(
        "UPDATE campaign_messages SET wait_reason = NULL WHERE id IN"
        " (SELECT id FROM campaign_messages WHERE campaign_id = %s LIMIT 1)",
        (paused,),
    )
    # Resumed (with no listener running): due from the resume, so the sweep spares them still.
    db.execute("UPDATE campaigns SET status = 'active' WHERE id = %s", (paused,))
    assert db.execute("SELECT mark_old_campaign_messages_as_skipped()").fetchone() == (0,)
    waiting = db.execute(
        "SELECT count(*), bool_and(scheduled_at > now() - interval '1 minute')"
        " FROM campaign_messages WHERE campaign_id = %s AND status = 'pending'",
        (paused,),
    )
    assert waiting.fetchone() == (2, True)


def test_a_paused_campaigns_messages_leave_the_claim_index_until_it_resumes(db: Conn) -> None:
    campaign = make_campaign(db)
    early = enqueue(db, campaign, make_leads(db, 2), delay_seconds=-60)
    future = enqueue(db, campaign, make_leads(db, 1, prefix="55218"), delay_seconds=3600)

    def marks() -> dict[str, int]:
        rows = db.execute(
            "SELECT COALESCE(wait_reason, '-'), count(*) FROM campaign_messages"
            " WHERE status = 'pending' GROUP BY 1"
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    db.execute("UPDATE campaigns SET status = 'paused' WHERE id = %s", (campaign,))
    assert marks() == {"paused": 3}
    enqueue(db, campaign, make_leads(db, 1, prefix="55219"))  # inserted while paused
    assert marks() == {"paused": 4}
    backlog = db.execute(q("backlog")).fetchone()
    assert backlog == (0,)  # paused rows are not due backlog
    index = db.execute("SELECT pg_get_indexdef('idx_campaign_messages_due'::regclass)").fetchone()
    assert index is not None and "'paused'" in index[0]

    db.execute("UPDATE campaigns SET status = 'archived' WHERE id = %s", (campaign,))
    assert marks() == {"-": 4}  # leaving `paused` for any status clears the mark
    due = db.execute(
        "SELECT id FROM campaign_messages WHERE scheduled_at > now() + interval '30 minutes'"
    ).fetchall()
    assert [r[0] for r in due] == future  # a later due time is kept
    assert len(early) == 2


def test_trigger_notifies_once_per_statement_with_the_earliest_due_time(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 500)
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN campaign_messages")
        db.execute(
            "INSERT INTO campaign_messages (campaign_id, lead_id, scheduled_at)"
            " SELECT %s, l, now() + interval '1 hour' - (n * interval '1 second')"
            " FROM unnest(%s::uuid[]) WITH ORDINALITY AS t(l, n)",
            (campaign, leads),
        )
        earliest = db.execute(
            "SELECT extract(epoch FROM min(scheduled_at)) FROM campaign_messages"
        ).fetchone()
        got = list(listener.notifies(timeout=1.0))
    assert len(got) == 1
    assert earliest is not None
    assert float(got[0].payload) == pytest.approx(float(earliest[0]), abs=1e-5)


def test_run_counts_follow_message_outcomes(db: Conn) -> None:
    campaign = make_campaign(db)
    run = make_run(db, campaign)
    enqueue(db, campaign, make_leads(db, 3), run_id=run)
    counts = (
        "SELECT status, total_count, sent_count, failed_count, skipped_count FROM campaign_runs"
    )
    assert db.execute(counts).fetchone() == ("running", 3, 0, 0, 0)
    db.execute("UPDATE campaign_messages SET status = 'sent', sent_at = now()")
    assert db.execute(counts).fetchone() == ("completed", 3, 3, 0, 0)
    db.execute(
        "UPDATE campaign_messages SET status = 'pending'"
        " WHERE ctid = (SELECT min(ctid) FROM campaign_messages)"
    )
    assert db.execute(counts).fetchone() == ("running", 3, 2, 0, 0)


async def test_migrate_is_idempotent_and_creates_everything(empty_db_url: str) -> None:
    applied = await migrate(empty_db_url)
    assert applied == [f"{m.version}_{m.name}.sql" for m in load_migrations()]
    assert await migrate(empty_db_url) == []
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT count(*) FROM listener_migrations").fetchone() == (
            len(applied),
        )


async def test_migrate_refuses_a_changed_applied_file(empty_db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), folder)
    await migrate(empty_db_url, folder)
    first = sorted(folder.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="was changed after it was applied"):
        await migrate(empty_db_url, folder)


async def test_two_concurrent_migrates_apply_each_file_once(empty_db_url: str) -> None:
    results = await asyncio.gather(migrate(empty_db_url), migrate(empty_db_url))
    names = [name for result in results for name in result]
    assert sorted(names) == sorted(f"{m.version}_{m.name}.sql" for m in load_migrations())
    assert [] in results


def test_seed_step_1_queries_run_unchanged(db: Conn) -> None:
    queries = seed_queries()
    indexes = db.execute(queries["Verificar índices criados"]).fetchall()
    names = {r[0] for r in indexes}
    assert {"idx_campaign_messages_due", "idx_campaign_messages_sent_at"} <= names
    function = db.execute(queries["Verificar função criada"]).fetchall()
    assert [r[0] for r in function] == ["mark_old_campaign_messages_as_skipped"]


def test_seed_monitoring_queries_return_the_right_figures(db: Conn) -> None:
    queries = seed_queries()
    campaign = make_campaign(db)
    leads = make_leads(db, 4)
    ids = enqueue(db, campaign, leads)
    # Two sent 10 s and 30 s after their due time, in one minute; one failed; one pending.
    db.execute(
        "UPDATE campaign_messages SET status = 'sent', scheduled_at = date_trunc('minute', now())"
        " - interval '2 minutes', sent_at = date_trunc('minute', now()) - interval '2 minutes'"
        " + make_interval(secs => %s) WHERE id = %s",
        (10, ids[0]),
    )
    db.execute(
        "UPDATE campaign_messages SET status = 'sent', scheduled_at = date_trunc('minute', now())"
        " - interval '2 minutes', sent_at = date_trunc('minute', now()) - interval '2 minutes'"
        " + make_interval(secs => %s) WHERE id = %s",
        (30, ids[1]),
    )
    db.execute("UPDATE campaign_messages SET status = 'failed' WHERE id = %s", (ids[2],))
    average = db.execute(queries["Tempo médio de processamento"]).fetchone()
    assert average is not None and float(average[0]) == pytest.approx(20.0) and average[1] == 2
    per_minute = db.execute(queries["Throughput (mensagens/minuto)"]).fetchall()
    assert [r[1] for r in per_minute] == [2]
    shares = {r[0]: (r[1], float(r[2])) for r in db.execute(queries["Taxa de erro"]).fetchall()}
    assert shares == {"sent": (2, 50.0), "failed": (1, 25.0), "pending": (1, 25.0)}


def test_claim_query_uses_its_index(db: Conn) -> None:
    from listener.queries import q

    campaign = make_campaign(db)
    enqueue(db, campaign, make_leads(db, 200))
    db.execute("UPDATE campaign_messages SET status = 'sent', sent_at = now()")
    enqueue(db, campaign, make_leads(db, 5))
    db.execute("ANALYZE campaign_messages")
    with db.transaction():
        db.execute("SET LOCAL enable_seqscan = off")
        plan = db.execute(
            "EXPLAIN " + q("claim"),  # type: ignore[operator]
            {"limit": 10, "worker": "w", "lease": "30 seconds"},
        ).fetchall()
    text = "\n".join(r[0] for r in plan)
    assert "idx_campaign_messages_due" in text


_CREATE_FUNCTION = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+([\w.]+)\s*\(", re.I)


def _created_functions() -> dict[str, set[str]]:
    """Every `CREATE [OR REPLACE] FUNCTION name(args)` of the migration files: the argument
    list as written, with the files that create it."""
    found: dict[str, set[str]] = {}
    for migration in load_migrations():
        sql = re.sub(r"--[^\n]*", "", migration.sql)  # comments may name functions too
        for match in _CREATE_FUNCTION.finditer(sql):
            depth, end = 1, match.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(sql[end], 0)
                end += 1
            signature = f"{match.group(1)}({' '.join(sql[match.end() : end - 1].split())})"
            found.setdefault(signature, set()).add(f"{migration.version}_{migration.name}")
    return found


def test_every_function_signature_a_migration_created_still_exists(db: Conn) -> None:
    """A listener of the previous release may still be running against a migrated database:
    a function it calls must not disappear (a changed signature keeps the old one working)."""
    created = _created_functions()
    assert len(created) >= 10  # the parse found the migrations' functions
    missing = []
    for index, (signature, files) in enumerate(sorted(created.items())):
        name, args = signature.split("(", 1)
        # Postgres reads the argument list as written (names, defaults) in a throwaway function
        # of the same arguments; its argument types name the signature to look for.
        probe = f"probe_{index}"
        db.execute(f"CREATE FUNCTION pg_temp.{probe}({args} RETURNS void LANGUAGE sql AS ''")  # type: ignore[arg-type]
        row = db.execute(
            "SELECT to_regprocedure(format('%%s(%%s)', %s::text, oidvectortypes(proargtypes)))"
            " FROM pg_proc WHERE proname = %s AND pronamespace = pg_my_temp_schema()",
            (name, probe),
        ).fetchone()
        if row is None or row[0] is None:
            missing.append(f"{signature} (created in {', '.join(sorted(files))})")
    assert missing == []


def test_the_old_pace_start_still_answers_for_a_paced_campaign(db: Conn) -> None:
    """`listener_pace_start(uuid, timestamptz)`, called by listeners before migration 0005:
    the window and a full cap still hold a message back, room lets it go."""
    campaign = make_campaign(
        db,
        send_window_start="09:00",
        send_window_end="18:00",
        send_timezone="UTC",
        daily_cap=1,
    )
    old = "SELECT go, wait_until, reason, cap_day FROM listener_pace_start(%s, %s::timestamptz)"
    closed = db.execute(old, (campaign, "2026-03-02 07:00+00")).fetchone()
    assert closed == (False, datetime(2026, 3, 2, 9, tzinfo=UTC), "window", None)
    room = db.execute(old, (campaign, "2026-03-02 10:00+00")).fetchone()
    assert room == (True, None, None, date(2026, 3, 2))
    # The day's one slot taken by a message that was sent: the cap is full.
    message = enqueue(db, campaign, make_leads(db, 1))[0]
    db.execute(
        "UPDATE campaign_messages SET status = 'sent', cap_day = '2026-03-02', sent_at = now()"
        " WHERE id = %s",
        (message,),
    )
    full = db.execute(old, (campaign, "2026-03-02 11:00+00")).fetchone()
    assert full == (False, datetime(2026, 3, 3, 9, tzinfo=UTC), "cap", None)
    # And giving a slot back the old way is accepted (a slot now ends with its message).
    db.execute("SELECT listener_release_cap(%s, %s::date)", (campaign, "2026-03-02"))
    assert db.execute(old, (campaign, "2026-03-02 11:00+00")).fetchone() == full
