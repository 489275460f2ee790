"""`listener migrate`'s runner: files that opt out of their transaction (CREATE INDEX
CONCURRENTLY), the advisory lock around them, and a database from before the baseline."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest

from listener.commands.cli import entry
from listener.commands.migrate import _CREATE_TABLE, REWORDED, migrate
from listener.commands.migration_files import load_migrations
from listener.errors import MigrationError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "migrations_no_transaction"

# The files of the development versions that the baseline replaced, with the checksums they
# had: what `listener_migrations` holds in a database those versions migrated.
PRE_BASELINE = [
    ("0001", "schema", "03e081b3452c043847ece1ac38d38353baf3e1b18eb59cd16966ab2a86145c7f"),
    ("0002", "functions", "f577b4c870167f4fbae1d3c3ec7cd25d55ec0b4c382276cd1f2632df2d1721fc"),
    ("0003", "pacing", "d45b65525f7b64ad60f18db2cb14b70ea2d917f351322b241752ece58af78ef6"),
    ("0004", "context_plan", "47ea0d7cb1029690dba83b1d5e097bd1910d594e5bace3f3600220dbcbd5d2a5"),
    ("0005", "cap_slots", "d034b4368b18581ffe5ea02274343ca6701489e0537f2eb4fae56ce61d2711f2"),
    (
        "0006",
        "paused_campaigns",
        "d7220747d7bbb87d225fbd2b5f4465fbdba40734a3d8794b47048e00e0631fc5",
    ),
    ("0007", "gap_pacing", "0448edc9d8f1fb47ba95d5a0a1aac2de35939d503f015338286a95c03e60bc83"),
    (
        "0008",
        "compat_signatures",
        "35b0b44aff0cebcca55b2134e4eaab33f414273ebfb2948a2dd92687b892524d",
    ),
    (
        "0009",
        "started_messages",
        "0da9121ed58472a711d7250fa6537bc513306b127673b00f35212bb86bdd0216",
    ),
]


def _index(url: str, name: str) -> tuple[bool, bool] | None:
    """(valid, unique) of the index, or None when there is none."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT indisvalid, indisunique FROM pg_index WHERE indexrelid = to_regclass(%s)",
            (name,),
        ).fetchone()
    return None if row is None else (row[0], row[1])


