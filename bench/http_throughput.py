"""Throughput through the real HTTP providers against fake servers that answer at once.

`listener/testing` (aiohttp, its own process, 127.0.0.1) plays OpenRouter and
Evolution API; the real `OpenRouterLLM` and `EvolutionSender` talk to it over loopback, from the
real `listener.daemon.Daemon` run in this process. Every message costs one chat completion and
one sendText (one part), and the same database work as the queue benchmark. For each
concurrency (default 5 and 50) the daemon drains a backlog of N due messages (default 20,000);
the figure is N over the time from `Daemon.run()` to the last message counted.

    uv run python bench/http_throughput.py [--url DSN] [-n 20000] [--concurrency 5 50]
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import _common as c
import psycopg

from listener.commands.common import run_async  # the loop `listener run` uses (uvloop)

TARGET = 1000.0
TARGET_CONCURRENCY = 50


async def client_ceiling(fake: c.FakeServer, n: int, concurrency: int) -> dict[str, Any]:
    """Requests per second of the HTTP clients alone (no database, no processor): the
    listener's own httpx client on the aiohttp transport (`make_client`), and a bare aiohttp
    session, each POSTing n sendText bodies with `concurrency` workers."""
    import aiohttp

    from listener.providers._http import make_client

    settings = c.bench_settings(concurrency=concurrency, **fake.settings())
    body = {"number": "5511900000001", "text": "Olá! Vi o trabalho da sua empresa."}
    out: dict[str, Any] = {"n": n, "concurrency": concurrency}

    async def run(post: Any) -> float:
        queue = iter(range(n))

        async def worker() -> None:
            for _ in queue:
                await post()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - started)

    client = make_client(
        settings,
        read_timeout=settings.send_timeout,
        base_url=fake.url,
        headers={"apikey": "evo-test-secret"},
    )
    try:

        async def httpx_post() -> None:
            response = await client.post("/message/sendText/main", json=body)
            response.json()

        out["httpx_aiohttp_transport_per_s"] = round(await run(httpx_post), 1)
    finally:
        await client.aclose()
    connector = aiohttp.TCPConnector(limit=max(10, concurrency * 2))
    async with aiohttp.ClientSession(
        base_url=fake.url, connector=connector, headers={"apikey": "evo-test-secret"}
    ) as session:

        async def aiohttp_post() -> None:
            async with session.post("/message/sendText/main", json=body) as response:
                await response.json()

        out["bare_aiohttp_per_s"] = round(await run(aiohttp_post), 1)
    return out


def main() -> None:
    parser = c.base_parser(__doc__)
    parser.add_argument("-n", type=int, default=20_000, help="backlog size (messages)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[5, 50])
    parser.add_argument("--repeat", type=int, default=2, help="runs per concurrency")
    parser.add_argument(
        "--client-n",
        type=int,
        default=10_000,
        help="requests for the HTTP-client-only ceiling at concurrency 50 (0 skips it)",
    )
    args = parser.parse_args()
    c.smoke(parser, args, n=150, concurrency=[50], repeat=1, client_n=100)

    url = c.recreate_db(args.url, args.db)
    c.seed_leads(url, args.n)
    campaign = c.seed_campaign(url)
    runs: list[dict[str, Any]] = []
    summary: dict[int, dict[str, float]] = {}
    print(
        f"HTTP throughput, fake OpenRouter/Evolution in another process, backlog of {args.n:,} "
        f"(target {TARGET:,.0f}/s at concurrency {TARGET_CONCURRENCY})"
    )
    with c.FakeServer() as fake:
        for concurrency in args.concurrency:
            rates = []
            for attempt in range(args.repeat):
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("TRUNCATE campaign_messages, sandbox_outbox CASCADE")
                c.seed_messages(url, campaign, args.n)
                fake.post("/reset")
                settings = c.bench_settings(concurrency=concurrency, **fake.settings())
                meter = c.CpuMeter(fake=fake.pid)
                result = run_async(c.drain(url, settings, args.n, cpu=meter))
                stats = fake.get("/stats")
                print(
                    f"  concurrency {concurrency:>3} run {attempt + 1}: "
                    f"{result.per_second:>7,.0f} msg/s ({result.seconds:.2f}s; "
                    f"{stats['llm_requests']} LLM requests, {stats['sends']} sends; "
                    f"{result.statuses})"
                )
                print(f"      {c.cpu_line(result.cpu)}")
                rates.append(result.per_second)
                runs.append(
                    {
                        "concurrency": concurrency,
                        "run": attempt + 1,
                        "llm_requests": stats["llm_requests"],
                        "sends": stats["sends"],
                        **result.as_dict(),
                    }
                )
            summary[concurrency] = {"median": statistics.median(rates), "max": max(rates)}
            print(
                f"  concurrency {concurrency:>3}: median {summary[concurrency]['median']:,.0f} "
                f"msg/s, best {summary[concurrency]['max']:,.0f}"
            )
        ceiling: dict[str, Any] = {}
        if args.client_n:
            ceiling = run_async(client_ceiling(fake, args.client_n, TARGET_CONCURRENCY))
            print(
                f"  HTTP client alone, {args.client_n:,} POSTs at {TARGET_CONCURRENCY} concurrent: "
                f"httpx + aiohttp transport {ceiling['httpx_aiohttp_transport_per_s']:,.0f} req/s, "
                f"bare aiohttp {ceiling['bare_aiohttp_per_s']:,.0f} req/s"
            )
    if TARGET_CONCURRENCY in summary:
        got = summary[TARGET_CONCURRENCY]["median"]
        verdict = "met" if got >= TARGET else "MISSED"
        print(f"at {TARGET_CONCURRENCY}: {got:,.0f} msg/s vs target {TARGET:,.0f} -> {verdict}")
    c.write_result(
        "http_throughput",
        {
            "n": args.n,
            "target_per_second": TARGET,
            "target_concurrency": TARGET_CONCURRENCY,
            "summary": summary,
            "runs": runs,
            "client_ceiling": ceiling,
            "machine": c.machine(url),
        },
        tag=args.tag,
    )


if __name__ == "__main__":
    main()
