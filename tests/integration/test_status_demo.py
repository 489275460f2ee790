"""`listener demo` prints the status page's address and serves it while the demo runs."""

from __future__ import annotations

import asyncio
import re

import httpx

from listener.commands.demo import DemoResult, Progress, demo


async def test_the_demo_prints_the_page_address_and_serves_it_while_it_runs(db_url: str) -> None:
    lines: list[str] = []
    started = asyncio.Event()
    pages: list[str] = []

    def progress(step: Progress) -> None:
        if step.total:  # the sample campaign exists and its listener runs
            started.set()

    async def look() -> None:
        await started.wait()
        address = next(
            m.group(1) for line in lines if (m := re.search(r"(http://127\.0\.0\.1:\d+/)", line))
        )
        async with httpx.AsyncClient() as client:
            response = await client.get(address)
        assert response.status_code == 200
        pages.append(response.text)

    looker = asyncio.create_task(look())
    # The page is fetched once the campaign exists: its follow-up step (seconds later) and the
    # wait for delivery feedback keep the demo running for seconds after that, whatever the
    # number of leads.
    result = await demo(
        db_url, leads=30, keep=False, check=True, progress=progress, inform=lines.append
    )
    await asyncio.wait_for(looker, timeout=10)
    assert result.progress.total >= 30  # and the follow-up steps it grew
    assert any(
        line.startswith("status page while the demo runs: http://127.0.0.1:") for line in lines
    )
    # The page showed the demo's campaign while its messages were going out.
    assert re.search(r'<b class="name">Demo \d{4}-\d\d-\d\d', pages[0])


async def test_demo_serve_keeps_the_listener_and_the_page_up_until_stopped(db_url: str) -> None:
    """With serve, the result is given while the listener still runs: its page answers, and
    it stays up until Ctrl-C (here, `stop`)."""
    lines: list[str] = []
    stop = asyncio.Event()
    ready: list[DemoResult] = []
    given = asyncio.Event()
    pages: list[str] = []

    def result_ready(result: DemoResult) -> None:
        ready.append(result)
        given.set()

    async def look() -> None:
        await given.wait()
        address = next(
            m.group(1) for line in lines if (m := re.search(r"(http://127\.0\.0\.1:\d+/)", line))
        )
        async with httpx.AsyncClient() as client:
            for _ in range(2):  # twice, a moment apart: it stays up
                response = await client.get(address)
                assert response.status_code == 200
                pages.append(response.text)
                await asyncio.sleep(0.3)
        stop.set()

    looker = asyncio.create_task(look())
    result = await demo(
        db_url,
        leads=6,
        keep=False,
        check=True,
        progress=lambda _: None,
        inform=lines.append,
        serve=True,
        on_result=result_ready,
        stop=stop,
    )
    await asyncio.wait_for(looker, timeout=10)
    assert ready == [result] and not result.interrupted
    assert any("until Ctrl-C" in line for line in lines)
    assert len(pages) == 2 and all("Demo " in page for page in pages)
