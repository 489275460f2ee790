"""The wake-up timer keeps a wake-up whose time passed while the loop was busy (found by the
pool benchmark: a later due time replaced it, and the rows due meanwhile waited for the poll)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from listener.queue.wakeup import WakeTimer


async def test_a_wake_up_not_yet_fired_is_not_replaced_by_a_later_one() -> None:
    scheduler = AsyncIOScheduler(timezone="UTC")
    scheduler.start()
    woken: list[float] = []
    timer = WakeTimer(scheduler, lambda: woken.append(time.monotonic()))
    try:
        timer.schedule(datetime.now(UTC) + timedelta(milliseconds=20))
        time.sleep(0.05)  # noqa: ASYNC251 (the loop is busy: the time passes, it has not fired)
        timer.schedule(datetime.now(UTC) + timedelta(hours=1))  # a row due much later
        await asyncio.sleep(0.2)
        assert len(woken) == 1
        # Once fired, a later wake-up is taken.
        timer.schedule(datetime.now(UTC) + timedelta(milliseconds=20))
        await asyncio.sleep(0.2)
        assert len(woken) == 2
    finally:
        scheduler.shutdown(wait=False)
