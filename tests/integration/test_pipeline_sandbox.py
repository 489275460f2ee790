from __future__ import annotations

from typing import Any

import psycopg

from tests.daemon_harness import running
from tests.helpers import await_until, enqueue, make_campaign, make_leads, statuses


async def test_inserted_rows_are_sent_with_no_other_action(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 3)
    async with running(db_url):
        ids = enqueue(db, campaign, leads)
        await await_until(lambda: statuses(db).get("sent") == 3)
    rows = db.execute("SELECT count(*) FROM sandbox_outbox").fetchone()
    assert rows == (3,)
    assert len(ids) == 3


async def test_a_backlog_is_claimed_a_window_at_a_time(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    # A claim waits until a window's worth (the concurrency) of room is free, so every claim
    # of a backlog but the last brings at least that many rows: 300 rows at concurrency 10 in
    # at most 30 claims. Claiming whatever room a few finished messages left made cohorts of a
    # handful that each claimed, stored and recorded apart.
    campaign = make_campaign(db)
    leads = make_leads(db, 300)
    enqueue(db, campaign, leads)
    async with running(db_url, concurrency=10) as daemon:
        await await_until(lambda: statuses(db).get("sent") == 300, timeout=60)
        claims = daemon.metrics.registry.get_sample_value("listener_claims_total")
    assert claims is not None
    assert 300 / 20 <= claims <= 300 / 10
