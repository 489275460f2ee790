"""What a run cost its database, per job: statements, tuples written (HOT updates apart), WAL
bytes and buffer blocks, for any queue, read in one shared form so ours and the peers compare.

- Statements are counted in this process, at the drivers (psycopg's async cursors, asyncpg's
  connection methods), while a `StatementCounter` is open: PG 15 keeps no per-database count
  and pg_stat_statements needs a server restart to load.
- Tuples and blocks come from `pg_stat_database` and `pg_stat_user_tables` of the scratch
  database only, so other work on the server is not counted.
- WAL: `pg_current_wal_lsn()` moves with every database on the server, so the bytes of this
  database are read back from the WAL itself with pg_walinspect (PG 15 contrib): the records
  that touch one of its blocks, and the commit records of their transactions. The server-wide
  LSN difference is kept too (`wal_bytes_server`), for a quiet server where they agree. A
  temporary replication slot holds the run's WAL until it is read (other work on the server
  drops databases, and each drop's checkpoint would recycle it).

    with dbwork.measured(url, n) as figures:
        ...  # the drain; its connections closed by the end of the block
    print(dbwork.summary(figures))
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

DATABASE_COUNTERS = (
    "xact_commit",
    "tup_returned",
    "tup_fetched",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
    "blks_hit",
    "blks_read",
)


@dataclass
class Snapshot:
    """One reading of a scratch database's counters and the server's WAL position."""

    counters: dict[str, int]
    tables: dict[str, dict[str, int]]
    lsn: str
    database_oid: int


def snapshot(url: str) -> Snapshot:
    """Read the counters. A backend reports its counters when its transaction ends or it
    exits, and the stats collector publishes them a moment later: read after the worker's
    connections closed, and after a short wait."""
    time.sleep(1.0)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        query = sql.SQL(
            "SELECT {}, oid FROM pg_stat_database d JOIN pg_database USING (datname) "
            "WHERE datname = current_database()"
        ).format(sql.SQL(", ").join(map(sql.Identifier, DATABASE_COUNTERS)))
        row = conn.execute(query).fetchone()
        assert row is not None
        counters = dict(zip(DATABASE_COUNTERS, map(int, row[:-1]), strict=True))
        tables = {
            str(r[0]): {"ins": int(r[1]), "upd": int(r[2]), "hot_upd": int(r[3]), "del": int(r[4])}
            for r in conn.execute(
                "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del "
                "FROM pg_stat_user_tables"
            )
        }
        lsn_row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert lsn_row is not None
    return Snapshot(counters, tables, str(lsn_row[0]), int(row[-1]))


def wal_of_database(url: str, before: Snapshot, after: Snapshot) -> dict[str, int] | None:
    """The WAL this database wrote between two snapshots (bytes, records, full-page images),
    or None when pg_walinspect is missing or the WAL was recycled meanwhile."""
    pattern = f"% rel %/{before.database_oid}/%"
    query = """
        WITH r AS (
            SELECT xid, resource_manager, record_length, fpi_length,
                   block_ref LIKE %(pattern)s AS ours
              FROM pg_get_wal_records_info(%(start)s::pg_lsn, %(end)s::pg_lsn)
        ), xids AS (SELECT DISTINCT xid FROM r WHERE ours AND xid <> '0')
        SELECT count(*), COALESCE(sum(record_length), 0), COALESCE(sum(fpi_length), 0),
               count(*) FILTER (WHERE resource_manager = 'Btree'),
               count(*) FILTER (WHERE resource_manager IN ('Heap', 'Heap2'))
          FROM r
         WHERE ours OR (resource_manager = 'Transaction' AND xid IN (SELECT xid FROM xids))
    """
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
            row = conn.execute(
                query, {"pattern": pattern, "start": before.lsn, "end": after.lsn}
            ).fetchone()
    except psycopg.Error as exc:
        print(f"  (WAL of the database not read: {exc})")
        return None
    assert row is not None
    return {
        "records": int(row[0]),
        "bytes": int(row[1]),
        "fpi_bytes": int(row[2]),
        "btree_records": int(row[3]),
        "heap_records": int(row[4]),
    }


def lsn_bytes(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def per_job(
    url: str, before: Snapshot, after: Snapshot, n: int, statements: int | None
) -> dict[str, Any]:
    """The database's work per job between two snapshots, and per table."""
    delta = {k: after.counters[k] - before.counters[k] for k in DATABASE_COUNTERS}
    tables: dict[str, dict[str, float]] = {}
    hot = 0
    for name, now in after.tables.items():
        was = before.tables.get(name, {})
        moved = {k: v - was.get(k, 0) for k, v in now.items()}
        hot += moved["hot_upd"]
        if any(moved.values()):
            tables[name] = {k: round(v / n, 3) for k, v in moved.items()}
    written = delta["tup_inserted"] + delta["tup_updated"] + delta["tup_deleted"]
    wal = wal_of_database(url, before, after)
    result: dict[str, Any] = {
        "statements": round(statements / n, 3) if statements is not None else None,
        "transactions": round(delta["xact_commit"] / n, 3),
        "tuples_written": round(written / n, 3),
        "inserted": round(delta["tup_inserted"] / n, 3),
        "updated": round(delta["tup_updated"] / n, 3),
        "hot_updated": round(hot / n, 3),
        "deleted": round(delta["tup_deleted"] / n, 3),
        "returned": round(delta["tup_returned"] / n, 3),
        "fetched": round(delta["tup_fetched"] / n, 3),
        "blocks": round((delta["blks_hit"] + delta["blks_read"]) / n, 2),
        "wal_bytes": round(wal["bytes"] / n, 1) if wal else None,
        "wal_records": round(wal["records"] / n, 2) if wal else None,
        "wal_fpi_bytes": round(wal["fpi_bytes"] / n, 1) if wal else None,
        # Full-page images follow checkpoints (other work's DROP DATABASE forces one): the
        # bytes without them are what the queue's own writes cost, steady between runs.
        "wal_bytes_without_fpi": round((wal["bytes"] - wal["fpi_bytes"]) / n, 1) if wal else None,
        # Index entries written (and the odd page split), and heap changes (inserts, updates,
        # row locks, page pruning): what the WAL says the writes were.
        "wal_btree_records": round(wal["btree_records"] / n, 2) if wal else None,
        "wal_heap_records": round(wal["heap_records"] / n, 2) if wal else None,
        "wal_bytes_server": round((lsn_bytes(after.lsn) - lsn_bytes(before.lsn)) / n, 1),
        "tables": tables,
    }
    return result


