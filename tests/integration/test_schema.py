"""The schema, its functions and triggers, `listener migrate`, and the seed's SQL."""

from __future__ import annotations

import asyncio
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from listener.commands.migrate import migrate
from listener.commands.migration_files import (
    FUNCTIONS,
    Migration,
    load_functions,
    load_migrations,
    migrations_dir,
)
from listener.errors import MigrationError
from listener.queries import q
from tests import schema_snapshot
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


def test_the_claims_contexts_are_the_full_contexts_key_for_key_in_order(db: Conn) -> None:
    """listener_lead_contexts (json, what the claim loads) gives the dict that
    listener_get_lead_full_context (jsonb) gives, keys in the same order: the LLM's prompt is that
    dict dumped as JSON, so a key out of order would change what it reads."""
    campaign = make_campaign(db)
    leads = make_leads(db, 3)
    db.execute(
        "UPDATE leads SET notes = 'diz \"olá\"\n', segment = 'padaria', opted_out = true,"
        ' metadata = \'{"z": 1, "a": [1.50, null], "ç": {"b": true}}\' WHERE id = %s',
        (leads[0],),
    )
    sent = enqueue(db, campaign, [leads[0]] * 7 + [leads[1]])
    db.execute(
        "UPDATE campaign_messages SET status = 'sent', generated_text = 'texto ' || id,"
        " sent_at = now() - make_interval(secs => random() * 1000) WHERE id = ANY (%s)",
        (sent[1:],),
    )
    db.execute("UPDATE campaign_messages SET content = 'conteúdo' WHERE id = %s", (sent[-1],))
    ids = [*leads, uuid.uuid4()]
    full = db.execute(
        "SELECT lead_id, context FROM listener_get_lead_full_context(%s::uuid[])", (ids,)
    ).fetchall()
    claims = db.execute(
        "SELECT lead_id, context FROM listener_lead_contexts(%s::uuid[])", (ids,)
    ).fetchall()
    assert len(full) == 3
    by_lead = dict(claims)
    for lead, context in full:
        assert by_lead[lead] == context
        assert list(by_lead[lead]) == list(context)
        ours = by_lead[lead]["recent_messages"]
        for mine, theirs in zip(ours, context["recent_messages"], strict=True):
            assert list(mine) == list(theirs)
    assert len(by_lead[leads[0]]["recent_messages"]) == 5


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
    enqueue(db, paused, make_leads(db, 2, prefix="55229"), delay_seconds=-3 * 86400)
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
    future = enqueue(db, campaign, make_leads(db, 1, prefix="55229"), delay_seconds=3600)

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
    assert applied == [m.label for m in load_migrations()] + [f.label for f in load_functions()]
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
    every = [m.label for m in load_migrations()] + [f.label for f in load_functions()]
    assert sorted(names) == sorted(every)
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


def test_claim_reads_the_due_rows_only_not_the_whole_queue(db: Conn) -> None:
    """The claim's update finds the due rows by their ids (primary-key probes). Joined to them as
    a relation, the planner hashed them against a sequential scan of the whole queue table on
    every claim once it held a few thousand rows."""
    from listener.queries import q

    campaign = make_campaign(db)
    enqueue(db, campaign, make_leads(db, 3000))
    db.execute("ANALYZE campaign_messages")
    with db.transaction():
        plan = db.execute(
            "EXPLAIN " + q("claim"),  # type: ignore[operator]
            {"limit": 50, "worker": "w", "lease": "30 seconds"},
        ).fetchall()
    text = "\n".join(r[0] for r in plan)
    assert "Seq Scan on campaign_messages" not in text, text


def _generic_plan(db: Conn, name: str, params: dict[str, Any]) -> str:
    """EXPLAIN ANALYZE of statement `name` as a prepared statement's generic plan (what a
    pool connection runs once psycopg has prepared it), rolled back."""
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in order:
            order.append(match.group(1))
        return f"${order.index(match.group(1)) + 1}"

    sql = re.sub(r"%\((\w+)\)[bs]", number, q(name))
    args = ", ".join(
        psycopg.sql.Literal(params[n]).as_string(db) + ("::text" if n in TEXTS else "")
        for n in order
    )
    with db.transaction(force_rollback=True):
        db.execute(f"PREPARE generic_{name} AS {sql}")
        db.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        plan = db.execute(f"EXPLAIN ANALYZE EXECUTE generic_{name}({args})").fetchall()
        db.execute(f"DEALLOCATE generic_{name}")
    return "\n".join(r[0] for r in plan)


