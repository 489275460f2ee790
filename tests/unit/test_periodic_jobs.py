"""The periodic runner (listener/periodic.py), turned by a clock of the test's own: a turn never
overlaps the run before it, a failing job is said once per episode and goes on turning, a
runner that dies is started again, a wake turns the job at once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import psycopg
import pytest

from listener.periodic import Periodic


class FakeClock:
    """Time that moves only when the test says so; `fail` makes the next sleep raise."""

    def __init__(self) -> None:
        self.t = 0.0
        self.fail: Exception | None = None
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        if self.fail is not None:
            exc, self.fail = self.fail, None
            raise exc
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.t + seconds, future)
        self._sleepers.append(entry)
        try:
            await future
        finally:
            self._sleepers.remove(entry)

    async def advance(self, seconds: float) -> None:
        self.t += seconds
        for due, future in list(self._sleepers):
            if due <= self.t and not future.done():
                future.set_result(None)
        await settle()


async def settle() -> None:
    """Let every task that can move, move (no time passes: the clock is the test's)."""
    for _ in range(50):
        await asyncio.sleep(0)


def actions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [str(getattr(r, "action", "")) for r in caplog.records]


class Job:
    """A job whose runs the test holds (`release`) and whose failures it chooses."""

    def __init__(self) -> None:
        self.runs = 0
        self.release = asyncio.Event()
        self.release.set()
        self.errors: list[Exception] = []

    async def __call__(self) -> None:
        self.runs += 1
        await self.release.wait()
        if self.errors:
            raise self.errors.pop(0)


@pytest.fixture
async def clock() -> AsyncIterator[FakeClock]:
    yield FakeClock()


async def stopped(periodic: Periodic) -> None:
    await asyncio.gather(*periodic.cancel(), return_exceptions=True)


async def test_a_turn_never_overlaps_the_run_before_it(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="listener.periodic")
    job = Job()
    job.release.clear()
    periodic = Periodic("renew_leases", job, 1.0, clock=clock)
    periodic.start()
    await settle()
    try:
        await clock.advance(1.0)  # the first turn: a run that does not end
        assert job.runs == 1 and periodic.running
        for _ in range(4):
            await clock.advance(1.0)
        assert job.runs == 1
        # One warning when the episode begins, a debug line per later skipped turn.
        assert actions(caplog).count("job_overlap") == 1
        assert actions(caplog).count("job_skipped") == 3
        assert [r.levelno for r in caplog.records if r.levelno >= logging.WARNING] == [
            logging.WARNING
        ]
        job.release.set()
        await settle()
        assert actions(caplog)[-1] == "job_ended_late"
        # The next run keeps time: the episode ends, said once.
        await clock.advance(1.0)
        assert job.runs == 2 and actions(caplog)[-1] == "job_caught_up"
        # A new overlap is a new episode, with its warning.
        job.release.clear()
        await clock.advance(1.0)
        assert job.runs == 3
        await clock.advance(1.0)
        assert actions(caplog).count("job_overlap") == 2
    finally:
        await stopped(periodic)


async def test_runs_that_each_outlast_their_turn_are_one_episode(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="listener.periodic")
    job = Job()
    periodic = Periodic("rescue", job, 1.0, clock=clock)
    periodic.start()
    await settle()
    try:
        # A frozen database: every run is held past its next turn, ends, and the next run is
        # held again.
        for run in range(1, 4):
            job.release.clear()
            await clock.advance(1.0)
            assert job.runs == run
            await clock.advance(1.0)  # a turn skipped
            job.release.set()
            await settle()
        assert actions(caplog).count("job_overlap") == 1
        assert actions(caplog).count("job_skipped") == 2
        assert "job_caught_up" not in actions(caplog)
        await clock.advance(1.0)  # a run that keeps time ends the episode
        assert job.runs == 4 and actions(caplog)[-1] == "job_caught_up"
        assert [r.levelno for r in caplog.records if r.levelno >= logging.WARNING] == [
            logging.WARNING
        ]
    finally:
        await stopped(periodic)


async def test_a_quiet_job_skips_its_turns_in_debug_lines_only(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="listener.periodic")
    job = Job()
    job.release.clear()
    periodic = Periodic("probe", job, 1.0, clock=clock, quiet=True)
    periodic.start()
    await settle()
    try:
        for _ in range(3):
            await clock.advance(1.0)
        job.release.set()
        await settle()
        assert job.runs == 1
        assert all(r.levelno == logging.DEBUG for r in caplog.records)
        assert actions(caplog) == ["job_skipped", "job_skipped", "job_ended_late"]
    finally:
        await stopped(periodic)


async def test_a_failing_job_is_said_once_per_episode_and_goes_on_turning(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="listener.periodic")
    job = Job()
    job.errors = [psycopg.OperationalError("the database is away") for _ in range(3)]
    heard: list[Exception] = []
    periodic = Periodic("rescue", job, 1.0, clock=clock, on_error=heard.append)
    periodic.start()
    await settle()
    try:
        for _ in range(4):
            await clock.advance(1.0)
        # Every turn ran: three failed, the fourth worked.
        assert job.runs == 4 and len(heard) == 3 and periodic.failures == 0
        assert actions(caplog) == [
            "job_failed",
            "job_failed_again",
            "job_failed_again",
            "job_recovered",
        ]
        first = caplog.records[0]
        assert first.levelno == logging.WARNING and not first.exc_info  # the database's
        assert "the database is away" in first.getMessage()
        assert [r.levelno for r in caplog.records if r.levelno >= logging.WARNING] == [
            logging.WARNING
        ]
        # A failure after it worked again is a new episode, said again.
        job.errors = [psycopg.OperationalError("away again")]
        await clock.advance(1.0)
        assert actions(caplog).count("job_failed") == 2
    finally:
        await stopped(periodic)


async def test_a_failure_of_the_code_is_an_error_with_its_traceback_once(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="listener.periodic")
    job = Job()
    job.errors = [KeyError("a bug"), KeyError("a bug")]
    periodic = Periodic("sweep", job, 1.0, clock=clock)
    periodic.start()
    await settle()
    try:
        for _ in range(3):
            await clock.advance(1.0)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].exc_info is not None
        assert job.runs == 3 and actions(caplog)[-1] == "job_recovered"
    finally:
        await stopped(periodic)


