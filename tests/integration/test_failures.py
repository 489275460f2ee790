"""The delivery promises of docs/design.md under failure, in-process with fault-injecting
HTTP providers on 127.0.0.1 and short delays through settings."""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from listener.testing import Reply, http_settings, serve_fakes
from tests.daemon_harness import running
from tests.helpers import await_until, enqueue, make_campaign, make_leads, make_run, statuses

Conn = psycopg.Connection[Any]


def row(db: Conn, sql: str, *params: Any) -> tuple[Any, ...]:
    found = db.execute(sql, params).fetchone()  # type: ignore[arg-type]
    assert found is not None
    return tuple(found)


async def test_full_retry_ladder_ends_failed_after_four_attempts(db_url: str, db: Conn) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 1)
    async with serve_fakes() as fakes:
        fakes.llm_script.extend(
            Reply(500, {"error": {"code": 500, "message": "boom"}}) for _ in range(20)
        )
        async with running(db_url, **http_settings(fakes)):
            enqueue(db, campaign, leads)
            await await_until(lambda: statuses(db).get("failed") == 1, timeout=15)
    status, attempts, last_error = row(
        db, "SELECT status, attempts, last_error FROM campaign_messages"
    )
    assert (status, attempts) == ("failed", 4)
    assert last_error.startswith("failed after 4 attempts")
    assert "boom" in last_error
    # Every try made the first call plus one quick retry: 4 tries, 8 requests, nothing sent.
    assert len(fakes.llm_requests) == 8
    assert fakes.sends == []


async def test_retries_use_every_delay_of_the_ladder(db_url: str, db: Conn) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 1)
    async with serve_fakes() as fakes:
        fakes.llm_script.extend(
            Reply(503, {"error": {"code": 503, "message": "down"}}) for _ in range(20)
        )
        seen: list[float] = []
        fakes.on_llm = lambda _: seen.append(asyncio.get_running_loop().time())
        async with running(
            db_url, quick_retries=0, retry_delays="300ms,600ms,900ms", **http_settings(fakes)
        ):
            enqueue(db, campaign, leads)
            await await_until(lambda: statuses(db).get("failed") == 1, timeout=15)
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert len(seen) == 4
    for gap, expected in zip(gaps, (0.3, 0.6, 0.9), strict=True):
        assert expected - 0.05 <= gap < expected + 0.5


async def test_a_failure_then_a_success_sends_once(db_url: str, db: Conn) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 1)
    async with serve_fakes() as fakes:
        fakes.llm_script.extend([Reply(502, {"error": {"code": 502, "message": "bad gw"}})] * 2)
        async with running(db_url, **http_settings(fakes)):
            enqueue(db, campaign, leads)
            await await_until(lambda: statuses(db).get("sent") == 1, timeout=10)
    assert row(db, "SELECT attempts, last_error FROM campaign_messages") == (2, None)
    assert len(fakes.accepted()) == 1


async def test_a_send_failure_resumes_after_the_last_accepted_part(db_url: str, db: Conn) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 1)
    async with serve_fakes() as fakes:
        fakes.reply_parts = 3
        # Part 1 goes, part 2 fails (and its quick retry), then everything heals.
        fakes.send_script.extend([Reply(201, None), Reply(500, {"e": 1}), Reply(500, {"e": 1})])
        async with running(db_url, **http_settings(fakes)):
            enqueue(db, campaign, leads)
            await await_until(lambda: statuses(db).get("sent") == 1, timeout=10)
    texts = [s["text"] for s in fakes.accepted()]
    assert [t.split("parte ")[1] for t in texts] == ["1.", "2.", "3."]
    # The retry did not ask the LLM for a new text.
    assert len(fakes.llm_requests) == 1
    assert row(db, "SELECT attempts, parts_sent FROM campaign_messages") == (2, 3)


@pytest.mark.parametrize("retry_after", ["1", None])
async def test_429_storm_loses_nothing_and_spends_no_attempt(
    db_url: str, db: Conn, retry_after: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 10)
    headers = {"Retry-After": retry_after} if retry_after else {}
    async with serve_fakes() as fakes:
        storm = [Reply(429, {"error": {"code": 429, "message": "slow down"}}, headers)] * 3
        fakes.llm_script.extend(storm)
        fakes.send_script.extend(storm)
        caplog.set_level(logging.WARNING, logger="listener.providers.gate")
        async with running(db_url, **http_settings(fakes)):
            enqueue(db, campaign, leads)
            await await_until(lambda: statuses(db).get("sent") == 10, timeout=30)
    assert row(db, "SELECT max(attempts), min(attempts) FROM campaign_messages") == (1, 1)
    assert len({s["number"] for s in fakes.accepted()}) == 10
    assert len(fakes.accepted()) == 10
    holds = [r for r in caplog.records if getattr(r, "action", "") == "provider_hold"]
    # Logged once per episode, not once per message: far fewer lines than 429s.
    assert 1 <= len(holds) <= 4


