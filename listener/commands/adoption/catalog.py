"""The catalog the adoption compares: the tables (columns, constraints, indexes, triggers,
storage settings, RLS) and functions of one schema, and the target itself: the schema the
migration files make, built in a scratch schema inside a transaction that is rolled back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, LiteralString, cast

import psycopg

#: The scratch schema the target is built in (rolled back, never committed).
PROBE_SCHEMA = "listener_probe"

_CONCURRENTLY = re.compile(r"\bCONCURRENTLY\b", re.I)


@dataclass
class Table:
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)
    constraints: list[dict[str, Any]] = field(default_factory=list)
    indexes: dict[str, dict[str, Any]] = field(default_factory=dict)
    triggers: set[str] = field(default_factory=set)
    rows: int = 0
    rls: bool = False
    forced: bool = False
    options: list[str] = field(default_factory=list)


@dataclass
class Catalog:
    tables: dict[str, Table] = field(default_factory=dict)
    functions: dict[str, list[str]] = field(default_factory=dict)
    index_tables: dict[str, str] = field(default_factory=dict)


_COLUMNS: LiteralString = """
SELECT c.relname AS tbl, a.attname AS col, format_type(a.atttypid, a.atttypmod) AS type,
       t.typname AS base, a.attnotnull AS not_null, pg_get_expr(d.adbin, d.adrelid) AS dflt,
       c.reltuples::bigint AS rows, c.relrowsecurity AS rls, c.relforcerowsecurity AS forced,
       c.reloptions AS options
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  JOIN pg_type t ON t.oid = a.atttypid
  LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
 WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p')
 ORDER BY c.relname, a.attnum
"""
_CONSTRAINTS: LiteralString = """
SELECT c.relname AS tbl, k.conname AS name, k.contype AS kind, pg_get_constraintdef(k.oid) AS def,
       ARRAY(SELECT a.attname::text FROM pg_attribute a
              WHERE a.attrelid = c.oid AND a.attnum = ANY (k.conkey) ORDER BY a.attnum) AS cols,
       f.relname AS ref, pg_get_expr(k.conbin, k.conrelid) AS expr
  FROM pg_constraint k
  JOIN pg_class c ON c.oid = k.conrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_class f ON f.oid = k.confrelid
 WHERE n.nspname = %(schema)s
 ORDER BY c.relname, k.conname
"""
_INDEXES: LiteralString = """
SELECT t.relname AS tbl, i.relname AS name, x.indisunique AS uniq, x.indisprimary AS pk,
       x.indisvalid AS valid,
       pg_get_indexdef(x.indexrelid) AS def,
       ARRAY(SELECT a.attname::text FROM pg_attribute a
              WHERE a.attrelid = t.oid AND a.attnum = ANY (x.indkey)) AS cols,
       x.indpred IS NULL AND x.indexprs IS NULL AS plain,
       EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid) AS backs
  FROM pg_index x
  JOIN pg_class i ON i.oid = x.indexrelid
  JOIN pg_class t ON t.oid = x.indrelid
  JOIN pg_namespace n ON n.oid = t.relnamespace
 WHERE n.nspname = %(schema)s
"""
_TRIGGERS: LiteralString = """
SELECT c.relname AS tbl, t.tgname AS name
  FROM pg_trigger t
  JOIN pg_class c ON c.oid = t.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %(schema)s AND NOT t.tgisinternal
"""
_FUNCTIONS: LiteralString = """
SELECT p.proname AS name, pg_get_function_identity_arguments(p.oid) AS args
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = %(schema)s
 ORDER BY 1, 2
"""
ROLE_BYPASSES_RLS: LiteralString = """
SELECT rolsuper OR rolbypassrls AS bypass FROM pg_roles WHERE rolname = current_user
"""


async def read(conn: psycopg.AsyncConnection[Any], schema: str) -> Catalog:
    found = Catalog()
    args = {"schema": schema}
    for row in await (await conn.execute(_COLUMNS, args)).fetchall():
        table = found.tables.setdefault(row["tbl"], Table())
        table.columns[row["col"]] = row
        table.rows, table.rls, table.forced = max(int(row["rows"]), 0), row["rls"], row["forced"]
        table.options = list(row["options"] or ())
    for row in await (await conn.execute(_CONSTRAINTS, args)).fetchall():
        if row["tbl"] in found.tables:
            found.tables[row["tbl"]].constraints.append(row)
    for row in await (await conn.execute(_INDEXES, args)).fetchall():
        found.index_tables[row["name"]] = row["tbl"]
        if row["tbl"] in found.tables:
            found.tables[row["tbl"]].indexes[row["name"]] = row
    for row in await (await conn.execute(_TRIGGERS, args)).fetchall():
        if row["tbl"] in found.tables:
            found.tables[row["tbl"]].triggers.add(row["name"])
    for row in await (await conn.execute(_FUNCTIONS, args)).fetchall():
        found.functions.setdefault(row["name"], []).append(row["args"])
    return found


async def target(conn: psycopg.AsyncConnection[Any], statements: list[str]) -> Catalog:
    """The schema the migration files make, read from a scratch schema in a transaction that
    is rolled back: nothing of it stays."""
    async with conn.transaction(force_rollback=True):
        await conn.execute(f"CREATE SCHEMA {PROBE_SCHEMA}")
        await conn.execute(f"SET LOCAL search_path = {PROBE_SCHEMA}")
        for statement in statements:
            # The tables are empty and the transaction is ours: no need (and no way) to build
            # concurrently here.
            await conn.execute(cast(LiteralString, _CONCURRENTLY.sub("", statement)))  # type: ignore[redundant-cast]
        return await read(conn, PROBE_SCHEMA)
