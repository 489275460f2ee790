"""A transaction Postgres rolled back (a deadlock's victim, a serialization conflict) runs again,
a bounded number of times; any other error is raised at once."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import psycopg
import pytest

from listener.db import ROLLBACK_RETRIES, again_on_rollback


def _failing(errors: list[Exception]) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    calls: list[int] = []

    async def work() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return "done"

    return calls, work


@pytest.mark.parametrize(
    "error", [psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure]
)
async def test_a_rolled_back_transaction_runs_again_until_it_commits(
    error: type[Exception], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="listener.db")
    calls, work = _failing([error("victim"), error("victim")])
    assert await again_on_rollback(work, name="renew_leases", pause=0) == "done"
    assert len(calls) == 3
    said = [r for r in caplog.records if getattr(r, "action", "") == "deadlock_retry"]
    assert len(said) == 2 and all(getattr(r, "statement", "") == "renew_leases" for r in said)


async def test_the_last_retry_raises_the_rollback() -> None:
    errors: list[Exception] = [psycopg.errors.DeadlockDetected("victim")] * (ROLLBACK_RETRIES + 1)
    calls, work = _failing(list(errors))
    with pytest.raises(psycopg.errors.DeadlockDetected):
        await again_on_rollback(work, name="x", pause=0)
    assert len(calls) == ROLLBACK_RETRIES + 1


async def test_any_other_error_is_raised_at_once() -> None:
    calls, work = _failing([psycopg.errors.UniqueViolation("dup")])
    with pytest.raises(psycopg.errors.UniqueViolation):
        await again_on_rollback(work, name="x", pause=0)
    assert len(calls) == 1