def _applied(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT version, name FROM listener_migrations ORDER BY 1").fetchall()
    return [f"{version}_{name}.sql" for version, name in rows]


def _only_the_table(tmp_path: Path) -> Path:
    folder = tmp_path / "first"
    folder.mkdir()
    shutil.copy(FIXTURE / "0001_items.sql", folder)
    return folder


# --------------------------------------------------------------------------------------------
# Files outside a transaction
# --------------------------------------------------------------------------------------------


async def test_a_no_transaction_file_builds_its_index_concurrently(empty_db_url: str) -> None:
    assert [m.transactional for m in load_migrations(FIXTURE)] == [True, False]

    assert await migrate(empty_db_url, FIXTURE) == ["0001_items.sql", "0002_items_index.sql"]

    assert _index(empty_db_url, "idx_items_v") == (True, True)
    with psycopg.connect(empty_db_url) as conn:
        comment = conn.execute("SELECT obj_description('idx_items_v'::regclass)").fetchone()
        assert comment == ("one row per v; built concurrently",)
        assert conn.execute("SELECT items_count()").fetchone() == (0,)
    assert await migrate(empty_db_url, FIXTURE) == []


async def test_a_failing_no_transaction_file_drops_its_invalid_index_and_runs_again(
    empty_db_url: str, tmp_path: Path
) -> None:
    await migrate(empty_db_url, _only_the_table(tmp_path))
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO items (id, v) VALUES (1, 5), (2, 5)")

    with pytest.raises(MigrationError) as caught:
        await migrate(empty_db_url, FIXTURE)

    message = str(caught.value)
    assert message.startswith("migration 0002_items_index.sql failed at statement 1 of 3: ")
    assert "could not create unique index" in message
    assert "dropped the invalid index public.idx_items_v it left" in message
    assert "\n" not in message
    assert _index(empty_db_url, "idx_items_v") is None  # not left INVALID
    assert _applied(empty_db_url) == ["0001_items.sql"]

    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM items WHERE id = 2")
    assert await migrate(empty_db_url, FIXTURE) == ["0002_items_index.sql"]
    assert _index(empty_db_url, "idx_items_v") == (True, True)


async def test_an_index_an_interrupted_migrate_left_invalid_is_built_afresh(
    empty_db_url: str, tmp_path: Path
) -> None:
    """`IF NOT EXISTS` would take an INVALID index of the same name for done; the runner drops
    it first (as when a migrate was killed during the build)."""
    await migrate(empty_db_url, _only_the_table(tmp_path))
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO items (id, v) VALUES (1, 5), (2, 5)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY idx_items_v ON items (v)")
        conn.execute("DELETE FROM items WHERE id = 2")
    assert _index(empty_db_url, "idx_items_v") == (False, True)

    assert await migrate(empty_db_url, FIXTURE) == ["0002_items_index.sql"]

    assert _index(empty_db_url, "idx_items_v") == (True, True)


async def test_a_concurrent_index_in_a_transaction_is_refused_with_the_fix(
    empty_db_url: str, tmp_path: Path
) -> None:
    folder = _only_the_table(tmp_path)
    text = (FIXTURE / "0002_items_index.sql").read_text()
    (folder / "0002_items_index.sql").write_text(text.split("\n", 1)[1])  # no marker line

    with pytest.raises(MigrationError) as caught:
        await migrate(empty_db_url, folder)

    assert str(caught.value) == (
        "migration 0002_items_index.sql builds an index CONCURRENTLY, which cannot run in a"
        " transaction: make `-- listener: no-transaction` its first line"
    )
    assert _applied(empty_db_url) == ["0001_items.sql"]


async def test_a_migrate_waiting_for_the_lock_does_not_hold_up_a_concurrent_index(
    empty_db_url: str,
) -> None:
    """A second migrate waits for the first one's advisory lock without holding a snapshot:
    CREATE INDEX CONCURRENTLY waits for every older snapshot, so a migrate blocked inside
    pg_advisory_lock and the build would wait for each other (a deadlock)."""
    from listener.commands.migrate import _LOCK_KEY

    first = await psycopg.AsyncConnection.connect(empty_db_url, autocommit=True)
    try:
        await first.execute("CREATE TABLE items (id integer PRIMARY KEY, v integer NOT NULL)")
        await first.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        second = asyncio.create_task(migrate(empty_db_url, FIXTURE))
        # The second migrate is connected and waiting for the lock.
        for _ in range(500):
            row = await (
                await first.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).fetchone()
            if row is not None and row[0] >= 1:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        assert not second.done()
        # What the first migrate would do while holding the lock: an index on the live table.
        await first.execute("SET statement_timeout = '60s'")
        await first.execute("CREATE INDEX CONCURRENTLY idx_items_id_v ON items (id, v)")
        await first.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
        assert await asyncio.wait_for(second, 60) == ["0001_items.sql", "0002_items_index.sql"]
    finally:
        await first.close()
    assert _index(empty_db_url, "idx_items_id_v") == (True, False)
    assert _index(empty_db_url, "idx_items_v") == (True, True)


async def test_two_migrates_with_a_concurrent_index_apply_each_file_once(
    empty_db_url: str,
) -> None:
    results = await asyncio.gather(migrate(empty_db_url, FIXTURE), migrate(empty_db_url, FIXTURE))
    assert sorted(results) == [[], ["0001_items.sql", "0002_items_index.sql"]]
    assert _index(empty_db_url, "idx_items_v") == (True, True)


# --------------------------------------------------------------------------------------------
# A database migrated before the baseline
# --------------------------------------------------------------------------------------------


def _migrated_by_development_files(url: str, rows: list[tuple[str, str, str]]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_CREATE_TABLE)
        for row in rows:
            conn.execute(
                "INSERT INTO listener_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                row,
            )


def test_migrate_on_a_database_from_before_the_baseline_says_to_recreate_it(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _migrated_by_development_files(empty_db_url, PRE_BASELINE)
    monkeypatch.setenv("DATABASE_URL", empty_db_url)

    assert entry(["migrate"]) == 1

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "listener: this database was migrated by a development version before the baseline"
        " migrations (it has 0009_started_messages.sql); recreate it (drop the database, create it"
        " empty) and run `listener migrate` again\n"
    )
    assert len(_applied(empty_db_url)) == len(PRE_BASELINE)  # nothing applied, nothing changed


@pytest.mark.parametrize("rows", [PRE_BASELINE[:1], PRE_BASELINE[6:7]], ids=["0001", "0007"])
async def test_any_development_file_marks_a_database_from_before_the_baseline(
    empty_db_url: str, rows: list[tuple[str, str, str]]
) -> None:
    """Even a database a development version migrated only in part: its 0001_schema.sql has the
    baseline's name but not its checksum."""
    _migrated_by_development_files(empty_db_url, rows)

    with pytest.raises(MigrationError, match="migrated by a development version before"):
        await migrate(empty_db_url)

    with psycopg.connect(empty_db_url) as conn:
        tables: Any = conn.execute("SELECT to_regclass('campaign_messages')").fetchone()
    assert tables == (None,)


# --------------------------------------------------------------------------------------------
# Files reworded after they were applied
# --------------------------------------------------------------------------------------------

_OLD_DOC = "DESIGN" + ".md"  # a document outside the repository, named so nowhere else here
#: The first lines the reworded files had when databases recorded their earlier checksums.
_EARLIER_FIRST_LINES = {
    "0005": f"-- listener 0005: delivery feedback from Evolution's webhooks ({_OLD_DOC}"
    ' "Delivery feedback").',
    "0009": f'-- listener 0009: sender pools ({_OLD_DOC}, "Sender pool"). A campaign may send'
    " through several",
}


def test_a_reworded_file_differs_from_its_earlier_text_in_its_first_comment_line() -> None:
    """REWORDED may only list texts whose statements are the current ones: here the earlier
    text is the current one with its first line (a comment) as it was."""
    files = {m.version: m for m in load_migrations()}
    assert set(REWORDED) == set(_EARLIER_FIRST_LINES)
    for version, checksums in REWORDED.items():
        current = files[version].sql
        first, rest = current.split("\n", 1)
        assert first.startswith("-- ")
        earlier = _EARLIER_FIRST_LINES[version] + "\n" + rest
        assert hashlib.sha256(earlier.encode()).hexdigest() in checksums


async def test_a_database_that_applied_a_reworded_file_migrates_on(empty_db_url: str) -> None:
    await migrate(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        for version, checksums in REWORDED.items():
            conn.execute(
                "UPDATE listener_migrations SET checksum = %s WHERE version = %s",
                (next(iter(checksums)), version),
            )

    assert await migrate(empty_db_url) == []

    files = {m.version: m.checksum for m in load_migrations()}
    with psycopg.connect(empty_db_url) as conn:
        rows = conn.execute(
            "SELECT version, checksum FROM listener_migrations WHERE version = ANY(%s)",
            (list(REWORDED),),
        ).fetchall()
    assert dict(rows) == {version: files[version] for version in REWORDED}
