"""A fake OpenRouter + Evolution API for the HTTP benchmarks, run as its own process.

    python bench/_fake_providers.py [--llm-latency 200,600] [--send-latency 0,0] [--seed 1]
                                    [--record-prefix Probe]

Prints its base URL on the first line of stdout, then serves on 127.0.0.1 until terminated.
Latency is drawn uniformly from the given range in ms, from a random generator seeded by the
lead's id (the LLM) or the number and text (the sender), so two runs over the same leads see
the same latency per message whatever order the requests arrive in. `GET /stats` returns the
request counts, the delays applied, and for leads whose name starts with `--record-prefix` the
CLOCK_MONOTONIC time (ns, comparable across processes on Linux) at which their LLM request
arrived. `POST /reset` clears them. `GET /instance/connectionState/{instance}` always answers
`open`. With `--record-sends`, `/stats` also has `send_times`: per instance, the
CLOCK_MONOTONIC time (ns) each sendText arrived (the pool benchmark's gaps).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import sys
import time
from typing import Any

from aiohttp import web

REPLY = json.dumps({"messages": ["Olá! Vi o trabalho da sua empresa e queria conversar."]})
LLM_BODY = json.dumps(
    {"choices": [{"message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"}]}
).encode()


class Fake:
    def __init__(self, args: argparse.Namespace) -> None:
        self.llm_range = _range(args.llm_latency)
        self.send_range = _range(args.send_latency)
        self.seed = args.seed
        self.prefix: str = args.record_prefix or ""
        self.record_sends: bool = args.record_sends
        self.reset()

    def reset(self) -> None:
        self.llm_requests = 0
        self.sends = 0
        self.state_checks = 0
        self.llm_delays: list[float] = []
        self.send_delays: list[float] = []
        self.arrivals: dict[str, int] = {}
        self.send_times: dict[str, list[int]] = {}
        self.first_ns = 0
        self.last_ns = 0

    def _delay(self, bounds: tuple[float, float], key: str) -> float:
        low, high = bounds
        if high <= 0:
            return 0.0
        return (low + (high - low) * random.Random(f"{self.seed}:{key}").random()) / 1000

    async def chat(self, request: web.Request) -> web.Response:
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        self.first_ns = self.first_ns or now
        self.llm_requests += 1
        raw = await request.read()
        if self.prefix or self.llm_range[1] > 0:
            body = json.loads(raw)
            lead = json.loads(body["messages"][-1]["content"]).get("lead", {})
            if self.prefix and str(lead.get("name", "")).startswith(self.prefix):
                self.arrivals[str(lead.get("name"))] = now
            delay = self._delay(self.llm_range, str(lead.get("id")))
            if delay:
                self.llm_delays.append(delay)
                await asyncio.sleep(delay)
        return web.Response(body=LLM_BODY, content_type="application/json")

    async def send(self, request: web.Request) -> web.Response:
        if self.record_sends:
            arrived = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            instance = request.match_info["instance"]
            self.send_times.setdefault(instance, []).append(arrived)
        raw = await request.read()
        self.sends += 1
        if self.send_range[1] > 0:
            body = json.loads(raw)
            delay = self._delay(self.send_range, f"{body.get('number')}:{body.get('text')}")
            self.send_delays.append(delay)
            await asyncio.sleep(delay)
        self.last_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        body_out = {"key": {"id": f"EVO{self.sends:09d}"}, "status": "PENDING"}
        return web.json_response(body_out, status=201)

    async def state(self, request: web.Request) -> web.Response:
        self.state_checks += 1
        body = {"instance": {"instanceName": request.match_info["instance"], "state": "open"}}
        return web.json_response(body)

    async def stats(self, request: web.Request) -> web.Response:
        payload: dict[str, Any] = {
            "llm_requests": self.llm_requests,
            "sends": self.sends,
            "state_checks": self.state_checks,
            "llm_delays": self.llm_delays,
            "send_delays": self.send_delays,
            "arrivals": self.arrivals,
            "send_times": self.send_times,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
        }
        return web.json_response(payload)

    async def do_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})


def _range(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    return float(low), float(high or low)


async def main() -> None:
    parser = argparse.ArgumentParser(description="fake OpenRouter + Evolution API")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--llm-latency", default="0,0", help="min,max ms")
    parser.add_argument("--send-latency", default="0,0", help="min,max ms")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--record-prefix", default="")
    parser.add_argument("--record-sends", action="store_true")
    args = parser.parse_args()
    fake = Fake(args)
    app = web.Application()
    app.router.add_post("/chat/completions", fake.chat)
    app.router.add_post("/message/sendText/{instance}", fake.send)
    app.router.add_get("/instance/connectionState/{instance}", fake.state)
    app.router.add_get("/stats", fake.stats)
    app.router.add_post("/reset", fake.do_reset)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    site = web.SockSite(runner, sock, backlog=1024)
    await site.start()
    port = sock.getsockname()[1]
    sys.stdout.write(f"http://127.0.0.1:{port}\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
