"""The same drain through our queue, Procrastinate and PgQueuer, in one run, as ratios.

Run it with the peers of the `bench` dependency group (locked in uv.lock; not dependencies of
the listener):

    uv run --group bench python bench/compare_queues.py [--url DSN] [-n 20000] [--concurrency 50]

Each queue gets a fresh scratch database, a backlog of N jobs inserted before its worker starts,
and a worker in this process and event loop at the same concurrency (default 50); the figure is
N over the time from starting the worker to the last job done.

- listener (sandbox): the real `Daemon` with the sandbox providers, one part per message: the
  full pipeline (claim, context query, template, split, a row in `sandbox_outbox`, record,
  complete) - much more work per job than a no-op.
- listener (no-op providers): the same `Daemon` with an LLM and a sender that answer at once
  and touch nothing: the queue machinery alone (claim, context, store, record), the closest to
  a no-op job.
- Procrastinate: `App(connector=PsycopgConnector(...))`, `apply_schema_async()`, a no-op
  `@app.task`, `batch_defer_async` of N jobs, `run_worker_async(concurrency=C, wait=False)`
  (returns once the queue is empty).
- PgQueuer: `PgQueuer.from_psycopg_connection`, `Queries.install()`, a no-op
  `@pgq.entrypoint`, `Queries.enqueue` of N jobs in one batch, `qm.run(mode=drain,
  batch_size=B)` (returns once the queue is empty). PgQueuer runs its jobs as tasks with no
  concurrency cap by default. It runs at each dequeue batch of `--pgq-batch` (default 10, its
  default, and 100, its best setting measured here), on psycopg and also on asyncpg (its other
  driver, the one its own benchmark uses) when asyncpg is installed (it is in the group).

Each peer runs at its defaults and at its best setting. PgQueuer's setting is the batch (and the
driver, above). Procrastinate's documented worker settings that bear on a drain are the
concurrency (the same 50 as every queue here) and its polling interval, which only matters when
the queue is empty; it has no batch, so it runs once.

`--rounds R` runs every queue R times, the order reversed every other round (ABBA), and
reports each queue's median run and the median of the ratios within a round: on a shared
machine the ratio is the figure, not the rate. Beside each rate, what the queue cost its
database per job (bench/dbwork.py): statements, transactions, tuples written (HOT updates
apart), tuples returned, blocks, WAL bytes and records.

`--queues` picks some of the queues (e.g. `--queues listener_noop` to profile our queue
machinery alone under py-spy).

Every queue runs on the same event loop: uvloop, which `listener run` uses (`--loop asyncio`
runs them all on asyncio's own loop instead).

For the two libraries the figure runs to the last job's completion (stamped inside the job);
the time until the worker returned is kept in the JSON too (their drain modes notice the empty
queue only after a poll interval).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import itertools
import logging
import os
import statistics
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import _common as c
import dbwork
import psycopg

from listener.commands.common import run_async  # the loop `listener run` uses (uvloop)
from listener.providers.base import LLM, Reply, Sender, SentPart, Usage

log = logging.getLogger("compare_queues")


class NoopLLM:
    """An LLM that answers at once with a one-part reply and bills nothing. It follows the
    `LLM` Protocol's signature (checked where it is handed to the daemon), so the no-op pass
    breaks loudly, not with 0 of N sent, when the Protocol changes."""

    async def generate(
        self,
        *,
        model: str,
        system: str,
        user: str,
        fallbacks: Sequence[str] = (),
        on_usage: Callable[[Usage], None] | None = None,
    ) -> Reply:
        return Reply(text='{"messages": ["Olá!"]}', model=model)

    async def aclose(self) -> None:
        return None


class NoopSender:
    """A sender that accepts every part at once and touches nothing."""

    def __init__(self) -> None:
        self._sent = itertools.count()

    async def send_text(self, *, instance: str, number: str, text: str) -> SentPart:
        # A provider's id is unique: a repeated one would skip the part's message_parts row.
        return SentPart(provider_message_id=f"NOOP{next(self._sent)}")

    async def connection_state(self, instance: str) -> str:
        return "open"

    async def aclose(self) -> None:
        return None


Runner = Callable[[Coroutine[Any, Any, Any]], Any]

QUEUES = ("listener_sandbox", "listener_noop", "procrastinate", "pgqueuer")

# What each queue's check counts as done (the listeners' rows sent, the peers' jobs run).
DONE_KEY = {"listener": "sent", "procrastinate": "succeeded", "pgqueuer": "executed"}


def run_listener(
    admin: str, db: str, n: int, concurrency: int, noop: bool, run: Runner
) -> dict[str, Any]:
    url = c.recreate_db(admin, db)
    c.seed_leads(url, n)
    campaign = c.seed_campaign(url)
    c.seed_messages(url, campaign, n)
    settings = c.bench_settings(concurrency=concurrency)
    extra: dict[str, Any] = {}
    if noop:
        llm: LLM = NoopLLM()  # the annotations hold the no-ops to the Protocols (mypy bench/)
        sender: Sender = NoopSender()
        extra = {"llm": llm, "sender": sender}
    with dbwork.measured(url, n) as db_per_job:
        result = run(c.drain(url, settings, n, cpu=c.CpuMeter(), **extra))
    return {
        "seconds": result.seconds,
        "per_second": result.per_second,
        "check": result.statuses,
        **_cpu_per_job(result.cpu, n),
        "db_per_job": db_per_job,
    }


async def run_procrastinate(url: str, n: int, concurrency: int) -> dict[str, Any]:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
    last = 0.0

    @app.task(name="noop")
    async def noop() -> None:
        nonlocal last
        last = time.perf_counter()

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        await noop.batch_defer_async(*({} for _ in range(n)))
    # The worker's connections are closed by the end of the block, so their counters are in.
    with dbwork.measured(url, n) as db_per_job:
        async with app.open_async():
            meter = c.CpuMeter()
            meter.start()
            started = time.perf_counter()
            await app.run_worker_async(
                concurrency=concurrency, wait=False, install_signal_handlers=False
            )
            exited = time.perf_counter() - started
            cpu = meter.stop()
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT status::text, count(*) FROM procrastinate_jobs GROUP BY 1")
        check = {str(r[0]): int(r[1]) for r in rows}
    figures = _figures(n, last - started, exited, check, cpu)
    figures["db_per_job"] = db_per_job
    return figures


def _cpu_per_job(cpu: dict[str, float], n: int) -> dict[str, Any]:
    """CPU per job of this process (the worker) and of Postgres, in microseconds: where the
    work goes, steadier than the rate when other work shares the cores."""
    return {
        "cpu": cpu,
        "worker_cpu_us_per_job": round(cpu["listener_cpu_s"] / n * 1e6, 1),
        "postgres_cpu_us_per_job": round(cpu["postgres_cpu_s"] / n * 1e6, 1),
    }


def _figures(
    n: int, to_last: float, exited: float, check: dict[str, Any], cpu: dict[str, float]
) -> dict[str, Any]:
    """Rate to the last job done (the figure), and the time until the worker returned.

    The CPU is measured until the worker returned, so it includes its last poll interval
    (idle, so it adds little)."""
    return {
        "seconds": round(to_last, 4),
        "per_second": round(n / to_last, 1),
        "worker_exit_seconds": round(exited, 4),
        "check": check,
        **_cpu_per_job(cpu, n),
    }


async def run_pgqueuer(url: str, n: int, batch: int, driver: str) -> dict[str, Any]:
    from pgqueuer import Queries

    setup = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        await Queries.from_psycopg_connection(setup).install()
        await Queries.from_psycopg_connection(setup).enqueue(["noop"] * n, [None] * n, [0] * n)
    finally:
        await setup.close()
    with dbwork.measured(url, n) as db_per_job:
        done, last, started, exited, cpu = await _pgqueuer_drain(url, batch, driver)
    with psycopg.connect(url, autocommit=True) as check_conn:
        row = check_conn.execute("SELECT count(*) FROM pgqueuer").fetchone()
    check = {"executed": done, "left_in_queue": int(row[0]) if row else -1}
    figures = _figures(n, last - started, exited, check, cpu)
    figures["db_per_job"] = db_per_job
    return figures


async def _pgqueuer_drain(
    url: str, batch: int, driver: str
) -> tuple[int, float, float, float, dict[str, float]]:
    """Drain PgQueuer's queue; returns the jobs done, when the last one ran, when the drain
    started, how long until it returned, and the CPU used."""
    from pgqueuer import PgQueuer
    from pgqueuer.domain.types import QueueExecutionMode

    conn: Any
    if driver == "asyncpg":
        import asyncpg

        conn = await asyncpg.connect(_asyncpg_dsn(url))
        pgq = PgQueuer.from_asyncpg_connection(conn)
    else:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        pgq = PgQueuer.from_psycopg_connection(conn)
    done = 0
    last = 0.0
    try:

        @pgq.entrypoint("noop")
        async def noop(job: Any) -> None:
            nonlocal done, last
            done += 1
            last = time.perf_counter()

        meter = c.CpuMeter()
        meter.start()
        started = time.perf_counter()
        await pgq.qm.run(mode=QueueExecutionMode.drain, batch_size=batch)
        exited = time.perf_counter() - started
        cpu = meter.stop()
    finally:
        await conn.close()
    return done, last, started, exited, cpu


def _asyncpg_dsn(url: str) -> str:
    """asyncpg takes URLs only: turn a key=value DSN into postgresql://user@host:port/db."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    user = info.get("user", "postgres")
    password = f":{info['password']}" if info.get("password") else ""
    host = info.get("host", "127.0.0.1")
    port = info.get("port", 5432)
    return f"postgresql://{user}{password}@{host}:{port}/{info.get('dbname', 'postgres')}"


