"""What a real Evolution 2.3.7 showed, through a running listener and the fake
Evolution on 127.0.0.1: the answers of an instance that is not ready, event times against
Evolution's skewed `date_time`, and the smaller points."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from listener.testing import UNREADY, http_settings, serve_fakes
from tests.daemon_harness import running
from tests.helpers import await_until, enqueue, make_campaign, make_leads

Conn = psycopg.Connection[Any]


def row(db: Conn, sql: str, *args: Any) -> tuple[Any, ...] | None:
    return db.execute(sql, args).fetchone()  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", sorted(UNREADY))
async def test_a_send_refused_as_not_ready_holds_the_number_and_spends_nothing(
    db_url: str, db: Conn, kind: str
) -> None:
    # The state read said `open` (a moment before, or a stale read); the send says otherwise.
    cid = make_campaign(db, instance="t1")
    async with serve_fakes() as fakes:
        fakes.unready = {"t1": kind}
        fakes.states = {"t1": "open"}
        settings = {**http_settings(fakes), "instance_recheck": "1h"}
        async with running(db_url, **settings):
            [mid] = enqueue(db, cid, make_leads(db, 1), content="Olá")
            sql = "SELECT status, attempts, wait_reason FROM campaign_messages WHERE id = %s"
            await await_until(lambda: row(db, sql, mid) == ("pending", 0, "instance down"))
            assert len(fakes.sends) == 1  # no quick retry, no retry ladder
            held = "SELECT held_reason FROM listener_instances WHERE instance = 't1'"
            await await_until(lambda: row(db, held) == ("instance down",))


async def test_an_instance_evolution_has_not_loaded_is_held_before_any_send(
    db_url: str, db: Conn
) -> None:
    # Its connectionState answers `{"instance": {"instanceName": "t1"}}`, with no state.
    cid = make_campaign(db, instance="t1")
    async with serve_fakes() as fakes:
        fakes.unready = {"t1": "not_loaded"}
        async with running(db_url, **http_settings(fakes), instance_recheck="1h"):
            [mid] = enqueue(db, cid, make_leads(db, 1), content="Olá")
            sql = "SELECT status, attempts, wait_reason FROM campaign_messages WHERE id = %s"
            await await_until(lambda: row(db, sql, mid) == ("pending", 0, "instance down"))
            assert fakes.sends == []
