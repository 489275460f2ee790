"""Sender pools: throughput of a pool of N numbers against its limit N/g (docs/design.md,
"Pacing and sender pools": at least 98%), and the smallest gap between two sends through one
number (never under `gap_min_seconds`).

Two real `listener.daemon.Daemon`s (two listeners, sharing the work through the database) run
in this process against the fake providers (`listener/testing`, its own process, loopback), which
answer the LLM and sendText at once and record when each sendText arrived, per instance. A campaign
with a pool of N numbers and a random gap of 0.2-0.4 s (mean g = 0.3 s) gets a backlog large
enough for the whole run; the messages need the LLM, so each one takes the whole path (the
pool's first reading before the LLM, the booking before the send).

The figure per N: sends per second through the pool, as the fake saw them arrive: every number
sends at once when the run starts, then one message per gap, so the pool's pace is (sends - N)
over the time from the first arrival to the last, against N / g; and per number the smallest
gap between two arrivals.

    uv run python bench/pool_throughput.py [--url DSN] [--pools 1 3 10] [--seconds 30]
                                           [--gap 0.2 0.4] [--concurrency 10]
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from typing import Any

import _common as c
import psycopg

from listener.commands.common import run_async  # the loop `listener run` uses (uvloop)
from listener.daemon import Daemon

TARGET = 0.98


def seed(url: str, pool: list[str], gap: tuple[float, float], n: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE campaign_messages, campaign_runs, campaigns, leads, sandbox_outbox,"
            " listener_instances, sender_instances CASCADE"
        )
        row = conn.execute(
            "INSERT INTO campaigns (name, prompt, instances, gap_min_seconds, gap_max_seconds)"
            " VALUES ('pool bench', 'Be brief.', %s, %s, %s) RETURNING id",
            (pool, gap[0], gap[1]),
        ).fetchone()
        assert row is not None
    c.seed_leads(url, n)
    c.seed_messages(url, str(row[0]), n)


async def run_pool(
    url: str,
    fake: c.FakeServer,
    pool: list[str],
    gap: tuple[float, float],
    seconds: float,
    concurrency: int,
) -> dict[str, Any]:
    mean_gap = (gap[0] + gap[1]) / 2
    limit = len(pool) / mean_gap
    backlog = int(limit * seconds * 1.5) + 20
    seed(url, pool, gap, backlog)
    fake.post("/reset")
    settings = [
        c.bench_settings(concurrency=concurrency, worker_id=name, **fake.settings())
        for name in ("one", "two")
    ]
    daemons = [Daemon(s, url) for s in settings]
    tasks = [asyncio.create_task(d.run()) for d in daemons]
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < seconds:
            for task in tasks:
                if task.done():
                    task.result()
                    raise RuntimeError("a listener stopped during the run")
            await asyncio.sleep(0.2)
    finally:
        for daemon in daemons:
            daemon.request_stop()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    stats = fake.get("/stats")
    times: dict[str, list[int]] = stats["send_times"]
    arrivals = sorted(t for ts in times.values() for t in ts)
    # The first sends of a run are the numbers' first slots (all open at once): measure from the
    # first send to the last, so the pool's steady pace is what is counted.
    span = (arrivals[-1] - arrivals[0]) / 1e9 if len(arrivals) > 1 else float("nan")
    sends = len(arrivals)
    # Each number's first send opens its own span at once: N sends happen "for free" at t=0, so
    # the pool's rate over the span is (sends - N) / span.
    rate = (sends - len(times)) / span if span > 0 else float("nan")
    per_number = {}
    for name, ts in sorted(times.items()):
        ordered = sorted(ts)
        gaps = [(b - a) / 1e9 for a, b in itertools.pairwise(ordered)]
        per_number[name] = {
            "sends": len(ordered),
            "smallest_gap_s": round(min(gaps), 4) if gaps else None,
            "mean_gap_s": round(sum(gaps) / len(gaps), 4) if gaps else None,
            "largest_gap_s": round(max(gaps), 4) if gaps else None,
            "gaps_over_max": sum(1 for g in gaps if g > gap[1] + 0.05),
        }
    smallest = min(
        (v["smallest_gap_s"] for v in per_number.values() if v["smallest_gap_s"]), default=None
    )
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'sent'), max(attempts),"
            " count(*) FILTER (WHERE attempts > 1) FROM campaign_messages"
        ).fetchone()
    assert row is not None
    result = {
        "numbers": len(pool),
        "gap_s": list(gap),
        "mean_gap_s": mean_gap,
        "limit_per_s": round(limit, 3),
        "sends": sends,
        "span_s": round(span, 3),
        "per_s": round(rate, 3),
        "share_of_limit": round(rate / limit, 4),
        "target_share": TARGET,
        "smallest_gap_s": smallest,
        "never_under_gap_min": smallest is None or smallest >= gap[0],
        "per_number": per_number,
        "sent_rows": row[0],
        "max_attempts": row[1],
        "messages_deferred_and_claimed_again": row[2],
        "listeners": 2,
        "concurrency_each": concurrency,
    }
    print(
        f"N={len(pool):2d} gap {gap[0]}-{gap[1]}s: {rate:7.3f}/s of limit {limit:7.3f}/s"
        f" = {100 * rate / limit:5.1f}% (target {100 * TARGET:.0f}%), smallest gap"
        f" {smallest}s (min {gap[0]}s), {sends} sends in {span:.1f}s"
    )
    c.require(sends > len(pool), f"the pool of {len(pool)} sent {sends} parts")
    c.require(result["never_under_gap_min"], f"two sends {smallest}s apart, under {gap[0]}s")
    return result


async def main_async(args: Any, url: str) -> dict[str, Any]:
    gap = (args.gap[0], args.gap[1])
    runs = []
    load_before = os.getloadavg()
    with c.FakeServer("--record-sends") as fake:
        for n in args.pools:
            pool = [f"number-{i + 1:02d}" for i in range(n)]
            runs.append(await run_pool(url, fake, pool, gap, args.seconds, args.concurrency))
    load_after = os.getloadavg()
    print(f"load average before {load_before}, after {load_after}")
    return {
        "machine": c.machine(args.url),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "runs": runs,
    }


def main() -> None:
    parser = c.base_parser(__doc__)
    parser.set_defaults(db="listener_bench_pool")
    parser.add_argument("--pools", type=int, nargs="+", default=[1, 3, 10])
    parser.add_argument("--gap", type=float, nargs=2, default=[0.2, 0.4])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    c.smoke(parser, args, pools=[1, 3], gap=[0.05, 0.1], seconds=1.5)
    url = c.recreate_db(args.url, args.db)
    result = run_async(main_async(args, url))
    c.write_result("pool_throughput", result, args.tag)


if __name__ == "__main__":
    main()
