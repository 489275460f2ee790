"""The sandbox sender's outbox: every part the sandbox "sent", one `sandbox_outbox` row each,
written a group commit at a time (the demo and the benchmarks read it back)."""

from __future__ import annotations

from collections.abc import Sequence

from psycopg_pool import AsyncConnectionPool

from listener.arrays import TextArray
from listener.queries import q


async def record_sandbox_parts(
    pool: AsyncConnectionPool, parts: Sequence[tuple[str, str, str, str]]
) -> None:
    """One `sandbox_outbox` row per accepted part: (instance, number, text, provider id)."""
    async with pool.connection() as conn:
        await conn.execute(
            q("sandbox_send"),
            {
                "instances": TextArray([p[0] for p in parts]),
                "numbers": TextArray([p[1] for p in parts]),
                "texts": TextArray([p[2] for p in parts]),
                "provider_ids": TextArray([p[3] for p in parts]),
            },
        )
