"""Delivery feedback under load: 1,000 webhook events a second on loopback while the listener
sends at full speed; the receiver's answer time (p50, p99, max) and that none is lost.

The scratch database gets a backlog of `--backlog` due messages (default 150,000, one part
each) that the real `listener.daemon.Daemon` drains in this process with the sandbox providers
and its webhook receiver on (LISTENER_WEBHOOK_SECRET set, port `--port`). The sandbox sender is
wrapped to hand each accepted part (number, provider id) to a second process, which plays
Evolution: it posts `--rate` events a second (default 1,000) for `--seconds` (default 15), on
a fixed schedule (open loop: an answer that comes late does not slow the next post), each as
Evolution 2.3 posts it, signed with an HS256 JWT:

- `messages.update` DELIVERY_ACK for a part that was just sent (each part once; a status can
  outrun the part's record and is then kept and applied, as in production); when no part was
  sent since the last one, READ for the oldest delivered part (each once), so the rate holds
  whatever the sending speed;
- one in 10 a `send.message` with a fresh id;
- one in 20 a `messages.upsert` reply from a number that was just sent to.

An answer's time runs from the moment its post was due to the end of the answer. None lost:
after the run (and after the inbox is applied), every DELIVERY_ACK and READ posted is in a
part's status (a part at READ counts for both; a part that never came, in its kept update),
every `send.message` a row of `sent_events`, every replying number a lead with
`last_reply_at`. The figure: p99 under 100 ms, and the messages sent a second meanwhile.

    uv run python bench/webhooks.py [--url DSN] [--rate 1000] [--seconds 15] [--backlog 150000]
"""

from __future__ import annotations

import asyncio
import collections
import json
import multiprocessing as mp
import os
import queue
import statistics
import time
from typing import Any

import _common as c
import psycopg

from listener.commands.common import run_async
from listener.daemon import Daemon
from listener.db import make_pool
from listener.feedback.events import sign_jwt
from listener.providers.base import SentPart
from listener.providers.sandbox import SandboxSender
from listener.testing import reply_data, sent_data, status_data, webhook_body

SECRET = "bench-webhook-secret"
TARGET_P99_MS = 100.0


class HandingSender(SandboxSender):
    """The sandbox sender, handing each accepted part to the Evolution process."""

    def __init__(self, pool: Any, parts: mp.Queue[tuple[str, str]]) -> None:
        super().__init__(pool)
        self._parts = parts

    async def send_text(self, *, instance: str, number: str, text: str) -> SentPart:
        sent = await super().send_text(instance=instance, number=number, text=text)
        self._parts.put_nowait((number, sent.provider_message_id))
        return sent


def _body(event: str, data: dict[str, Any]) -> bytes:
    return json.dumps(webhook_body(event, data, instance="sandbox")).encode()


def evolution(
    url: str,
    rate: int,
    seconds: float,
    parts: mp.Queue[tuple[str, str]],
    start: Any,
    results: mp.Queue[dict[str, Any]],
) -> None:
    """The second process: post `rate` events a second for `seconds`, report what it saw."""
    import uvloop

    results.put(uvloop.run(_evolution(url, rate, seconds, parts, start)))


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to the receiver, one request at a time. Hand-rolled:
    aiohttp's client costs this process ~0.5 ms of CPU a request, which at 1,000 a second
    saturated its core and made the client, not the receiver, the queue being measured."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self._buffer[:end].lower()
        at = head.find(b"content-length:")
        line_end = head.find(b"\r\n", at)
        length = int(head[at + 15 : line_end if line_end > 0 else len(head)]) if at >= 0 else 0
        if len(self._buffer) < end + 4 + length:
            return
        status = int(self._buffer[9:12])
        self._buffer = self._buffer[end + 4 + length :]
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError("connection lost"))


