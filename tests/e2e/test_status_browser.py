"""The status page in a real headless browser: Debian's chromium, driven by Playwright for
Python with the system browser (never a downloaded one). Skipped, with the reason, only when no
chromium is installed (`apt-get install chromium`).

With LISTENER_STATUS_SCREENSHOT=<path> it also saves a full-page screenshot there (how
docs/status-page.png was made)."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Any

import psycopg
import pytest

from listener.testing import serve_fakes
from tests.daemon_harness import running
from tests.helpers import await_until
from tests.status_scene import (
    HOSTILE_NAME,
    arrange,
    expected,
    figure,
    held_instance_settings,
    instance_row,
    shown,
)

Conn = psycopg.Connection[Any]

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _chromium() -> str | None:
    for candidate in (
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


CHROMIUM = _chromium()

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _throughput(db: Conn, campaign: Any) -> None:
    """Some sends over the last hour, so the chart has bars (finished rows: nothing moves)."""
    db.execute(
        "INSERT INTO campaign_messages (campaign_id, lead_id, status, attempts, parts_sent, "
        "sent_at, updated_at) SELECT %s, gen_random_uuid(), 'sent', 1, 1, "
        "now() - make_interval(secs => g * 9 + (g %% 7) * 20), now() "
        "FROM generate_series(1, 380) g",
        (campaign,),
    )


async def test_the_page_in_a_real_browser(db_url: str, db: Conn) -> None:
    from playwright.async_api import async_playwright, expect

    port = free_port()
    scene = arrange(db, held_instance="acme-2")
    _throughput(db, scene.held)
    async with serve_fakes() as fakes:
        settings = held_instance_settings(fakes, port)
        async with running(db_url, **settings), async_playwright() as playwright:
            await await_until(
                lambda: (
                    db.execute(
                        "SELECT count(*) FROM campaign_messages WHERE wait_reason = 'instance down'"
                    ).fetchone()
                    == (2,)
                )
            )
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1360, "height": 900})
                problems: list[str] = []
                page.on(
                    "console",
                    lambda m: (
                        problems.append(f"console {m.type}: {m.text}")
                        if m.type in ("error", "warning")
                        else None
                    ),
                )
                page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
                page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
                response = await page.goto(f"http://127.0.0.1:{port}/")
                assert response is not None and response.status == 200
                want = expected(db)
                html = await page.content()
                text = await page.inner_text("body")

                # The campaign names as text (the hostile one too, as typed, not as markup).
                for name in (HOSTILE_NAME, "Outubro pausado", "Campanha retida"):
                    assert name in text
                assert await page.locator("script").count() == 0
                assert await page.locator("#campaigns b.name").all_inner_texts() == [
                    "Campanha retida",
                    "Outubro pausado",
                    HOSTILE_NAME,
                ]
                # Counts that match the database.
                for campaign in (scene.hostile, scene.paused, scene.held):
                    assert shown(html, campaign)["waits"] == want["waits"][str(campaign)]
                assert shown(html, scene.hostile)["runs"] == want["runs"][str(scene.hostile)]
                assert figure(html, "due-now") == want["due"]
                assert figure(html, "in-flight") == want["in_flight"]
                assert figure(html, "sent-hour") == want["sent_hour"] == 385
                assert await page.locator("#throughput rect").count() == 60
                # The held instance, with its reason.
                held = page.locator('#instances tr[data-instance="acme-2"]')
                assert "held: close" in await held.inner_text()
                assert "instance down 2" in " ".join((await held.inner_text()).split())
                assert "held: close" in instance_row(html, "acme-2")
                # Phones masked.
                for phone in scene.phones:
                    assert phone not in text

                if target := os.environ.get("LISTENER_STATUS_SCREENSHOT"):
                    Path(target).parent.mkdir(parents=True, exist_ok=True)
                    await page.screenshot(path=target, full_page=True)

                # It refreshes itself: a row added now shows up without anyone reloading.
                db.execute(
                    "INSERT INTO campaign_messages (campaign_id, lead_id) VALUES (%s, "
                    "gen_random_uuid())",
                    (scene.paused,),
                )
                paused = page.locator(
                    f'tr[data-campaign="{scene.paused}"] [data-reason="paused"] b'
                )
                await expect(paused).to_have_text("4", timeout=20_000)
                assert problems == []
            finally:
                await browser.close()
