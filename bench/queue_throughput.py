"""Queue throughput with the sandbox providers: messages per second drained from a backlog.

For each concurrency (default 5, 50, 200) the scratch database gets a backlog of N due
messages (default 20,000; one lead each, one part each, no prior history), then the real
`listener.daemon.Daemon` runs in this process with LISTENER_LLM=sandbox,
LISTENER_SENDER=sandbox and LISTENER_PART_DELAY_MS=0 until every message is `sent`: claim,
context, generate, split, send (a row in `sandbox_outbox`), record, complete. The figure is N
divided by the time from `Daemon.run()` to the last message counted by the daemon's own
metrics; the database's own span (first `started_at` to last `sent_at`) is shown beside it.

Logging is left unconfigured (WARNING and above), as a benchmark of the queue; pass
`--log-info` to add one run at INFO with the text formatter writing to /dev/null, which is what
`listener run` does by default, to see what the per-message log lines cost.

`--step-times` wraps the awaited database steps of the pipeline (the claim with its context
query, and the group-commit flushes of store_parts, sandbox_outbox, record_parts and finish)
and a message's whole time in its slot (`Processor._process`) in timers, and adds each step's
count, mean, p50 and mean batch to the JSON: where a message's time goes. The timers cost
some throughput themselves, so such a run is for the breakdown, not the rate (use `--tag`).

`--steps-ab` runs each concurrency's repeats as pairs, interleaved in one sitting: a drain
without a follow-up step and one with (a `campaign_steps` row due a day later, so every
message's last record also creates its next step's row, which this drain does not send), in
ABBA order (pair 1 without first, pair 2 with first, ...) so a host getting busier or quieter
during the sitting weighs on both sides alike. What step creation costs the drain: each pair's
ratio (with / without, rate and the listener's CPU per message), their median and spread, the
ratio of the two sides' medians, and the 1-minute load average before and after every run.
Beside the rate, what each side cost in CPU per message: the listener process's, and with it
the scratch database's own backends' (`/proc/<pid>/schedstat`, the time each ran on a core):
on a shared machine other work slows the rate of both sides by more than a step costs, but
disturbs the CPU a message takes far less.

    uv run python bench/queue_throughput.py [--url DSN] [-n 20000] [--concurrency 5 50 200]
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import _common as c
import psycopg

from listener.commands.common import run_async  # the loop `listener run` uses (uvloop)

TARGET = 5000.0

#: The steps `--step-times` times: (class, method, label). Patched in this process only.
STEPS = (
    ("listener.queue.processor:Processor", "claim", "claim + context (2 statements)"),
    ("listener.queue.writes:BatchedWrites", "store", "store_parts flush"),
    ("listener.providers.sandbox:SandboxSender", "_flush", "sandbox_outbox flush"),
    ("listener.queue.writes:BatchedWrites", "record", "record_parts flush"),
    ("listener.queue.writes:BatchedWrites", "finish", "finish flush"),
    ("listener.queue.journey:Journey", "run", "message in its slot (Journey.run)"),
)


def time_steps() -> Callable[[], dict[str, dict[str, float]]]:
    """Wrap each of STEPS in a timer; return a function that reads and resets the timings."""
    import importlib

    times: dict[str, list[float]] = defaultdict(list)
    batches: dict[str, list[int]] = defaultdict(list)
    for target, method, label in STEPS:
        module, _, name = target.partition(":")
        cls = getattr(importlib.import_module(module), name)
        original = getattr(cls, method)

        def timed(orig: Callable[..., Awaitable[Any]], label: str) -> Callable[..., Awaitable[Any]]:
            async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await orig(self, *args, **kwargs)
                finally:
                    times[label].append(time.perf_counter() - started)
                    if args and isinstance(args[0], list):
                        batches[label].append(len(args[0]))
                    elif args and isinstance(args[0], int):
                        batches[label].append(args[0])  # the claim's limit

            return wrapper

        setattr(cls, method, timed(original, label))

    def read() -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for label, values in times.items():
            out[label] = {
                "n": len(values),
                "mean_ms": round(statistics.fmean(values) * 1000, 3),
                "p50_ms": round(statistics.median(values) * 1000, 3),
                "total_s": round(sum(values), 3),
            }
            if batches[label]:
                out[label]["mean_batch"] = round(statistics.fmean(batches[label]), 2)
        times.clear()
        batches.clear()
        return out

    return read


def prepare(url: str, campaign: str, n: int, *, steps: bool = False) -> None:
    """A fresh backlog of `n`; with `steps`, the campaign has a step 2 due a day after each
    send (created by every message's last record, never drained here)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE campaign_messages, sandbox_outbox CASCADE")
        conn.execute("DELETE FROM campaign_steps WHERE campaign_id = %s", (campaign,))
        if steps:
            conn.execute(
                "INSERT INTO campaign_steps (campaign_id, step, wait) VALUES (%s, 2, '1 day')",
                (campaign,),
            )
    c.seed_messages(url, campaign, n)


def _steps_made(url: str) -> int:
    """Step rows the drain created (pending, due a day later)."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM campaign_messages WHERE step = 2").fetchone()
    return int(row[0]) if row else 0


def _ran(pid: int) -> float | None:
    """Seconds a process has run on a core (schedstat's first field is in nanoseconds)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None  # gone, or not on this machine


def _watch_backends(url: str, ready: Any, stop: Any, out: Any) -> None:
    """BackendCpu's watcher, in a process of its own: every 50 ms, the scratch database's
    backends and how long each has run; at the stop, what it saw."""
    seen: dict[int, float] = {}

    def look(conn: psycopg.Connection[Any]) -> None:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
        for (pid,) in rows:
            ran = _ran(pid)
            if ran is not None:
                seen[pid] = max(ran, seen.get(pid, 0.0))

    with psycopg.connect(url, autocommit=True) as conn:
        ready.set()
        while not stop.wait(0.05):
            look(conn)
        look(conn)
    out.put(seen)


class BackendCpu:
    """CPU time of the scratch database's own Postgres backends during a drain, read from
    `/proc/<pid>/schedstat` (the time each ran on a core, not the time it waited for one; the
    server must run on this machine), by a watcher that looks for them in pg_stat_activity
    every 50 ms. Other databases' backends (other people's work on the server) are not
    counted, unlike CpuMeter's Postgres figure; the server's shared processes (WAL writer,
    checkpointer) are not either. The watcher is a process of its own (its CPU is "other"):
    as a thread of the listener's process it took the listener's CPU and its interpreter lock,
    about 11 µs a message of the listener's CPU at concurrency 50 (docs/BENCHMARKS.md)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: dict[int, float] = {}
        spawn = multiprocessing.get_context("spawn")
        self._ready = spawn.Event()
        self._stop = spawn.Event()
        self._out = spawn.Queue()
        self._process = spawn.Process(
            target=_watch_backends, args=(url, self._ready, self._stop, self._out), daemon=True
        )

    def __enter__(self) -> BackendCpu:
        self._process.start()
        c.require(self._ready.wait(60), "the backends' watcher did not start")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self.seen = self._out.get(timeout=60)
        self._process.join()

    @property
    def seconds(self) -> float:
        """CPU seconds of every backend seen, from its start to its last look."""
        return sum(self.seen.values())


def _cpu_ms(run: dict[str, Any], n: int) -> float:
    """The listener process's CPU per message, in milliseconds."""
    return 1000.0 * float(run["cpu"]["listener_cpu_s"]) / n


def _drain_cpu_ms(run: dict[str, Any], n: int) -> float:
    """The drain's CPU per message, in milliseconds: the listener process and the scratch
    database's backends."""
    return 1000.0 * (float(run["cpu"]["listener_cpu_s"]) + float(run["backend_cpu_s"])) / n


def steps_ab(runs: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """What `--steps-ab`'s pairs of one concurrency say: the runs without and with a step,
    paired in the order they ran (pair k: the k-th of each side), each pair's ratio with /
    without (rate, and the listener's CPU per message), their median and range, and the
    ratio of the two sides' medians."""
    without = [r for r in runs if not r["steps"] and not r["log_info"]]
    with_ = [r for r in runs if r["steps"]]
    pairs = list(zip(without, with_, strict=True))
    rates = [b["per_second"] / a["per_second"] for a, b in pairs]
    cpu = [_cpu_ms(b, n) / _cpu_ms(a, n) for a, b in pairs]
    drain = [_drain_cpu_ms(b, n) / _drain_cpu_ms(a, n) for a, b in pairs]
    loads = [x for r in without + with_ for x in r["load_1m"]]
    median_with = statistics.median(r["per_second"] for r in with_)
    median_without = statistics.median(r["per_second"] for r in without)
    return {
        "steps_median": median_with,
        "steps_ratio": round(median_with / median_without, 4),
        "pair_ratios": [round(x, 4) for x in rates],
        "pair_ratio_median": round(statistics.median(rates), 4),
        "pair_ratio_min": round(min(rates), 4),
        "pair_ratio_max": round(max(rates), 4),
        "cpu_ms_per_message": {
            "without": round(statistics.median(_cpu_ms(r, n) for r in without), 4),
            "with": round(statistics.median(_cpu_ms(r, n) for r in with_), 4),
        },
        "cpu_pair_ratios": [round(x, 4) for x in cpu],
        "cpu_pair_ratio_median": round(statistics.median(cpu), 4),
        "cpu_pair_ratio_min": round(min(cpu), 4),
        "cpu_pair_ratio_max": round(max(cpu), 4),
        "drain_cpu_ms_per_message": {
            "without": round(statistics.median(_drain_cpu_ms(r, n) for r in without), 4),
            "with": round(statistics.median(_drain_cpu_ms(r, n) for r in with_), 4),
        },
        "drain_cpu_pair_ratios": [round(x, 4) for x in drain],
        "drain_cpu_pair_ratio_median": round(statistics.median(drain), 4),
        "drain_cpu_pair_ratio_min": round(min(drain), 4),
        "drain_cpu_pair_ratio_max": round(max(drain), 4),
        "load_min": min(loads),
        "load_max": max(loads),
    }


def main() -> None:
    parser = c.base_parser(__doc__)
    parser.add_argument("-n", type=int, default=20_000, help="backlog size (messages)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[5, 50, 200])
    parser.add_argument("--repeat", type=int, default=3, help="runs per concurrency")
    parser.add_argument(
        "--debounce",
        default=None,
        help="override LISTENER_DEBOUNCE (e.g. 0ms) to see what the claim debounce costs",
    )
    parser.add_argument(
        "--log-info", action="store_true", help="also one run with INFO logging to /dev/null"
    )
    parser.add_argument(
        "--step-times",
        action="store_true",
        help="time each database step of the pipeline (costs throughput; see the docstring)",
    )
    parser.add_argument(
        "--steps-ab",
        action="store_true",
        help="interleave runs without and with a follow-up step (what step creation costs)",
    )
    args = parser.parse_args()
    c.smoke(parser, args, n=300, concurrency=[50], repeat=1)
    read_steps = time_steps() if args.step_times else None

    url = c.recreate_db(args.url, args.db)
    c.seed_leads(url, args.n)
    campaign = c.seed_campaign(url)
    runs: list[dict[str, Any]] = []
    print(f"queue throughput, sandbox providers, backlog of {args.n:,} messages (target 5,000/s)")
    plan: list[tuple[int, bool, bool]] = [
        (conc, False, steps)
        for conc in args.concurrency
        for pair in range(args.repeat)
        for steps in ((False, True) if pair % 2 == 0 else (True, False))
        if args.steps_ab or not steps
    ]
    if args.log_info:
        plan.append((max(args.concurrency), True, False))
    for concurrency, log_info, steps in plan:
        prepare(url, campaign, args.n, steps=steps)
        handler: logging.Handler | None = None
        if log_info:
            from listener import logs

            logs.setup("INFO", "text")
            handler = logging.getLogger().handlers[0]
            assert isinstance(handler, logging.StreamHandler)
            devnull = open(os.devnull, "w")  # noqa: SIM115
            handler.setStream(devnull)
        extra = {"debounce": args.debounce} if args.debounce is not None else {}
        settings = c.bench_settings(concurrency=concurrency, **extra)
        load_before = os.getloadavg()[0]
        with BackendCpu(url) as backends:
            result = run_async(c.drain(url, settings, args.n, cpu=c.CpuMeter()))
        load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        if handler is not None:
            logging.getLogger().handlers.clear()
            logging.getLogger().setLevel(logging.WARNING)
        label = f"concurrency {concurrency:>4}" + (" (INFO logs)" if log_info else "")
        label += " with steps" if steps else ""
        if steps:
            made = _steps_made(url)
            c.require(made == args.n, f"{made} step rows created, not {args.n}")
        print(
            f"  {label}: {result.per_second:>8,.0f} msg/s  ({result.seconds:.2f}s wall; "
            f"db span {result.db_seconds:.2f}s = {result.db_per_second:,.0f}/s; "
            f"{result.claims} claims; {result.statuses})"
        )
        print(
            f"      {c.cpu_line(result.cpu)}; this database's backends {backends.seconds:.2f}"
            f" CPU s; load average {load[0]:.2f} -> {load[1]:.2f}"
        )
        c.require(
            result.statuses.get("sent") == args.n,
            f"not every message ended sent: {result.statuses}",
        )
        run: dict[str, Any] = {
            "concurrency": concurrency,
            "log_info": log_info,
            "steps": steps,
            "load_1m": load,
            "backend_cpu_s": round(backends.seconds, 3),
        }
        run.update(result.as_dict())
        if read_steps is not None:
            run["step_times"] = read_steps()
            for label, step in run["step_times"].items():
                print(
                    f"      {label:<32} n {step['n']:>6}, mean {step['mean_ms']:6.3f} ms, "
                    f"p50 {step['p50_ms']:6.3f} ms, mean batch {step.get('mean_batch', '-')}"
                )
        runs.append(run)
    summary: dict[int, dict[str, float]] = {}
    for concurrency in args.concurrency:
        rates = [
            r["per_second"]
            for r in runs
            if r["concurrency"] == concurrency and not r["log_info"] and not r["steps"]
        ]
        summary[concurrency] = {"median": statistics.median(rates), "max": max(rates)}
        if args.steps_ab:
            summary[concurrency].update(
                steps_ab([r for r in runs if r["concurrency"] == concurrency], args.n)
            )
            ab = summary[concurrency]
            print(
                f"concurrency {concurrency:>4}: with steps median {ab['steps_median']:>7,.0f} msg/s"
                f" against {ab['median']:>7,.0f} without: x{ab['steps_ratio']:.3f}; pairs"
                f" x{ab['pair_ratio_median']:.3f} median, {ab['pair_ratio_min']:.3f}-"
                f"{ab['pair_ratio_max']:.3f} ({', '.join(f'{x:.3f}' for x in ab['pair_ratios'])});"
                f" listener CPU per message x{ab['cpu_pair_ratio_median']:.3f} median,"
                f" {ab['cpu_pair_ratio_min']:.3f}-{ab['cpu_pair_ratio_max']:.3f}; listener and"
                f" backends x{ab['drain_cpu_pair_ratio_median']:.3f} median,"
                f" {ab['drain_cpu_pair_ratio_min']:.3f}-{ab['drain_cpu_pair_ratio_max']:.3f};"
                f" load average {ab['load_min']:.2f}-{ab['load_max']:.2f}"
            )
        verdict = "met" if summary[concurrency]["median"] >= TARGET else "missed"
        print(
            f"concurrency {concurrency:>4}: median {summary[concurrency]['median']:>7,.0f} msg/s, "
            f"best {summary[concurrency]['max']:>7,.0f} (target {TARGET:,.0f}: {verdict})"
        )
    name = (
        "queue_throughput"
        if args.debounce is None
        else f"queue_throughput_debounce_{args.debounce}"
    )
    if args.steps_ab:
        name += "_steps_ab"
    c.write_result(
        name,
        {
            "n": args.n,
            "debounce": args.debounce or "default",
            "target_per_second": TARGET,
            "summary": summary,
            "runs": runs,
            "machine": c.machine(url),
        },
        tag=args.tag,
    )


if __name__ == "__main__":
    main()
