"""The fake OpenRouter + Evolution API server (see the package's docstring): its handlers, the
webhooks it posts, and how it is served. What it is set to answer and what it records are the
fields of `listener.testing.state.FakeState`."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from listener.feedback.events import sign_jwt
from listener.providers.classify import rules_kind
from listener.testing.replies import (
    UNREADY,
    Seen,
    completion,
    not_found,
    write_reply,
)
from listener.testing.state import FakeState
from listener.testing.webhook_data import sent_data, webhook_body

# What the recording middleware keeps on each request for the handlers: when it arrived
# (CLOCK_MONOTONIC ns) and its body, parsed once.
_ARRIVED = web.RequestKey("arrived_ns", int)
_BODY: web.RequestKey[Any] = web.RequestKey("body")


@dataclass
class FakeProviders(FakeState):
    """Both providers on one server (see the package's docstring)."""

    def llm_text(self, body: dict[str, Any]) -> str:
        lead = _lead(body)
        name, step = lead.get("name"), lead.get("step")
        # A follow-up step's parts are told apart from step 1's: "parte 2.1.", "parte 2.2."
        label = f"{step}." if step else ""
        parts = [f"Olá {name}, parte {label}{i + 1}." for i in range(self.reply_parts)]
        return json.dumps({"messages": parts}, ensure_ascii=False)

    def _draw(self, bounds: tuple[float, float], key: str) -> float:
        rng = random if self.seed is None else random.Random(f"{self.seed}:{key}")
        return rng.uniform(*bounds)

    @web.middleware
    async def _record(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        request[_ARRIVED] = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        request[_BODY] = body
        if self.keep_requests:
            self.seen.append(
                Seen(request.method, request.path, request.raw_path, dict(request.headers), body)
            )
        if not self.replies:
            return await handler(request)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return await write_reply(request, reply)

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

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        now: int = request[_ARRIVED]
        self.first_ns = self.first_ns or now
        body = request[_BODY]
        fault = await self._fault(request, "llm")
        if fault is not None:
            return fault
        if _schema_name(body) == "reply_kind":
            return await self._classify(request, body)
        self.llm_calls += 1
        if self.keep_requests:
            self.llm_requests.append({"body": body, "headers": dict(request.headers)})
        lead = _lead(body) if self.arrival_prefix or self.llm_delay_range else {}
        if self.arrival_prefix and str(lead.get("name", "")).startswith(self.arrival_prefix):
            self.arrivals[str(lead.get("name"))] = now
        if self.on_llm is not None:
            self.on_llm(body)
        reply = self.llm_script.popleft() if self.llm_script else None
        if reply is not None and reply.delay:
            delay = reply.delay
        elif self.llm_delay_range is not None:
            delay = self._draw(self.llm_delay_range, str(lead.get("id")))
            self.llm_delays.append(delay)
        else:
            delay = self.llm_delay
        if delay:
            await asyncio.sleep(delay)
        if self.llm_release is not None:
            await self.llm_release.wait()
        if reply is not None and reply.given():
            return await write_reply(request, reply)
        usage = None
        if (body.get("usage") or {}).get("include"):
            usage = dict(self.llm_usage)
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        answer = completion(self.llm_text(body), finish_reason="stop")
        answer["model"] = self.answer_model or body.get("model")
        if usage is not None:
            answer["usage"] = usage
        return web.json_response(answer)

    async def _classify(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """A reply classification (the `reply_kind` schema): the sandbox's rules read the
        reply out of its fence; `classify_script` answers first when it holds something."""
        self.classify_requests.append(body)
        if self.classify_script:
            return await write_reply(request, self.classify_script.popleft())
        user = body["messages"][-1]["content"]
        fenced = user.split("<<<REPLY\n", 1)[1].rsplit("\nREPLY>>>", 1)[0]
        kind = rules_kind(json.loads(fenced))
        usage = {**self.llm_usage, "total_tokens": 1}
        answer = completion(json.dumps({"kind": kind}), finish_reason="stop")
        return web.json_response({**answer, "model": body["model"], "usage": usage})

    async def _send(self, request: web.Request) -> web.StreamResponse:
        if self.record_send_times:
            times = self.send_times.setdefault(request.match_info["instance"], [])
            times.append(request[_ARRIVED])
        body = request[_BODY]
        fault = await self._fault(request, "send")
        if fault is not None:
            return fault
        self.send_calls += 1
        reply = self.send_script.popleft() if self.send_script else None
        if reply is not None and reply.delay:
            delay = reply.delay
        elif self.send_delay_range is not None:
            delay = self._draw(self.send_delay_range, f"{body.get('number')}:{body.get('text')}")
            self.send_delays.append(delay)
        else:
            delay = self.send_delay
        if delay:
            await asyncio.sleep(delay)
        instance = request.match_info["instance"]
        if reply is None and instance in self.missing:
            reply = not_found(instance)
        if reply is None and instance in self.unready:
            reply = UNREADY[self.unready[instance]][0]
        if reply is not None and reply.given():
            if self.keep_requests:
                self.sends.append(
                    {"instance": instance, **body, "accepted": False, "at": time.monotonic()}
                )
            return await write_reply(request, reply)
        self._counter += 1
        message_id = f"EVO{self._counter:08d}"
        accepted = {
            "instance": instance,
            **body,
            "accepted": True,
            "id": message_id,
            "at": time.monotonic(),
            "timestamp": int(time.time()),
        }
        if self.keep_requests:
            self.sends.append(accepted)
        self.last_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
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
        body = request[_BODY]
        self.webhook_sets.append(
            {"instance": request.match_info["instance"], "apikey": request.headers.get("apikey")}
            | body
        )
        return web.json_response({"webhook": {"instanceName": request.match_info["instance"]}})

    async def _find_messages(self, request: web.Request) -> web.Response:
        body = request[_BODY]
        self.find_requests.append(body)
        where = body["where"]["key"]
        records = []
        for s in [] if self.find_nothing else reversed(self.accepted()):
            phone = f"{s['number']}@s.whatsapp.net"
            key: dict[str, Any] = {"id": s["id"], "remoteJid": phone, "fromMe": True}
            if s["number"] in self.lid_chats:
                key = {
                    **key,
                    "remoteJid": f"{self.lid_chats[s['number']]}@lid",
                    "remoteJidAlt": phone,
                }
            # Evolution's fetchMessages: remoteJid OR remoteJidAlt, each when asked.
            if any(
                where.get(name) and key.get(name) == where[name]
                for name in ("remoteJid", "remoteJidAlt")
            ):
                records.append(
                    {
                        "key": key,
                        "message": {"conversation": s["text"]},
                        "messageTimestamp": s["timestamp"],
                    }
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
        body = webhook_body(event, data, instance=instance, skew=self.date_time_skew)
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

    async def _state(self, request: web.Request) -> web.StreamResponse:
        self.state_checks += 1
        name = request.match_info["instance"]
        self.state_calls[name] = self.state_calls.get(name, 0) + 1
        if name in self.missing and name not in self.states:
            return await write_reply(request, not_found(name))
        inner: dict[str, Any] = {"instanceName": name}
        state: str | None = self.states.get(name, self.state)
        if name in self.unready and name not in self.states:
            state = UNREADY[self.unready[name]][1]
        if state is not None:  # (Evolution leaves it out for an instance it has not loaded)
            inner["state"] = state
        return web.json_response({"instance": inner})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_post("/chat/completions", self._chat)
        app.router.add_post("/message/sendText/{instance}", self._send)
        app.router.add_get("/instance/connectionState/{instance}", self._state)
        app.router.add_post("/webhook/set/{instance}", self._webhook_set)
        app.router.add_post("/chat/findMessages/{instance}", self._find_messages)
        app.router.add_get("/stats", self._stats)
        app.router.add_post("/reset", self._reset)
        return app

    async def start(self, port: int = 0) -> web.AppRunner:
        """Serve on 127.0.0.1 (`port` 0: any free one) and set `url`; returns the runner to
        clean up."""
        if self.cancel_on_hangup:
            runner = web.AppRunner(
                self.app(), access_log=None, handler_cancellation=True, shutdown_timeout=0.5
            )
        else:
            runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        await web.SockSite(runner, sock, backlog=1024).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        return runner


def _schema_name(body: Any) -> str | None:
    """The name of a chat request's structured-output schema, if it asks for one."""
    try:
        return str(body["response_format"]["json_schema"]["name"])
    except (KeyError, TypeError):
        return None


def _lead(body: dict[str, Any]) -> dict[str, Any]:
    """The lead's context in a chat completion request (its user message, as JSON)."""
    try:
        lead = json.loads(body["messages"][-1]["content"]).get("lead")
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return {}
    return lead if isinstance(lead, dict) else {}