class _Client:
    """Up to `limit` keep-alive connections; a post takes an idle one or opens one."""

    def __init__(self, url: str, limit: int) -> None:
        address = url.split("//", 1)[1]
        self.host, _, rest = address.partition(":")
        port, _, path = rest.partition("/")
        self.port = int(port)
        self.head = (
            f"POST /{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {sign_jwt(SECRET, ttl=3600)}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self.limit = limit
        self.opened = 0
        self.idle: asyncio.Queue[_Connection] = asyncio.Queue()

    async def post(self, body: bytes) -> int:
        loop = asyncio.get_running_loop()
        if not self.idle.empty() or self.opened >= self.limit:
            conn = await self.idle.get()
        else:
            self.opened += 1
            _, conn = await loop.create_connection(_Connection, self.host, self.port)
        assert conn.transport is not None
        conn.waiter = loop.create_future()
        conn.transport.write(self.head + b"%d\r\n\r\n" % len(body) + body)
        try:
            status = await conn.waiter
        except ConnectionError:
            self.opened -= 1
            raise
        self.idle.put_nowait(conn)
        return status

    def close(self) -> None:
        while not self.idle.empty():
            conn = self.idle.get_nowait()
            if conn.transport is not None:
                conn.transport.close()


async def _evolution(
    url: str, rate: int, seconds: float, parts: mp.Queue[tuple[str, str]], start: Any
) -> dict[str, Any]:
    latencies: list[float] = []
    failures: dict[str, int] = {}
    posted = {"status": 0, "read": 0, "sent": 0, "reply": 0}
    replied: set[str] = set()
    sent_parts: list[tuple[str, str]] = []
    delivered: collections.deque[tuple[str, str]] = collections.deque()
    start.wait()

    async def post(client: _Client, due: float, body: bytes, kind: str) -> None:
        try:
            status = await client.post(body)
            ok, label = status == 200, str(status)
        except OSError as exc:
            ok, label = False, type(exc).__name__
        latencies.append(time.perf_counter() - due)
        if ok:
            posted[kind] += 1
        else:
            failures[label] = failures.get(label, 0) + 1

    tasks = []
    client = _Client(url, limit=200)
    try:
        began = time.perf_counter()
        total = int(rate * seconds)
        for i in range(total):
            due = began + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            while True:
                try:
                    sent_parts.append(parts.get_nowait())
                except queue.Empty:
                    break
            if i % 10 == 5:
                data = sent_data(f"BENCHSENT{i:08d}", "5511999990000", f"texto {i}")
                body, kind = _body("send.message", data), "sent"
            elif i % 20 == 7 and sent_parts:
                number = sent_parts[-1][0]
                replied.add(number)
                data = reply_data(number, "Oi, quem fala?", key_id="R")
                body, kind = _body("messages.upsert", data), "reply"
            elif sent_parts or delivered:
                if sent_parts:
                    number, provider_id = sent_parts.pop()
                    delivered.append((number, provider_id))
                    status, kind = "DELIVERY_ACK", "status"
                else:
                    number, provider_id = delivered.popleft()
                    status, kind = "READ", "read"
                body = _body("messages.update", status_data(provider_id, status, number))
            else:
                continue
            tasks.append(asyncio.create_task(post(client, due, body, kind)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - began
    finally:
        client.close()
    latencies.sort()
    return {
        "posted": posted,
        "requests": len(latencies),
        "failures": failures,
        "replied_numbers": len(replied),
        "seconds": elapsed,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99) - 1] if latencies else None,
        "max_ms": 1000 * latencies[-1] if latencies else None,
    }


async def run(url: str, args: Any) -> dict[str, Any]:
    settings = c.bench_settings(
        webhook_secret=SECRET,
        webhook_host="127.0.0.1",
        webhook_port=args.port,
        concurrency=args.concurrency,
    )
    ctx = mp.get_context("spawn")
    parts: mp.Queue[tuple[str, str]] = ctx.Queue()
    # Parts handed after the Evolution process stopped reading must not hold this one at exit.
    parts.cancel_join_thread()
    results: mp.Queue[dict[str, Any]] = ctx.Queue()
    start = ctx.Event()
    target = f"http://127.0.0.1:{args.port}/webhooks/evolution"
    child = ctx.Process(
        target=evolution, args=(target, args.rate, args.seconds, parts, start, results)
    )
    child.start()
    pool = make_pool(url, settings)
    await pool.open()
    daemon = Daemon(settings, url, sender=HandingSender(pool, parts))
    task = asyncio.create_task(daemon.run())
    try:
        while daemon.webhooks is None or daemon.listener is None:
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # sending at full speed before the events begin
        sent_before = _sent(daemon)
        load_before = os.getloadavg()[0]
        start.set()
        began = time.perf_counter()
        while child.is_alive():
            await asyncio.sleep(0.1)
            if task.done():
                task.result()
        sending = (_sent(daemon) - sent_before) / (time.perf_counter() - began)
        load_after = os.getloadavg()[0]
        seen = results.get(timeout=10)
        posted_at = time.perf_counter()
        backlog = await _inbox(pool)
        for _ in range(1200):  # acknowledged, not applied yet: a minute at most
            if not await _inbox(pool):
                break
            await asyncio.sleep(0.05)
        applied_after = time.perf_counter() - posted_at
        await asyncio.sleep(2.5)  # statuses that outran their part are applied within a second
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, timeout=60)
        await pool.close()
        child.join(timeout=10)
    with psycopg.connect(url, autocommit=True) as conn:
        stored = conn.execute(
            "SELECT (SELECT count(*) FROM message_parts WHERE status = 'DELIVERY_ACK'),"
            " (SELECT count(*) FROM message_parts WHERE status = 'READ'),"
            " (SELECT count(*) FROM delivery_updates_early WHERE status = 'DELIVERY_ACK'),"
            " (SELECT count(*) FROM delivery_updates_early WHERE status = 'READ'),"
            " (SELECT count(*) FROM sent_events),"
            " (SELECT count(*) FROM leads WHERE last_reply_at IS NOT NULL)"
        ).fetchone()
    assert stored is not None
    delivered, read, kept, kept_read, sent_events, replied = (int(x) for x in stored)
    posted = seen["posted"]
    lost = {
        # A part (or kept update) at READ had its DELIVERY_ACK posted before.
        "statuses": posted["status"]
        + posted["read"]
        - (delivered + 2 * read + kept + 2 * kept_read),
        "send_message": posted["sent"] - sent_events,
        "replies": seen["replied_numbers"] - replied,
        "refused_or_failed": sum(seen["failures"].values()),
    }
    return {
        "rate": args.rate,
        "seconds": args.seconds,
        "events": seen,
        "stored": {
            "parts_delivered": delivered,
            "parts_read": read,
            "kept_for_later": kept + kept_read,
            "sent_events": sent_events,
            "leads_replied": replied,
        },
        "lost": lost,
        "messages_sent_per_second_meanwhile": round(sending, 1),
        "inbox_at_the_end": backlog,
        # The host is shared: a load above its 2 cores starves the listener and the client.
        "load_average_1min": [load_before, load_after],
        "inbox_applied_seconds_after_the_last_answer": round(applied_after, 2),
        "p99_ok": seen["p99_ms"] is not None and seen["p99_ms"] < TARGET_P99_MS,
    }


