"""The status page's one read: a `REPEATABLE READ, READ ONLY` transaction through the indexed
queries of `queries.sql` (`status_*`), so its counts agree with each other and a million
finished rows cost it nothing."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.datetime import TimestamptzLoader

from listener.queries import q
from listener.web.live import Live
from listener.web.snapshot import (
    CAMPAIGN_LIMIT,
    DEAD_LETTER_LIMIT,
    FAILURE_LIMIT,
    FOREVER,
    NEVER,
    Snapshot,
    instance_names,
)


class _Timestamptz(TimestamptzLoader):
    """Loads `infinity` and `-infinity` as FOREVER and NEVER instead of failing the page."""

    def load(self, data: Any) -> datetime:
        if bytes(data) == b"infinity":
            return FOREVER
        if bytes(data) == b"-infinity":
            return NEVER
        return super().load(data)


async def read_snapshot(conn: psycopg.AsyncConnection[Any], live: Live | None) -> Snapshot:
    """The page's snapshot, read on `conn` in a transaction of its own."""
    async with conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        cur.adapters.register_loader("timestamptz", _Timestamptz)
        await cur.execute(q("status_begin"))
        await cur.execute(q("status_timeout"))
        return await _read(cur, live)


async def _rows(
    cur: psycopg.AsyncCursor[dict[str, Any]], name: str, params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    await cur.execute(q(name), params or {})
    return await cur.fetchall()


async def _read(cur: psycopg.AsyncCursor[dict[str, Any]], live: Live | None) -> Snapshot:
    queue = (await _rows(cur, "status_queue"))[0]
    campaigns = await _rows(cur, "status_campaigns", {"limit": CAMPAIGN_LIMIT})
    waiting: dict[UUID, dict[str, dict[str, Any]]] = {}
    for row in await _rows(cur, "status_open"):
        waiting.setdefault(row["campaign_id"], {})[row["reason"]] = row
    ids = [row["id"] for row in campaigns]
    snapshot = Snapshot(
        now=queue["now"],
        campaigns=campaigns,
        waiting=waiting,
        queue=queue,
        in_flight=await _rows(cur, "status_in_flight"),
        throughput=await _rows(cur, "status_throughput"),
        failures=await _rows(cur, "status_failures", {"limit": FAILURE_LIMIT}),
        instances=await _rows(cur, "status_instances"),
        funnel={row["campaign_id"]: row for row in await _rows(cur, "status_funnel")},
        replies={
            row["campaign_id"]: row for row in await _rows(cur, "status_replies", {"ids": ids})
        },
        budgets={
            row["campaign_id"]: row for row in await _rows(cur, "status_budgets", {"ids": ids})
        },
        pools={
            row["campaign_id"]: list(row["instances"])
            for row in await _rows(cur, "status_pools", {"ids": ids})
        },
        sender_instances=await _rows(cur, "status_sender_instances"),
        dead_letters=await _rows(cur, "status_dead_letters", {"limit": DEAD_LETTER_LIMIT}),
        live=live,
    )
    names = sorted(instance_names(snapshot))
    rows = await _rows(cur, "status_instance_sends", {"names": names})
    snapshot.instance_sends = {row["instance"]: row for row in rows}
    return snapshot