async def test_a_runner_that_dies_is_started_again(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="listener.periodic")
    job = Job()
    periodic = Periodic("holds", job, 1.0, clock=clock, restart_delay=5.0)
    periodic.start()
    await settle()
    try:
        await clock.advance(1.0)
        assert job.runs == 1
        # The runner's next wait fails: its task dies, is said (with its traceback) and waits
        # its restart delay; no turn comes meanwhile.
        clock.fail = RuntimeError("the clock broke")
        await clock.advance(1.0)
        assert job.runs == 2
        await settle()
        died = [r for r in caplog.records if getattr(r, "action", "") == "job_runner_died"]
        assert len(died) == 1 and died[0].levelno == logging.ERROR and died[0].exc_info
        for _ in range(4):
            await clock.advance(1.0)
        assert job.runs == 2
        # Started again after the delay: the job turns on.
        await clock.advance(1.0)
        await clock.advance(1.0)
        assert job.runs == 3
        await clock.advance(1.0)
        assert job.runs == 4
    finally:
        await stopped(periodic)


async def test_a_wake_turns_the_job_at_once_and_one_during_a_run_turns_it_after(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="listener.periodic")
    job = Job()
    periodic = Periodic("apply_inbox", job, 10.0, clock=clock, first=0)
    periodic.start()
    await settle()
    try:
        assert job.runs == 1  # first=0: a turn at start
        periodic.wake()
        await settle()
        assert job.runs == 2  # no time passed
        job.release.clear()
        periodic.wake()
        await settle()
        assert job.runs == 3 and periodic.running
        for _ in range(5):  # a burst of wakes during the run: one more run after it
            periodic.wake()
            await settle()
        assert job.runs == 3
        job.release.set()
        await settle()
        assert job.runs == 4
        assert "job_overlap" not in actions(caplog) and "job_skipped" not in actions(caplog)
    finally:
        await stopped(periodic)


async def test_while_a_job_fails_wakes_wait_for_its_next_turn(clock: FakeClock) -> None:
    job = Job()
    job.errors = [psycopg.OperationalError("away"), psycopg.OperationalError("away")]
    periodic = Periodic("apply_inbox", job, 1.0, clock=clock, first=0)
    periodic.start()
    await settle()
    try:
        assert job.runs == 1 and periodic.failures == 1
        for _ in range(3):
            periodic.wake()
            await settle()
        assert job.runs == 1
        await clock.advance(1.0)
        assert job.runs == 2 and periodic.failures == 2
        await clock.advance(1.0)
        assert job.runs == 3 and periodic.failures == 0
        periodic.wake()  # working again: a wake turns it at once
        await settle()
        assert job.runs == 4
    finally:
        await stopped(periodic)


async def test_run_now_waits_for_a_run_under_way(clock: FakeClock) -> None:
    job = Job()
    job.release.clear()
    periodic = Periodic("sweep", job, 1.0, clock=clock)
    periodic.start()
    await settle()
    try:
        await clock.advance(1.0)
        assert job.runs == 1
        now = asyncio.create_task(periodic.run_now())
        await settle()
        assert job.runs == 1 and not now.done()  # no overlap: it waits
        job.release.set()
        await asyncio.wait_for(now, 10)  # a bound far above the few steps it takes
        assert job.runs == 2
    finally:
        await stopped(periodic)


def test_an_interval_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="above 0"):
        Periodic("x", Job(), 0)
