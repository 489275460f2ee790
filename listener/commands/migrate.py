"""`listener migrate`: apply `migrations/*.sql` in order, once each, with a checksum, then the
functions of `migrations/functions/`, each again whenever its file changes.

An advisory lock makes two migrates started together take turns; a numbered file changed after
it was applied is an error, since the database no longer matches what the file says. Every
numbered file not yet applied is applied, in version order, even one numbered below the newest
applied.

Each numbered file runs in its own transaction, unless its first line is
`-- listener: no-transaction`: then each of its statements runs on its own, so `CREATE INDEX
CONCURRENTLY` can build an index on the live queue table without blocking its writers. Such a
file must be safe to run again from the start (`IF NOT EXISTS`): when a statement fails, the
ones before it stay applied, the file is not recorded, and an index the failure left INVALID is
dropped.

The functions are repeatable migrations (Flyway's `R__` files): `functions/NAME.sql` holds the
one `CREATE OR REPLACE FUNCTION NAME`, recorded in `listener_migrations` as version
`functions/NAME` with its checksum. They run after the numbered files, so a function may read a
column a numbered file adds in the same migrate; a file whose checksum differs from the one
recorded is applied again, and after any numbered file was applied every one is (a numbered
file that needs a function at its own time creates the copy it needs, which the file then
replaces). They run in one transaction, a function after the functions it names. How to change
one: `migrations/functions/README.md`. `migrations/schema.sql` is the schema all the files make
from an empty database, and a test keeps it so. The files are read, checked and split into
statements by `listener.commands.migration_files`; this module applies them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, LiteralString, cast

import psycopg
from psycopg import sql

from listener.commands import adoption as adopt
from listener.commands.migration_files import (
    NO_TRANSACTION,
    FunctionFile,
    Migration,
    describe,
    load_functions,
    load_migrations,
    split_statements,
)
from listener.db import connect
from listener.errors import AdoptionRefused, DatabaseError, MigrationError

log = logging.getLogger(__name__)


# Any constant 64-bit key: the lock every `listener migrate` takes before looking.
_LOCK_KEY = 7_140_512_003_001
# How often a migrate waiting for another one tries the lock again. It polls rather than
# blocks: a session blocked in pg_advisory_lock holds a snapshot, and the other migrate's
# CREATE INDEX CONCURRENTLY waits for every older snapshot to end, so the two would deadlock.
_LOCK_POLL_SECONDS = 0.2


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS listener_migrations (
    version     text PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""

# The development files that 0001-0003 replaced (squashed before anything was deployed): a
# database that has one of them was made by a development version and cannot be carried over.
_PRE_BASELINE_NAMES = {
    ("0002", "functions"),
    ("0004", "context_plan"),
    ("0005", "cap_slots"),
    ("0006", "paused_campaigns"),
    ("0007", "gap_pacing"),
    ("0008", "compat_signatures"),
    ("0009", "started_messages"),
}
# Their 0001_schema.sql and 0003_pacing.sql had the baseline's names; their checksums tell them.
_PRE_BASELINE_CHECKSUMS = {
    ("0001", "03e081b3452c043847ece1ac38d38353baf3e1b18eb59cd16966ab2a86145c7f"),
    ("0003", "d45b65525f7b64ad60f18db2cb14b70ea2d917f351322b241752ece58af78ef6"),
}

# Numbered files whose comments were reworded after they were applied, their statements
# unchanged: the checksums of their earlier texts. A database that recorded one of these has
# applied the file as it is; migrate records the current checksum instead of refusing it.
REWORDED: dict[str, frozenset[str]] = {
    # The first line named a design document outside the repository; now docs/design.md.
    "0005": frozenset({"6286cd17bb97716adb78afde3dfa4d4ad832ffc06a605e35bad5af06db15028c"}),
    "0009": frozenset({"251d6460a543392cffc990cdd809c7e07a7384f6b3f2c38d7c9bee9b1602d891"}),
}


_INVALID_INDEXES: LiteralString = """
SELECT format('%%I.%%I', n.nspname, c.relname) AS name
  FROM pg_index i
  JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE NOT i.indisvalid AND c.relname = ANY (%s) AND pg_table_is_visible(c.oid)
