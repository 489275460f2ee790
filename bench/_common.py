"""Shared plumbing of the benchmarks: a scratch database, seeding, settings, an in-process
daemon run until a backlog is drained, RSS sampling and the JSON result files.

Not a benchmark itself. The scripts beside it import it as `_common` (they run as plain
scripts, so `bench/` is on `sys.path`).

Every script takes `--smoke`: a tiny size that runs in seconds, so that CI (`bash
bench/run_all.sh --smoke`, from `.ci/run`) fails when a benchmark no longer runs. A smoke run
uses a scratch database of its own (dropped at exit, so two CI runs on one server do not meet),
writes its result file under `bench/results/smoke/` (never over a reported figure), and fails
on what a full run would only report (a message not sent, say). Its figures mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from listener.commands.migrate import migrate  # noqa: E402
from listener.daemon import Daemon  # noqa: E402
from listener.providers.base import LLM, Sender  # noqa: E402
from listener.settings import Settings, load_settings  # noqa: E402
from listener.testing import http_settings  # noqa: E402

DEFAULT_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
RESULTS = ROOT / "bench" / "results"

#: Settings for an in-process benchmark daemon: no metrics port, no sweep, no part delay, and
#: timers slow enough that they never run during a benchmark.
BENCH_SETTINGS: dict[str, Any] = {
    "llm": "sandbox",
    "sender": "sandbox",
    "metrics_port": 0,
    "part_delay": "0ms",
    "sweep_max_age": "0s",
    "poll_interval": "30s",
    "lease": "60s",
    "rescue_interval": "60s",
    "shutdown_grace": "10s",
}


def base_parser(description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(description or "").strip().splitlines()[0] if description else None
    )
    parser.add_argument(
        "--url",
        default=DEFAULT_URL,
        help="a maintenance DSN of the Postgres server (the scratch database is made beside it)",
    )
    parser.add_argument("--db", default="listener_bench", help="scratch database name")
    parser.add_argument(
        "--tag",
        default=None,
        help="write bench/results/<name>.<tag>.json instead of <name>.json (an extra run that "
        "must not replace the reported one)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny size that runs in seconds (CI), in a scratch database of its own; the "
        "figures mean nothing and the result goes to bench/results/smoke/",
    )
    return parser


#: Whether this process is a smoke run (set by `smoke()`).
SMOKE = False
_dropped_at_exit: set[tuple[str, str]] = set()


def smoke(parser: argparse.ArgumentParser, args: argparse.Namespace, **sizes: Any) -> bool:
    """With `--smoke`: the given sizes replace the defaults (an option given on the command
    line stays as given), and the scratch database gets a name of this process's own, dropped
    at exit. Returns whether this is a smoke run."""
    global SMOKE
    if not getattr(args, "smoke", False):
        return False
    SMOKE = True
    for name, value in sizes.items():
        if not hasattr(args, name):
            raise AttributeError(f"--smoke sets {name}, which the script has no option for")
        if getattr(args, name) == parser.get_default(name):
            setattr(args, name, value)
    if hasattr(args, "db"):
        args.db = f"{args.db}_smoke_{os.getpid()}"
    return True


def drop_at_exit(admin_url: str, name: str) -> None:
    """Drop the scratch database `name` when this process exits (once however often asked)."""
    if (admin_url, name) not in _dropped_at_exit:
        _dropped_at_exit.add((admin_url, name))
        atexit.register(_drop_database, admin_url, name)


def require(ok: bool, what: str) -> None:
    """A benchmark whose run went wrong fails (exit 1, one line), not a figure with a note."""
    if not ok:
        raise SystemExit(f"{Path(sys.argv[0]).name}: {what}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def with_dbname(url: str, dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})


def recreate_db(admin_url: str, name: str) -> str:
    """Drop and create the scratch database, apply the migrations, return its DSN. A smoke
    run's scratch database is dropped again when the process exits."""
    if SMOKE:
        drop_at_exit(admin_url, name)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_dbname(admin_url, name)
    asyncio.run(migrate(url))
    return url


