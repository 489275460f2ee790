"""The status page's time on a table of a million finished rows.

The scratch database gets `--finished` finished rows (default 1,000,000: sent, with a failed
one in 50 and a skipped one in 70) over 5 campaigns and their runs, spread over the last 30 days,
inserted by one INSERT ... SELECT generate_series; plus `--open` queued rows (default 2,000:
due, scheduled, waiting for a retry, the window, the cap, the gap, a disconnected instance) and
a few in flight; with `--paused N`, also N pending rows of a paused campaign (a large queue
that stays); then `VACUUM ANALYZE`. It serves the page as the daemon does (listener.metrics
`serve` with the status page on a real port) and times `--requests` GET / (default 20, after 3
warm-ups) from another connection: median, p95 and max, in milliseconds. It also checks that no
status query reads campaign_messages with a sequential scan (EXPLAIN of each).

    uv run python bench/status_page.py [--url DSN] [--finished 1000000] [--requests 20]
    uv run python bench/status_page.py --paused 200000 --tag paused200k
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import _common as c
import httpx
import psycopg

from listener.db import make_pool
from listener.metrics import Health, Metrics, serve
from listener.queries import q
from listener.web import CAMPAIGN_LIMIT, FAILURE_LIMIT, StatusPage, render

#: The status queries that read campaign_messages (each EXPLAINed for a sequential scan).
STATUS_QUERIES = (
    "status_campaigns",
    "status_open",
    "status_queue",
    "status_in_flight",
    "status_throughput",
    "status_failures",
    "status_instances",
    "status_funnel",
)
#: The page's other queries (the campaigns' budgets and pools, the numbers' limits and sends).
OTHER_QUERIES = (
    "status_budgets",
    "status_pools",
    "status_sender_instances",
    "status_instance_sends",
)


def seed_paused(url: str, n: int) -> None:
    """`n` pending rows of a paused campaign: a large queue that stays."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO campaigns (name, instance) VALUES ('Paused backlog', 'number-0') "
            "RETURNING id"
        ).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO campaign_messages (campaign_id, lead_id) "
            "SELECT %s, gen_random_uuid() FROM generate_series(1, %s)",
            (row[0], n),
        )
        conn.execute("UPDATE campaigns SET status = 'paused' WHERE id = %s", (row[0],))
        conn.execute("VACUUM ANALYZE campaign_messages")


def seed(url: str, finished: int, open_rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO campaigns (name, instance, daily_cap, gap_min_seconds, gap_max_seconds)"
            " SELECT 'Campaign ' || g || ' <b>&', 'number-' || (g % 2), "
            " CASE WHEN g = 1 THEN 5000 END, CASE WHEN g = 2 THEN 60 END, "
            " CASE WHEN g = 2 THEN 120 END FROM generate_series(1, 5) g"
        )
        conn.execute(
            "INSERT INTO campaign_runs (campaign_id) SELECT id FROM campaigns ORDER BY name"
        )
        conn.execute(
            "INSERT INTO leads (name, phone) SELECT 'Lead ' || g, "
            "'55119' || lpad(g::text, 8, '0') FROM generate_series(1, 10000) g"
        )
        started = time.perf_counter()
        conn.execute(
            "INSERT INTO campaign_messages (campaign_id, run_id, lead_id, status, scheduled_at, "
            "attempts, parts, parts_sent, sent_at, last_error, created_at, updated_at) "
            "SELECT r.campaign_ids[1 + g %% 5], r.run_ids[1 + g %% 5], "
            "l.ids[1 + g %% cardinality(l.ids)], s.status, t, 1, '[\"Olá!\"]'::jsonb, "
            "CASE WHEN s.status = 'sent' THEN 1 ELSE 0 END, "
            "CASE WHEN s.status = 'sent' THEN t + interval '2 seconds' END, "
            "CASE s.status WHEN 'failed' THEN 'number 5511987654321 is not on WhatsApp' "
            "WHEN 'skipped' THEN 'skipped: the lead opted out' END, t, t + interval '2 seconds' "
            "FROM (SELECT array_agg(campaign_id ORDER BY campaign_id) AS campaign_ids, "
            "             array_agg(id ORDER BY campaign_id) AS run_ids FROM campaign_runs) r, "
            "     (SELECT array_agg(id) AS ids FROM leads) l, generate_series(1, %s) g, "
            "LATERAL (SELECT now() - interval '30 days' * (g::float8 / %s) AS t, "
            "  CASE WHEN g %% 50 = 0 THEN 'failed' WHEN g %% 70 = 0 THEN 'skipped' "
            "       ELSE 'sent' END AS status) s",
            (finished, finished),
        )
        print(f"inserted {finished:,} finished rows in {time.perf_counter() - started:.1f}s")
        conn.execute(
            "INSERT INTO campaign_messages (campaign_id, run_id, lead_id, scheduled_at, "
            "wait_reason, last_error) "
            "SELECT r.campaign_id, r.id, l.ids[1 + g %% cardinality(l.ids)], "
            "now() + make_interval(secs => (g %% 7 - 3) * 60), "
            "(ARRAY[NULL, NULL, NULL, 'window', 'cap', 'gap', 'instance down'])[1 + g %% 7], "
            "CASE WHEN g %% 11 = 0 THEN 'sender 503: try again' END "
            "FROM (SELECT array_agg(id) AS ids FROM leads) l, generate_series(1, %s) g, "
            "LATERAL (SELECT * FROM campaign_runs ORDER BY id OFFSET g %% 5 LIMIT 1) r",
            (open_rows,),
        )
        conn.execute(
            "UPDATE campaign_messages SET status = 'processing', locked_by = 'bench:' || "
            "(ctid::text::point)[1]::int % 2, locked_until = now() + interval '30 seconds', "
            "started_at = now() WHERE id IN (SELECT id FROM campaign_messages "
            "WHERE status = 'pending' AND wait_reason IS NULL LIMIT 10)"
        )
        conn.execute(
            "INSERT INTO listener_instances (instance, next_send_at, updated_at) "
            "VALUES ('number-0', now() + interval '40 seconds', now()), "
            "('number-1', now() - interval '5 seconds', now() - interval '2 minutes')"
        )
        conn.execute("VACUUM ANALYZE")