TEXTS = {"worker", "processing"}  # scalar text parameters (a bare literal is of unknown type)


CLAIM = {"limit": 50, "worker": "w", "lease": "5 minutes"}


def _claim_plans(db: Conn) -> tuple[str, str]:
    """The claim's custom and generic plans (EXPLAIN, no costs), as a prepared statement."""
    sql = (
        q("claim").replace("%(limit)s", "$1").replace("%(worker)s", "$2").replace("%(lease)s", "$3")
    )
    plans = []
    with db.transaction(force_rollback=True):
        db.execute(f"PREPARE claim_plans(bigint, text, interval) AS {sql}")
        for mode in ("force_custom_plan", "force_generic_plan"):
            db.execute(f"SET LOCAL plan_cache_mode = {mode}")
            rows = db.execute("EXPLAIN (COSTS OFF) EXECUTE claim_plans(50, 'w', '5 minutes')")
            plans.append("\n".join(r[0] for r in rows.fetchall()))
        db.execute("DEALLOCATE claim_plans")
    return plans[0], plans[1]


def test_claim_generic_plan_is_its_custom_plan(db: Conn) -> None:
    """The claim runs with its plan kept generic (claim_plan). That plan is the one the planner
    makes knowing the parameters: on an empty table, behind many pending rows due later (a
    sequence's next steps, made days ahead) with a few due, and with none due; behind the rows
    due later both read the due index, not the table."""
    campaign = make_campaign(db)
    db.execute("ANALYZE campaign_messages")
    custom, generic = _claim_plans(db)
    assert generic == custom, (custom, generic)
    enqueue(db, campaign, make_leads(db, 3000), delay_seconds=86400)
    enqueue(db, campaign, make_leads(db, 5))
    db.execute("VACUUM ANALYZE campaign_messages")
    for state in ("a few due", "none due"):
        custom, generic = _claim_plans(db)
        assert generic == custom, (state, custom, generic)
        assert "Index Scan using idx_campaign_messages_due on campaign_messages m" in generic
        assert "Seq Scan on campaign_messages" not in generic, generic
        db.execute("DELETE FROM campaign_messages WHERE scheduled_at <= now()")
        db.execute("VACUUM ANALYZE campaign_messages")


async def test_the_store_claims_with_a_generic_plan(db: Conn, db_url: str) -> None:
    """Store.claim, run often enough for psycopg to prepare it, is never planned again per
    call: Postgres counts no custom plan of it on the connection that ran it."""
    from psycopg_pool import AsyncConnectionPool

    from listener.queue.store import Store
    from tests.daemon_harness import fast_settings

    campaign = make_campaign(db)
    enqueue(db, campaign, make_leads(db, 20))
    enqueue(db, campaign, make_leads(db, 200), delay_seconds=86400)
    db.execute("VACUUM ANALYZE campaign_messages")
    kwargs = {"autocommit": True}
    async with AsyncConnectionPool(db_url, min_size=1, max_size=1, kwargs=kwargs) as pool:
        store = Store(pool, fast_settings(worker_id="w"))
        claimed = [len((await store.claim(2)).jobs) for _ in range(10)]
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement LIKE 'WITH due AS%%'"
            )
            plans = await cur.fetchall()
    assert claimed == [2] * 10
    assert len(plans) == 1 and plans[0][0] >= 1 and plans[0][1] == 0, plans


