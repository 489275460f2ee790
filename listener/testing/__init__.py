"""The fake providers of the tests and the benchmarks, the one fake: an OpenRouter and an
Evolution API on one real HTTP server on 127.0.0.1 (aiohttp) that records every request and
answers from a script (status, body, headers, latency), and posts Evolution's webhooks.

In a test, in the test's event loop: `async with serve_fakes() as fakes:`, then point the
listener at it with `http_settings(fakes)`. Script answers per endpoint with `llm_script` /
`send_script` (consumed in order, then the default success answers), or every request whatever
its path with `script(...)` (the last answer repeats; the provider tests); `seen` lists every
request as it came.

It lives in the package, not under `tests/`, so the tests and the benchmarks import the same
fake (nothing here runs in production; an import-linter contract keeps the package's own
modules from importing it). The benchmarks run it as its own process (`bench/_common.py`'s
`FakeServer`), so that it never shares the listener's event loop:

    python -m listener.testing [--llm-latency 200,600] [--send-latency 0,0] [--seed 1]
                          [--record-prefix Probe] [--record-sends] [--port 0]

It prints its base URL on the first line of stdout, then serves until terminated. Latency is
drawn uniformly from the given range in ms, from a generator seeded by the lead's id (the LLM)
or the number and text (the sender), so two runs over the same leads see the same latency per
message whatever order the requests arrive in. `GET /stats` returns the request counts, the
delays applied, and for leads whose name starts with `--record-prefix` the CLOCK_MONOTONIC time
(ns, comparable across processes on Linux) at which their LLM request arrived. `POST /reset`
clears them. With `--record-sends`, `/stats` also has `send_times`: per instance, the
CLOCK_MONOTONIC time (ns) each sendText arrived.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from listener.testing.fakes import FakeProviders
from listener.testing.replies import UNREADY, Reply, Seen, completion
from listener.testing.webhook_data import (
    connection_data,
    reply_data,
    sent_data,
    status_data,
    webhook_body,
)

__all__ = [
    "UNREADY",
    "FakeProviders",
    "Reply",
    "Seen",
    "completion",
    "connection_data",
    "http_settings",
    "reply_data",
    "sent_data",
    "serve_fakes",
    "status_data",
    "webhook_body",
]


@contextlib.asynccontextmanager
async def serve_fakes(**options: Any) -> AsyncIterator[FakeProviders]:
    """The fakes (`options`: FakeProviders' fields) served on 127.0.0.1 in this event loop."""
    fakes = FakeProviders(**options)
    runner = await fakes.start()
    try:
        yield fakes
    finally:
        await runner.cleanup()


def http_settings(fakes: FakeProviders | str) -> dict[str, Any]:
    """Settings overrides that point both real HTTP providers at the fakes (or that URL)."""
    url = fakes if isinstance(fakes, str) else fakes.url
    return {
        "llm": "openrouter",
        "sender": "evolution",
        "openrouter_api_key": "sk-test-secret",
        "openrouter_base_url": url,
        "evolution_api_url": url,
        "evolution_api_key": "evo-test-secret",
        "evolution_instance": "main",
    }
