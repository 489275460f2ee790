"""Databases shaped like the Edge Function's Supabase project, for the adoption tests.

`tests/fixtures/seed/edge_function.sql` is the whole shape; its marked blocks (`-- shape:
NAME` ... `-- end: NAME`) are left out by name for the other shapes: `campaigns` (the tables
campaigns and campaign_runs), `campaigns_fk`, `campaigns_rls`, `status_check` (a CHECK of the
user's on status) and `functions` (the seed's own get_lead_full_context and
mark_old_campaign_messages_as_skipped). `roles.sql` makes the Supabase roles when missing.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, LiteralString, cast

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

SEED = Path(__file__).resolve().parent / "fixtures" / "seed"
_BLOCK = re.compile(r"^-- shape: (\w+)\n(.*?)^-- end: \1\n", re.M | re.S)

#: What the catalog comparison reads: every object of the public schema and its definition.
CATALOG: LiteralString = """
SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || COALESCE(' default ' || pg_get_expr(d.adbin, d.adrelid), '') AS what
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
   AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'relation ' || n.nspname || '.' || c.relname || ' ' || c.relkind::text || ' rls '
       || c.relrowsecurity::text || ' acl ' || COALESCE(c.relacl::text, '-')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
UNION ALL
SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
       || ' valid ' || convalidated::text
  FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'index ' || pg_get_indexdef(indexrelid) FROM pg_index
 WHERE indrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace)
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal
UNION ALL
SELECT 'function ' || p.oid::regprocedure || ' ' || md5(p.prosrc) || ' '
       || COALESCE(p.proacl::text, '-')
  FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
UNION ALL
SELECT 'policy ' || tablename || ' ' || policyname || ' ' || cmd || ' ' || COALESCE(qual, '')
  FROM pg_policies
UNION ALL
SELECT 'schema ' || nspname FROM pg_namespace
ORDER BY 1
"""


def seed_sql(*, leave_out: tuple[str, ...] = ()) -> str:
    """The shape's SQL without the named blocks."""
    text = (SEED / "edge_function.sql").read_text()
    return _BLOCK.sub(lambda m: "" if m.group(1) in leave_out else m.group(2), text)


def build(url: str, *, leave_out: tuple[str, ...] = (), then: str = "") -> None:
    """Make the shape in the (empty) database of `url`, and run `then` after it."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(cast(LiteralString, (SEED / "roles.sql").read_text()))
        conn.execute(cast(LiteralString, seed_sql(leave_out=leave_out)))
        if then:
            conn.execute(cast(LiteralString, then))


#: The role that owns the seed's tables in `build_as_owner`, as Supabase's `postgres` does: it
#: is not a superuser. Cluster-wide like the Supabase roles: created when missing, never dropped.
OWNER = "listener_test_owner"


def build_as_owner(url: str) -> str:
    """Make the whole shape in the (empty) database of `url` as `OWNER`, the owner of the public
    schema, who may create schemas in the database and is no superuser; return its URL."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(cast(LiteralString, (SEED / "roles.sql").read_text()))
        conn.execute(
            "DO $$ BEGIN CREATE ROLE listener_test_owner LOGIN NOSUPERUSER PASSWORD 'owner';"
            " EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        )
        name = conn.info.dbname
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(name), sql.Identifier(OWNER)
            )
        )
        conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(OWNER)))
    owner = make_conninfo(url, user=OWNER, password="owner")
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute(cast(LiteralString, seed_sql()))
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        assert row == (False,)
    return owner


def catalog(url: str) -> list[str]:
    """Every object of the database and its definition, one line each (to compare)."""
    with psycopg.connect(url) as conn:
        return [str(r[0]) for r in conn.execute(CATALOG).fetchall()]


@dataclass
class LeftBehind:
    """The rows the old system left, one per status, by name."""

    campaign: uuid.UUID
    leads: dict[str, uuid.UUID] = field(default_factory=dict)
    messages: dict[str, uuid.UUID] = field(default_factory=dict)


def leave_rows(url: str, *, campaigns: bool = True) -> LeftBehind:
    """A campaign, its leads (phones as the back end stored them) and a message in every
    status the old function left: pending, sent, two processing (one of which had gone out),
    failed, skipped and one in a status the listener does not know."""
    campaign = uuid.uuid4()
    rows = LeftBehind(campaign)
    with psycopg.connect(url, autocommit=True) as conn:
        if campaigns:
            conn.execute(
                "INSERT INTO campaigns (id, name, prompt, status) VALUES (%s, 'Outubro',"
                " 'Apresente a Acme.', 'running')",
                (campaign,),
            )
        phones = {
            "pending": "(11) 98765-4321",
            "sent": "+55 11 98765-0001",
            "went_out": "11 98765-0002",
            "not_out": "021 98765 0003",
            "failed": "5511987650004",
            "skipped": "11987650005",
            "cancelled": "11987650006",
        }
        for name, phone in phones.items():
            row = conn.execute(
                "INSERT INTO leads (name, phone, company) VALUES (%s, %s, 'Acme') RETURNING id",
                (name, phone),
            ).fetchone()
            assert row is not None
            rows.leads[name] = row[0]
        states: dict[str, tuple[str, str]] = {
            "pending": ("pending", "now() - interval '5 minutes'"),
            "sent": ("sent", "now() - interval '2 days'"),
            "went_out": ("processing", "now() - interval '10 minutes'"),
            "not_out": ("processing", "now() - interval '10 minutes'"),
            "failed": ("failed", "now() - interval '1 day'"),
            "skipped": ("skipped", "now() - interval '3 days'"),
            "cancelled": ("cancelled", "now() - interval '1 day'"),
        }
        for name, (status, when) in states.items():
            extra: dict[str, Any] = {}
            if status == "sent":
                extra = {"sent_at": "now() - interval '2 days'", "message": "'Olá, já enviada.'"}
            if status == "failed":
                extra = {"error_message": "'OpenRouter 500'", "retry_count": "3"}
            cols = ", ".join(["campaign_id", "lead_id", "status", "scheduled_at", *extra])
            values = ", ".join(["%s", "%s", "%s", when, *extra.values()])
            row = conn.execute(
                cast(
                    LiteralString,
                    f"INSERT INTO campaign_messages ({cols}) VALUES ({values}) RETURNING id",
                ),
                (campaign, rows.leads[name], status),
            ).fetchone()
            assert row is not None
            rows.messages[name] = row[0]
        conn.execute(
            "UPDATE campaign_messages SET retry_count = 1 WHERE id = %s",
            (rows.messages["pending"],),
        )
    return rows