"""


def _pre_baseline(applied: dict[str, tuple[str, str]]) -> str | None:
    """The label of the newest applied development file the baseline replaced, if any."""
    for version, (name, checksum) in sorted(applied.items(), reverse=True):
        if (version, name) in _PRE_BASELINE_NAMES or (version, checksum) in _PRE_BASELINE_CHECKSUMS:
            return f"{version}_{name}.sql"
    return None


async def _take_lock(conn: psycopg.AsyncConnection[Any]) -> None:
    said = False
    while True:
        row = await (
            await conn.execute("SELECT pg_try_advisory_lock(%s) AS got", (_LOCK_KEY,))
        ).fetchone()
        if row is not None and row["got"]:
            return
        if not said:
            log.info(
                "waiting for another migrate to finish",
                extra={"action": "migration_lock_wait"},
            )
            said = True
        await asyncio.sleep(_LOCK_POLL_SECONDS)


async def _invalid_indexes(conn: psycopg.AsyncConnection[Any], names: list[str]) -> list[str]:
    if not names:
        return []
    rows = await (await conn.execute(_INVALID_INDEXES, (names,))).fetchall()
    return [row["name"] for row in rows]


async def _drop_indexes(conn: psycopg.AsyncConnection[Any], names: list[str]) -> None:
    for name in names:
        await conn.execute(
            sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                sql.Identifier(*name.split(".", 1))
            )
        )


async def _apply_in_transaction(
    conn: psycopg.AsyncConnection[Any], migration: Migration, held: adopt.Held
) -> None:
    if migration.concurrent_indexes():
        raise MigrationError(
            f"migration {migration.label} builds an index CONCURRENTLY, which cannot run in a"
            f" transaction: make `{NO_TRANSACTION}` its first line"
        )
    try:
        async with conn.transaction():
            if held:
                # An adopted database: statements on the user's objects are left out.
                for statement in split_statements(migration.sql):
                    if held.leaves_out(statement) is None:
                        await conn.execute(cast(LiteralString, statement))  # type: ignore[redundant-cast]
            else:
                await conn.execute(cast(LiteralString, migration.sql))  # type: ignore[redundant-cast]
            await _record(conn, migration)
    except psycopg.Error as exc:
        raise MigrationError(f"migration {migration.label} failed: {_one_line(exc)}") from exc


async def _apply_each_statement(
    conn: psycopg.AsyncConnection[Any], migration: Migration, held: adopt.Held
) -> None:
    """A no-transaction file: each statement on its own (autocommit), then the record."""
    indexes = migration.concurrent_indexes()
    # An index a killed migrate left INVALID would satisfy `IF NOT EXISTS`: build it afresh.
    stale = await _invalid_indexes(conn, indexes)
    if stale:
        log.warning(
            "dropping invalid indexes left by an interrupted migrate",
            extra={"action": "migration_invalid_index", "migration": migration.label},
        )
        await _drop_indexes(conn, stale)
    statements = split_statements(migration.sql)
    for number, statement in enumerate(statements, start=1):
        if held.leaves_out(statement) is not None:
            continue
        try:
            await conn.execute(cast(LiteralString, statement))  # type: ignore[redundant-cast]
        except psycopg.Error as exc:
            dropped = await _invalid_indexes(conn, indexes)
            await _drop_indexes(conn, dropped)
            left = f"; dropped the invalid index {', '.join(dropped)} it left" if dropped else ""
            raise MigrationError(
                f"migration {migration.label} failed at statement {number} of"
                f" {len(statements)}: {_one_line(exc)}{left}; it runs outside a transaction,"
                " so the statements before it stay applied and the file runs again from the"
                " start on the next migrate"
            ) from exc
    invalid = await _invalid_indexes(conn, indexes)
    if invalid:
        raise MigrationError(
            f"migration {migration.label} left the invalid index {', '.join(invalid)}; "
            "drop it and migrate again"
        )
    await _record(conn, migration)


async def _record(conn: psycopg.AsyncConnection[Any], migration: Migration) -> None:
    await conn.execute(
        "INSERT INTO listener_migrations (version, name, checksum) VALUES (%s, %s, %s)",
        (migration.version, migration.name, migration.checksum),
    )


async def _apply_functions(
    conn: psycopg.AsyncConnection[Any], functions: list[FunctionFile], held: adopt.Held
) -> None:
    """The function files in one transaction, each recorded with its new checksum. On an
    adopted database, a file of a function the user has under that name is recorded without
    being applied: the user's function stays."""
    async with conn.transaction():
        for function in functions:
            if held.leaves_out(function.sql) is not None:
                await _record_function(conn, function)
                continue
            try:
                await conn.execute(cast(LiteralString, function.sql))  # type: ignore[redundant-cast]
            except psycopg.Error as exc:
                raise MigrationError(
                    f"function {function.label} failed: {_one_line(exc)}; no function file of"
                    " this migrate was applied"
                ) from exc
            await _record_function(conn, function)


async def _record_function(conn: psycopg.AsyncConnection[Any], function: FunctionFile) -> None:
    await conn.execute(
        "INSERT INTO listener_migrations (version, name, checksum) VALUES (%s, %s, %s)"
        " ON CONFLICT (version) DO UPDATE"
        " SET checksum = EXCLUDED.checksum, applied_at = now()",
        (function.version, function.name, function.checksum),
    )


@dataclass
class Outcome:
    """What a migrate did (or, with `dry_run`, would do): the files applied, the adoption's
    plan when the database was adopted, and lines for the operator."""

    applied: list[str] = field(default_factory=list)
    adoption: adopt.Plan | None = None
    said: list[str] = field(default_factory=list)
    # With dry_run: each statement it would run, with what it does to which table.
    statements: list[tuple[str, str]] = field(default_factory=list)