def reset_tables(url: str) -> None:
    """Empty every table the listener writes, keeping the schema."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE campaign_messages, campaign_runs, campaigns, leads, sandbox_outbox CASCADE"
        )


def seed_campaign(url: str, *, prompt: str = "Be brief.") -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO campaigns (name, prompt) VALUES ('bench', %s) RETURNING id", (prompt,)
        ).fetchone()
    assert row is not None
    return str(row[0])


def seed_leads(url: str, n: int, *, prefix: str = "Lead") -> None:
    """`n` leads with valid 13-digit phones, named `{prefix} 1..n`."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO leads (name, phone, company, city, segment) "
            "SELECT %s || ' ' || g, '55119' || lpad(g::text, 8, '0'), 'Acme ' || g, "
            "'São Paulo', 'retail' FROM generate_series(1, %s) g",
            (prefix, n),
        )


def seed_messages(url: str, campaign: str, n: int, *, prefix: str = "Lead") -> None:
    """`n` due pending messages, one per lead of `prefix` (leads are reused round robin)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO campaign_messages (campaign_id, lead_id, scheduled_at) "
            "SELECT %s, a.ids[1 + (g - 1) %% cardinality(a.ids)], now() - interval '1 second' "
            "FROM (SELECT array_agg(id ORDER BY id) AS ids FROM leads WHERE name LIKE %s) a, "
            "generate_series(1, %s) g",
            (campaign, prefix + " %", n),
        )
        conn.execute("VACUUM ANALYZE campaign_messages")
        conn.execute("VACUUM ANALYZE leads")


def counts(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT status, count(*) FROM campaign_messages GROUP BY 1").fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def bench_settings(**overrides: Any) -> Settings:
    return load_settings(**{**BENCH_SETTINGS, **overrides})


@dataclass
class DrainResult:
    messages: int
    seconds: float
    per_second: float
    db_seconds: float
    db_per_second: float
    claims: int
    statuses: dict[str, int]
    cpu: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _sent(daemon: Daemon) -> int:
    value = daemon.metrics.registry.get_sample_value("listener_messages_total", {"outcome": "sent"})
    return int(value or 0)


def _claims(daemon: Daemon) -> int:
    return int(daemon.metrics.registry.get_sample_value("listener_claims_total") or 0)


async def drain(
    url: str,
    settings: Settings,
    expected: int,
    *,
    llm: LLM | None = None,
    sender: Sender | None = None,
    timeout: float = 170.0,
    on_tick: Callable[[int], None] | None = None,
    cpu: CpuMeter | None = None,
) -> DrainResult:
    """Start a `Daemon` in this event loop on a ready backlog and time it until `expected`
    messages are sent (read from its own metrics, so no polling query loads the database).

    The wall time runs from `Daemon.run()` to the last message counted; the database time is
    `max(sent_at) - min(started_at)` of the rows (server clock: first claim to last record).
    """
    daemon = Daemon(settings, url, llm=llm, sender=sender)
    if cpu is not None:
        cpu.start()
    started = time.perf_counter()
    task = asyncio.create_task(daemon.run())
    deadline = started + timeout
    usage: dict[str, float] = {}
    try:
        while (sent := _sent(daemon)) < expected:
            if task.done():
                task.result()
                raise RuntimeError("the daemon stopped before the backlog was drained")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"only {_sent(daemon)}/{expected} sent within {timeout:.0f}s")
            if on_tick is not None:
                on_tick(sent)
            await asyncio.sleep(0.005)
        seconds = time.perf_counter() - started
        claims = _claims(daemon)
        if cpu is not None:
            usage = cpu.stop()
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, timeout=30)
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM max(sent_at) - min(started_at)) FROM campaign_messages "
            "WHERE status = 'sent'"
        ).fetchone()
    db_seconds = float(row[0]) if row and row[0] is not None else float("nan")
    return DrainResult(
        messages=expected,
        seconds=round(seconds, 4),
        per_second=round(expected / seconds, 1),
        db_seconds=round(db_seconds, 4),
        db_per_second=round(expected / db_seconds, 1) if db_seconds > 0 else float("nan"),
        claims=claims,
        statuses=counts(url),
        cpu=usage,
    )


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99, max and mean of `values` (in the unit given)."""
    ordered = sorted(values)
    if not ordered:
        return {}

    def pick(p: float) -> float:
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
        return ordered[index]

    return {
        "n": len(ordered),
        "p50": round(pick(50), 3),
        "p90": round(pick(90), 3),
        "p99": round(pick(99), 3),
        "max": round(ordered[-1], 3),
        "mean": round(statistics.fmean(ordered), 3),
    }


