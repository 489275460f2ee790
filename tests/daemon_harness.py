"""Run a Daemon inside the test's event loop, with settings made for tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from listener.daemon import Daemon
from listener.providers.base import LLM, Sender
from listener.settings import Settings, load_settings

FAST: dict[str, Any] = {
    "llm": "sandbox",
    "sender": "sandbox",
    "metrics_port": 0,
    "part_delay": "0ms",
    "retry_delays": "200ms,400ms,600ms",
    "quick_retries": 1,
    "quick_retry_base": "1ms",
    "quick_retry_max": "5ms",
    "rate_limit_base": "50ms",
    "hold": "300ms",
    "lease": "2s",
    "rescue_interval": "200ms",
    "poll_interval": "1s",
    "health_interval": "500ms",
    "debounce": "5ms",
    "shutdown_grace": "2s",
    "sweep_max_age": "0s",
}


def fast_settings(**overrides: Any) -> Settings:
    return load_settings(**{**FAST, **overrides})


@contextlib.asynccontextmanager
async def running(
    url: str,
    *,
    llm_provider: LLM | None = None,
    sender_provider: Sender | None = None,
    **overrides: Any,
) -> AsyncIterator[Daemon]:
    daemon = Daemon(fast_settings(**overrides), url, llm=llm_provider, sender=sender_provider)
    task = asyncio.create_task(daemon.run())
    try:
        # Wait until it listens, so a test's insert cannot race the LISTEN.
        for _ in range(500):
            if daemon.listener is not None and daemon.listener.connected.is_set():
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, timeout=30)
