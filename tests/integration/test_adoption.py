"""`listener migrate` on the Edge Function's database: shapes of the seed's tables
adopted in place and then run end to end against the fake providers; shapes that cannot be
adopted refused with the database as it was; `--dry-run` changing nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any, LiteralString, cast
from uuid import UUID

import psycopg
import pytest

from listener.commands.cli import entry
from listener.queries import q
from listener.testing import FakeProviders, http_settings, serve_fakes
from tests.daemon_harness import running
from tests.helpers import await_until
from tests.seed_shapes import LeftBehind, build, build_as_owner, catalog, leave_rows, seed_sql

Conn = psycopg.Connection[Any]

#: The shapes adopted: the whole seed; without campaigns (and runs); without the user's CHECK
#: on status and without the seed's own functions (the listener's come in under those names).
SHAPES = {
    "whole seed": (),
    "without campaigns": ("campaigns", "campaigns_fk", "campaigns_rls"),
    "no status check, no seed functions": ("status_check", "functions"),
}


def _status(conn: Conn, message: UUID) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT status, last_error, parts_sent, provider_message_ids FROM campaign_messages"
        " WHERE id = %s",
        (message,),
    ).fetchone()
    assert row is not None
    return tuple(row)


async def cli(*args: str) -> int:
    """A command through `entry`, off the test's event loop (the commands run their own)."""
    return await asyncio.to_thread(entry, list(args))


def _user_lines(lines: list[str]) -> list[str]:
    """What of the catalog is the user's: columns, policies, triggers, functions, relations
    (with their RLS flag and grants), indexes and constraints."""
    return [line for line in lines if not line.startswith("schema ")]


