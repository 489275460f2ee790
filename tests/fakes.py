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
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from listener.feedback import sign_jwt


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
    # connectionState per instance (sender pools); instances not named here answer `state`.
    states: dict[str, str] = field(default_factory=dict)
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
    # Delivery feedback: the listener's receiver the fake posts real-shaped webhooks to, and the
    # secret it signs their JWT with (Evolution's `jwt_key` header option).
    webhook_url: str = ""
    webhook_secret: str = ""
    # Post `send.message` after each accepted send, as Evolution does.
    emit_sent: bool = False
    # The next sends are delivered (and `send.message` posted when emit_sent) but answered 504
    # after `timeout_sleep`: a send whose answer never came although it went out.
    deliver_then_timeout: int = 0
    # Every webhook posted: (HTTP status answered, body).
    webhook_posts: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    # Bodies of POST /webhook/set/{instance} and of POST /chat/findMessages/{instance}.
    webhook_sets: list[dict[str, Any]] = field(default_factory=list)
    find_requests: list[dict[str, Any]] = field(default_factory=list)
    # What findMessages finds: the accepted sends (newest first) unless `find_nothing`.
    find_nothing: bool = False
    # What a default LLM answer reports: the model that answered (None: the request's `model`)
    # and, when the request asks for it (`usage.include`), this usage.
    answer_model: str | None = None
    llm_usage: dict[str, Any] = field(
        default_factory=lambda: {"prompt_tokens": 120, "completion_tokens": 30, "cost": 0.0001}
    )
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
        answer: dict[str, Any] = {
            "model": self.answer_model or body.get("model"),
            "choices": [
                {"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
        }
        if (body.get("usage") or {}).get("include"):
            usage = dict(self.llm_usage)
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            answer["usage"] = usage
        return web.json_response(answer)

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
        instance = request.match_info["instance"]
        accepted = {
            "instance": instance,
            **body,
            "accepted": True,
            "id": message_id,
            "at": time.monotonic(),
            "timestamp": int(time.time()),
        }
        self.sends.append(accepted)
        if self.on_accept is not None:
            self.on_accept(accepted)
        if self.emit_sent:
            await self.post_webhook(
                "send.message",
                sent_data(message_id, body["number"], body["text"]),
                instance=instance,
            )
        if self.deliver_then_timeout > 0:
            self.deliver_then_timeout -= 1
            await asyncio.sleep(self.timeout_sleep)
            return web.json_response({"error": "gateway timeout"}, status=504)
        return web.json_response({"key": {"id": message_id}, "status": "PENDING"}, status=201)

    async def _webhook_set(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.webhook_sets.append(
            {"instance": request.match_info["instance"], "apikey": request.headers.get("apikey")}
            | body
        )
        return web.json_response({"webhook": {"instanceName": request.match_info["instance"]}})

    async def _find_messages(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.find_requests.append(body)
        jid = body["where"]["key"]["remoteJid"]
        records = (
            []
            if self.find_nothing
            else [
                {
                    "key": {"id": s["id"], "remoteJid": jid, "fromMe": True},
                    "message": {"conversation": s["text"]},
                    "messageTimestamp": s["timestamp"],
                }
                for s in reversed(self.accepted())
                if f"{s['number']}@s.whatsapp.net" == jid
            ]
        )
        return web.json_response(
            {"messages": {"total": len(records), "pages": 1, "currentPage": 1, "records": records}}
        )

    async def post_webhook(
        self,
        event: str,
        data: Any,
        *,
        instance: str = "main",
        headers: dict[str, str] | None = None,
        by_events: bool = False,
        raw: bytes | None = None,
    ) -> int:
        """Post one webhook to the listener as Evolution 2.3 does (body, JWT from `jwt_key`);
        returns the status it answered."""
        body = webhook_body(event, data, instance=instance)
        if headers is None:
            headers = {"Authorization": f"Bearer {sign_jwt(self.webhook_secret)}"}
        url = self.webhook_url
        if by_events:
            url += "/" + event.replace(".", "-")
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                url,
                data=raw if raw is not None else json.dumps(body),
                headers={"Content-Type": "application/json", **headers},
            ) as response,
        ):
            await response.read()
            self.webhook_posts.append((response.status, body))
            return response.status

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "instance": {
                    "instanceName": request.match_info["instance"],
                    "state": self.states.get(request.match_info["instance"], self.state),
                }
            }
        )

    def accepted(self) -> list[dict[str, Any]]:
        return [s for s in self.sends if s["accepted"]]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/chat/completions", self._chat)
        app.router.add_post("/message/sendText/{instance}", self._send)
        app.router.add_get("/instance/connectionState/{instance}", self._state)
        app.router.add_post("/webhook/set/{instance}", self._webhook_set)
        app.router.add_post("/chat/findMessages/{instance}", self._find_messages)
        return app


def webhook_body(event: str, data: Any, *, instance: str = "main") -> dict[str, Any]:
    """A webhook body as Evolution 2.3 posts it."""
    return {
        "event": event,
        "instance": instance,
        "data": data,
        "destination": "http://listener/webhooks/evolution",
        "date_time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "sender": "5511900000000@s.whatsapp.net",
        "server_url": "http://evolution:8080",
        "apikey": "INSTANCE-TOKEN",
    }


def status_data(key_id: str, status: str, number: str = "5511900000001") -> dict[str, Any]:
    """`messages.update` data: the part's id, the chat (maybe @lid) and its new status."""
    return {
        "messageId": "cm" + key_id.lower(),
        "keyId": key_id,
        "remoteJid": f"{number}@s.whatsapp.net",
        "fromMe": True,
        "participant": None,
        "status": status,
        "instanceId": "0b1c2d3e",
    }


def reply_data(
    number: str, text: str, *, lid: bool = False, key_id: str = "3EB0REPLY"
) -> dict[str, Any]:
    """`messages.upsert` data of a lead writing to us (`@lid` chats carry the number in
    `remoteJidAlt`)."""
    key: dict[str, Any] = {"remoteJid": f"{number}@s.whatsapp.net", "fromMe": False, "id": key_id}
    if lid:
        key = {
            "remoteJid": "123456789012345@lid",
            "remoteJidAlt": f"{number}@s.whatsapp.net",
            "fromMe": False,
            "id": key_id,
        }
    return {
        "key": key,
        "pushName": "Lead",
        "status": "DELIVERY_ACK",
        "message": {"conversation": text},
        "messageType": "conversation",
        "messageTimestamp": int(time.time()),
        "instanceId": "0b1c2d3e",
        "source": "android",
    }


def sent_data(key_id: str, number: str, text: str) -> dict[str, Any]:
    """`send.message` data: what sendText answered."""
    return {
        "key": {"remoteJid": f"{number}@s.whatsapp.net", "fromMe": True, "id": key_id},
        "pushName": "",
        "status": "PENDING",
        "message": {"conversation": text},
        "messageType": "conversation",
        "messageTimestamp": int(time.time()),
        "instanceId": "0b1c2d3e",
    }


def connection_data(instance: str, state: str, reason: int) -> dict[str, Any]:
    """`connection.update` data."""
    return {"instance": instance, "state": state, "statusReason": reason}


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
