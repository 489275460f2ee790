"""A big hold never freezes the daemon: a campaign of 100,000 due messages outside its
send window is moved aside in short batches while a small campaign beside it goes on sending
(one attempt per message, no part repeated, no lease lapsing) with the database busy, and so
is one of 20,000 on a quiet database; a hold cut off mid-move is taken up again, and its
messages are not claimed meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest

from listener.testing import http_settings, serve_fakes
from tests.daemon_harness import running
from tests.helpers import await_until, enqueue, make_campaign, make_leads

Conn = psycopg.Connection[Any]
AConn = psycopg.AsyncConnection[Any]


def one(db: Conn, sql: str, *args: Any) -> Any:
    row = db.execute(sql, args).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0] if len(row) == 1 else tuple(row)


def closed_window(db: Conn, **fields: Any) -> UUID:
    """A campaign whose send window opens in two hours."""
    opens = datetime.now(UTC) + timedelta(hours=2)
    return make_campaign(
        db,
        name="big",
        send_window_start=opens.time().replace(microsecond=0),
        send_window_end=(opens + timedelta(hours=1)).time().replace(microsecond=0),
        send_timezone="UTC",
        **fields,
    )


def fill(db: Conn, campaign: UUID, n: int) -> None:
    """`n` due messages of the campaign in one statement (to ten leads: never sent here)."""
    leads = make_leads(db, 10, prefix="55219")
    db.execute(
        "INSERT INTO campaign_messages (campaign_id, lead_id, scheduled_at)"
        " SELECT %s, (%s::uuid[])[1 + g %% 10], now() - interval '1 minute'"
        " FROM generate_series(1, %s) g",
        (campaign, leads, n),
    )
    db.execute("ANALYZE campaign_messages")


@contextlib.contextmanager
def busy_database(url: str, workers: int = 2) -> Iterator[list[int]]:
    """Other work on the same server while the test runs: `workers` connections writing and
    scanning a table of their own in short statements (each under 2 s), until the block ends.
    Yields the statements each has run."""
    with psycopg.connect(url, autocommit=True) as setup:
        setup.execute(
            "CREATE TABLE load_scratch AS SELECT g, md5(g::text) AS pad"
            " FROM generate_series(1, 100000) g"
        )
    stop = threading.Event()
    counts = [0] * workers

    def work(index: int) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET statement_timeout = '2s'")
            while not stop.is_set():
                with contextlib.suppress(psycopg.errors.QueryCanceled):
                    conn.execute(
                        "UPDATE load_scratch SET pad = md5(pad) WHERE g %% 5 = %s", (index,)
                    )
                    conn.execute("SELECT count(DISTINCT pad) FROM load_scratch")
                counts[index] += 1

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()
    try:
        yield counts
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)


async def lapsed_leases(adb: AConn, stop: asyncio.Event) -> int:
    """How many times a processing row was seen with its lease run out (sampled every 50 ms)."""
    lapsed = 0
    while not stop.is_set():
        cur = await adb.execute(
            "SELECT count(*) FROM campaign_messages"
            " WHERE status = 'processing' AND locked_until < now()"
        )
        row = await cur.fetchone()
        lapsed += row[0] if row else 0
        await asyncio.sleep(0.05)
    return lapsed


async def await_value(
    conn: AConn, sql: str, args: tuple[Any, ...], expected: Any, timeout: float
) -> None:
    """Poll `sql` on an async connection until it gives `expected` (the listener runs in this
    event loop: a blocking poll would hold it up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cur = await conn.execute(sql, args)  # type: ignore[arg-type]
        row = await cur.fetchone()
        if row is not None and row[0] == expected:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{sql} did not reach {expected} within {timeout}s")


# The size (a 100,000-message hold froze lease renewal) on a busy database; a smaller
# one on a quiet database (still twenty batches: the behaviour does not depend on the size).
@pytest.mark.parametrize(
    ("busy", "size"), [(False, 20_000), (True, 100_000)], ids=["quiet-20000", "busy-100000"]
)
async def test_a_big_hold_is_done_in_batches_while_a_small_campaign_sends(
    db_url: str, db: Conn, adb: AConn, busy: bool, size: int, caplog: pytest.LogCaptureFixture
) -> None:
    big = closed_window(db)
    fill(db, big, size)
    small = make_campaign(db, name="small")
    leads = make_leads(db, 40)
    caplog.set_level(logging.WARNING, logger="listener")
    with busy_database(db_url) if busy else contextlib.nullcontext([0]) as load:
        async with (
            serve_fakes() as fakes,
            await psycopg.AsyncConnection.connect(db_url, autocommit=True) as sampling,
        ):
            fakes.reply_parts = 2
            # A slow LLM (2 s): each message is in flight across lease renewals, and the
            # small campaign (40 messages, 5 at a time) sends all through the hold.
            fakes.llm_delay = 2.0
            # A short lease (renewed every 1.3 s): a renewal stuck behind the hold would let
            # it run out while the small campaign's messages are with the LLM.
            settings = {**http_settings(fakes), "lease": "4s"}
            stop = asyncio.Event()
            sampler = asyncio.create_task(lapsed_leases(sampling, stop))
            async with contextlib.AsyncExitStack() as stack:
                stack.callback(sampler.cancel)  # (a failure below: not left running)
                daemon = await stack.enter_async_context(running(db_url, **settings))
                began = time.monotonic()
                enqueue(db, small, leads)
                await await_value(
                    adb,
                    "SELECT count(*) FROM campaign_messages"
                    " WHERE campaign_id = %s AND wait_reason = 'window'",
                    (big,),
                    size,
                    timeout=120,
                )
                held_in = time.monotonic() - began
                await await_value(
                    adb,
                    "SELECT count(*) FROM campaign_messages WHERE campaign_id = %s"
                    " AND status = 'sent'",
                    (small,),
                    40,
                    timeout=120,
                )
                registry = daemon.metrics.registry
                claims = registry.get_sample_value("listener_attempts_total")
                renewals = registry.get_sample_value("listener_lease_renewal_seconds_count")
                renewed_within_1s = registry.get_sample_value(
                    "listener_lease_renewal_seconds_bucket", {"le": "1.0"}
                )
                # The smallest bucket holding every renewal: the slowest took at most that.
                slowest_renewal = min(
                    (
                        float(sample.labels["le"])
                        for metric in registry.collect()
                        if metric.name == "listener_lease_renewal_seconds"
                        for sample in metric.samples
                        if sample.name.endswith("_bucket") and sample.value >= (renewals or 0)
                    ),
                    default=float("inf"),
                )
                stop.set()
                lapsed = await sampler
    print(
        f"hold of {size:,} done in {held_in:.1f}s; load statements {load};"
        f" {renewals:.0f} lease renewals, the slowest under {slowest_renewal}s"
    )
    # The hold is done within seconds, not minutes: a few seconds here, quiet or busy; the
    # bound is far above that (one statement took minutes on a busy server, the old code
    # never got there within 90 s in this test).
    assert held_in < 60, held_in
    # The small campaign: one attempt per message, each part sent once.
    attempts = db.execute(
        "SELECT attempts, count(*) FROM campaign_messages WHERE campaign_id = %s GROUP BY 1",
        (small,),
    ).fetchall()
    assert attempts == [(1, 40)]
    sent = [(s["number"], s["text"]) for s in fakes.accepted()]
    assert len(sent) == 80 and len(set(sent)) == 80
    # No claim churn: the big campaign was claimed a claim batch or two, not once per message.
    assert claims is not None and claims - 40 <= 100, claims
    assert one(db, "SELECT count(*) FROM listener_campaign_holds") == 0
    big_attempts = "SELECT count(*) FROM campaign_messages WHERE attempts > 0 AND campaign_id = %s"
    assert one(db, big_attempts, big) == 0
    # Lease renewal never waited behind the bulk work: by the listener's own measure each
    # renewal answered within a second (milliseconds here; behind a one-statement hold they
    # waited 13 s to minutes), no lease ever ran out, no renewal outran its turn.
    assert renewals is not None and renewals >= 5, renewals
    assert renewed_within_1s == renewals, (renewed_within_1s, renewals)
    assert lapsed == 0
    # (Only the renewal's turns: the tests' 200 ms rescue may outrun its own turn on a loaded
    # server, which says nothing of the hold; the rescue does not wait on the hold's rows.)
    overlaps = [
        r
        for r in caplog.records
        if getattr(r, "action", "") == "lease_lost"
        or (getattr(r, "action", "") == "job_overlap" and getattr(r, "job", "") == "renew_leases")
    ]
    assert overlaps == [], [r.getMessage() for r in overlaps]
    if busy:
        assert min(load) > 0


async def test_a_hold_cut_off_mid_move_is_taken_up_and_its_messages_are_not_claimed_meanwhile(
    db_url: str, db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    big = closed_window(db)
    fill(db, big, 5_000)
    # A gate on the hold's progress: the test holds it, so the first batch of the move waits
    # there (its messages moved but not committed) until the test cuts its connection.
    db.execute(
        "CREATE FUNCTION test_gate() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NEW; END $$"
    )
    db.execute(
        "CREATE TRIGGER test_gate BEFORE UPDATE ON listener_campaign_holds"
        " FOR EACH ROW EXECUTE FUNCTION test_gate()"
    )
    db.execute("SELECT pg_advisory_lock(4242)")
    caplog.set_level(logging.INFO, logger="listener")
    async with running(db_url, worker_id="w1", hold_batch=200, lease="2s") as daemon:
        registry = daemon.metrics.registry

        def blocked() -> list[int]:
            rows = db.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'listener w1'"
                " AND wait_event = 'advisory'"
            ).fetchall()
            return [r[0] for r in rows]

        await await_until(lambda: len(blocked()) == 1)
        # The database drops the connection moving the hold.
        db.execute("SELECT pg_terminate_backend(%s)", (blocked()[0],))
        await await_until(
            lambda: any(getattr(r, "action", "") == "campaign_wait_failed" for r in caplog.records)
        )
        claims_then = registry.get_sample_value("listener_attempts_total") or 0.0
        assert one(db, "SELECT count(*) FROM campaign_messages WHERE wait_reason = 'window'") < 100
        # While the hold waits to be taken up, its campaign is not claimed (no churn): the
        # claim loop goes on (woken by every poll and notification) and takes none of them.
        for _ in range(3):
            db.execute("NOTIFY campaign_messages")
        await asyncio.sleep(0.5)
        assert registry.get_sample_value("listener_attempts_total") == claims_then
        # The gate opens; once the cut-off runner's lease has passed the hold is taken up.
        db.execute("SELECT pg_advisory_unlock(4242)")
        db.execute("DROP TRIGGER test_gate ON listener_campaign_holds")
        await await_until(
            lambda: (
                one(db, "SELECT count(*) FROM campaign_messages WHERE wait_reason = 'window'")
                == 5_000
            ),
            timeout=30,
        )
        assert registry.get_sample_value("listener_attempts_total") == claims_then
    assert claims_then <= 50, claims_then
    assert one(db, "SELECT count(*) FROM listener_campaign_holds") == 0
    assert one(db, "SELECT max(attempts) FROM campaign_messages") == 0


async def test_a_hold_left_by_a_listener_that_died_is_taken_up_without_claiming_its_messages(
    db_url: str, db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    big = closed_window(db)
    fill(db, big, 3_000)
    # What a listener cut off mid-move leaves: the hold, its runner's lease run out, and the
    # messages it had not moved yet still due.
    db.execute(
        "INSERT INTO listener_campaign_holds (campaign_id, reason, until, moved, runner,"
        " runner_until) VALUES (%s, 'window', now() + interval '2 hours', 0, 'gone',"
        " now() - interval '1 second')",
        (big,),
    )
    caplog.set_level(logging.INFO, logger="listener")
    async with running(db_url, hold_batch=500) as daemon:
        await await_until(
            lambda: (
                one(db, "SELECT count(*) FROM campaign_messages WHERE wait_reason = 'window'")
                == 3_000
            ),
            timeout=30,
        )
        await await_until(lambda: one(db, "SELECT count(*) FROM listener_campaign_holds") == 0)
        claims = daemon.metrics.registry.get_sample_value("listener_attempts_total")
    assert claims in (None, 0.0)
    resumed = [r for r in caplog.records if getattr(r, "action", "") == "campaign_hold_resumed"]
    assert [r.messages for r in resumed] == [3_000]  # type: ignore[attr-defined]


def test_each_batch_of_a_hold_is_a_short_range_scan_of_the_campaigns_due_rows(
    db: Conn,
) -> None:
    """The hold's batches read the campaign's own due rows in order, whatever other campaigns
    have due before them (EXPLAIN on the named query)."""
    from listener.queries import q

    big = closed_window(db)
    other = make_campaign(db, name="other")
    fill(db, other, 20_000)
    fill(db, big, 20_000)
    db.execute(
        "INSERT INTO listener_campaign_holds (campaign_id, reason, until, runner)"
        " VALUES (%s, 'window', now() + interval '2 hours', 'w')",
        (big,),
    )
    plan = "\n".join(
        r[0]
        for r in db.execute(
            b"EXPLAIN " + q("hold_campaign_batch").encode(),
            {
                "campaign_id": big,
                "reason": "window",
                "until": datetime.now(UTC) + timedelta(hours=2),
                "limit": 1000,
                "worker": "w",
                "lease": timedelta(seconds=30),
            },
        ).fetchall()
    )
    assert "idx_campaign_messages_campaign_due" in plan, plan


async def test_a_numbers_hold_moves_its_messages_in_batches_and_is_taken_up_when_cut_off(
    db_url: str, db: Conn
) -> None:
    """A number found down holds its messages in bounded batches: while a batch runs, only its
    own rows are locked (not the number's row, not a leased message's), and a move cut off
    mid-way is taken up by another listener once the runner's lease has passed."""
    from psycopg_pool import AsyncConnectionPool

    from listener.pacing.store import SenderStore
    from listener.queries import q
    from tests.daemon_harness import fast_settings

    campaign = make_campaign(db, name="one number", instance="down")
    fill(db, campaign, 3_000)
    # One of its messages is with a listener (leased): its renewal must never wait.
    leased = one(
        db,
        "UPDATE campaign_messages SET status = 'processing', locked_by = 'w9',"
        " locked_until = now() + interval '1 minute'"
        " WHERE id = (SELECT id FROM campaign_messages LIMIT 1) RETURNING id",
    )
    # A gate on the move's progress: the first batch waits there, its rows moved but not
    # committed, until the test cuts its connection.
    db.execute(
        "CREATE FUNCTION test_gate() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN PERFORM pg_advisory_xact_lock_shared(4343); RETURN NEW; END $$"
    )
    db.execute(
        "CREATE TRIGGER test_gate BEFORE UPDATE ON listener_sender_holds"
        " FOR EACH ROW EXECUTE FUNCTION test_gate()"
    )
    db.execute("SELECT pg_advisory_lock(4343)")
    now = datetime.now(UTC)
    until, backstop = now + timedelta(minutes=5), now + timedelta(hours=1)
    first = fast_settings(worker_id="w1", hold_batch=200, lease="2s")
    other = fast_settings(worker_id="w2", hold_batch=200, lease="2s")
    async with AsyncConnectionPool(db_url, kwargs={"autocommit": True}, open=False) as pool:
        holding = asyncio.create_task(
            SenderStore(pool, first).hold_sender("down", "instance down", until, backstop, now)
        )

        def blocked() -> list[int]:
            rows = db.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event = 'advisory' AND pid <> pg_backend_pid()"
            ).fetchall()
            return [r[0] for r in rows]

        await await_until(lambda: len(blocked()) == 1)
        # The number is marked held, in a transaction of its own that has ended.
        assert one(db, "SELECT held_reason FROM listener_instances WHERE instance = 'down'") == (
            "instance down"
        )
        # Only the batch's own rows are locked: every other due row can be claimed now.
        free = one(
            db,
            "SELECT count(*) FROM (SELECT id FROM campaign_messages WHERE status = 'pending'"
            " FOR UPDATE SKIP LOCKED) x",
        )
        assert free == 2_999 - 200
        # Neither the number's row (a send's turn, a pick of a sender) nor the leased
        # message's (its renewal) waits behind the batch.
        db.execute("SET lock_timeout = '200ms'")
        db.execute("SELECT 1 FROM listener_instances WHERE instance = 'down' FOR UPDATE")
        renewed = db.execute(
            q("renew_leases"), {"ids": [leased], "worker": "w9", "lease": timedelta(minutes=1)}
        ).fetchall()
        assert [r[0] for r in renewed] == [leased]
        db.execute("RESET lock_timeout")
        # The database drops the connection moving the hold: the batch is rolled back.
        db.execute("SELECT pg_terminate_backend(%s)", (blocked()[0],))
        with pytest.raises(psycopg.OperationalError):
            await holding
        db.execute("SELECT pg_advisory_unlock(4343)")
        db.execute("DROP TRIGGER test_gate ON listener_sender_holds")
        waiting = "SELECT count(*) FROM campaign_messages WHERE wait_reason = 'instance down'"
        assert one(db, waiting) == 0
        assert one(db, "SELECT runner FROM listener_sender_holds") == "w1"
        # Another listener takes the move up once the runner's lease has passed (not before).
        resumer = SenderStore(pool, other)
        assert await resumer.resume_holds() == []
        taken: list[Any] = []
        deadline = time.monotonic() + 30
        while not taken and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            taken = await resumer.resume_holds()
    assert taken == [("down", "instance down", 2_999)]
    assert one(db, waiting) == 2_999
    assert one(db, "SELECT count(*) FROM listener_sender_holds") == 0
    assert one(db, "SELECT status FROM campaign_messages WHERE id = %s", leased) == "processing"


def test_the_listener_and_the_database_name_the_same_number_holds(db: Conn) -> None:
    """The reasons a number is held, as the listener writes and reports them (its metrics,
    its quiet waits) and as the database's functions move and wake its messages by them."""
    from listener.pacing.holds import NUMBER_HOLDS

    assert one(db, "SELECT listener_number_holds()") == list(NUMBER_HOLDS)