async def test_the_store_writes_with_generic_plans(db: Conn, db_url: str) -> None:
    """Stored parts, recorded parts and outcomes, each run often enough for psycopg to prepare
    it, are never planned again per batch: on the connection each runs on, Postgres counts
    generic plans of it and no custom plan. (Left to the plan cache, every batch was planned
    again: its custom plan, reading the lease index, looks cheaper than the generic one.)"""
    from psycopg_pool import AsyncConnectionPool

    from listener.jobs import Finish, RecordPart, StoreParts
    from listener.queue.store import Store
    from tests.daemon_harness import fast_settings

    campaign = make_campaign(db)
    enqueue(db, campaign, make_leads(db, 40))
    kwargs = {"autocommit": True}
    async with AsyncConnectionPool(db_url, min_size=1, max_size=2, kwargs=kwargs) as pool:
        store = Store(pool, fast_settings(worker_id="w"))
        await store.open_lanes()
        try:
            written: dict[str, int] = {"store_parts": 0, "record_parts": 0, "finish": 0}
            for turn in range(10):
                ids = [job.id for job in (await store.claim(4)).jobs]
                assert len(ids) == 4
                writes = store.writes
                written["store_parts"] += len(
                    await writes.store([StoreParts(i, "Oi!", ["Oi!"]) for i in ids])
                )
                sent, failed = ids[:2], ids[2:]
                written["record_parts"] += len(
                    await writes.record([RecordPart(i, 0, f"P{turn}", True) for i in sent])
                )
                written["finish"] += len(
                    await writes.finish([Finish(i, "failed", None, 0, "x") for i in failed])
                )
            plans = {}
            for name, lane in store.writes.lanes.items():
                rows = await lane.fetchall(
                    "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                    " WHERE statement LIKE %(opening)s",
                    {"opening": q(name).split(" AS (")[0] + " AS (%"},
                )
                plans[name] = rows
        finally:
            await store.aclose()
    assert written == {"store_parts": 40, "record_parts": 20, "finish": 20}
    for name, counts in plans.items():
        assert len(counts) == 1 and counts[0][0] >= 1 and counts[0][1] == 0, (name, plans)


def test_batched_writes_find_their_rows_by_primary_key_in_a_generic_plan(db: Conn) -> None:
    """store_parts, record_parts and finish, prepared (psycopg prepares a statement after a
    few runs, and Postgres then keeps a generic plan), probe the primary key once per message
    of the batch. With the literal 'processing' the generic plan read every row in flight from the
    lease index, which it took for one row, and compared each with the whole batch: 2,450
    comparisons for a batch of 50, a cost per message that grew with the batch."""
    campaign = make_campaign(db)
    enqueue(db, campaign, make_leads(db, 5000))
    db.execute(  # a queue with its history: most rows sent, a few hundred to go
        "UPDATE campaign_messages SET status = 'sent', sent_at = now(), parts = '[\"x\"]',"
        " parts_sent = 1 WHERE id IN (SELECT id FROM campaign_messages LIMIT 4700)"
    )
    db.execute("VACUUM ANALYZE campaign_messages")
    worker = "w-plan"
    claimed = db.execute(q("claim"), {"limit": 60, "worker": worker, "lease": "5 minutes"})
    ids = [row[0] for row in claimed.fetchall()]
    assert len(ids) == 60
    n, state = len(ids), {"worker": worker, "processing": "processing"}
    store = {
        "ids": ids,
        "texts": ["Oi!"] * n,
        "parts": ['["Oi!"]'] * n,
        "prompt_tokens": [10] * n,
        "completion_tokens": [5] * n,
        "costs": [0.0001] * n,
        "models": ["m"] * n,
        "fallbacks": [False] * n,
        **state,
    }
    record = {
        "ids": ids,
        "part_nos": [0] * n,
        "provider_ids": [f"P{i}" for i in range(n)],
        "finals": [False] * n,
        "instances": ["inst"] * n,
        **state,
    }
    finish = {
        "ids": ids,
        "statuses": ["failed"] * n,
        "scheduled": [None] * n,
        "refunds": [0] * n,
        "errors": ["x"] * n,
        "reasons": [None] * n,
        "prompt_tokens": [0] * n,
        "completion_tokens": [0] * n,
        "costs": [0.0] * n,
        "models": [None] * n,
        "fallbacks": [None] * n,
        **state,
    }
    for name, params in (("store_parts", store), ("record_parts", record), ("finish", finish)):
        plan = _generic_plan(db, name, params)
        assert "Index Scan using campaign_messages_pkey on campaign_messages m" in plan, plan
        assert "Rows Removed by Join Filter" not in plan, plan
        assert re.search(r"Update on campaign_messages m .*rows=60(\.00)? ", plan), plan
    # A finish without a 'reply unclassified' wait never asks lead_replies (with `=`, a NULL
    # reason made both NOT EXISTS run for every row).
    plan = _generic_plan(db, "finish", finish)
    asks = [line for line in plan.splitlines() if "on lead_replies" in line]
    assert asks and all("never executed" in line for line in asks), plan


# --------------------------------------------------------------------------------------------
# The migration policy (README, "Upgrades and retention")
# --------------------------------------------------------------------------------------------


