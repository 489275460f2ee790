"""Periodic jobs: one runner for every job the listener repeats (the daemon's lease renewal,
rescue, poll, health probe, rechecks and sweep; the receiver's inbox applier, early statuses,
prune and restriction checks), with the same rules for each:

- Turns come every `every` seconds on a fixed grid; a job can also be woken for a turn at
  once (the inbox applier, when events arrive).
- A turn never overlaps the run before it: a run still going when the next turn is due is
  left to finish and that turn is skipped. One warning when such an episode begins, a debug
  line per skipped turn, one info line when a run keeps time again (`quiet`: debug lines
  only): runs that each outlast their turn (a frozen database) are one episode, said once. A
  wake during a run is not a skipped turn: the job turns again as soon as the run ends.
- A run that fails does not stop the job, and is logged once per episode: the first failure a
  warning (an error with its traceback when it is not the database's or the network's), the
  next ones debug lines, and one info line when a run succeeds again. `on_error` hears of every
  failure (the daemon marks its health). While a job fails, wakes wait for the next turn, so
  a database that is away is not asked again at every wake.
- The runner's own task, should it die of anything unforeseen, is logged (its traceback once)
  and started again after a pause.

Time comes from a `Clock`: the tests turn the jobs with a clock of their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import psycopg

from listener.text import cut

log = logging.getLogger(__name__)

# A runner whose own task died is started again after this pause.
RESTART_DELAY = 1.0
# Failures of the world's state, not of the code: logged without a traceback.
_EXPECTED: tuple[type[BaseException], ...] = (psycopg.Error, OSError)


class Clock(Protocol):
    """Where a runner reads the time and waits."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """The process's monotonic clock (the one asyncio's timers follow)."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Periodic:
    """One periodic job: `work` every `every` seconds, the first turn after `first` seconds
    (`every` when not given), once `start` is called on the loop that runs it."""

    def __init__(
        self,
        name: str,
        work: Callable[[], Awaitable[object]],
        every: float,
        *,
        first: float | None = None,
        quiet: bool = False,
        on_error: Callable[[Exception], None] | None = None,
        clock: Clock | None = None,
        restart_delay: float = RESTART_DELAY,
    ) -> None:
        if every <= 0:
            raise ValueError(f"{name}: a periodic job needs an interval above 0 (got {every})")
        self.name = name
        self.every = every
        self._work = work
        self._first = every if first is None else first
        self._quiet = quiet
        self._on_error = on_error
        self._clock: Clock = clock or MonotonicClock()
        self._restart_delay = restart_delay
        self._wake = asyncio.Event()
        self._again = False
        self._runner: asyncio.Task[None] | None = None
        self._run: asyncio.Task[None] | None = None
        self._started = 0.0
        self._skipped = 0  # turns skipped during the run under way
        self._overlapping = False  # an overlap episode: runs outlast their turns
        self.failures = 0  # runs failed in a row (0: the last run succeeded)

    # ----------------------------------------------------------------------------------------
    # Control
    # ----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start turning (on the running loop)."""
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._supervised(), name=f"periodic-{self.name}")

    def wake(self) -> None:
        """A turn now (or as soon as the run under way ends); from the runner's own loop."""
        self._wake.set()

    async def run_now(self) -> None:
        """One run now, awaited (the sweep before the first claim); a run under way is waited
        for first, never overlapped. Its failure is logged and counted as any other."""
        running = self._run
        if running is not None and not running.done():
            await asyncio.wait({running})
        await self._begin()

    @property
    def running(self) -> bool:
        """Whether a run is under way."""
        return self._run is not None and not self._run.done()

    def cancel(self) -> list[asyncio.Task[None]]:
        """Stop turning and cancel a run under way (on stop); the tasks to wait for."""
        tasks = [t for t in (self._runner, self._run) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        return tasks

    # ----------------------------------------------------------------------------------------
    # Turning
    # ----------------------------------------------------------------------------------------

    async def _supervised(self) -> None:
        said = False
        while True:
            try:
                await self._turning()
            except Exception as exc:
                log.log(
                    logging.DEBUG if said else logging.ERROR,
                    "periodic job %s: its runner died (started again): %s: %s",
                    self.name,
                    type(exc).__name__,
                    cut(str(exc), 200),
                    exc_info=not said,
                    extra={"action": "job_runner_died", "job": self.name},
                )
                said = True
            await self._clock.sleep(self._restart_delay)

    async def _turning(self) -> None:
        clock = self._clock
        due = clock.now() + self._first
        while True:
            woken = await self._until(due)
            now = clock.now()
            if now >= due:
                due += self.every
                if due <= now:  # the loop was late (blocked): the turns it missed are not owed
                    due = now + self.every
            # A wake that meets a run under way is no skipped turn: the run ends, then turns.
            self._turn(timed=not woken)

    async def _until(self, due: float) -> bool:
        """Wait until `due` or a wake (taken when the job is not failing); whether woken."""
        while True:
            if self._wake.is_set():
                self._wake.clear()
                if not self.failures:
                    return True
            delay = due - self._clock.now()
            if delay <= 0:
                return False
            sleeper = asyncio.ensure_future(self._clock.sleep(delay))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waker.cancel()
                if not sleeper.done():
                    sleeper.cancel()
            if sleeper.done() and not sleeper.cancelled():
                sleeper.result()  # a clock that failed raises here
                if not self._wake.is_set():
                    return False

    def _turn(self, *, timed: bool) -> None:
        if self.running:
            if timed:
                self._skip()
            else:
                self._again = True
            return
        self._begin()

    def _begin(self) -> asyncio.Task[None]:
        self._again = False
        self._run = asyncio.create_task(self._one(), name=f"job-{self.name}")
        return self._run

    async def _one(self) -> None:
        self._started = self._clock.now()
        try:
            await self._work()
        except Exception as exc:
            self._failed(exc)
        else:
            if self.failures:
                log.info(
                    "%s works again after %d failed runs",
                    self.name,
                    self.failures,
                    extra={"action": "job_recovered", "job": self.name},
                )
            self.failures = 0
        finally:
            self._ended()
            if self._again:
                self._wake.set()

    # ----------------------------------------------------------------------------------------
    # What is said
    # ----------------------------------------------------------------------------------------

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        if self._on_error is not None:
            self._on_error(exc)
        why = f"{type(exc).__name__}: {cut(str(exc), 200)}"
        if self.failures > 1:
            log.debug(
                "%s failed again (%d runs in a row): %s",
                self.name,
                self.failures,
                why,
                extra={"action": "job_failed_again", "job": self.name},
            )
            return
        expected = isinstance(exc, _EXPECTED)
        log.log(
            logging.WARNING if expected else logging.ERROR,
            "%s failed (tried again every %gs; said again when it works): %s",
            self.name,
            self.every,
            why,
            exc_info=not expected,
            extra={"action": "job_failed", "job": self.name},
        )

    def _skip(self) -> None:
        self._skipped += 1
        took = self._clock.now() - self._started
        if not self._overlapping and not self._quiet:
            log.warning(
                "%s still running after %.1fs; skipping its turns until it keeps time",
                self.name,
                took,
                extra={"action": "job_overlap", "job": self.name},
            )
        else:
            log.debug(
                "%s still running after %.1fs; turn skipped",
                self.name,
                took,
                extra={"action": "job_skipped", "job": self.name},
            )
        self._overlapping = True

    def _ended(self) -> None:
        """A run ended: one that outlasted its turns keeps the episode going (a frozen
        database holds every run up); the first that kept time ends it, said once."""
        took = self._clock.now() - self._started
        if self._skipped:
            log.debug(
                "%s ended after %.1fs (%d turns skipped)",
                self.name,
                took,
                self._skipped,
                extra={"action": "job_ended_late", "job": self.name},
            )
            self._skipped = 0
        elif self._overlapping:
            self._overlapping = False
            log.log(
                logging.DEBUG if self._quiet else logging.INFO,
                "%s back on schedule",
                self.name,
                extra={"action": "job_caught_up", "job": self.name},
            )
