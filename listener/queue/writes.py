"""The batched statements of a message's writes (group commit): each batch of stored parts,
recorded parts or outcomes is one guarded statement (state, owner, part number), its rows
touched in id order; one Postgres picks as a deadlock's victim is simply run again. Their
arrays are written in one pass each (listener/arrays.py).

`Store` (store.py) queues the writes; this module runs them."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from operator import attrgetter
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from listener.arrays import (
    BigintArray,
    BoolArray,
    Float8Array,
    IntegerArray,
    TextArray,
    UuidArray,
)
from listener.db import Lane, again_on_rollback
from listener.jobs import Finish, RecordPart, StoreParts
from listener.providers.base import Usage
from listener.queries import q
from listener.text import clean_text, json_texts


def is_data_error(exc: BaseException) -> bool:
    """A write refused for what it carries (bytes Postgres cannot store, a constraint), not
    for the connection: running it again will not help, running it alone isolates it."""
    return isinstance(exc, psycopg.DataError | psycopg.IntegrityError | UnicodeError)


def is_connection_error(exc: BaseException) -> bool:
    """The write may not have reached Postgres (or its answer did not come back)."""
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


# A batched write's items by message id (C-level getters: no Python call per item).
by_id = attrgetter("id")
# Batched writes touch their rows in id order (a UUID's order is its integer's), the order an
# index scan of `id = ANY(...)` (renewing leases) uses too, which keeps deadlocks between them
# rare; a plan that does not follow it is covered by running the victim again.
id_order = attrgetter("id.int")


def _optional(text: str | None) -> str | None:
    return None if text is None else clean_text(text)


_NO_USAGE = Usage()

# The state of a leased row, passed as a parameter where a literal would lead a prepared
# statement's generic plan to the lease index (queries.sql, store_parts).
PROCESSING = "processing"


def _usage_params(usages: Sequence[Usage | None]) -> dict[str, list[Any]]:
    """The usage columns of a batched write, one entry per item (no calls: zeros, NULLs)."""
    each = [u or _NO_USAGE for u in usages]
    return {
        "prompt_tokens": BigintArray([u.prompt_tokens for u in each]),
        "completion_tokens": BigintArray([u.completion_tokens for u in each]),
        "costs": Float8Array([float(u.cost_usd) for u in each]),
        "models": TextArray([_optional(u.model) for u in each]),
        "fallbacks": BoolArray([u.fallback if u.model is not None else None for u in each]),
    }


#: Run once on each connection of the batched writes (see BatchedWrites).
GENERIC_PLANS = "SET plan_cache_mode = force_generic_plan"


class BatchedWrites:
    """One statement per batch of a message's writes, for one worker.

    Stored parts (and outcomes) go through one connection of their own (a `Lane`: each group
    commit runs one batch at a time), recorded parts through another: a message's place in
    flight is free once its last part is accepted (Processor._run), so the next claim's
    messages store their parts while the last ones record theirs, and on one connection each
    would wait for the other. On both every statement keeps its generic plan. Left to choose,
    the plan cache planned each batch again (its custom plans look cheaper: the lease index,
    which the statistics take for nearly empty, read in full and hashed against the batch) and
    paid the planning, about 200 µs of Postgres CPU, at every batch; the generic plan finds
    each row by its primary key from the batch's ids whatever the number of rows in flight
    (docs/BENCHMARKS.md). A lane also spares each batch the pool's checkout."""

    def __init__(self, pool: AsyncConnectionPool, worker: str) -> None:
        self.pool = pool
        self.worker = worker
        stores, records = Lane(pool, setup=GENERIC_PLANS), Lane(pool, setup=GENERIC_PLANS)
        self.lanes = {"store_parts": stores, "record_parts": records, "finish": stores}

    async def returning_ids(
        self, name: str, params: dict[str, Any], *, lane: Lane | None = None
    ) -> set[Hashable]:
        """Run one batched write (on `lane` when given, else on its own lane if it has one,
        else on a pool connection). Each is a single guarded statement (state, owner, part
        number), so when Postgres picks it as the victim of a deadlock with another of our
        writes it is simply run again."""

        lane = lane or self.lanes.get(name)

        async def run() -> set[Hashable]:
            if lane is not None:
                return {row[0] for row in await lane.fetchall(q(name), params)}
            async with self.pool.connection() as conn:
                cur = await conn.execute(q(name), params)
                return {row[0] for row in await cur.fetchall()}

        return await again_on_rollback(run, name=name)

    async def store(self, items: list[StoreParts]) -> set[Hashable]:
        items = sorted(items, key=id_order)
        stored = await self.returning_ids(
            "store_parts",
            {
                "ids": UuidArray([i.id for i in items]),
                # Text and ids were cleaned where they came in (listener/text.py); a row that
                # Postgres still refuses fails alone (GroupCommit's isolate).
                "texts": TextArray([i.text for i in items]),
                "parts": TextArray([json_texts(i.parts) for i in items]),
                "worker": self.worker,
                **_usage_params([i.usage for i in items]),
                "processing": PROCESSING,
            },
        )
        if len(stored) < len(items):  # rare: a lost lease, or a store run again (see the SQL)
            missed = [i.id for i in items if i.id not in stored]
            stored |= await self.returning_ids(
                "stored_parts", {"ids": missed, "worker": self.worker}
            )
        return stored

    async def record(self, items: list[RecordPart]) -> set[Hashable]:
        items = sorted(items, key=id_order)
        return await self.returning_ids(
            "record_parts",
            {
                "ids": UuidArray([i.id for i in items]),
                "part_nos": IntegerArray([i.part_no for i in items]),
                "provider_ids": TextArray([i.provider_id for i in items]),
                "finals": BoolArray([i.final for i in items]),
                "instances": TextArray([i.instance for i in items]),
                "worker": self.worker,
                "processing": PROCESSING,
            },
        )

    async def finish(self, items: list[Finish]) -> set[Hashable]:
        items = sorted(items, key=id_order)
        return await self.returning_ids(
            "finish",
            {
                "ids": UuidArray([i.id for i in items]),
                "statuses": TextArray([i.status for i in items]),
                "scheduled": [i.scheduled_at for i in items],
                "refunds": IntegerArray([i.refund for i in items]),
                "errors": TextArray([_optional(i.last_error) for i in items]),
                "reasons": TextArray([i.wait_reason for i in items]),
                "worker": self.worker,
                **_usage_params([i.usage for i in items]),
                "processing": PROCESSING,
            },
        )