def summary(figures: dict[str, Any]) -> str:
    """One line of the per-job figures for the console."""
    shown = (
        "statements",
        "transactions",
        "tuples_written",
        "updated",
        "hot_updated",
        "inserted",
        "deleted",
        "returned",
        "blocks",
        "wal_bytes",
        "wal_bytes_without_fpi",
        "wal_records",
        "wal_heap_records",
        "wal_btree_records",
    )
    return ", ".join(f"{k} {figures[k]:g}" for k in shown if figures.get(k) is not None)


@contextlib.contextmanager
def measured(url: str, n: int) -> Iterator[dict[str, Any]]:
    """Measure the block's database work per job (of `n`) into the dict it yields."""
    figures: dict[str, Any] = {}
    with psycopg.connect(url, autocommit=True) as keeper:
        slot = f"listener_bench_wal_{os.getpid()}"
        # Temporary (dropped with this session), reserving WAL from now on.
        keeper.execute("SELECT pg_create_physical_replication_slot(%s, true, true)", (slot,))
        before = snapshot(url)
        with StatementCounter().open() as counter:
            yield figures
        figures.update(per_job(url, before, snapshot(url), n, counter.count))


@dataclass
class StatementCounter:
    """Counts the statements this process sends through psycopg's async cursors and asyncpg's
    connections while open (a context manager; the patches are undone on exit)."""

    count: int = 0
    _undo: list[Callable[[], None]] = field(default_factory=list)

    def _wrap(self, owner: Any, name: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await original(*args, **kwargs)

        setattr(owner, name, counted)
        self._undo.append(lambda: setattr(owner, name, original))

    @contextlib.contextmanager
    def open(self) -> Iterator[StatementCounter]:
        self._wrap(psycopg.AsyncCursor, "execute")
        self._wrap(psycopg.AsyncCursor, "executemany")
        try:
            import asyncpg
        except ImportError:
            asyncpg = None
        if asyncpg is not None:
            for name in ("execute", "executemany", "fetch", "fetchrow", "fetchval"):
                self._wrap(asyncpg.Connection, name)
        try:
            yield self
        finally:
            while self._undo:
                self._undo.pop()()