async def _inbox(pool: Any) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM webhook_inbox")
        row = await cur.fetchone()
    return int(row[0]) if row else 0


def _sent(daemon: Daemon) -> int:
    value = daemon.metrics.registry.get_sample_value("listener_messages_total", {"outcome": "sent"})
    return int(value or 0)


def main() -> None:
    parser = c.base_parser(__doc__)
    parser.add_argument("--rate", type=int, default=1000, help="events a second")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long events are posted")
    parser.add_argument("--backlog", type=int, default=150_000, help="due messages to send")
    parser.add_argument("--concurrency", type=int, default=50, help="LISTENER_CONCURRENCY")
    parser.add_argument("--port", type=int, default=18788, help="the receiver's port")
    args = parser.parse_args()
    c.smoke(parser, args, rate=100, seconds=1.5, backlog=30_000, port=c.free_port())
    url = c.recreate_db(args.url, args.db)
    campaign = c.seed_campaign(url)
    c.seed_leads(url, args.backlog)
    c.seed_messages(url, campaign, args.backlog)
    result = run_async(run(url, args))
    name = "webhooks" if args.tag is None else f"webhooks.{args.tag}"
    (c.results_dir() / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    events = result["events"]
    print(
        f"{events['requests']} events in {events['seconds']:.1f}s "
        f"({events['requests'] / events['seconds']:.0f}/s): p50 {events['p50_ms']:.1f} ms, "
        f"p99 {events['p99_ms']:.1f} ms, max {events['max_ms']:.1f} ms; "
        f"lost {result['lost']}; inbox {result['inbox_at_the_end']} at the end, applied "
        f"{result['inbox_applied_seconds_after_the_last_answer']:.2f}s later; "
        f"{result['messages_sent_per_second_meanwhile']:.0f} messages sent a second meanwhile; "
        f"load average {result['load_average_1min'][0]:.1f} -> {result['load_average_1min'][1]:.1f}"
    )
    c.require(not any(result["lost"].values()), f"events lost: {result['lost']}")
    c.require(events["requests"] > 0, "no event was posted")
    c.require(
        result["messages_sent_per_second_meanwhile"] > 0,
        "the listener sent nothing while the events came (a larger --backlog?)",
    )


if __name__ == "__main__":
    main()
