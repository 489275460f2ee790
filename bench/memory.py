"""Memory while a backlog drains: does the listener's RSS grow with the size of the backlog?

For each backlog size (default 10,000 and 100,000 due rows) the scratch database is made
afresh and seeded, then a child process of this script (`--child`, so each size starts from a
clean interpreter) runs the real `listener.daemon.Daemon` with the sandbox providers
(concurrency 50, part delay 0) until every row is sent, sampling its own RSS (psutil) every
0.25 s together with how many messages were sent so far. Reported per size: RSS before the
daemon starts, peak RSS (the samples and `ru_maxrss`), RSS at the end, and the slope of RSS
over messages sent across the second half of the run (bytes per 1,000 messages; near 0 when
flat).

The Postgres of the benchmark machine runs with `autovacuum = off`, so unless something runs
ANALYZE the planner statistics of `campaign_messages` stay the ones taken when every row was
pending. A thread of the child runs `ANALYZE campaign_messages` every `--analyze-every`
seconds (10), as autoanalyze would; `--analyze-every 0` never does, to show how the drain
behaves on stale statistics (migration 0004 is meant to keep `get_lead_full_context` on a
per-lead index whatever they say). The child also records the CPU used by itself, Postgres and
the rest of the machine over the drain, and its drain rate every 0.25 s.

After each drain, with the statistics as the drain left them, the parent times the listener's
`lead_contexts` statement for 100 random leads (median of 5, and `EXPLAIN (ANALYZE, BUFFERS)`:
which index serves the history), then runs `ANALYZE campaign_messages` and times it again. It
also reads `n_tup_upd` and `n_tup_hot_upd` of `campaign_messages` (how many updates were HOT).
A run with `--analyze-every` other than 10 writes `memory_analyze_every_<s>.json`.

    uv run python bench/memory.py [--url DSN] [--sizes 10000 100000] [--concurrency 50]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import _common as c
import psutil
import psycopg

from listener.commands.common import run_async  # the loop `listener run` uses (uvloop)


def analyzer(url: str, every: float, stop: threading.Event) -> None:
    """`ANALYZE campaign_messages` every `every` seconds: what autovacuum's autoanalyze would do
    on a server where it is on (it is off on the benchmark machine)."""
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.wait(every):
            conn.execute("ANALYZE campaign_messages")


def child(url: str, n: int, concurrency: int, analyze_every: float) -> None:
    stop = threading.Event()
    if analyze_every > 0:
        threading.Thread(target=analyzer, args=(url, analyze_every, stop), daemon=True).start()
    proc = psutil.Process()
    before = proc.memory_info().rss
    samples: list[tuple[float, int, int]] = []  # (seconds, sent, rss)
    started = time.perf_counter()
    last = 0.0

    def tick(sent: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if now - last >= 0.25:
            last = now
            samples.append((round(now - started, 3), sent, proc.memory_info().rss))

    settings = c.bench_settings(concurrency=concurrency)
    result = run_async(c.drain(url, settings, n, on_tick=tick, cpu=c.CpuMeter()))
    stop.set()
    after = proc.memory_info().rss
    peak_sampled = max((s[2] for s in samples), default=after)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    half = [s for s in samples if s[1] >= n / 2]
    slope = 0.0
    if len(half) >= 2:
        xs = [s[1] for s in half]
        ys = [s[2] for s in half]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        if var > 0:
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
    step = max(1, len(samples) // 60)
    out = {
        "n": n,
        "concurrency": concurrency,
        "per_second": result.per_second,
        "seconds": result.seconds,
        "statuses": result.statuses,
        "cpu": result.cpu,
        "rss_before_mb": round(before / 2**20, 1),
        "rss_peak_sampled_mb": round(peak_sampled / 2**20, 1),
        "ru_maxrss_mb": round(maxrss / 2**20, 1),
        "rss_end_mb": round(after / 2**20, 1),
        "slope_bytes_per_1000_msgs_second_half": round(slope * 1000, 1),
        "samples": [
            {"t": t, "sent": sent, "rss_mb": round(rss / 2**20, 2)} for t, sent, rss in samples
        ][::step],
    }
    sys.stdout.write(json.dumps(out) + "\n")


def context_check(url: str, leads: int = 100, reps: int = 5) -> dict[str, Any]:
    """Time the listener's `lead_contexts` statement for `leads` random leads on the statistics
    the drain left, then after `ANALYZE campaign_messages`; with the plan of each, and the
    table's update counters (read first, after a pause that lets the daemon's sessions flush
    their statistics)."""
    import random
    import statistics

    from listener.queries import q

    time.sleep(1.5)
    out: dict[str, Any] = {"leads": leads}
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT n_tup_upd, n_tup_hot_upd, n_live_tup, last_analyze::text "
            "FROM pg_stat_user_tables WHERE relname = 'campaign_messages'"
        ).fetchone()
        assert row is not None
        out["n_tup_upd"], out["n_tup_hot_upd"] = int(row[0]), int(row[1])
        out["last_analyze_before_check"] = row[3]
        ids = [r[0] for r in conn.execute("SELECT id FROM leads")]
        rng = random.Random(11)
        for label in ("stale_statistics", "after_analyze"):
            if label == "after_analyze":
                conn.execute("ANALYZE campaign_messages")
            times = []
            for _ in range(reps):
                params = {"lead_ids": rng.sample(ids, leads)}
                started = time.perf_counter()
                conn.execute(q("lead_contexts"), params).fetchall()
                times.append((time.perf_counter() - started) * 1000)
            params = {"lead_ids": rng.sample(ids, leads)}
            plan = [
                str(r[0])
                for r in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + q("lead_contexts"), params)
            ]
            scans = [line.strip() for line in plan if "Scan" in line]
            out[label] = {
                "median_ms": round(statistics.median(times), 3),
                "max_ms": round(max(times), 3),
                "history_scan": next((line for line in scans if "campaign_messages" in line), None),
                "plan": plan,
            }
    return out


def main() -> None:
    parser = c.base_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--analyze-every",
        type=float,
        default=10.0,
        help="seconds between ANALYZE campaign_messages during the drain (0: never)",
    )
    parser.add_argument("--child", type=int, help="(internal) drain this many in this process")
    parser.add_argument("--child-url", help="(internal)")
    args = parser.parse_args()
    if args.child:
        child(args.child_url, args.child, args.concurrency, args.analyze_every)
        return
    c.smoke(parser, args, sizes=[300, 900], analyze_every=1.0)

    print(
        f"memory while a backlog drains (sandbox providers, concurrency {args.concurrency}); "
        f"one fresh process per size; ANALYZE every {args.analyze_every:g}s (0 = never)"
    )
    runs: list[dict[str, Any]] = []
    for n in args.sizes:
        url = c.recreate_db(args.url, args.db)
        c.seed_leads(url, min(n, 20_000))
        campaign = c.seed_campaign(url)
        c.seed_messages(url, campaign, n)
        proc = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--child",
                str(n),
                "--child-url",
                url,
                "--concurrency",
                str(args.concurrency),
                "--analyze-every",
                str(args.analyze_every),
            ],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        run = json.loads(proc.stdout.strip().splitlines()[-1])
        run["context_check"] = context_check(url)
        runs.append(run)
        print(
            f"  {n:>7,} rows: RSS before {run['rss_before_mb']:.1f} MB, peak "
            f"{run['rss_peak_sampled_mb']:.1f} MB (ru_maxrss {run['ru_maxrss_mb']:.1f}), end "
            f"{run['rss_end_mb']:.1f} MB; second-half slope "
            f"{run['slope_bytes_per_1000_msgs_second_half']:,.0f} B per 1,000 msgs; "
            f"{run['per_second']:,.0f} msg/s; {run['statuses']}"
        )
        print(f"      {c.cpu_line(run['cpu'])}")
        check = run["context_check"]
        for label in ("stale_statistics", "after_analyze"):
            print(
                f"      lead_contexts, {check['leads']} leads, {label.replace('_', ' ')}: "
                f"median {check[label]['median_ms']:.2f} ms; {check[label]['history_scan']}"
            )
        print(
            f"      updates of campaign_messages: {check['n_tup_upd']:,}, HOT "
            f"{check['n_tup_hot_upd']:,}"
        )
    if len(runs) >= 2:
        small, large = runs[0], runs[-1]
        growth = large["ru_maxrss_mb"] - small["ru_maxrss_mb"]
        print(
            f"peak RSS {small['n']:,} -> {large['n']:,} rows: {small['ru_maxrss_mb']:.1f} -> "
            f"{large['ru_maxrss_mb']:.1f} MB ({growth:+.1f} MB for "
            f"{large['n'] / small['n']:.0f}x the backlog)"
        )
    # The default run is `memory.json`; a run with another ANALYZE interval gets its own file
    # (`memory_analyze_every_0.json` for `--analyze-every 0`), so both can be kept side by side.
    name = (
        "memory" if args.analyze_every == 10.0 else f"memory_analyze_every_{args.analyze_every:g}"
    )
    c.write_result(
        name,
        {"analyze_every_s": args.analyze_every, "runs": runs, "machine": c.machine(args.url)},
        tag=args.tag,
    )


if __name__ == "__main__":
    main()