def machine(url: str | None = None) -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            info["mem_total"] = handle.readline().split(":", 1)[1].strip()
        with open("/proc/cpuinfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if url:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            info["postgres"] = row[0] if row else None
    return info


def results_dir() -> Path:
    """Where result files go: `bench/results/`, or `bench/results/smoke/` in a smoke run."""
    folder = RESULTS / "smoke" if SMOKE else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_result(name: str, payload: dict[str, Any], tag: str | None = None) -> Path:
    """Write `bench/results/<name>.json`, or `<name>.<tag>.json` when tagged (the figures plus
    when and where); a smoke run's goes to `bench/results/smoke/`."""
    folder = results_dir()
    path = folder / (f"{name}.{tag}.json" if tag else f"{name}.json")
    body = {
        "benchmark": name,
        "tag": tag,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        **payload,
    }
    path.write_text(json.dumps(body, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"-> {path.relative_to(ROOT)}")
    return path


class CpuMeter:
    """CPU seconds spent by this process, the Postgres server processes and any extra pids
    between `start()` and `stop()`: on a 2-core machine the three compete for the same cores."""

    def __init__(self, **extra_pids: int) -> None:
        self.extra = extra_pids
        self._before: dict[str, float] = {}
        self._wall = 0.0

    @staticmethod
    def _postgres() -> float:
        import psutil

        total = 0.0
        for proc in psutil.process_iter(["name", "username"]):
            try:
                if proc.info["name"] == "postgres" or proc.info["username"] == "postgres":
                    times = proc.cpu_times()
                    total += times.user + times.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total

    def _read(self) -> dict[str, float]:
        import psutil

        out: dict[str, float] = {}
        me = psutil.Process().cpu_times()
        out["listener"] = me.user + me.system
        for name, pid in self.extra.items():
            try:
                times = psutil.Process(pid).cpu_times()
                out[name] = times.user + times.system
            except psutil.NoSuchProcess:
                out[name] = 0.0
        out["postgres"] = self._postgres()
        system = psutil.cpu_times()
        busy = system.user + system.system + system.nice + system.irq + system.softirq
        out["machine"] = busy
        return out

    def start(self) -> None:
        self._before = self._read()
        self._wall = time.perf_counter()

    def stop(self) -> dict[str, float]:
        """CPU seconds per process group, and each as a share of one core over the wall time."""
        after = self._read()
        wall = time.perf_counter() - self._wall
        out: dict[str, float] = {"wall_s": round(wall, 3)}
        used = {key: value - self._before.get(key, 0.0) for key, value in after.items()}
        # Whatever else ran on the machine meanwhile (other people's tests, say).
        used["other"] = max(0.0, used.pop("machine") - sum(used.values()))
        for key, value in used.items():
            out[f"{key}_cpu_s"] = round(value, 3)
            out[f"{key}_core_share"] = round(value / wall, 3) if wall > 0 else 0.0
        return out


def cpu_line(cpu: dict[str, float]) -> str:
    parts = [
        f"{key.removesuffix('_core_share')} {value:.0%}"
        for key, value in cpu.items()
        if key.endswith("_core_share")
    ]
    return "CPU (of one core): " + ", ".join(parts)


class FakeServer:
    """The fake OpenRouter + Evolution server of the tests (`listener/testing`) in its own
    process, `python -m listener.testing ARGS`, so it never shares the listener's event loop."""

    def __init__(self, *args: str) -> None:
        self.args = list(args)
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> FakeServer:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "listener.testing", *self.args],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self.proc.kill()
            raise RuntimeError(f"the fake server did not start: {line!r}")
        self.url = line
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def get(self, path: str) -> Any:
        import urllib.request

        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def post(self, path: str) -> Any:
        import urllib.request

        request = urllib.request.Request(self.url + path, data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def settings(self) -> dict[str, Any]:
        """Settings overrides pointing both real HTTP providers at this server."""
        return http_settings(self.url)