def run_queue(name: str, args: argparse.Namespace, run: Runner) -> dict[str, Any]:
    """One drain of one queue (a name of `main`'s list) on a fresh scratch database."""
    n, conc = args.n, args.concurrency
    if name in ("listener_sandbox", "listener_noop"):
        return run_listener(args.url, args.db, n, conc, name == "listener_noop", run)
    url = c.recreate_db(args.url, args.db)
    if name == "procrastinate":
        result: dict[str, Any] = run(run_procrastinate(url, n, conc))
        return result
    _, driver, batch = name.split("_")
    result = run(run_pgqueuer(url, n, int(batch.removeprefix("batch")), driver))
    return result


def main() -> None:
    parser = c.base_parser(__doc__)
    parser.add_argument("-n", type=int, default=20_000, help="jobs per queue")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--pgq-batch",
        type=int,
        nargs="+",
        default=[10, 100],
        help="PgQueuer dequeue batches to run (10 is its default)",
    )
    parser.add_argument(
        "--queues",
        nargs="+",
        choices=QUEUES,
        default=list(QUEUES),
        help="which queues to run (default all)",
    )
    parser.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="the event loop every queue runs on (uvloop: what `listener run` uses)",
    )
    parser.add_argument(
        "--pgq-drivers",
        nargs="+",
        choices=["psycopg", "asyncpg"],
        default=["psycopg", "asyncpg"],
        help="PgQueuer's drivers to run (asyncpg only when installed)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every queue this many times, alternating the order (ABBA); medians reported",
    )
    args = parser.parse_args()
    c.smoke(parser, args, n=300, pgq_batch=[10])
    logging.basicConfig(level=logging.WARNING)
    versions = {}
    for package in ("procrastinate", "pgqueuer", "psycopg", "asyncpg"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    peers = {"procrastinate", "pgqueuer"} & set(args.queues)
    if any(not versions[peer] for peer in peers):
        raise SystemExit(
            "run me with the peers of the `bench` dependency group: uv run --group bench"
            " python bench/compare_queues.py"
        )
    n, conc = args.n, args.concurrency
    print(
        f"compare queues: {n:,} jobs each, concurrency {conc}; Procrastinate "
        f"{versions['procrastinate']}, PgQueuer {versions['pgqueuer']} (batches "
        f"{', '.join(map(str, args.pgq_batch))}), psycopg {versions['psycopg']}; "
        f"event loop {args.loop}"
    )
    run: Runner = run_async if args.loop == "uvloop" else asyncio.run
    drivers = ["psycopg", "asyncpg"] if versions["asyncpg"] else ["psycopg"]
    if "pgqueuer" in args.queues and "asyncpg" in args.pgq_drivers and not versions["asyncpg"]:
        print("  (asyncpg not installed: PgQueuer runs on psycopg only; use --group bench)")
    names = [q for q in QUEUES[:3] if q in args.queues]
    if "pgqueuer" in args.queues:
        names += [
            f"pgqueuer_{driver}_batch{batch}"
            for batch in args.pgq_batch
            for driver in drivers
            if driver in args.pgq_drivers
        ]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        # Every other round runs the queues in reverse (ABBA), so the machine's slow and fast
        # spells fall on every queue alike.
        for name in names if round_ % 2 == 0 else names[::-1]:
            load = os.getloadavg()[0]
            result = run_queue(name, args, run)
            result["load_1m"] = [round(load, 2), round(os.getloadavg()[0], 2)]
            key = next(value for prefix, value in DONE_KEY.items() if name.startswith(prefix))
            check = result["check"]
            c.require(
                check.get(key) == n and not check.get("left_in_queue"),
                f"{name} did not run its {n:,} jobs: {check}",
            )
            runs[name].append(result)
            print(f"  round {round_ + 1} {name}: {result['per_second']:,.0f} jobs/s", flush=True)
    results: dict[str, dict[str, Any]] = {}
    for name, done in runs.items():
        # The median run stands for the queue; every rate is kept.
        result = dict(sorted(done, key=lambda r: r["per_second"])[len(done) // 2])
        result["rates"] = [r["per_second"] for r in done]
        result["load_1m_all"] = [r["load_1m"] for r in done]
        results[name] = result
    for base in ("listener_sandbox", "listener_noop"):
        if base not in results:
            continue
        for name, result in results.items():
            # The median over rounds of the ratio within each round.
            ratios = [
                ours["per_second"] / theirs["per_second"]
                for ours, theirs in zip(runs[base], runs[name], strict=True)
            ]
            result[f"ratio_{base}_to_this"] = round(statistics.median(ratios), 3)
    for name, result in results.items():
        ratios = "  ".join(
            f"{base.removeprefix('listener_')}/this {result[f'ratio_{base}_to_this']:.2f}"
            for base in ("listener_sandbox", "listener_noop")
            if f"ratio_{base}_to_this" in result
        )
        print(
            f"  {name:<26} {result['per_second']:>9,.0f} jobs/s  ({result['seconds']:.2f}s)  "
            f"{ratios}  CPU/job: worker {result['worker_cpu_us_per_job']:.0f} us, Postgres "
            f"{result['postgres_cpu_us_per_job']:.0f} us  {result['check']}"
        )
        if "db_per_job" in result:
            print("      per job in its database: " + dbwork.summary(result["db_per_job"]))
    c.write_result(
        "compare_queues",
        {
            "n": n,
            "concurrency": conc,
            "loop": args.loop,
            "pgqueuer_batches": args.pgq_batch,
            "rounds": args.rounds,
            "versions": versions,
            "results": results,
            "machine": c.machine(args.url),
        },
        tag=args.tag,
    )


if __name__ == "__main__":
    main()
