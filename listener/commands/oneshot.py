"""Short-lived database work of the operator commands (`replay`, `stats`, `demo`): one
autocommit connection whose driver errors become one line, and the check that the database
has every migration before a command uses it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, LiteralString

import psycopg

from listener.commands.migration_files import load_functions, load_migrations
from listener.db import connect
from listener.errors import DatabaseError, MigrationError
from listener.queries import q

Connection = psycopg.AsyncConnection[dict[str, Any]]

#: What every "not migrated" error ends with: the one thing the operator has to do.
MIGRATE_HINT = "run `listener migrate`"

# The bookkeeping table of `listener migrate` is not queue SQL: as in commands/migrate.py, its
# statements stay beside their reader.
_MIGRATIONS_TABLE: LiteralString = "SELECT to_regclass('listener_migrations') AS name"
_MIGRATIONS_APPLIED: LiteralString = "SELECT version, checksum FROM listener_migrations"
#: How many missing files the error names (an old database may lack every function file).
_NAMED = 4


@contextlib.asynccontextmanager
async def connection(url: str, what: str) -> AsyncIterator[Connection]:
    """One autocommit connection whose driver errors become a one-line DatabaseError."""
    conn = await connect(url)
    try:
        yield conn
    except psycopg.errors.UndefinedTable as exc:
        raise MigrationError(f"{what} failed: {_first_line(exc)}; {MIGRATE_HINT}") from exc
    except psycopg.Error as exc:
        raise DatabaseError(f"{what} failed: {_first_line(exc)}") from exc
    finally:
        await conn.close()


async def one(conn: Connection, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The single row the named query returns."""
    row = await (await conn.execute(q(name), params)).fetchone()
    if row is None:
        raise DatabaseError(f"query {name} returned no row")
    return row


async def missing_migrations(url: str) -> list[str]:
    """The migration files not yet applied to the database at `url` (every one when it has
    never been migrated), by file name: numbered files never applied, and function files
    whose current text was not applied (new, or changed since)."""
    wanted = load_migrations()
    functions = load_functions()
    async with connection(url, "the migration check") as conn:
        table = await (await conn.execute(_MIGRATIONS_TABLE)).fetchone()
        if table is None or table["name"] is None:
            applied: dict[str, str] = {}
        else:
            rows = await (await conn.execute(_MIGRATIONS_APPLIED)).fetchall()
            applied = {row["version"]: row["checksum"] for row in rows}
    missing = [m.label for m in wanted if m.version not in applied]
    return missing + [f.label for f in functions if applied.get(f.version) != f.checksum]


async def require_migrated(url: str, *, hint: str = "") -> None:
    """Raise MigrationError, one line saying to run `listener migrate`, unless every migration
    is applied. `hint` is added to the line (e.g. where the demo's data is)."""
    missing = await missing_migrations(url)
    if not missing:
        return
    if len(missing) == len(load_migrations()) + len(load_functions()):
        what = "the database has no listener schema"
    else:
        noun = "migration" if len(missing) == 1 else "migrations"
        named = ", ".join(missing[:_NAMED])
        if len(missing) > _NAMED:
            named += f" and {len(missing) - _NAMED} more"
        what = f"the database lacks {len(missing)} {noun} ({named})"
    raise MigrationError(f"{what}: {MIGRATE_HINT}{hint}")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
