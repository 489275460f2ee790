"""/metrics and /healthz answer and reflect what the listener did; logs in text or JSON."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import httpx
import psycopg
import pytest

from listener.logs import JsonFormatter, TextFormatter
from tests.daemon_harness import running
from tests.helpers import await_until, enqueue, make_campaign, make_leads, statuses


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_metrics_and_health_reflect_a_processed_message(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    port = free_port()
    campaign = make_campaign(db)
    leads = make_leads(db, 2)
    async with (
        running(db_url, metrics_port=port, metrics_host="127.0.0.1"),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        health = await client.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {
            "ok": True,
            "database": True,
            "listen": True,
            "loop": True,
            "last_error": "",
        }
        enqueue(db, campaign, leads)
        await await_until(lambda: statuses(db).get("sent") == 2)
        # A row turns `sent` a moment before its worker counts it: scrape until it has.
        text = ""
        for _ in range(250):
            text = (await client.get("/metrics")).text
            if 'listener_messages_total{outcome="sent"} 2.0' in text:
                break
            await asyncio.sleep(0.02)
    assert 'listener_messages_total{outcome="sent"} 2.0' in text
    assert "listener_attempts_total 2.0" in text
    assert "listener_parts_sent_total 2.0" in text
    assert "listener_pickup_seconds_count 2.0" in text
    assert 'listener_provider_seconds_count{provider="sender"} 2.0' in text


async def test_health_says_503_when_the_database_is_unreachable() -> None:
    port = free_port()
    url = "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=1"
    async with (
        running(url, metrics_port=port, metrics_host="127.0.0.1") as daemon,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        response = await client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["listen"] is False
    assert daemon.health.last_error  # says what failed


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()])
def test_logs_carry_the_same_event_in_text_or_json(formatter: logging.Formatter) -> None:
    record = logging.LogRecord(
        "listener.queue.processor", logging.INFO, __file__, 1, "sent", (), None
    )
    record.action = "message_sent"
    record.message_id = "abc"
    line = formatter.format(record)
    if isinstance(formatter, JsonFormatter):
        payload = json.loads(line)
        assert payload["action"] == "message_sent" and payload["message"] == "sent"
    else:
        assert "action=message_sent" in line and "sent" in line


def test_a_multi_line_error_is_one_log_line_and_one_health_field() -> None:
    from listener.metrics import Health

    error = 'connection failed: FATAL:  terminating connection\nDETAIL:  "x"\nHINT:  retry'
    record = logging.LogRecord(
        "listener.queue.wakeup", logging.WARNING, __file__, 1, error, (), None
    )
    line = TextFormatter().format(record)
    assert "\n" not in line and "DETAIL:" in line
    health = Health(last_error=error)
    assert "\n" not in str(health.as_dict()["last_error"])


# Run in a child process before anything imports uvloop: another process takes the port in the
# instant between this process's bind and its listen (both bind with SO_REUSEADDR, so both
# binds succeed and only the second listen fails), the start-up race of two listeners.
_RIVAL_TAKES_THE_PORT = """
import socket, sys
port = int(sys.argv[1])
real = socket.socket
rivals = []

class Racing(real):
    def bind(self, address):
        super().bind(address)
        if address[1] == port and not rivals:
            rival = real(socket.AF_INET, socket.SOCK_STREAM)
            rival.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            rival.bind(("127.0.0.1", port))
            rival.listen()
            rivals.append(rival)

socket.socket = Racing
sys.argv = ["listener", "run"]
from listener.commands.cli import console
console()
"""


async def test_a_listener_losing_the_metrics_port_race_ends_with_the_one_line_error(
    db_url: str,
) -> None:
    import os
    import sys

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTENER_", "OPENROUTER_"))}
    env.update(
        DATABASE_URL=db_url,
        LISTENER_LLM="sandbox",
        LISTENER_SENDER="sandbox",
        LISTENER_METRICS_PORT=str(port),
        LISTENER_METRICS_HOST="127.0.0.1",
        LISTENER_LOG_LEVEL="ERROR",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _RIVAL_TAKES_THE_PORT,
        str(port),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = err.decode().strip()
    assert process.returncode == 2, text
    assert len(text.splitlines()) == 1, text
    assert "LISTENER_METRICS_PORT" in text and str(port) in text and "in use" in text
