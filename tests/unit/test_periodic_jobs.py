"""A periodic job that is still running when its next turn comes skips that turn quietly."""

from __future__ import annotations

import asyncio
import logging

import pytest

from listener.daemon import _Periodic
from listener.metrics import Health


async def test_a_job_still_running_skips_its_turns_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="listener.daemon")
    release = asyncio.Event()
    runs = 0

    async def stuck() -> None:
        nonlocal runs
        runs += 1
        await release.wait()

    job = _Periodic("renew_leases", stuck, Health())
    for _ in range(5):
        await job.turn()
        await asyncio.sleep(0)
    assert runs == 1
    actions = [getattr(r, "action", "") for r in caplog.records]
    assert actions.count("job_overlap") == 1
    assert actions.count("job_skipped") == 3
    assert [r.levelno for r in caplog.records if r.levelno >= logging.WARNING] == [logging.WARNING]

    release.set()
    await asyncio.sleep(0.01)
    assert [getattr(r, "action", "") for r in caplog.records][-1] == "job_caught_up"
    # The next turn runs again, and a new overlap is a new episode with its own warning.
    release.clear()
    await job.turn()
    await asyncio.sleep(0)
    await job.turn()
    assert runs == 2
    assert [getattr(r, "action", "") for r in caplog.records].count("job_overlap") == 2
    task = job.cancel()
    assert task is not None
    await asyncio.gather(task, return_exceptions=True)


async def test_a_quiet_job_skips_its_turns_in_debug_lines_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="listener.daemon")
    release = asyncio.Event()
    job = _Periodic("probe", release.wait, Health(), quiet=True)
    for _ in range(3):
        await job.turn()
        await asyncio.sleep(0)
    release.set()
    await asyncio.sleep(0.01)
    assert all(r.levelno == logging.DEBUG for r in caplog.records)
    assert [getattr(r, "action", "") for r in caplog.records] == ["job_skipped"] * 2
