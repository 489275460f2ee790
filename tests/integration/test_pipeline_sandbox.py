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