async def test_credentials_refused_hold_back_and_spend_nothing(
    db_url: str, db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 2)
    async with serve_fakes() as fakes:
        fakes.llm_script.append(Reply(401, {"error": {"code": 401, "message": "No auth"}}))
        caplog.set_level(logging.ERROR, logger="listener.providers.gate")
        async with running(db_url, hold="400ms", **http_settings(fakes)):
            enqueue(db, campaign, leads)
            await await_until(lambda: statuses(db).get("sent") == 2, timeout=15)
    assert row(db, "SELECT max(attempts) FROM campaign_messages") == (1,)
    assert any(getattr(r, "action", "") == "provider_hold" for r in caplog.records)
    assert "sk-test-secret" not in caplog.text


async def test_number_not_on_whatsapp_fails_at_once(db_url: str, db: Conn) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 1)
    not_there = {
        "status": 400,
        "error": "Bad Request",
        "response": {"message": [{"exists": False, "jid": "x@s.whatsapp.net", "number": "x"}]},
    }
    async with serve_fakes() as fakes:
        fakes.send_script.append(Reply(400, not_there))
        async with running(db_url, **http_settings(fakes)):
            enqueue(db, campaign, leads)
            await await_until(lambda: statuses(db).get("failed") == 1)
    status, attempts, last_error = row(
        db, "SELECT status, attempts, last_error FROM campaign_messages"
    )
    assert (status, attempts) == ("failed", 1)
    assert "not on WhatsApp" in last_error
    assert len(fakes.sends) == 1


async def test_invalid_phone_and_missing_lead_fail_at_once(db_url: str, db: Conn) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 1)
    db.execute("UPDATE leads SET phone = '12-34' WHERE id = %s", (leads[0],))
    ghost = uuid.uuid4()
    async with serve_fakes() as fakes, running(db_url, **http_settings(fakes)):
        enqueue(db, campaign, [leads[0], ghost])
        await await_until(lambda: statuses(db).get("failed") == 2)
    errors = dict(db.execute("SELECT lead_id, last_error FROM campaign_messages").fetchall())
    assert errors[leads[0]].startswith("invalid phone number")
    assert errors[ghost] == f"lead {ghost} does not exist"
    assert fakes.sends == [] and fakes.llm_requests == []


async def test_empty_reply_after_quick_retries_fails_at_once(db_url: str, db: Conn) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 1)
    empty = {"choices": [{"message": {"role": "assistant", "content": "  "}}]}
    async with serve_fakes() as fakes:
        fakes.llm_script.extend([Reply(200, empty)] * 5)
        async with running(db_url, **http_settings(fakes)):
            enqueue(db, campaign, leads)
            await await_until(lambda: statuses(db).get("failed") == 1)
    status, attempts, last_error = row(
        db, "SELECT status, attempts, last_error FROM campaign_messages"
    )
    assert (status, attempts) == ("failed", 1)
    assert "empty" in last_error
    assert len(fakes.llm_requests) == 2  # the call and its one quick retry


async def test_a_slow_provider_keeps_its_lease_and_is_not_taken_over(db_url: str, db: Conn) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 1)
    async with serve_fakes() as fakes:
        fakes.llm_delay = 2.0  # twice the lease
        settings = {**http_settings(fakes), "lease": "1s", "llm_timeout": "10s"}
        async with (
            running(db_url, worker_id="slow", **settings),
            running(db_url, worker_id="rescuer", **settings),
        ):
            enqueue(db, campaign, leads)
            await await_until(lambda: statuses(db).get("sent") == 1, timeout=15)
            await asyncio.sleep(0.5)
    assert len(fakes.llm_requests) == 1
    assert len(fakes.accepted()) == 1
    assert row(db, "SELECT attempts FROM campaign_messages") == (1,)