def test_migrating_from_zero_gives_the_schema_snapshot(pg_server: str) -> None:
    """migrations/schema.sql is exactly what the migration files make from an empty database:
    after a new migration, regenerate it (`uv run python -m tests.schema_snapshot`)."""
    diff = schema_snapshot.difference(pg_server, schema_snapshot.SNAPSHOT.read_text())
    assert diff == "", "migrations/schema.sql is stale:\n" + diff


def test_the_snapshot_comparison_sees_a_missing_index_either_way(pg_server: str) -> None:
    """The comparison fails on a snapshot that lacks an index, both as text (a pg_dump of the
    snapshot's major) and through a restore (a pg_dump of another major, e.g. the embedded
    Postgres's)."""
    snapshot = schema_snapshot.SNAPSHOT.read_text()
    index = "CREATE INDEX idx_leads_phone ON public.leads USING btree (phone);\n"
    assert index in snapshot
    lacking = snapshot.replace(index, "")
    other_major = re.sub(r"dumped by pg_dump \d+", "dumped by pg_dump 99", lacking, count=1)
    for text in (lacking, other_major):
        diff = schema_snapshot.difference(pg_server, text)
        assert "+CREATE INDEX idx_leads_phone" in diff
    # And through a restore, the true snapshot has no difference.
    whole = re.sub(r"dumped by pg_dump \d+", "dumped by pg_dump 99", snapshot, count=1)
    assert schema_snapshot.difference(pg_server, whole) == ""


def test_the_snapshot_is_stable_across_runs_and_column_stamps() -> None:
    dump = (
        "--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\n"
        "-- Dumped from database version 18.6\n-- Dumped by pg_dump version 18.6\n\n"
        "SET statement_timeout = 0;\nSET transaction_timeout = 0;\n"
        "SELECT pg_catalog.set_config('search_path', '', false);\n\n"
        "--\n-- Name: t; Type: TABLE; Schema: public; Owner: -\n--\n\n"
        "CREATE TABLE public.t (\n    a integer\n);\n"
        "ALTER TABLE ONLY public.t ALTER COLUMN a SET (pg_attver=6829401896);\n"
        "ALTER TABLE ONLY public.t ALTER COLUMN a SET (n_distinct=5, pg_attver=1);\n\n\n\n"
        "\\unrestrict abc\n"
    )
    assert schema_snapshot.normalise(dump) == (
        "--\n-- Name: t; Type: TABLE; Schema: public; Owner: -\n--\n\n"
        "CREATE TABLE public.t (\n    a integer\n);\n"
        "ALTER TABLE ONLY public.t ALTER COLUMN a SET (n_distinct=5);\n"
    )


_CREATE_INDEX = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+(CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?[\w.\"]+"
    r"\s+ON\s+(?:ONLY\s+)?(?:public\.)?(\w+)",
    re.I,
)
#: The last file of the baseline (squashed before the first release).
BASELINE = "0003"

_OWN_FUNCTIONS = """
SELECT p.proname, count(*) FROM pg_proc p
 WHERE p.pronamespace = 'public'::regnamespace
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
 GROUP BY p.proname
"""


def test_every_function_lives_once_in_a_file_of_its_own(db: Conn) -> None:
    """A database migrated from zero has exactly the functions of migrations/functions/, one
    signature each: no function defined only in a numbered file, no overload left behind by a
    changed argument list, none of the four dead pacing functions (0013 dropped them)."""
    files = {f.name for f in load_functions()}
    assert len(files) >= 30
    counts = dict(db.execute(_OWN_FUNCTIONS).fetchall())
    assert counts == dict.fromkeys(files, 1)
    for dead in ("listener_take_gap", "listener_gap_sent", "listener_send_start"):
        assert dead not in counts


def _copy_of_the_migrations(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), folder)
    return folder


async def test_a_changed_function_file_is_applied_again_and_recorded(
    empty_db_url: str, tmp_path: Path
) -> None:
    folder = _copy_of_the_migrations(tmp_path)
    await migrate(empty_db_url, folder)
    path = folder / FUNCTIONS / "delivery_rank.sql"
    path.write_text(path.read_text().replace("WHEN 'READ' THEN", "WHEN 'READ_X' THEN"))
    new_checksum = next(f.checksum for f in load_functions(folder) if f.name == "delivery_rank")

    assert await migrate(empty_db_url, folder) == [f"{FUNCTIONS}/delivery_rank.sql"]
    assert await migrate(empty_db_url, folder) == []
    with psycopg.connect(empty_db_url) as conn:
        ranks = conn.execute("SELECT delivery_rank('READ'), delivery_rank('READ_X')").fetchone()
        assert ranks == (0, 4)
        row = conn.execute(
            "SELECT name, checksum FROM listener_migrations WHERE version = %s",
            (f"{FUNCTIONS}/delivery_rank",),
        ).fetchone()
    assert row == ("delivery_rank", new_checksum)


