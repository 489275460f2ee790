"""`listener migrate`: apply `migrations/*.sql` in order, once each, with a checksum.

An advisory lock makes two migrates started together take turns; a file changed after it
was applied is an error, since the database no longer matches what the file says. Every file
not yet applied is applied, in version order, even one numbered below the newest applied.

A listener of the previous release may still be running against a freshly migrated database,
so a function signature, once created, stays for one release: a migration that changes one
adds the new signature and keeps the old working as a wrapper (0008); the schema tests check
that no signature a migration created has gone.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import LiteralString, cast

import psycopg

from listener.db import connect
from listener.errors import DatabaseError, MigrationError

log = logging.getLogger(__name__)

# Any constant 64-bit key: the lock every `listener migrate` takes before looking.
_LOCK_KEY = 7_140_512_003_001

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS listener_migrations (
    version     text PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Path:
    """The folder of SQL files: `migrations/` beside the package, or inside an installed wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "migrations", here / "_migrations"):
        if candidate.is_dir():
            return candidate
    raise MigrationError(f"no migrations folder found near {here}")


def load_migrations(folder: Path | None = None) -> list[Migration]:
    """Every `NNNN_name.sql` file of the folder, in version order."""
    folder = folder or migrations_dir()
    found = []
    for path in sorted(folder.glob("*.sql")):
        version, _, name = path.stem.partition("_")
        if not version.isdigit():
            raise MigrationError(f"migration file {path.name} does not start with a number")
        found.append(Migration(version=version, name=name, sql=path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return found


async def migrate(url: str, folder: Path | None = None) -> list[str]:
    """Apply the pending migrations; return the names applied (empty when up to date)."""
    migrations = load_migrations(folder)
    conn = await connect(url)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            await conn.execute(_CREATE_TABLE)
            rows = await (
                await conn.execute("SELECT version, checksum FROM listener_migrations")
            ).fetchall()
            applied = {row["version"]: row["checksum"] for row in rows}
            for migration in migrations:
                label = f"{migration.version}_{migration.name}.sql"
                if migration.version in applied:
                    if applied[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"migration {label} was changed after it was applied; "
                            "add a new migration file instead of editing an applied one"
                        )
                    continue
                try:
                    async with conn.transaction():
                        await conn.execute(cast(LiteralString, migration.sql))  # type: ignore[redundant-cast]
                        await conn.execute(
                            "INSERT INTO listener_migrations (version, name, checksum) "
                            "VALUES (%s, %s, %s)",
                            (migration.version, migration.name, migration.checksum),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(f"migration {label} failed: {exc}") from exc
                log.info(
                    "migration applied", extra={"action": "migration_applied", "migration": label}
                )
                applied_now.append(label)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    except psycopg.Error as exc:
        raise DatabaseError(f"migrate failed: {exc}") from exc
    finally:
        await conn.close()
    return applied_now
