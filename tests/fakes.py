"""Fake providers as real HTTP servers on 127.0.0.1: an OpenRouter and an Evolution API that
record every request and answer from a script (status, body, headers, latency)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class FakeProviders:
    """Both providers on one server. Script answers with `llm_script` / `send_script` (consumed
    in order; when empty, the default success answers)."""

    url: str = ""
    llm_requests: list[dict[str, Any]] = field(default_factory=list)
    sends: list[dict[str, Any]] = field(default_factory=list)
    llm_script: deque[Reply] = field(default_factory=deque)
    send_script: deque[Reply] = field(default_factory=deque)
    llm_delay: float = 0.0
    send_delay: float = 0.0
    # When set, each successful send takes a random time in this range instead of send_delay.
    send_delay_range: tuple[float, float] | None = None
    reply_parts: int = 1
    state: str = "open"
    on_llm: Callable[[dict[str, Any]], None] | None = None
    # Called with each accepted part's record just before its 201 is written (e.g. to cut the
    # listener's database connections between the provider's answer and the record).
    on_accept: Callable[[dict[str, Any]], None] | None = None
    # Fault injection: called with "llm" or "send" per request; returns None (answer normally),
    # "429", "500", "timeout" (answer 504 after `timeout_sleep`) or "drop" (close the socket).
    # A faulted send is never accepted, so it cannot be delivered twice.
    chaos: Callable[[str], str | None] | None = None
    timeout_sleep: float = 0.5
    faults: int = 0
    _counter: int = 0

    def llm_text(self, body: dict[str, Any]) -> str:
        user = json.loads(body["messages"][-1]["content"])
        name = user["lead"]["name"]
        parts = [f"Olá {name}, parte {i + 1}." for i in range(self.reply_parts)]
        return json.dumps({"messages": parts}, ensure_ascii=False)

    async def _fault(self, request: web.Request, endpoint: str) -> web.Response | None:
        kind = self.chaos(endpoint) if self.chaos is not None else None
        if kind is None:
            return None
        self.faults += 1
        error = {"error": {"code": 0, "message": f"injected {kind}"}}
        if kind == "429":
            return web.json_response(error, status=429, headers={"Retry-After": "0"})
        if kind == "500":
            return web.json_response(error, status=500)
        if kind == "timeout":
            await asyncio.sleep(self.timeout_sleep)
            return web.json_response(error, status=504)
        assert kind == "drop"
        assert request.transport is not None
        request.transport.close()
        raise ConnectionResetError("injected drop")

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        fault = await self._fault(request, "llm")
        if fault is not None:
            return fault
        self.llm_requests.append({"body": body, "headers": dict(request.headers)})
        if self.on_llm is not None:
            self.on_llm(body)
        reply = self.llm_script.popleft() if self.llm_script else None
        delay = reply.delay if reply and reply.delay else self.llm_delay
        if delay:
            await asyncio.sleep(delay)
        if (reply is not None and reply.body is not None) or (reply and reply.status != 200):
            assert reply is not None
            return web.json_response(reply.body or {}, status=reply.status, headers=reply.headers)
        text = self.llm_text(body)
        return web.json_response(
            {
                "choices": [
                    {"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ]
            }
        )

    async def _send(self, request: web.Request) -> web.Response:
        body = await request.json()
        fault = await self._fault(request, "send")
        if fault is not None:
            return fault
        reply = self.send_script.popleft() if self.send_script else None
        delay = reply.delay if reply and reply.delay else self.send_delay
        if self.send_delay_range is not None and not (reply and reply.delay):
            delay = random.uniform(*self.send_delay_range)
        if delay:
            await asyncio.sleep(delay)
        if reply is not None and (reply.body is not None or reply.status >= 300):
            self.sends.append(
                {
                    "instance": request.match_info["instance"],
                    **body,
                    "accepted": False,
                    "at": time.monotonic(),
                }
            )
            return web.json_response(reply.body or {}, status=reply.status, headers=reply.headers)
        self._counter += 1
        message_id = f"EVO{self._counter:08d}"
        accepted = {
            "instance": request.match_info["instance"],
            **body,
            "accepted": True,
            "id": message_id,
            "at": time.monotonic(),
        }
        self.sends.append(accepted)
        if self.on_accept is not None:
            self.on_accept(accepted)
        return web.json_response({"key": {"id": message_id}, "status": "PENDING"}, status=201)

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"instance": {"instanceName": request.match_info["instance"], "state": self.state}}
        )

    def accepted(self) -> list[dict[str, Any]]:
        return [s for s in self.sends if s["accepted"]]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/chat/completions", self._chat)
        app.router.add_post("/message/sendText/{instance}", self._send)
        app.router.add_get("/instance/connectionState/{instance}", self._state)
        return app


@contextlib.asynccontextmanager
async def serve_fakes() -> AsyncIterator[FakeProviders]:
    fakes = FakeProviders()
    runner = web.AppRunner(fakes.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fakes.url = f"http://127.0.0.1:{port}"
    try:
        yield fakes
    finally:
        await runner.cleanup()


def http_settings(fakes: FakeProviders) -> dict[str, Any]:
    """Settings overrides that point both real HTTP providers at the fakes."""
    return {
        "llm": "openrouter",
        "sender": "evolution",
        "openrouter_api_key": "sk-test-secret",
        "openrouter_base_url": fakes.url,
        "evolution_api_url": fakes.url,
        "evolution_api_key": "evo-test-secret",
        "evolution_instance": "main",
    }