async def test_functions_run_after_the_numbered_files_and_after_what_they_call(
    empty_db_url: str, tmp_path: Path
) -> None:
    """A new SQL function reading a column a new numbered file adds, calling another new SQL
    function whose name sorts after it: both are checked when created, so the column must
    exist first and the callee before its caller."""
    folder = _copy_of_the_migrations(tmp_path)
    (folder / "9999_nickname.sql").write_text("ALTER TABLE leads ADD COLUMN nickname text;\n")
    (folder / FUNCTIONS / "a_lead_greeting.sql").write_text(
        "-- A greeting by nickname.\n"
        "CREATE OR REPLACE FUNCTION a_lead_greeting(p_lead uuid) RETURNS text\n"
        "LANGUAGE sql STABLE AS $$ SELECT 'Oi ' || z_lead_nickname(p_lead) $$;\n"
    )
    (folder / FUNCTIONS / "z_lead_nickname.sql").write_text(
        "CREATE OR REPLACE FUNCTION z_lead_nickname(p_lead uuid) RETURNS text\n"
        "LANGUAGE sql STABLE AS $$ SELECT nickname FROM leads WHERE id = p_lead $$;\n"
    )
    assert [f.name for f in load_functions(folder)].index("z_lead_nickname") < [
        f.name for f in load_functions(folder)
    ].index("a_lead_greeting")

    applied = await migrate(empty_db_url, folder)

    assert applied.index("9999_nickname.sql") < applied.index(f"{FUNCTIONS}/z_lead_nickname.sql")
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        lead = make_leads(conn, 1)[0]
        conn.execute("UPDATE leads SET nickname = 'Aninha' WHERE id = %s", (lead,))
        assert conn.execute("SELECT a_lead_greeting(%s)", (lead,)).fetchone() == ("Oi Aninha",)


async def test_a_numbered_file_applied_later_gets_every_function_again(
    empty_db_url: str, tmp_path: Path
) -> None:
    """A numbered file that creates the copy of a function it needs at its own time (here an
    old delivery_rank) does not leave that copy in place: the function files follow it."""
    folder = _copy_of_the_migrations(tmp_path)
    await migrate(empty_db_url, folder)
    (folder / "9999_old_rank.sql").write_text(
        "CREATE OR REPLACE FUNCTION delivery_rank(status text) RETURNS integer\n"
        "LANGUAGE sql IMMUTABLE AS $$ SELECT 42 $$;\n"
        "SELECT delivery_rank('READ');\n"
    )

    applied = await migrate(empty_db_url, folder)

    assert applied == ["9999_old_rank.sql"] + [f.label for f in load_functions(folder)]
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT delivery_rank('ERROR')").fetchone() == (9,)


async def test_a_failing_function_file_applies_no_function_file(
    empty_db_url: str, tmp_path: Path
) -> None:
    folder = _copy_of_the_migrations(tmp_path)
    await migrate(empty_db_url, folder)
    rank = folder / FUNCTIONS / "delivery_rank.sql"
    rank.write_text(rank.read_text().replace("WHEN 'READ' THEN", "WHEN 'READ_X' THEN"))
    (folder / FUNCTIONS / "zz_broken.sql").write_text(
        "CREATE OR REPLACE FUNCTION zz_broken() RETURNS int LANGUAGE sql AS $$ SELECT nope $$;\n"
    )

    with pytest.raises(MigrationError, match=r"function functions/zz_broken\.sql failed"):
        await migrate(empty_db_url, folder)

    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT delivery_rank('READ')").fetchone() == (4,)
        assert conn.execute(
            "SELECT count(*) FROM listener_migrations WHERE version LIKE 'functions/zz%'"
        ).fetchone() == (0,)


def _plain_queue_indexes(migrations: list[Migration]) -> list[str]:
    """Files after the baseline that build an index on the queue table without CONCURRENTLY."""
    found = []
    for migration in migrations:
        if migration.version <= BASELINE:
            continue
        sql = re.sub(r"--[^\n]*", "", migration.sql)
        for match in _CREATE_INDEX.finditer(sql):
            if match.group(2) == "campaign_messages" and not match.group(1):
                found.append(migration.label)
    return found


