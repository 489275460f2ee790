"""Postgres CPU per message of the hot path's statements: claim (with its contexts), store_parts
and record_parts, run by hand in batches on one connection.

The claim runs on one connection, store_parts and record_parts on another whose statements
keep their generic plans, as the listener runs them (listener/queue/writes.py). The
backend's own CPU time is read from `/proc/<pid>/schedstat` around each statement (so the
server must run on this machine), which other work on a shared machine disturbs far less than
a rate: it is the time the backend ran, not the time it waited for a core. The figure is CPU
microseconds per message for each statement, averaged over `--batches` batches of `--batch`
one-part messages (a commit each, as the listener's group commits are).

It uses the named queries of the checkout it runs in, so two checkouts compare by copying this
script (with `_common.py`) into the other one and running it there; a checkout whose claim does
not load the contexts runs its `lead_contexts` statement too, counted with the claim:

    uv run python bench/statement_cpu.py [--batches 100] [--batch 50] [--rounds 3]

(`/proc/<pid>/schedstat` must exist: Linux with the server on this machine.)

`--steps-ab` prices a follow-up step instead: each round drains the same backlog by hand in
six ways, in a rotating order, on one scratch database: without a step, with a step 2 due a
day after each send (its row created by record_parts), and with that step while the insert
trigger is told to NOTIFY for it anyway (`SET listener.notify_horizon = '2 days'`, what the
trigger did for every due time before the wake horizon), and with that step while the worker's
connection plans every statement once (`SET plan_cache_mode = force_generic_plan`: the rows a
step adds can tip the plan cache into planning the claim at every call; the claim's generic
and custom plans are counted, from pg_prepared_statements). The claim runs as the listener runs
it (after `claim_plan`, which keeps its plan generic, in one pipeline; in a checkout
without it, alone); two more sides run it alone, as the code before did, the plan cache left to
choose (`claim planned by the cache`), without and with a step. A connection LISTENs on the
channel throughout, as a daemon's does, and its backend's CPU is counted with the worker's: a
NOTIFY costs the listening backends too. Beside the CPU per message, the database's own WAL per
message (pg_walinspect, dbwork.py): bytes, heap and btree records.
"""

from __future__ import annotations

import importlib
import json
import statistics
import uuid
from pathlib import Path
from typing import Any

import _common as c
import dbwork
import psycopg

from listener.queries import QUERIES, q

TEXT = "Olá, Ana! Vi o trabalho da Padaria Sol em Campinas e queria conversar rapidamente."