def _went_out(fakes: FakeProviders, number: str, text: str) -> None:
    """What the Edge Function sent before it stopped: on Evolution, found by findMessages."""
    fakes.sends.append(
        {
            "instance": "main",
            "number": number,
            "text": text,
            "accepted": True,
            "id": "EDGE0001",
            "at": time.monotonic(),
            "timestamp": int(time.time()),
        }
    )


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_a_seed_shaped_database_is_adopted_and_its_rows_go_as_promised(
    shape: str,
    empty_db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    leave_out = SHAPES[shape]
    build(empty_db_url, leave_out=leave_out)
    rows = leave_rows(empty_db_url, campaigns="campaigns" not in leave_out)
    before = _user_lines(catalog(empty_db_url))
    monkeypatch.setenv("DATABASE_URL", empty_db_url)

    # README's path: the plan first (it changes nothing), then the migrate.
    assert await cli("migrate", "--dry-run") == 0
    assert "(dry run: nothing was changed)" in capsys.readouterr().out
    assert _user_lines(catalog(empty_db_url)) == before
    assert await cli("migrate") == 0
    out = capsys.readouterr().out
    assert "adopted your tables" in out
    assert "1 row(s) with status 'cancelled'" in out

    after = catalog(empty_db_url)
    # Every object of the user's is there as it was; a column of theirs may only have gained
    # a default (rows inserted without a due time are due at once).
    lost = [
        line
        for line in before
        if line not in after
        and not (
            line.startswith("column ") and any(a.startswith(line + " default ") for a in after)
        )
    ]
    assert lost == [], "changed or lost objects of the user's"
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        if "campaigns" in leave_out:
            conn.execute(
                "INSERT INTO campaigns (id, name, prompt) VALUES (%s, 'Outubro', 'Olá')",
                (rows.campaign,),
            )
        await _run_left_behind(
            conn, empty_db_url, rows, seed_functions="functions" not in leave_out
        )
    # A second migrate finds nothing to do.
    assert await cli("migrate") == 0
    assert "database is up to date" in capsys.readouterr().out


async def _run_left_behind(conn: Conn, url: str, rows: LeftBehind, *, seed_functions: bool) -> None:
    m = rows.messages
    async with serve_fakes() as fakes:
        fakes.reply_parts = 1
        _went_out(fakes, "5511987650002", "Olá, da Edge Function.")
        async with running(url, **http_settings(fakes)):
            # A row inserted afterwards the way the back end always did, as Supabase's
            # `authenticated` role (RLS on, its policy lets it insert).
            conn.execute("SET ROLE authenticated")
            new = conn.execute(
                "INSERT INTO campaign_messages (campaign_id, lead_id, status)"
                " VALUES (%s, %s, 'pending') RETURNING id",
                (rows.campaign, rows.leads["skipped"]),
            ).fetchone()
            conn.execute("RESET ROLE")
            assert new is not None
            sent = [m["pending"], m["went_out"], m["not_out"], new[0]]

            def done() -> bool:
                return all(_status(conn, i)[0] == "sent" for i in sent)

            await await_until(done, timeout=30)
            # The failed row is replayable.
            assert await cli("replay", "--id", str(m["failed"])) == 0
            await await_until(lambda: _status(conn, m["failed"])[0] == "sent", timeout=30)
        numbers = sorted(s["number"] for s in fakes.accepted())
    # Each due row once, at its international number; the one that went out is not sent again;
    # the sent, skipped and unknown rows are left alone.
    assert numbers == sorted(
        [
            "5511987654321",  # pending, stored as (11) 98765-4321
            "5511987650002",  # what the Edge Function had sent (put on the fake above)
            "5521987650003",  # left processing, not found: sent
            "5511987650005",  # inserted afterwards the old way
            "5511987650004",  # failed, replayed
        ]
    )
    assert _status(conn, m["went_out"])[2:] == (1, ["EDGE0001"])
    assert _status(conn, m["sent"])[0] == "sent"
    assert _status(conn, m["skipped"])[0] == "skipped"
    assert _status(conn, m["cancelled"])[0] == "cancelled"
    # Both rows left processing were looked up on findMessages, for their own numbers.
    jids = {r["where"]["key"]["remoteJid"] for r in fakes.find_requests}
    assert {"5511987650002@s.whatsapp.net", "5521987650003@s.whatsapp.net"} <= jids
    # The seed's SQL runs unchanged; the user's functions answer their callers as before.
    conn.execute(
        "SELECT status, COUNT(*) AS count, ROUND(100.0 * COUNT(*) / SUM(COUNT(*)) OVER (), 2)"
        " FROM campaign_messages WHERE created_at > NOW() - INTERVAL '1 hour' GROUP BY status"
    ).fetchall()
    if seed_functions:
        context = conn.execute(
            "SELECT get_lead_full_context(%s)", (rows.leads["pending"],)
        ).fetchone()
        assert context is not None and context[0]["source"] == "seed"
        assert conn.execute("SELECT mark_old_campaign_messages_as_skipped()").fetchone() == (0,)
    else:
        context = conn.execute(
            "SELECT context FROM get_lead_full_context(%s::uuid[])", ([rows.leads["pending"]],)
        ).fetchone()
        assert context is not None and context[0]["phone"] == "(11) 98765-4321"
    # The listener's sweep does what the listener documents, whichever function the user has.
    old = conn.execute(
        "INSERT INTO campaign_messages (campaign_id, lead_id, scheduled_at)"
        " VALUES (%s, %s, now() - interval '3 days') RETURNING id",
        (rows.campaign, rows.leads["cancelled"]),
    ).fetchone()
    assert old is not None
    conn.execute("UPDATE campaign_messages SET wait_reason = 'window' WHERE id = %s", (old[0],))
    skipped = conn.execute(q("sweep_old"), {"max_age": "1 day"}).fetchone()
    assert skipped == (1,)
    assert _status(conn, old[0])[1].startswith("skipped by the sweep")


async def test_the_tables_owner_adopts_and_runs_without_being_a_superuser(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """README's role: the tables' owner (Supabase's `postgres`, no superuser) migrates, and the
    listener connected as it sends, looks up and replays past the user's RLS policies (which
    let that role see nothing: the owner is not held to them)."""
    owner = build_as_owner(empty_db_url)
    rows = leave_rows(owner)
    monkeypatch.setenv("DATABASE_URL", owner)
    assert await cli("migrate", "--dry-run") == 0
    assert await cli("migrate") == 0
    assert "adopted your tables" in capsys.readouterr().out
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        await _run_left_behind(conn, owner, rows, seed_functions=True)


async def test_a_row_left_processing_is_failed_replayably_when_it_cannot_be_looked_up(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    build(empty_db_url)
    rows = leave_rows(empty_db_url)
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    assert await cli("migrate") == 0
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        # The sandbox sender cannot look anything up: the row is failed, never sent blindly.
        async with running(empty_db_url, llm="sandbox", sender="sandbox"):
            await await_until(
                lambda: (
                    _status(conn, rows.messages["went_out"])[0] not in ("pending", "processing")
                ),
                timeout=30,
            )
        status, error, parts_sent, _ = _status(conn, rows.messages["went_out"])
        assert (status, parts_sent) == ("failed", 0)
        assert "left processing by the Edge Function" in error
        assert f"listener replay --id {rows.messages['went_out']}" in error
        outbox = conn.execute(
            "SELECT count(*) FROM sandbox_outbox WHERE number = '5511987650002'"
        ).fetchone()
        assert outbox == (0,)
        assert await cli("replay", "--id", str(rows.messages["went_out"])) == 0
        row = conn.execute(
            "SELECT status, look_up_since FROM campaign_messages WHERE id = %s",
            (rows.messages["went_out"],),
        ).fetchone()
        assert row == ("pending", None)


def test_dry_run_prints_the_plan_and_changes_nothing(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    build(empty_db_url)
    leave_rows(empty_db_url)
    before = catalog(empty_db_url)
    monkeypatch.setenv("DATABASE_URL", empty_db_url)

    assert entry(["migrate", "--dry-run"]) == 0

    out = capsys.readouterr().out
    assert catalog(empty_db_url) == before
    assert "would adopt your tables campaign_messages, campaign_runs, campaigns, leads" in out
    assert "-- campaign_messages: adds column attempts (integer)\n" in out
    assert (
        "ALTER TABLE public.campaign_messages ADD COLUMN IF NOT EXISTS attempts integer"
        " DEFAULT 0 NOT NULL;" in out
    )
    assert "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_campaign_messages_due" in out
    # The storage settings of the tables the listener updates often (migrations 0001, 0025).
    assert "ALTER TABLE public.campaigns SET (fillfactor=10);" in out
    # Constraints NOT VALID, then validated on their own; the numbered files leave them.
    assert (
        "ALTER TABLE public.campaign_messages ADD CONSTRAINT campaign_messages_attempts_check"
        " CHECK ((attempts >= 0)) NOT VALID;" in out
    )
    assert (
        "ALTER TABLE public.campaign_messages VALIDATE CONSTRAINT"
        " campaign_messages_attempts_check;" in out
    )
    assert "0017_sequences.sql: left out (constraint leads_timezone_check: the adoption" in out
    assert "listener_idx_campaign_messages_campaign" in out
    assert "listener_idx_campaign_messages_sent_at" in out
    assert "1 row(s) with status 'cancelled', which the listener does not know" in out
    assert "left out (your function mark_old_campaign_messages_as_skipped stays as it is)" in out
    assert "(dry run: nothing was changed)" in out
    with psycopg.connect(empty_db_url) as conn:
        statuses = conn.execute("SELECT status FROM campaign_messages ORDER BY 1").fetchall()
    assert [s[0] for s in statuses].count("processing") == 2


async def test_dry_run_on_our_database_prints_the_pending_migrations(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    assert await cli("migrate") == 0
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM listener_migrations WHERE version = '0014'")
    capsys.readouterr()
    before = catalog(empty_db_url)

    assert await cli("migrate", "--dry-run") == 0

    out = capsys.readouterr().out
    assert catalog(empty_db_url) == before
    assert "adopt" not in out.split("\n")[0]
    assert "-- 0014_adopt.sql: alters table campaign_messages: ADD COLUMN" in out
    assert "-- functions/listener_get_lead_full_context.sql: creates or replaces function" in out


def test_dry_run_on_an_up_to_date_database_says_so(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    assert entry(["migrate", "--dry-run"]) == 0
    assert "database is up to date: nothing to run" in capsys.readouterr().out


#: Shapes that cannot be adopted, each with the conflict line it must give.
REFUSED = {
    "bigint ids": (
        "DROP TABLE campaign_messages; CREATE TABLE campaign_messages (id bigserial PRIMARY KEY,"
        " campaign_id bigint, lead_id uuid, status text DEFAULT 'pending');",
        [
            "campaign_messages.id is bigint; the listener needs uuid",
            "campaign_messages.campaign_id is bigint; the listener needs uuid",
        ],
    ),
    "status is not text": (
        "ALTER TABLE campaign_messages DROP CONSTRAINT campaign_messages_status_check;"
        " ALTER TABLE campaign_messages ALTER COLUMN status DROP DEFAULT;"
        " ALTER TABLE campaign_messages ALTER COLUMN status TYPE integer USING 0;",
        ["campaign_messages.status is integer; the listener needs text"],
    ),
    "a CHECK that refuses skipped": (
        "ALTER TABLE campaign_messages DROP CONSTRAINT campaign_messages_status_check;"
        " ALTER TABLE campaign_messages ADD CONSTRAINT only_three"
        " CHECK (status IN ('pending', 'processing', 'sent', 'failed'));",
        ["campaign_messages.status: your CHECK only_three refuses skipped"],
    ),
    "a function of the listener's name": (
        "CREATE FUNCTION apply_reply(text) RETURNS text LANGUAGE sql AS $$ SELECT $1 $$;",
        ["function public.apply_reply(text): a function of yours; the listener needs its own"],
    ),
    "a trigger of the listener's name": (
        "CREATE TRIGGER campaign_messages_after_insert AFTER INSERT ON campaign_messages"
        " FOR EACH ROW EXECUTE FUNCTION handle_updated_at();",
        ["campaign_messages: trigger campaign_messages_after_insert is yours"],
    ),
    "a foreign key to another table": (
        "CREATE TABLE projects (id uuid PRIMARY KEY);"
        " ALTER TABLE campaign_messages DROP CONSTRAINT campaign_messages_campaign_id_fkey;"
        " ALTER TABLE campaign_messages ADD CONSTRAINT to_projects FOREIGN KEY (campaign_id)"
        " REFERENCES projects (id) NOT VALID;",
        [
            "campaign_messages.campaign_id refers to projects (your foreign key to_projects);"
            " the listener needs it to refer to campaigns"
        ],
    ),
    "no status": (
        "ALTER TABLE campaign_messages DROP COLUMN status;",
        ["campaign_messages.status is missing; the listener needs it"],
    ),
}


@pytest.mark.parametrize("shape", list(REFUSED))
def test_a_shape_that_cannot_be_adopted_is_refused_and_left_as_it_was(
    shape: str,
    empty_db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    twist, expected = REFUSED[shape]
    build(empty_db_url, then=twist)
    before = catalog(empty_db_url)
    monkeypatch.setenv("DATABASE_URL", empty_db_url)

    assert entry(["migrate"]) == 1

    err = capsys.readouterr().err
    conflicts = [line for line in err.splitlines() if line.startswith("conflict: ")]
    for wanted in expected:
        assert any(wanted in line for line in conflicts), (wanted, err)
    assert "cannot adopt this database" in err
    assert "Traceback" not in err
    # The bookkeeping table aside, the database is as it was.
    after = [line for line in catalog(empty_db_url) if "listener_migrations" not in line]
    assert after == before
    # --dry-run refuses the same way.
    assert entry(["migrate", "--dry-run"]) == 1


def test_the_seed_fixture_is_the_shape_the_tests_say() -> None:
    whole = seed_sql()
    assert "CREATE TABLE public.campaigns" in whole
    assert "CREATE TABLE public.campaigns" not in seed_sql(leave_out=("campaigns",))
    assert "FUNCTION public.mark_old" not in seed_sql(leave_out=("functions",))


#: Records every constraint dropped while it is installed (an event trigger of the test's).
_DROPS = """
CREATE TABLE public.test_dropped (what text);
CREATE FUNCTION test_record_drops() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.test_dropped
    SELECT object_type || ' ' || object_identity FROM pg_event_trigger_dropped_objects()
     WHERE object_type IN ('table constraint', 'index');
END
$$;
CREATE EVENT TRIGGER test_record_drops ON sql_drop EXECUTE FUNCTION test_record_drops();
"""


def test_the_numbered_files_leave_the_adopted_constraints_as_the_adoption_made_them(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The adoption adds its constraints NOT VALID, then validates them, leaves out one the
    user's rows do not meet, and builds its indexes CONCURRENTLY; the numbered files that
    follow must not drop and add them again (a validating scan under an exclusive lock on the
    user's table, a failed migrate on the rows the adoption left alone, indexes built and
    dropped on the way). Here the user's leads have a time zone of their own, one of which
    Postgres does not know."""
    build(
        empty_db_url,
        then="ALTER TABLE leads ADD COLUMN timezone text;"
        " INSERT INTO leads (name, phone, timezone) VALUES"
        " ('Ana', '(11) 98765-4321', 'America/Sao_Paulo'), ('Bia', '11 98765-0009', 'Brasilia');"
        + _DROPS,
    )
    monkeypatch.setenv("DATABASE_URL", empty_db_url)

    assert entry(["migrate"]) == 0

    out = capsys.readouterr().out
    assert "leads: left out" in out and "leads_timezone_check" in out
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        dropped = conn.execute(
            "SELECT what FROM test_dropped WHERE what ~ ' on public\\.(campaigns|campaign_runs"
            "|leads|campaign_messages)$' OR what ~ '^index public\\.(idx|listener_idx)_(campaign"
            "|lead)'"
        ).fetchall()
        assert dropped == []  # (the listener's own tables are its files' to change)
        conn.execute("DROP EVENT TRIGGER test_record_drops")
        zones = conn.execute("SELECT timezone FROM leads ORDER BY name").fetchall()
        assert zones == [("America/Sao_Paulo",), ("Brasilia",)]
        checks = conn.execute(
            "SELECT conname, convalidated FROM pg_constraint"
            " WHERE conname IN ('leads_timezone_check', 'campaigns_timezone_check',"
            " 'campaigns_budget_check') ORDER BY 1"
        ).fetchall()
        assert checks == [("campaigns_budget_check", True), ("campaigns_timezone_check", True)]


def test_an_index_an_interrupted_adoption_left_invalid_is_built_again(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A migrate killed while the adoption built an index CONCURRENTLY leaves it INVALID (the
    state set here by hand), which `CREATE INDEX ... IF NOT EXISTS` would take for built: the
    next migrate drops it and builds it again."""
    build(
        empty_db_url,
        then="CREATE INDEX idx_campaign_messages_created_at ON campaign_messages (created_at);"
        " UPDATE pg_index SET indisvalid = false"
        " WHERE indexrelid = 'idx_campaign_messages_created_at'::regclass;",
    )
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    assert entry(["migrate", "--dry-run"]) == 0
    assert (
        "DROP INDEX CONCURRENTLY IF EXISTS public.idx_campaign_messages_created_at;"
        in capsys.readouterr().out
    )

    assert entry(["migrate"]) == 0

    with psycopg.connect(empty_db_url) as conn:
        valid = conn.execute(
            "SELECT indisvalid FROM pg_index"
            " WHERE indexrelid = 'idx_campaign_messages_created_at'::regclass"
        ).fetchone()
    assert valid == (True,)


#: The tables the seed's shapes have that the listener adopts (the user's, grants and all).
_ADOPTED = ("campaigns", "campaign_runs", "leads", "campaign_messages")


def test_supabases_roles_reach_none_of_the_listeners_tables_and_its_triggers_act_for_them(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Supabase grants every table made in public to anon and authenticated, whom PostgREST
    serves with the project's public key: the listener's own tables (replies, webhook payloads,
    parts, numbers) must not be theirs. The listener's triggers on the user's tables act for
    whoever writes there (the back end as authenticated, under the user's RLS): the runs'
    counts, the mark of a paused campaign, the parts of a deleted message."""
    owner = "00000000-0000-0000-0000-0000000000aa"
    build(
        empty_db_url,
        then='CREATE POLICY "delete messages" ON campaign_messages FOR DELETE TO authenticated'
        " USING (true);",
    )
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    assert entry(["migrate"]) == 0
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        reached = conn.execute(
            "SELECT c.relname, r.rolname FROM pg_class c CROSS JOIN pg_roles r"
            " WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'S', 'v')"
            " AND r.rolname IN ('anon', 'authenticated')"
            " AND NOT EXISTS (SELECT 1 FROM pg_depend d JOIN pg_class t ON t.oid = d.refobjid"
            "                  WHERE d.objid = c.oid AND t.relname = ANY(%s))"
            " AND c.relname <> ALL(%s)"
            " AND (has_table_privilege(r.oid, c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')"
            "      OR c.relkind = 'S' AND has_sequence_privilege(r.oid, c.oid, 'USAGE, SELECT'))"
            " ORDER BY 1, 2",
            (list(_ADOPTED), list(_ADOPTED)),
        ).fetchall()
        assert reached == []
        row = conn.execute(
            "INSERT INTO campaigns (name, prompt, status, user_id) VALUES ('Nov', 'Olá', 'active',"
            " %s) RETURNING id",
            (owner,),
        ).fetchone()
        assert row is not None
        campaign = row[0]
        row = conn.execute(
            "INSERT INTO campaign_runs (campaign_id) VALUES (%s) RETURNING id", (campaign,)
        ).fetchone()
        assert row is not None
        run = row[0]
        row = conn.execute(
            "INSERT INTO leads (name, phone, user_id) VALUES ('Ana', '(11) 98765-4321', %s)"
            " RETURNING id",
            (owner,),
        ).fetchone()
        assert row is not None
        lead = row[0]

        # The back end, as Supabase's authenticated user the policies let in.
        def as_user(statement: str, *args: Any) -> None:
            conn.execute("SET ROLE authenticated")
            try:
                conn.execute(cast(LiteralString, statement), args)
            finally:
                conn.execute("RESET ROLE")

        def one(query: str, *args: Any) -> Any:
            row = conn.execute(cast(LiteralString, query), args).fetchone()
            assert row is not None
            return row[0]

        as_user(
            "INSERT INTO campaign_messages (campaign_id, lead_id, run_id, status)"
            " VALUES (%s, %s, %s, 'pending')",
            campaign,
            lead,
            run,
        )
        assert one("SELECT total_count FROM campaign_runs WHERE id = %s", run) == 1
        as_user("UPDATE campaigns SET status = 'paused' WHERE id = %s", campaign)
        assert (
            one("SELECT wait_reason FROM campaign_messages WHERE campaign_id = %s", campaign)
            == "paused"
        )
        as_user("DELETE FROM campaign_messages WHERE campaign_id = %s", campaign)
        assert one("SELECT count(*) FROM campaign_messages WHERE campaign_id = %s", campaign) == 0
        assert one("SELECT total_count FROM campaign_runs WHERE id = %s", run) == 0
