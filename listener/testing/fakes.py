"""The fake OpenRouter + Evolution API server (see the package's docstring)."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from listener.feedback.events import sign_jwt
from listener.providers.classify import rules_kind
from listener.testing.replies import (
    UNREADY,
    Reply,
    Seen,
    completion,
    not_found,
    write_reply,
)
from listener.testing.webhook_data import sent_data, webhook_body

# What the recording middleware keeps on each request for the handlers: when it arrived
# (CLOCK_MONOTONIC ns) and its body, parsed once.
_ARRIVED = web.RequestKey("arrived_ns", int)
_BODY: web.RequestKey[Any] = web.RequestKey("body")


@dataclass
class FakeProviders:
    """Both providers on one server (see the package's docstring)."""

    url: str = ""
    # Every request as it came, whatever its path; the LLM requests (body and headers); the
    # send requests (their body, whether accepted, the id given). With `keep_requests` off
    # (the benchmarks' process, lighter on the CPU), only `llm_calls` and `send_calls` count.
    keep_requests: bool = True
    seen: list[Seen] = field(default_factory=list)
    llm_requests: list[dict[str, Any]] = field(default_factory=list)
    sends: list[dict[str, Any]] = field(default_factory=list)
    llm_calls: int = 0
    send_calls: int = 0
    llm_script: deque[Reply] = field(default_factory=deque)
    send_script: deque[Reply] = field(default_factory=deque)
    # Answers to every request whatever its path, before the endpoints (`script()`).
    replies: list[Reply] = field(default_factory=list)
    llm_delay: float = 0.0
    send_delay: float = 0.0
    # When set, each default LLM answer / successful send takes a time drawn uniformly from
    # this range (seconds) instead of llm_delay / send_delay; with `seed`, drawn from a
    # generator seeded by the lead's id / the number and text (the same latency per message
    # whatever order the requests arrive in). Each applied goes to llm_delays / send_delays.
    llm_delay_range: tuple[float, float] | None = None
    send_delay_range: tuple[float, float] | None = None
    seed: int | None = None
    llm_delays: list[float] = field(default_factory=list)
    send_delays: list[float] = field(default_factory=list)
    # Leads whose name starts with this (when set): CLOCK_MONOTONIC ns at which their LLM
    # request arrived, by name. Also the first LLM request's and the last send's times.
    arrival_prefix: str = ""
    arrivals: dict[str, int] = field(default_factory=dict)
    # With `record_send_times`: per instance, the CLOCK_MONOTONIC time (ns) each sendText
    # arrived (the pool benchmark's gaps).
    record_send_times: bool = False
    send_times: dict[str, list[int]] = field(default_factory=dict)
    first_ns: int = 0
    last_ns: int = 0
    state_checks: int = 0
    # Instances that cannot send now, by how (UNREADY's keys): their sends and connectionState
    # answer as Evolution 2.3.7 does for them (`states` still overrides the connectionState).
    unready: dict[str, str] = field(default_factory=dict)
    # Instances Evolution does not know (a mistyped name, a deleted instance): their sends and
    # connectionState answer its 404 (`states` still overrides the connectionState).
    missing: set[str] = field(default_factory=set)
    # connectionState calls per instance.
    state_calls: dict[str, int] = field(default_factory=dict)
    reply_parts: int = 1
    state: str = "open"
    # connectionState per instance (sender pools); instances not named here answer `state`.
    states: dict[str, str] = field(default_factory=dict)
    on_llm: Callable[[dict[str, Any]], None] | None = None
    # When set, every LLM answer waits until the test sets it (a step held as long as the test
    # needs, without racing a delay).
    llm_release: asyncio.Event | None = None
    # Called with each accepted part's record just before its 201 is written (e.g. to cut the
    # listener's database connections between the provider's answer and the record).
    on_accept: Callable[[dict[str, Any]], None] | None = None
    # Fault injection: called with "llm" or "send" per request; returns None (answer normally),
    # "429", "500", "timeout" (answer 504 after `timeout_sleep`) or "drop" (close the socket).
    # A faulted send is never accepted, so it cannot be delivered twice.
    chaos: Callable[[str], str | None] | None = None
    timeout_sleep: float = 0.5
    faults: int = 0
    # Cancel a handler whose client hung up (read timeouts, trickling answers), and give
    # handlers still running half a second at teardown.
    cancel_on_hangup: bool = False
    # Delivery feedback: the listener's receiver the fake posts real-shaped webhooks to, and the
    # secret it signs their JWT with (Evolution's `jwt_key` header option).
    webhook_url: str = ""
    webhook_secret: str = ""
    # Seconds added to each webhook's `date_time`: Evolution writes the server's local time with
    # a `Z` appended, so under its Dockerfile's TZ=America/Sao_Paulo it is -3 hours.
    date_time_skew: float = 0.0
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
    # Numbers Evolution knows by a lid (number -> lid digits): their sends are stored under
    # `key.remoteJid` "<lid>@lid", with the number in `key.remoteJidAlt`.
    lid_chats: dict[str, str] = field(default_factory=dict)
    # What a default LLM answer reports: the model that answered (None: the request's `model`)
    # and, when the request asks for it (`usage.include`), this usage.
    answer_model: str | None = None
    llm_usage: dict[str, Any] = field(
        default_factory=lambda: {"prompt_tokens": 120, "completion_tokens": 30, "cost": 0.0001}
    )
    # Reply classifications asked (their bodies), and answers to give them first.
    classify_requests: list[dict[str, Any]] = field(default_factory=list)
    classify_script: deque[Reply] = field(default_factory=deque)
    _counter: int = 0

    def script(self, *replies: Reply) -> None:
        """Answer every request, whatever its path, with these in order; the last repeats."""
        self.replies = list(replies)

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

    def accepted(self) -> list[dict[str, Any]]:
        return [s for s in self.sends if s["accepted"]]

    def stats(self) -> dict[str, Any]:
        """What `GET /stats` answers (the benchmarks)."""
        return {
            "llm_requests": self.llm_calls,
            "sends": self.send_calls,
            "state_checks": self.state_checks,
            "llm_delays": self.llm_delays,
            "send_delays": self.send_delays,
            "arrivals": self.arrivals,
            "send_times": self.send_times,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
        }

    def reset(self) -> None:
        """Forget what was received (`POST /reset`); the scripts and settings stay."""
        for seen in (self.llm_requests, self.sends, self.seen, self.llm_delays, self.send_delays):
            seen.clear()
        self.arrivals.clear()
        self.send_times.clear()
        self.state_calls.clear()
        self.first_ns = self.last_ns = self.state_checks = self.llm_calls = self.send_calls = 0

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