def backend_cpu(pid: int) -> float:
    """Seconds the backend has run on a CPU (schedstat's first field is in nanoseconds)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def params(statement: str, ids: list[Any], worker: str) -> dict[str, Any]:
    """The parameters of one batch of `statement`; extra keys are ignored by the older
    statements (store_parts without usage columns)."""
    n = len(ids)
    if statement == "store_parts":
        return {
            "ids": ids,
            "texts": [TEXT] * n,
            "parts": [json.dumps([TEXT], ensure_ascii=False)] * n,
            "prompt_tokens": [120] * n,
            "completion_tokens": [30] * n,
            "costs": [0.00004] * n,
            "models": ["sandbox"] * n,
            "fallbacks": [False] * n,
            "worker": worker,
            "processing": "processing",
        }
    return {
        "ids": ids,
        "part_nos": [0] * n,
        "provider_ids": ["SANDBOX" + uuid.uuid4().hex.upper() for _ in ids],
        "finals": [True] * n,
        "instances": ["sandbox"] * n,
        "worker": worker,
        "processing": "processing",
    }


def one_round(url: str, batches: int, batch: int) -> dict[str, float]:
    """Drain `batches * batch` fresh one-part messages by hand; CPU µs per message by step."""
    c.seed_leads(url, batches * batch)
    campaign = c.seed_campaign(url)
    c.seed_messages(url, campaign, batches * batch)
    return drain(url, batches, batch)


#: What the listener runs before the claim, in its transaction (None in a checkout without it).
CLAIM_PLAN = QUERIES.get("claim_plan")

#: The session setting of the listener's batched writes' connections (None in a checkout
#: without them).
GENERIC_WRITES: str | None = getattr(
    importlib.import_module("listener.queue.writes"), "GENERIC_PLANS", None
)


def _pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def claim_rows(
    conn: psycopg.Connection[Any], params: dict[str, Any], *, cached: bool = False
) -> list[Any]:
    """The claim's rows, run as Store.claim runs it (or alone, `cached`: the plan cache left to
    choose its plan)."""
    if cached or CLAIM_PLAN is None:
        return conn.execute(q("claim"), params).fetchall()
    with conn.pipeline():
        conn.execute(CLAIM_PLAN)
        cur = conn.execute(q("claim"), params)
    return cur.fetchall()


def drain(
    url: str,
    batches: int,
    batch: int,
    *,
    setup: str | None = None,
    listen_pid: int | None = None,
    cached: bool = False,
) -> dict[str, float]:
    """Drain the seeded backlog by hand on one connection (`setup` run on it first); CPU µs
    per message by statement (with `listen_pid`, that backend's CPU too, as `listen`). The
    claim runs as the listener's (`cached`: alone, see claim_rows)."""
    spent = {"claim": 0.0, "store_parts": 0.0, "record_parts": 0.0}
    done = 0
    worker = "statement-cpu"
    separate_contexts = "contexts" not in q("claim")
    listen_before = backend_cpu(listen_pid) if listen_pid is not None else 0.0
    with (
        psycopg.connect(url, autocommit=True) as conn,
        psycopg.connect(url, autocommit=True) as writes,
    ):
        if setup is not None:
            conn.execute(setup)
        # The stored and recorded parts go through a connection of their own, as the
        # listener's do, where every statement keeps its generic plan (a checkout without
        # those connections ran them on the claim's connection, the plan cache left to choose).
        writer = writes if GENERIC_WRITES is not None else conn
        if GENERIC_WRITES is not None:
            writes.execute(GENERIC_WRITES)
            if setup is not None:
                writes.execute(setup)
        pid, writer_pid = (_pid(c) for c in (conn, writer))
        for _ in range(batches):
            before = backend_cpu(pid)
            claim = {"limit": batch, "worker": worker, "lease": "5 minutes"}
            rows = claim_rows(conn, claim, cached=cached)
            if separate_contexts and rows:
                lead_ids = list({r[2] for r in rows})
                conn.execute(q("lead_contexts"), {"lead_ids": lead_ids}).fetchall()
            spent["claim"] += backend_cpu(pid) - before
            ids = [r[0] for r in rows]
            if not ids:
                break
            for statement in ("store_parts", "record_parts"):
                before = backend_cpu(writer_pid)
                writer.execute(q(statement), params(statement, ids, worker)).fetchall()
                spent[statement] += backend_cpu(writer_pid) - before
            done += len(ids)
        plans = conn.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE statement LIKE 'WITH due AS%%'"
        ).fetchone()
        sent = conn.execute("SELECT count(*) FROM campaign_messages WHERE status = 'sent'")
        check = sent.fetchone()
    c.require(
        check is not None and check[0] == done == batches * batch,
        f"only {done} of {batches * batch} messages went through",
    )
    if listen_pid is not None:
        spent["listen"] = backend_cpu(listen_pid) - listen_before
    per = {k: round(v / done * 1e6, 1) for k, v in spent.items()}
    per["total"] = round(sum(per.values()), 1)
    if plans is not None:
        per["claim_generic_plans"], per["claim_custom_plans"] = plans
    return per


#: --steps-ab's sides: (name, whether the campaign has a step 2, the worker's session setup,
#: whether the claim runs alone, its plan left to the plan cache).
SIDES = (
    ("without", False, None, False),
    ("with", True, None, False),
    ("with, NOTIFY", True, "SET listener.notify_horizon = '2 days'", False),
    ("with, generic plans", True, "SET plan_cache_mode = force_generic_plan", False),
    ("without, claim planned by the cache", False, None, True),
    ("with, claim planned by the cache", True, None, True),
)


def steps_round(url: str, campaign: str, batches: int, batch: int, turn: int) -> dict[str, Any]:
    """One round of --steps-ab: each side drains a fresh backlog, in an order rotated by
    `turn`; CPU µs, WAL and notifications per message by side."""
    n = batches * batch
    out: dict[str, Any] = {}
    with psycopg.connect(url, autocommit=True) as listen:
        listen.execute("LISTEN campaign_messages")
        row = listen.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        order = SIDES[turn % len(SIDES) :] + SIDES[: turn % len(SIDES)]
        for name, steps, setup, cached in order:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("TRUNCATE campaign_messages, sandbox_outbox CASCADE")
                conn.execute("DELETE FROM campaign_steps")
                if steps:
                    conn.execute(
                        "INSERT INTO campaign_steps (campaign_id, step, wait)"
                        " VALUES (%s, 2, '1 day')",
                        (campaign,),
                    )
            c.seed_messages(url, campaign, n)
            for _ in listen.notifies(timeout=0.2):
                pass  # the seed's own
            with dbwork.measured(url, n) as work:
                cpu = drain(url, batches, batch, setup=setup, listen_pid=row[0], cached=cached)
            notifies = sum(1 for _ in listen.notifies(timeout=0.2))
            with psycopg.connect(url) as conn:
                made = conn.execute("SELECT count(*) FROM campaign_messages WHERE step = 2")
                made_row = made.fetchone()
            c.require(
                made_row is not None and made_row[0] == (n if steps else 0),
                f"{name}: {made_row} step rows, not {n if steps else 0}",
            )
            out[name] = {
                "cpu_us": cpu,
                "notifies_per_batch": round(notifies / batches, 2),
                **{k: work.get(k) for k in WAL_FIGURES},
            }
    return out


