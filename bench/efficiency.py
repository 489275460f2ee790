"""Sliding-window efficiency with slow providers, against lock-step chunks of 5.

The fake OpenRouter (`listener/testing`, its own process) answers each chat completion
after a latency drawn uniformly from 200-600 ms; the fake Evolution API answers at once (the
choice made here: the LLM is the slow provider in practice, and one latency per message keeps
the limit well defined). The latency is seeded by the lead's id, so every message has the same
latency in both runs below.

1. Sliding window: the real `listener.daemon.Daemon` (real HTTP providers, concurrency 5)
   drains N due messages (default 300).
2. Lock-step (the old Edge Function's shape): a small loop of our own takes the same N leads 5 at
   a time, sends each one's chat completion and then its sendText with the same HTTP client the
   listener uses, waits for all 5, then starts the next 5. It does no database work at all, so
   it is if anything favoured.

Each is reported as throughput over the limit `concurrency / mean latency`, where the mean is
the mean of the latencies the fake actually applied (the nominal mean is 0.4 s).

    uv run python bench/efficiency.py [--url DSN] [-n 300] [--concurrency 5]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

import _common as c
import psycopg

from listener.commands.common import run_async  # the loop `listener run` uses (uvloop)
from listener.phones import normalize_phone
from listener.providers._http import make_client
from listener.queue.writing import FORMAT_INSTRUCTIONS

TARGET = 0.95


def ideal_window(latencies: list[float], slots: int) -> float:
    """Makespan of a perfect sliding window (zero overhead) over `latencies` in this order:
    each message starts the instant a slot frees. What the tail alone costs."""
    free = [0.0] * slots
    for latency in latencies:
        free.sort()
        free[0] += latency
    return max(free)


async def lock_step(
    fake: c.FakeServer, contexts: list[dict[str, Any]], chunk: int, prompt: str
) -> float:
    """The old system's loop: `chunk` messages at once, wait for all, then the next chunk.
    Returns the wall time in seconds."""
    settings = c.bench_settings(concurrency=chunk, **fake.settings())
    llm = make_client(
        settings,
        read_timeout=settings.llm_timeout,
        base_url=fake.url,
        headers={"Authorization": "Bearer sk-test-secret"},
    )
    sender = make_client(
        settings,
        read_timeout=settings.send_timeout,
        base_url=fake.url,
        headers={"apikey": "evo-test-secret"},
    )
    system = prompt + "\n\n" + FORMAT_INSTRUCTIONS.replace("{max_parts}", "5")

    async def one(ctx: dict[str, Any]) -> None:
        body = {
            "model": settings.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": json.dumps({"lead": ctx}, ensure_ascii=False)},
            ],
        }
        reply = (await llm.post("/chat/completions", json=body)).json()
        text = json.loads(reply["choices"][0]["message"]["content"])["messages"][0]
        number = normalize_phone(ctx["phone"])
        sent = await sender.post("/message/sendText/main", json={"number": number, "text": text})
        sent.raise_for_status()

    started = time.perf_counter()
    try:
        for index in range(0, len(contexts), chunk):
            await asyncio.gather(*(one(ctx) for ctx in contexts[index : index + chunk]))
    finally:
        await llm.aclose()
        await sender.aclose()
    return time.perf_counter() - started


def main() -> None:
    parser = c.base_parser(__doc__)
    parser.add_argument("-n", type=int, default=300, help="messages")
    parser.add_argument("--concurrency", type=int, default=5)
    parser.add_argument("--llm-latency", default="200,600", help="min,max ms of the fake LLM")
    parser.add_argument("--send-latency", default="0,0", help="min,max ms of the fake sender")
    args = parser.parse_args()
    c.smoke(parser, args, n=20, llm_latency="5,20")

    url = c.recreate_db(args.url, args.db)
    c.seed_leads(url, args.n)
    prompt = "Be brief."
    campaign = c.seed_campaign(url, prompt=prompt)
    c.seed_messages(url, campaign, args.n)
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT context FROM get_lead_full_context(ARRAY(SELECT id FROM leads)) "
            "ORDER BY context->>'id'"
        ).fetchall()
    contexts = [row[0] for row in rows]
    conc = args.concurrency
    out: dict[str, Any] = {
        "n": args.n,
        "concurrency": conc,
        "llm_latency_ms": args.llm_latency,
        "send_latency_ms": args.send_latency,
        "target_efficiency": TARGET,
    }
    print(
        f"efficiency: {args.n} messages, concurrency {conc}, LLM {args.llm_latency} ms, "
        f"send {args.send_latency} ms (target >= {TARGET:.0%} of concurrency / mean latency)"
    )
    fake_args = ["--llm-latency", args.llm_latency, "--send-latency", args.send_latency]
    with c.FakeServer(*fake_args) as fake:
        settings = c.bench_settings(concurrency=conc, **fake.settings())
        result = run_async(c.drain(url, settings, args.n))
        stats = fake.get("/stats")
        mean = statistics.fmean(stats["llm_delays"]) + (
            statistics.fmean(stats["send_delays"]) if stats["send_delays"] else 0.0
        )
        limit = conc / mean
        ideal = ideal_window(stats["llm_delays"], conc)
        window = {
            "ideal_seconds": round(ideal, 4),
            "ideal_efficiency": round(args.n / ideal / limit, 4),
            "seconds": result.seconds,
            "per_second": result.per_second,
            "mean_latency_s": round(mean, 4),
            "limit_per_second": round(limit, 3),
            "efficiency": round(result.per_second / limit, 4),
            "llm_requests": stats["llm_requests"],
            "statuses": result.statuses,
        }
        print(
            f"  sliding window (listener): {result.per_second:.2f} msg/s in {result.seconds:.2f}s; "
            f"mean latency {mean * 1000:.0f} ms -> limit {limit:.2f}/s -> "
            f"efficiency {window['efficiency']:.1%} (a zero-overhead window over the same "
            f"latencies: {window['ideal_efficiency']:.1%})"
        )

        fake.post("/reset")
        seconds = run_async(lock_step(fake, contexts, conc, prompt))
        stats = fake.get("/stats")
        mean_ls = statistics.fmean(stats["llm_delays"]) + (
            statistics.fmean(stats["send_delays"]) if stats["send_delays"] else 0.0
        )
        rate = args.n / seconds
        limit_ls = conc / mean_ls
        lock = {
            "seconds": round(seconds, 4),
            "per_second": round(rate, 3),
            "mean_latency_s": round(mean_ls, 4),
            "limit_per_second": round(limit_ls, 3),
            "efficiency": round(rate / limit_ls, 4),
            "llm_requests": stats["llm_requests"],
        }
        print(
            f"  lock-step chunks of {conc}:   {rate:.2f} msg/s in {seconds:.2f}s; "
            f"mean latency {mean_ls * 1000:.0f} ms -> limit {limit_ls:.2f}/s -> "
            f"efficiency {lock['efficiency']:.1%}"
        )
    gain = window["per_second"] / lock["per_second"]
    verdict = "met" if window["efficiency"] >= TARGET else "MISSED"
    print(f"  sliding window / lock-step: x{gain:.2f}; target {TARGET:.0%} -> {verdict}")
    out.update({"sliding_window": window, "lock_step": lock, "gain": round(gain, 3)})
    out["machine"] = c.machine(url)
    c.write_result("efficiency", out, tag=args.tag)


if __name__ == "__main__":
    main()
