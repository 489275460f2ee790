"""A message gives its place among the `concurrency` in flight back once its last part is
accepted: recording that part is our own write, and the next message's work does not wait
for it (nor for a store or record of another message, which go on connections of their own),
nor does the claim: a message being recorded takes none of its room.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg

from listener.testing import http_settings, serve_fakes
from tests.daemon_harness import running
from tests.helpers import await_until, enqueue, make_campaign, make_leads

Conn = psycopg.Connection[Any]


def status_of(db: Conn, message: UUID) -> str:
    row = db.execute("SELECT status FROM campaign_messages WHERE id = %s", (message,)).fetchone()
    assert row is not None
    return str(row[0])


async def test_the_next_message_goes_while_the_last_part_of_one_is_being_recorded(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db)
    first_lead, *others = make_leads(db, 3)
    [first] = enqueue(db, campaign, [first_lead])
    later = enqueue(db, campaign, others, delay_seconds=0.2)
    first_phone = db.execute("SELECT phone FROM leads WHERE id = %s", (first_lead,)).fetchone()
    assert first_phone is not None
    # A connection of the test holds the first message's row from the moment its only part is
    # accepted: its record waits for the row as long as the test keeps it.
    holder = psycopg.connect(db_url)
    held: list[str] = []

    def hold_the_first(accepted: dict[str, Any]) -> None:
        if not held and accepted["number"].endswith(first_phone[0][-8:]):
            holder.execute("SELECT 1 FROM campaign_messages WHERE id = %s FOR UPDATE", (first,))
            held.append(accepted["id"])

    try:
        async with serve_fakes() as fakes:
            fakes.on_accept = hold_the_first
            async with running(db_url, **http_settings(fakes), concurrency=1):
                # One place in flight, a claim ahead of one window (two messages held that
                # have not gone): the two others went out while the first's record waits on
                # its row (the second's record waits behind it, and the third was claimed
                # meanwhile).
                await await_until(lambda: fakes.send_calls == 3)
                assert held
                assert status_of(db, first) == "processing"
                holder.rollback()
                await await_until(lambda: {status_of(db, m) for m in (first, *later)} == {"sent"})
            numbers = [s["number"][-8:] for s in fakes.accepted()]
            assert numbers[0] == first_phone[0][-8:] not in numbers[1:]
    finally:
        holder.close()