WAL_FIGURES = (
    "wal_bytes_without_fpi",
    "wal_records",
    "wal_heap_records",
    "wal_btree_records",
    "inserted",
    "tuples_written",
)


def steps_ab(args: Any) -> None:
    """--steps-ab: rounds of the sides on one scratch database; medians by side, and
    each side's total CPU per message against the side without a step."""
    url = c.recreate_db(args.url, args.db)
    n = args.batches * args.batch
    c.seed_leads(url, n)
    campaign = c.seed_campaign(url)
    rounds = []
    for turn in range(args.rounds):
        rounds.append(steps_round(url, campaign, args.batches, args.batch, turn))
        print(
            f"  round {turn + 1}: "
            + "; ".join(f"{k}: {v['cpu_us']['total']} µs" for k, v in rounds[-1].items())
        )
    sides: dict[str, Any] = {}
    for name, *_ in SIDES:
        cpu = {
            k: statistics.median(r[name]["cpu_us"][k] for r in rounds)
            for k in rounds[0][name]["cpu_us"]
        }
        ratios = [r[name]["cpu_us"]["total"] / r["without"]["cpu_us"]["total"] for r in rounds]
        sides[name] = {
            "cpu_us": cpu,
            "cpu_ratio_median": round(statistics.median(ratios), 4),
            "cpu_ratio_min": round(min(ratios), 4),
            "cpu_ratio_max": round(max(ratios), 4),
            **{
                k: statistics.median(r[name][k] for r in rounds if r[name][k] is not None)
                if any(r[name][k] is not None for r in rounds)
                else None
                for k in (*WAL_FIGURES, "notifies_per_batch")
            },
        }
        s = sides[name]
        print(
            f"{name:>35}: Postgres CPU per message {cpu['total']:.1f} µs (claim {cpu['claim']},"
            f" store {cpu['store_parts']}, record {cpu['record_parts']}, LISTEN backend"
            f" {cpu['listen']}), x{s['cpu_ratio_median']:.3f} of without"
            f" ({s['cpu_ratio_min']:.3f}-{s['cpu_ratio_max']:.3f});"
            f" WAL {s['wal_bytes_without_fpi']} B, {s['wal_heap_records']} heap and"
            f" {s['wal_btree_records']} btree records;"
            f" {s['notifies_per_batch']} NOTIFY per batch; claim plans: generic"
            f" {cpu.get('claim_generic_plans')}, custom {cpu.get('claim_custom_plans')}"
        )
    # The claim as the listener runs it against the claim alone, round by round.
    claim_ab = {}
    for name in ("without", "with"):
        cached = f"{name}, claim planned by the cache"
        ratios = [r[name]["cpu_us"]["total"] / r[cached]["cpu_us"]["total"] for r in rounds]
        diffs = [r[name]["cpu_us"]["claim"] - r[cached]["cpu_us"]["claim"] for r in rounds]
        claim_ab[name] = {
            "total_ratio_median": round(statistics.median(ratios), 4),
            "total_ratio_min": round(min(ratios), 4),
            "total_ratio_max": round(max(ratios), 4),
            "claim_us_diff_median": round(statistics.median(diffs), 1),
        }
        a = claim_ab[name]
        print(
            f"{name}: claim kept generic / planned by the cache,"
            f" total x{a['total_ratio_median']:.3f}"
            f" ({a['total_ratio_min']:.3f}-{a['total_ratio_max']:.3f}), claim"
            f" {a['claim_us_diff_median']:+.1f} µs a message (median of the rounds)"
        )
    c.write_result(
        "statement_cpu_steps_ab",
        {
            "batch": args.batch,
            "batches": args.batches,
            "rounds": rounds,
            "sides": sides,
            "claim_ab": claim_ab,
        },
        tag=args.tag,
    )


def main() -> None:
    parser = c.base_parser(__doc__)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50, help="messages per statement")
    parser.add_argument("--rounds", type=int, default=3, help="fresh databases; medians kept")
    parser.add_argument(
        "--steps-ab",
        action="store_true",
        help="price a follow-up step's creation instead (see the docstring)",
    )
    args = parser.parse_args()
    c.smoke(parser, args, batches=2, batch=5, rounds=1)
    if args.steps_ab:
        steps_ab(args)
        return
    runs = []
    for round_ in range(args.rounds):
        url = c.recreate_db(args.url, args.db)
        runs.append(one_round(url, args.batches, args.batch))
        print(f"  round {round_ + 1}: " + ", ".join(f"{k} {v}" for k, v in runs[-1].items()))
    medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(
        "Postgres CPU per message (µs, median of rounds): "
        + ", ".join(f"{k} {v:.1f}" for k, v in medians.items())
    )
    c.write_result(
        "statement_cpu",
        {"batch": args.batch, "batches": args.batches, "runs": runs, "medians": medians},
        tag=args.tag,
    )


if __name__ == "__main__":
    main()
