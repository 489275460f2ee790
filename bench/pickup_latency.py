"""Pickup latency: from an insert's commit to the LLM request arriving at the fake OpenRouter.

The real `listener.daemon.Daemon` runs in this process with the real HTTP providers; the fake
OpenRouter/Evolution (`listener/testing`) runs in its own process and stamps the arrival
of every chat completion for a "Probe" lead with CLOCK_MONOTONIC. The probes are inserted by
another process of this script (`--role inserter`, so the inserts never wait on this process's
GIL or event loop): one autocommit INSERT of one due row at a time, spaced `--spacing` apart
(50 ms), stamping CLOCK_MONOTONIC as soon as the INSERT (its commit) returns. Latency is
arrival minus that stamp; the INSERT's own round trip is reported apart.

Phases:
- idle: the listener has nothing else to do (concurrency 5, the default).
- load: a feeder process (`--role feeder`) inserts batches of rows every 50 ms at
  `--load-rate` messages/s (about half of what the HTTP pipeline drains here) while the probes
  go in; concurrency 50.
- backlog: probes inserted while a backlog of `--backlog` older due rows drains. Claims are in
  due order (FIFO), so a probe waits for the rows ahead of it by design: this phase shows that
  wait, and is not held to the idle target.

    uv run python bench/pickup_latency.py [--url DSN] [--probes 300] [--spacing 0.05]
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as c
import psycopg

from listener.commands.common import run_async  # the loop `listener run` uses (uvloop)
from listener.daemon import Daemon

SCRIPT = str(Path(__file__).resolve())
TARGET_P50_MS = 5.0
TARGET_P99_MS = 20.0


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


# --------------------------------------------------------------------------------------------
# Child roles (separate processes)
# --------------------------------------------------------------------------------------------


def role_inserter(url: str, campaign: str, names: list[str], spacing: float) -> None:
    """Insert one due message per probe lead, one commit each; print the stamps as JSON."""
    out: dict[str, list[int]] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        ids = dict(
            conn.execute("SELECT name, id FROM leads WHERE name = ANY(%s)", (names,)).fetchall()
        )
        insert = (
            "INSERT INTO campaign_messages (campaign_id, lead_id, scheduled_at) "
            "VALUES (%s, %s, now())"
        )
        conn.execute("SELECT 1")
        next_at = time.monotonic()
        for name in names:
            before = now_ns()
            conn.execute(insert, (campaign, ids[name]))
            after = now_ns()
            out[name] = [before, after]
            next_at += spacing
            time.sleep(max(0.0, next_at - time.monotonic()))
    sys.stdout.write(json.dumps(out) + "\n")


def role_feeder(url: str, campaign: str, rate: float, duration: float) -> None:
    """Insert `rate` messages a second, in batches every 50 ms, for `duration` seconds."""
    tick = 0.05
    per_tick = max(1, round(rate * tick))
    sent = 0
    with psycopg.connect(url, autocommit=True) as conn:
        leads = [r[0] for r in conn.execute("SELECT id FROM leads WHERE name LIKE 'Lead %'")]
        start = time.monotonic()
        next_at = start
        k = 0
        while time.monotonic() - start < duration:
            batch = [leads[(k + i) % len(leads)] for i in range(per_tick)]
            k += per_tick
            conn.execute(
                "INSERT INTO campaign_messages (campaign_id, lead_id) "
                "SELECT %s, l FROM unnest(%s::uuid[]) l",
                (campaign, batch),
            )
            sent += per_tick
            next_at += tick
            time.sleep(max(0.0, next_at - time.monotonic()))
    sys.stdout.write(json.dumps({"sent": sent}) + "\n")


async def spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, SCRIPT, *args, stdout=subprocess.PIPE
    )


# --------------------------------------------------------------------------------------------
# The measuring process
# --------------------------------------------------------------------------------------------


async def phase(
    url: str,
    fake: c.FakeServer,
    campaign: str,
    *,
    probes: list[str],
    spacing: float,
    concurrency: int,
    load_rate: float = 0.0,
    backlog: int = 0,
) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE campaign_messages, sandbox_outbox CASCADE")
    fake.post("/reset")
    settings = c.bench_settings(concurrency=concurrency, **fake.settings())
    daemon = Daemon(settings, url)
    task = asyncio.create_task(daemon.run())
    feeder: asyncio.subprocess.Process | None = None
    try:
        for _ in range(500):
            if daemon.listener is not None and daemon.listener.connected.is_set():
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # let the start-up claim and timers settle
        if backlog:
            c.seed_messages(url, campaign, backlog)  # older due rows; wakes the listener
        duration = len(probes) * spacing + 1.0
        if load_rate:
            feeder = await spawn(
                "--role", "feeder", "--url", url, "--campaign", campaign,
                "--rate", str(load_rate), "--duration", str(duration),
            )  # fmt: skip
            await asyncio.sleep(1.0)  # reach a steady state first
        inserter = await spawn(
            "--role", "inserter", "--url", url, "--campaign", campaign,
            "--spacing", str(spacing), "--names", ",".join(probes),
        )  # fmt: skip
        stamps: dict[str, list[int]] = json.loads((await inserter.communicate())[0])
        fed = 0
        if feeder is not None:
            fed = json.loads((await feeder.communicate())[0])["sent"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            arrivals: dict[str, int] = fake.get("/stats")["arrivals"]
            if len(arrivals) >= len(probes):
                break
            await asyncio.sleep(0.1)
    finally:
        if feeder is not None and feeder.returncode is None:
            feeder.kill()
        daemon.request_stop()
        await asyncio.wait_for(task, timeout=30)
    latencies = [(arrivals[name] - stamps[name][1]) / 1e6 for name in probes if name in arrivals]
    insert_ms = [(b - a) / 1e6 for a, b in stamps.values()]
    return {
        "concurrency": concurrency,
        "probes": len(probes),
        "arrived": len(latencies),
        "load_rate": load_rate,
        "fed": fed,
        "backlog": backlog,
        "commit_to_llm_ms": c.percentiles(latencies),
        "insert_roundtrip_ms": c.percentiles(insert_ms),
    }


def show(label: str, result: dict[str, Any]) -> None:
    lat = result["commit_to_llm_ms"]
    ins = result["insert_roundtrip_ms"]
    print(
        f"  {label:<8} p50 {lat['p50']:8.2f} ms  p90 {lat['p90']:8.2f}  p99 {lat['p99']:8.2f}  "
        f"max {lat['max']:8.2f}  ({result['arrived']}/{result['probes']} probes; "
        f"INSERT itself p50 {ins['p50']:.2f} ms)"
    )


def main() -> None:
    parser = c.base_parser(__doc__)
    parser.add_argument("--probes", type=int, default=300, help="probes per phase")
    parser.add_argument("--spacing", type=float, default=0.05, help="seconds between probes")
    parser.add_argument("--load-rate", type=float, default=400.0, help="feeder msg/s (load)")
    parser.add_argument("--load-concurrency", type=int, default=50)
    parser.add_argument("--backlog", type=int, default=3000, help="rows ahead (backlog phase)")
    parser.add_argument(
        "--backlog-probes", type=int, default=60, help="probes in the backlog phase"
    )
    parser.add_argument("--role", choices=["main", "inserter", "feeder"], default="main")
    parser.add_argument("--campaign", help=argparse_hidden())
    parser.add_argument("--names", help=argparse_hidden())
    parser.add_argument("--rate", type=float, help=argparse_hidden())
    parser.add_argument("--duration", type=float, help=argparse_hidden())
    args = parser.parse_args()
    if args.role == "inserter":
        role_inserter(args.url, args.campaign, args.names.split(","), args.spacing)
        return
    if args.role == "feeder":
        role_feeder(args.url, args.campaign, args.rate, args.duration)
        return
    c.smoke(parser, args, probes=10, spacing=0.02, load_rate=100.0, backlog=100, backlog_probes=5)

    url = c.recreate_db(args.url, args.db)
    phases = ("idle", "load", "backlog")
    c.seed_leads(url, args.probes * len(phases), prefix="Probe")
    c.seed_leads(url, 5000, prefix="Lead")
    campaign = c.seed_campaign(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE leads")
    names = [f"Probe {i + 1}" for i in range(args.probes * len(phases))]
    groups = {p: names[i * args.probes : (i + 1) * args.probes] for i, p in enumerate(phases)}
    print(
        f"pickup latency, commit -> LLM request at the fake (target idle p50 < "
        f"{TARGET_P50_MS:.0f} ms, p99 < {TARGET_P99_MS:.0f} ms); {args.probes} probes per phase, "
        f"{args.spacing * 1000:.0f} ms apart"
    )
    results: dict[str, Any] = {}
    with c.FakeServer("--record-prefix", "Probe") as fake:
        results["idle"] = run_async(
            phase(url, fake, campaign, probes=groups["idle"], spacing=args.spacing, concurrency=5)
        )
        show("idle", results["idle"])
        results["load"] = run_async(
            phase(
                url,
                fake,
                campaign,
                probes=groups["load"],
                spacing=args.spacing,
                concurrency=args.load_concurrency,
                load_rate=args.load_rate,
            )
        )
        show("load", results["load"])
        print(
            f"           (load: {results['load']['fed']:,} other messages fed at "
            f"{args.load_rate:,.0f}/s, concurrency {args.load_concurrency})"
        )
        results["backlog"] = run_async(
            phase(
                url,
                fake,
                campaign,
                probes=groups["backlog"][: args.backlog_probes],
                spacing=args.spacing,
                concurrency=args.load_concurrency,
                backlog=args.backlog,
            )
        )
        show("backlog", results["backlog"])
        print(
            f"           (backlog: {args.backlog:,} older due rows drained first, FIFO by "
            f"scheduled_at; concurrency {args.load_concurrency})"
        )
    idle = results["idle"]["commit_to_llm_ms"]
    met = idle["p50"] < TARGET_P50_MS and idle["p99"] < TARGET_P99_MS
    print(f"idle target (p50 < 5 ms, p99 < 20 ms): {'met' if met else 'MISSED'}")
    c.write_result(
        "pickup_latency",
        {
            "targets_ms": {"idle_p50": TARGET_P50_MS, "idle_p99": TARGET_P99_MS},
            "spacing_s": args.spacing,
            **results,
            "machine": c.machine(url),
        },
        tag=args.tag,
    )


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
