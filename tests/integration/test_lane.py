"""A connection of its own (`Lane`): what it keeps, what it opens again."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from listener.db import Lane
from listener.queue.writes import GENERIC_PLANS

Conn = psycopg.Connection[Any]

PID = "SELECT pg_backend_pid(), current_setting('plan_cache_mode')"


async def test_a_lane_keeps_its_connection_after_a_statement_refused_for_its_data(
    db_url: str, db: Conn
) -> None:
    """A statement refused for what it carries (as a batched write with a bad row, which then
    runs item by item) leaves the lane's connection as it was: no new connection per bad row.
    One that was lost is replaced, with its setup run again."""
    async with AsyncConnectionPool(db_url, min_size=1, kwargs={"autocommit": True}) as pool:
        lane = Lane(pool, setup=GENERIC_PLANS)
        try:
            [(first, mode)] = await lane.fetchall(PID, {})
            assert mode == "force_generic_plan"
            for bad in ("SELECT 1 / 0", "SELECT 'x'::int", "SELECT no_such_column"):
                with pytest.raises(psycopg.Error) as refused:
                    await lane.fetchall(bad, {})
                assert not isinstance(refused.value, psycopg.OperationalError)
                assert (await lane.fetchall(PID, {}))[0][0] == first, bad
            db.execute("SELECT pg_terminate_backend(%s)", (first,))
            with pytest.raises(psycopg.OperationalError):
                await lane.fetchall("SELECT 1", {})
            [(second, mode)] = await lane.fetchall(PID, {})
            assert second != first and mode == "force_generic_plan"
        finally:
            await lane.close()