async def test_expired_lease_is_taken_back_and_resumes_after_the_last_part(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db)
    run = make_run(db, campaign)
    leads = make_leads(db, 1)
    # A worker that died after storing the text and sending part 1 of 2.
    enqueue(db, campaign, leads, run_id=run)
    db.execute(
        "UPDATE campaign_messages SET status = 'processing', attempts = 1, locked_by = 'dead',"
        " locked_until = now() - interval '1 second', parts = '[\"um\", \"dois\"]',"
        " parts_sent = 1, provider_message_ids = '[\"EVO-old\"]'"
    )
    async with serve_fakes() as fakes, running(db_url, **http_settings(fakes)):
        await await_until(lambda: statuses(db).get("sent") == 1)
    assert [s["text"] for s in fakes.accepted()] == ["dois"]
    assert fakes.llm_requests == []
    ids = row(db, "SELECT provider_message_ids, attempts FROM campaign_messages")
    assert ids[0][0] == "EVO-old" and len(ids[0]) == 2 and ids[1] == 2
    assert row(db, "SELECT status, sent_count FROM campaign_runs") == ("completed", 1)


async def test_the_sweep_skips_messages_past_the_age_limit_and_never_deletes(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 2)
    enqueue(db, campaign, leads[:1], delay_seconds=-7200)  # due two hours ago
    enqueue(db, campaign, leads[1:], delay_seconds=-600)  # due ten minutes ago
    async with running(db_url, sweep_max_age="1h", sweep_interval="1s"):
        await await_until(lambda: statuses(db) == {"sent": 1, "skipped": 1})
    reason = row(db, "SELECT last_error FROM campaign_messages WHERE status = 'skipped'")[0]
    assert "age limit" in reason


async def test_terminated_backends_reconnect_and_keep_sending(db_url: str, db: Conn) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 6)
    async with running(db_url, health_interval="200ms") as daemon:
        enqueue(db, campaign, leads[:3])
        await await_until(lambda: statuses(db).get("sent") == 3)
        killed = db.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
        assert killed is not None and killed[0] >= 2  # the pool and the LISTEN connection
        await await_until(lambda: not daemon.health.listen_ok, timeout=5)
        await await_until(lambda: daemon.health.listen_ok, timeout=10)
        enqueue(db, campaign, leads[3:])
        await await_until(lambda: statuses(db).get("sent") == 6, timeout=15)


def hold_lines(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records if getattr(r, "action", "") == "provider_hold")


async def test_retry_after_zero_backs_off_instead_of_asking_again_at_once(
    db_url: str, db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 1)
    async with serve_fakes() as fakes:
        slow_down = Reply(429, {"error": {"code": 429, "message": "slow"}}, {"Retry-After": "0"})
        fakes.send_script.extend([slow_down] * 6)
        caplog.set_level(logging.INFO, logger="listener.providers.gate")
        async with running(db_url, rate_limit_base="20ms", **http_settings(fakes)):
            enqueue(db, campaign, leads)
            await await_until(lambda: statuses(db) == {"sent": 1}, timeout=15)
    times = [s["at"] for s in fakes.sends]
    assert len(times) == 7  # six refusals, then the one accepted send
    # Exponential backoff from 20 ms over the episode: at least 10+20+40+80+160+320 ms.
    assert times[-1] - times[0] >= 0.6, times
    assert hold_lines(caplog) == 1  # one episode, however many 429s it took
    overs = [r for r in caplog.records if getattr(r, "action", "") == "provider_hold_over"]
    assert len(overs) == 1
    assert row(db, "SELECT attempts FROM campaign_messages") == (1,)


async def test_a_huge_retry_after_is_capped_and_hands_the_message_back(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 1)
    async with serve_fakes() as fakes:
        fakes.send_script.append(
            Reply(429, {"error": {"message": "later"}}, {"Retry-After": "1000000000000"})
        )
        async with running(db_url, **http_settings(fakes)) as daemon:
            enqueue(db, campaign, leads)
            await await_until(lambda: statuses(db) == {"pending": 1} and bool(fakes.sends))
            await await_until(
                lambda: row(db, "SELECT locked_by IS NULL FROM campaign_messages") == (True,)
            )
            assert daemon.processor is not None
            assert daemon.processor.sender_gate.remaining <= 3600
    waits = row(
        db,
        "SELECT attempts, round(extract(epoch FROM scheduled_at - now()) / 60) "
        "FROM campaign_messages",
    )
    assert waits == (0, 60)  # refunded, and due again in an hour, not in 31,000 years