def _sent_last_day(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM campaign_messages "
            "WHERE status = 'sent' AND sent_at > now() - interval '1 day'"
        ).fetchone()
    return int(row[0]) if row else 0


def seq_scans(url: str) -> dict[str, bool]:
    """Whether each status query's plan reads campaign_messages with a sequential scan."""
    params: dict[str, Any] = {"limit": max(CAMPAIGN_LIMIT, FAILURE_LIMIT)}
    found = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for name in STATUS_QUERIES:
            plan = conn.execute(f"EXPLAIN {q(name)}", params).fetchall()  # type: ignore[arg-type]
            text = "\n".join(str(row[0]) for row in plan)
            found[name] = "Seq Scan on campaign_messages" in text
    return found


async def time_parts(url: str, reps: int = 7) -> dict[str, float]:
    """Median ms of each status query the page runs, and of rendering, on an idle
    connection."""
    pool = make_pool(url, c.bench_settings())
    await pool.open(wait=True)
    try:
        snapshot = await StatusPage(pool).snapshot()
        names = STATUS_QUERIES + OTHER_QUERIES
        params: dict[str, Any] = {
            "limit": CAMPAIGN_LIMIT,
            "ids": [row["id"] for row in snapshot.campaigns],
            "names": sorted(snapshot.instance_sends),
        }
        parts: dict[str, float] = {}
        async with pool.connection() as conn:
            for name in names:
                values = []
                for _ in range(reps):
                    started = time.perf_counter()
                    await (await conn.execute(q(name), params)).fetchall()
                    values.append((time.perf_counter() - started) * 1000)
                parts[name] = round(statistics.median(values), 2)
        values = []
        for _ in range(reps):
            started = time.perf_counter()
            render(snapshot)
            values.append((time.perf_counter() - started) * 1000)
        parts["render"] = round(statistics.median(values), 2)
        return parts
    finally:
        await pool.close()


async def time_page(url: str, requests: int) -> tuple[list[float], int]:
    settings = c.bench_settings()
    pool = make_pool(url, settings)
    await pool.open(wait=True)
    page = StatusPage(pool)
    runner = await serve(Metrics(), Health(), "127.0.0.1", 0, routes=page.routes())
    try:
        port = runner.addresses[0][1]
        times: list[float] = []
        size = 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for index in range(requests + 3):
                started = time.perf_counter()
                response = await client.get("/")
                elapsed = (time.perf_counter() - started) * 1000
                response.raise_for_status()
                size = len(response.content)
                if index >= 3:
                    times.append(elapsed)
        return times, size
    finally:
        await runner.cleanup()
        await pool.close()


def main() -> None:
    parser = c.base_parser(__doc__)
    parser.add_argument("--finished", type=int, default=1_000_000, help="finished rows")
    parser.add_argument("--open", type=int, default=2_000, help="queued (pending) rows")
    parser.add_argument("--requests", type=int, default=20, help="timed requests")
    parser.add_argument(
        "--paused", type=int, default=0, help="also this many pending rows of a paused campaign"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="time the page on the scratch database as it is"
    )
    args = parser.parse_args()
    c.smoke(parser, args, finished=3_000, open=200, requests=3, paused=50)
    if args.reuse:
        url = c.with_dbname(args.url, args.db)
    else:
        url = c.recreate_db(args.url, args.db)
        seed(url, args.finished, args.open)
        if args.paused:
            seed_paused(url, args.paused)
    scans = seq_scans(url)
    times, size = asyncio.run(time_page(url, args.requests))
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * len(ordered) + 0.5) - 1)]
    median = statistics.median(ordered)
    print(
        f"GET / with {args.finished:,} finished rows, {args.open:,} queued"
        f" and {args.paused:,} paused: "
        f"median {median:.1f} ms, p95 {p95:.1f} ms, max {ordered[-1]:.1f} ms "
        f"over {len(times)} requests ({size:,} bytes)"
    )
    parts = asyncio.run(time_parts(url))
    print("median ms per part: " + ", ".join(f"{k} {v}" for k, v in parts.items()))
    sent_day = _sent_last_day(url)
    print(f"sent in the last 24 h: {sent_day:,}")
    bad = [name for name, seq in scans.items() if seq]
    print("sequential scans of campaign_messages: " + (", ".join(bad) if bad else "none"))
    c.write_result(
        "status_page",
        {
            "finished_rows": args.finished,
            "open_rows": args.open,
            "paused_rows": args.paused,
            "requests": len(times),
            "median_ms": round(median, 2),
            "p95_ms": round(p95, 2),
            "max_ms": round(ordered[-1], 2),
            "times_ms": [round(t, 2) for t in times],
            "page_bytes": size,
            "seq_scans": scans,
            "parts_ms": parts,
            "sent_last_day": sent_day,
            "machine": c.machine(url),
        },
        args.tag,
    )


if __name__ == "__main__":
    main()
