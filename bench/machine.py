"""The machine the figures are measured on: cores, memory, versions, the Postgres settings that
matter to the benchmarks, and what one round trip and one commit cost on it.

On a scratch database it times, on one psycopg connection over the given DSN (loopback TCP by
default): `SELECT 1` (a round trip), and an autocommit one-row INSERT into a plain table (a
round trip plus a commit that waits for its WAL flush when `synchronous_commit` is on). Each is
run `--reps` times (default 2,000) after a warm-up; the median and p90 are reported.

    uv run python bench/machine.py [--url DSN] [--reps 2000]
"""

from __future__ import annotations

import importlib.metadata
import time
from typing import Any

import _common as c
import psycopg

SETTINGS = ("shared_buffers", "synchronous_commit", "fsync", "autovacuum", "max_wal_size")
PACKAGES = ("psycopg", "psycopg-binary", "psycopg-pool", "aiohttp", "httpx", "httpx-aiohttp")
PACKAGES += ("uvloop", "tenacity", "prometheus-client")


def timed(conn: psycopg.Connection[Any], statement: str, reps: int) -> dict[str, float]:
    for _ in range(50):
        conn.execute(statement)
    values = []
    for _ in range(reps):
        started = time.perf_counter()
        conn.execute(statement)
        values.append((time.perf_counter() - started) * 1000)
    return c.percentiles(values)


def main() -> None:
    parser = c.base_parser(__doc__)
    parser.add_argument("--reps", type=int, default=2000)
    args = parser.parse_args()
    c.smoke(parser, args, reps=50)
    url = c.recreate_db(args.url, args.db)
    out: dict[str, Any] = {"machine": c.machine(url)}
    with psycopg.connect(url, autocommit=True) as conn:
        out["postgres_settings"] = {}
        for name in SETTINGS:
            row = conn.execute(f"SHOW {name}").fetchone()
            out["postgres_settings"][name] = str(row[0]) if row else None
        conn.execute("CREATE TABLE bench_commit (id bigserial PRIMARY KEY, v text)")
        out["select_1_ms"] = timed(conn, "SELECT 1", args.reps)
        out["autocommit_insert_ms"] = timed(
            conn, "INSERT INTO bench_commit (v) VALUES ('x')", args.reps
        )
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    out["versions"] = versions
    print(f"machine: {out['machine']}")
    print(f"  Postgres settings: {out['postgres_settings']}")
    print(f"  versions: {versions}")
    for label, key in (("SELECT 1", "select_1_ms"), ("autocommit INSERT", "autocommit_insert_ms")):
        stats = out[key]
        print(f"  {label:<18} p50 {stats['p50']:.3f} ms, p90 {stats['p90']:.3f} ms ({stats['n']})")
    c.write_result("machine", out, tag=args.tag)


if __name__ == "__main__":
    main()