async def test_sigterm_during_a_provider_hold_claims_nothing_more(
    db_url: str, db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    campaign = make_campaign(db)
    first, second = make_leads(db, 2)
    async with serve_fakes() as fakes:
        fakes.send_script.append(Reply(429, {"error": {"message": "slow"}}, {"Retry-After": "1.5"}))
        caplog.set_level(logging.INFO, logger="listener")
        async with running(db_url, shutdown_grace="3s", **http_settings(fakes)):
            [held] = enqueue(db, campaign, [first])
            await await_until(lambda: len(fakes.sends) == 1)  # refused: the sender is held
            [late] = enqueue(db, campaign, [second])
            await asyncio.sleep(0.3)  # its notification arrives while the gate is closed
            stop_at = len(caplog.records)
        # the stop: the held message finishes within the grace period, the other is untouched
        after_stop = caplog.records[stop_at:]
    by_id = dict(
        (r[0], r[1:])
        for r in db.execute(
            "SELECT id, status, attempts, locked_by FROM campaign_messages"
        ).fetchall()
    )
    assert by_id[held] == ("sent", 1, None)
    assert by_id[late] == ("pending", 0, None)
    assert not [r for r in after_stop if getattr(r, "action", "") == "batch_claimed"]
    assert len(fakes.accepted()) == 1


async def test_a_reply_with_nothing_to_send_is_asked_again(db_url: str, db: Conn) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 1)
    empty_list = {"choices": [{"message": {"content": '{"messages": []}'}}]}
    async with serve_fakes() as fakes:
        fakes.llm_script.append(Reply(200, empty_list))
        async with running(db_url, **http_settings(fakes)):
            enqueue(db, campaign, leads)
            await await_until(lambda: statuses(db) == {"sent": 1}, timeout=15)
    assert len(fakes.llm_requests) == 2
    assert row(db, "SELECT attempts FROM campaign_messages") == (1,)


async def test_a_reply_with_nothing_to_send_fails_after_the_quick_retries(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 1)
    empty_list = {"choices": [{"message": {"content": '{"messages": []}'}}]}
    async with serve_fakes() as fakes:
        fakes.llm_script.extend([Reply(200, empty_list)] * 3)
        async with running(db_url, quick_retries=2, **http_settings(fakes)):
            enqueue(db, campaign, leads)
            await await_until(lambda: statuses(db) == {"failed": 1}, timeout=15)
    assert len(fakes.llm_requests) == 3
    error = row(db, "SELECT last_error FROM campaign_messages")[0]
    assert "no text to send" in error


async def test_a_send_that_timed_out_is_not_repeated_until_the_next_try(
    db_url: str, db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 1)
    async with serve_fakes() as fakes:
        fakes.send_script.append(Reply(delay=0.5))  # answers after the read timeout
        async with running(db_url, send_timeout="100ms", **http_settings(fakes)):
            enqueue(db, campaign, leads)
            await await_until(lambda: statuses(db) == {"sent": 1}, timeout=15)
    # The first try ended on the timeout (it may have been delivered): no quick retry within
    # it; the second try, after the first retry delay, sent the part again.
    assert row(db, "SELECT attempts FROM campaign_messages") == (2,)
    retries = [r for r in caplog.records if getattr(r, "action", "") == "message_retry"]
    assert len(retries) == 1 and "may have been delivered" in retries[0].getMessage()


async def test_a_batched_write_chosen_as_a_deadlock_victim_runs_again(
    db_url: str, db: Conn
) -> None:
    from psycopg_pool import AsyncConnectionPool

    from listener.queue.store import Store
    from tests.daemon_harness import fast_settings

    campaign = make_campaign(db)
    ids = sorted(enqueue(db, campaign, make_leads(db, 2)))
    db.execute(
        "UPDATE campaign_messages SET status = 'processing', attempts = 1, locked_by = 'w',"
        " locked_until = now() + interval '1 minute'"
    )
    first, second = ids
    touch = "UPDATE campaign_messages SET updated_at = now() WHERE id = %s"
    # The other side waits long before it looks for deadlocks, so ours is the victim.
    other = await psycopg.AsyncConnection.connect(db_url, options="-c deadlock_timeout=30s")
    pool = AsyncConnectionPool(
        db_url,
        kwargs={"autocommit": True, "options": "-c deadlock_timeout=100ms"},
        open=False,
        min_size=1,
    )
    await pool.open(wait=True)
    try:
        await other.execute(touch, (second,))  # holds the second row
        store = Store(pool, fast_settings(worker_id="w"))
        renew = asyncio.create_task(
            store.writes.returning_ids(
                "renew_leases", {"ids": ids, "worker": "w", "lease": timedelta(minutes=5)}
            )
        )

        def ours_waits() -> bool:  # ours holds the first row and waits for the second
            row = db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%%locked_until = now()%%' AND pid <> pg_backend_pid()"
            ).fetchone()
            return row is not None and row[0] == 1

        await await_until(ours_waits, timeout=10)
        await other.execute(touch, (first,))  # the cycle: ours is chosen, and runs again
        await other.commit()
        kept = await asyncio.wait_for(renew, timeout=20)
    finally:
        await other.close()
        await pool.close()
    assert kept == {first, second}