def test_indexes_on_the_queue_table_are_built_concurrently() -> None:
    """After the baseline, an index on campaign_messages is built CONCURRENTLY (in a file whose
    first line is `-- listener: no-transaction`), so claims and writes go on meanwhile."""
    assert _plain_queue_indexes(load_migrations()) == []
    plain = Migration(
        "0004", "index", "CREATE INDEX IF NOT EXISTS idx_x ON campaign_messages (content);"
    )
    built = Migration(
        "0005",
        "index",
        "-- listener: no-transaction\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_y ON public.campaign_messages (content);",
    )
    assert _plain_queue_indexes([plain, built]) == ["0004_index.sql"]


def _parts_of(db: Conn, ids: list[Any]) -> int:
    row = db.execute(
        "SELECT count(*) FROM message_parts WHERE message_id = ANY (%s)", (ids,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_message_deleted_or_truncated_takes_its_parts_with_it(db: Conn) -> None:
    """message_parts has no foreign key (it cost a lock and a WAL record per part recorded):
    the statement triggers delete a message's parts with it, directly, cascaded from its
    campaign, or by TRUNCATE."""
    keep, drop = make_campaign(db), make_campaign(db)
    leads = make_leads(db, 3)
    enqueue(db, keep, leads)
    enqueue(db, drop, leads)
    rows = db.execute("SELECT id, campaign_id FROM campaign_messages ORDER BY id").fetchall()
    for n, (message, _) in enumerate(rows):
        db.execute(
            "INSERT INTO message_parts (message_id, part_no, instance, provider_message_id) "
            "VALUES (%s, 0, 'inst', %s), (%s, 1, 'inst', %s)",
            (message, f"P{n}a", message, f"P{n}b"),
        )
    kept = [m for m, c in rows if c == keep]
    dropped = [m for m, c in rows if c == drop]
    db.execute("DELETE FROM campaign_messages WHERE id = %s", (kept[0],))
    assert _parts_of(db, [kept[0]]) == 0
    assert _parts_of(db, kept[1:]) == 4
    db.execute("DELETE FROM campaigns WHERE id = %s", (drop,))  # cascades to its messages
    assert _parts_of(db, dropped) == 0
    assert _parts_of(db, kept[1:]) == 4
    db.execute("TRUNCATE campaign_messages CASCADE")
    assert db.execute("SELECT count(*) FROM message_parts").fetchone() == (0,)


def test_storing_parts_and_recording_a_part_before_the_last_are_hot_updates(db: Conn) -> None:
    """store_parts and the record of a part before the last change no indexed column, so on
    a page with room they are HOT updates (no index entry written); the claim and the last
    part's record change the status, which indexes hold."""
    campaign = make_campaign(db)
    enqueue(db, campaign, make_leads(db, 1))
    hot = "SELECT pg_stat_get_xact_tuples_hot_updated('campaign_messages'::regclass)"
    worker = "w-hot"
    claimed = db.execute(q("claim"), {"limit": 1, "worker": worker, "lease": "5 minutes"})
    message = claimed.fetchall()[0][0]
    # The writes that follow in one later transaction: the counter is that transaction's.
    with db.transaction():
        db.execute(
            q("store_parts"),
            {
                "ids": [message],
                "texts": ["Oi! Tudo bem?"],
                "parts": ['["Oi!", "Tudo bem?"]'],
                "prompt_tokens": [10],
                "completion_tokens": [5],
                "costs": [0.0001],
                "models": ["m"],
                "fallbacks": [False],
                "worker": worker,
                "processing": "processing",
            },
        )
        assert db.execute(hot).fetchone() == (1,)
        record = {
            "part_nos": [0],
            "provider_ids": ["P0"],
            "finals": [False],
            "instances": ["inst"],
            "worker": worker,
            "processing": "processing",
        }
        db.execute(q("record_parts"), {"ids": [message], **record})
        assert db.execute(hot).fetchone() == (2,)
        last = {**record, "part_nos": [1], "provider_ids": ["P1"], "finals": [True]}
        db.execute(q("record_parts"), {"ids": [message], **last})
        assert db.execute(hot).fetchone() == (2,)
    row = db.execute("SELECT status, parts_sent FROM campaign_messages").fetchone()
    assert row == ("sent", 2)
