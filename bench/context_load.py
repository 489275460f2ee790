"""Context loading: `get_lead_full_context` for a whole batch in one query, against one query
per lead.

The scratch database gets `--leads` leads (default 100,000), each with `--history` sent
messages (default 3, so 300,000 finished rows) that the function returns as the lead's
`recent_messages`. For batches of 5, 50 and 500 random leads it times, on warm caches:

- one query: `SELECT lead_id, context FROM get_lead_full_context(%s::uuid[])`, the listener's
  own `lead_contexts` statement;
- one query per lead, in turn on one connection (what a loop over leads costs);
- one query per lead, 10 at a time over 10 connections (the old Edge Function's "batch" of N
  parallel calls, minus its HTTP hops).

Each is repeated with a fresh random set of leads (`--reps`), and the median and p90 are
reported. The plan of the one-query form for 500 leads is saved in the JSON.

    uv run python bench/context_load.py [--url DSN] [--leads 100000] [--history 3]
"""

from __future__ import annotations

import asyncio
import random
import re
import statistics
import time
from typing import Any

import _common as c
import psycopg
from psycopg_pool import AsyncConnectionPool

ONE = "SELECT lead_id, context FROM get_lead_full_context(%s::uuid[])"


def seed(url: str, leads: int, history: int) -> None:
    c.seed_leads(url, leads)
    campaign = c.seed_campaign(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO campaign_messages (campaign_id, lead_id, status, scheduled_at, "
            "attempts, generated_text, parts, parts_sent, sent_at, updated_at) "
            "SELECT %s, l.id, 'sent', now() - make_interval(days => h), 1, "
            "'{\"messages\": [\"Olá, mensagem ' || h || ' para ' || l.name || '\"]}', "
            "jsonb_build_array('Olá, mensagem ' || h), 1, now() - make_interval(days => h), "
            "now() FROM leads l CROSS JOIN generate_series(1, %s) h",
            (campaign, history),
        )
        conn.execute("VACUUM ANALYZE campaign_messages")
        conn.execute("VACUUM ANALYZE leads")


def timed_ms(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


async def parallel_ms(pool: AsyncConnectionPool, ids: list[str]) -> float:
    async def one(lead: str) -> None:
        async with pool.connection() as conn:
            await (await conn.execute(ONE, ([lead],))).fetchall()

    started = time.perf_counter()
    await asyncio.gather(*(one(lead) for lead in ids))
    return (time.perf_counter() - started) * 1000


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": round(statistics.median(ordered), 3),
        "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 3),
        "min_ms": round(ordered[0], 3),
    }


async def measure(url: str, sizes: list[int], reps: int, rng: random.Random) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        all_ids = [str(r[0]) for r in conn.execute("SELECT id FROM leads")]
        # Warm the caches once: every lead and its history.
        conn.execute(ONE, (all_ids,)).fetchall()
        out: dict[str, Any] = {}
        async with AsyncConnectionPool(url, min_size=10, max_size=10, open=False) as pool:
            await pool.open(wait=True)
            for size in sizes:
                one: list[float] = []
                loop: list[float] = []
                par: list[float] = []
                for _ in range(reps):
                    ids = rng.sample(all_ids, size)
                    one.append(timed_ms(lambda ids=ids: conn.execute(ONE, (ids,)).fetchall()))
                    rows = conn.execute(ONE, (ids,)).fetchall()
                    assert len(rows) == size, (len(rows), size)
                    ids = rng.sample(all_ids, size)

                    def per_lead(ids: list[str] = ids) -> None:
                        for lead in ids:
                            conn.execute(ONE, ([lead],)).fetchall()

                    loop.append(timed_ms(per_lead))
                    ids = rng.sample(all_ids, size)
                    par.append(await parallel_ms(pool, ids))
                out[str(size)] = {
                    "one_query": summary(one),
                    "query_per_lead_sequential": summary(loop),
                    "query_per_lead_10_parallel": summary(par),
                }
        plan = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS) " + ONE, (rng.sample(all_ids, 500),)
        ).fetchall()
        out["plan_500"] = [re.sub(r"'\{[^}]*\}'", "'{...500 ids...}'", r[0]) for r in plan]
    return out


def main() -> None:
    parser = c.base_parser(__doc__)
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--history", type=int, default=3, help="sent messages per lead")
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 50, 500])
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    c.smoke(parser, args, leads=600, sizes=[5, 50], reps=3)

    url = c.recreate_db(args.url, args.db)
    started = time.perf_counter()
    seed(url, args.leads, args.history)
    print(
        f"context load: {args.leads:,} leads x {args.history} sent messages "
        f"(seeded in {time.perf_counter() - started:.1f}s); {args.reps} reps per size, warm cache"
    )
    result = asyncio.run(measure(url, args.sizes, args.reps, random.Random(7)))
    print(
        f"  {'leads':>5}  {'one query':>12}  {'1/lead, in turn':>16}  {'1/lead, 10 parallel':>20}"
    )
    for size in args.sizes:
        row = result[str(size)]
        print(
            f"  {size:>5}  {row['one_query']['median_ms']:>9.2f} ms  "
            f"{row['query_per_lead_sequential']['median_ms']:>13.2f} ms  "
            f"{row['query_per_lead_10_parallel']['median_ms']:>17.2f} ms"
        )
    print("  (medians; the JSON has p90 and min, and the plan for 500 leads)")
    for line in result["plan_500"]:
        if "Execution Time" in line or "Scan" in line:
            print("   plan:", line.strip())
    c.write_result(
        "context_load",
        {
            "leads": args.leads,
            "history": args.history,
            "reps": args.reps,
            **result,
            "machine": c.machine(url),
        },
        tag=args.tag,
    )


if __name__ == "__main__":
    main()