async def migrate(url: str, folder: Path | None = None) -> list[str]:
    """Apply the pending migrations, then the new or changed functions; return the names
    applied (empty when up to date)."""
    return (await run_migrate(url, folder)).applied


async def run_migrate(url: str, folder: Path | None = None, *, dry_run: bool = False) -> Outcome:
    """Apply the pending migrations, adopting the user's tables first when the database has
    tables of ours that our migrations did not make (`listener.commands.adoption`). With
    `dry_run`, change nothing and return the statements it would run. AdoptionRefused, before
    any change, when a table cannot be adopted."""
    migrations = load_migrations(folder)
    functions = load_functions(folder)
    conn = await connect(url)
    result = Outcome()
    try:
        await _take_lock(conn)
        try:
            applied = await _applied(conn, create=not dry_run)
            old = _pre_baseline(applied)
            if old is not None:
                raise MigrationError(
                    f"this database was migrated by a development version before the baseline"
                    f" migrations (it has {old}); recreate it (drop the database, create it"
                    " empty) and run `listener migrate` again"
                )
            pending = []
            for migration in migrations:
                if migration.version in applied:
                    recorded = applied[migration.version][1]
                    if recorded in REWORDED.get(migration.version, frozenset()):
                        await conn.execute(
                            "UPDATE listener_migrations SET checksum = %s WHERE version = %s",
                            (migration.checksum, migration.version),
                        )
                    elif recorded != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.label} was changed after it was applied; "
                            "add a new migration file instead of editing an applied one"
                        )
                    continue
                pending.append(migration)
            held = await adopt.held(conn)
            if not applied and pending:
                statements = [s for m in migrations for s in split_statements(m.sql)]
                statements += [f.sql for f in functions]
                adoption = await adopt.plan(conn, statements)
                if adoption.tables:
                    if adoption.conflicts:
                        raise AdoptionRefused(adoption.conflicts)
                    result.adoption = adoption
                    held = adopt.Held(
                        frozenset(adoption.held_functions) | held.functions,
                        frozenset(adoption.held_indexes) | held.indexes,
                        frozenset(adoption.adopted),
                    )
                    if not dry_run:
                        result.said = await adopt.apply(conn, adoption)
                        log.info(
                            "adopted the tables %s",
                            ", ".join(adoption.tables),
                            extra={"action": "migration_adopted"},
                        )
            if dry_run:
                if result.adoption is not None:
                    for step in result.adoption.steps:
                        result.statements.append((f"{step.table}: {step.what}", step.sql))
                for migration in pending:
                    for statement in split_statements(migration.sql):
                        result.statements.append(_said(migration.label, statement, held))
                for function in _changed(functions, applied, bool(pending)):
                    result.statements.append(_said(function.label, function.sql, held))
                return result
            for migration in pending:
                if migration.transactional:
                    await _apply_in_transaction(conn, migration, held)
                else:
                    await _apply_each_statement(conn, migration, held)
                log.info(
                    "migration applied",
                    extra={"action": "migration_applied", "migration": migration.label},
                )
                result.applied.append(migration.label)
            # After a numbered file, every function again: it may have replaced one.
            changed = _changed(functions, applied, bool(result.applied))
            if changed:
                await _apply_functions(conn, changed, held)
                for function in changed:
                    log.info(
                        "function applied",
                        extra={"action": "migration_applied", "migration": function.label},
                    )
                result.applied += [function.label for function in changed]
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    except psycopg.Error as exc:
        raise DatabaseError(f"migrate failed: {_one_line(exc)}") from exc
    finally:
        await conn.close()
    return result


def _changed(
    functions: list[FunctionFile], applied: dict[str, tuple[str, str]], numbered: bool
) -> list[FunctionFile]:
    """The function files to apply: every one after a numbered file, else the new or changed."""
    return [f for f in functions if numbered or applied.get(f.version, ("", ""))[1] != f.checksum]


def _said(label: str, statement: str, held: adopt.Held) -> tuple[str, str]:
    """A statement of --dry-run's output, with what it does (or why it is left out)."""
    why = held.leaves_out(statement)
    what = describe(statement)
    return (f"{label}: left out ({why}): {what}" if why else f"{label}: {what}", statement)


async def _applied(
    conn: psycopg.AsyncConnection[Any], *, create: bool
) -> dict[str, tuple[str, str]]:
    """The files applied (version: name, checksum). Creates the bookkeeping table unless
    `create` is off (a dry run changes nothing: no table, nothing applied)."""
    if create:
        await conn.execute(_CREATE_TABLE)
    else:
        row = await (
            await conn.execute("SELECT to_regclass('listener_migrations') IS NOT NULL AS there")
        ).fetchone()
        if row is None or not row["there"]:
            return {}
    rows = await (
        await conn.execute("SELECT version, name, checksum FROM listener_migrations")
    ).fetchall()
    return {row["version"]: (row["name"], row["checksum"]) for row in rows}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
