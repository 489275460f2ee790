"""Claim cost on a table of a million finished rows.

The scratch database gets `--finished` rows already `sent` (default 1,000,000, spread over the
last 30 days, over 10,000 leads) plus `--pending` due rows (default 10,000), then
`VACUUM ANALYZE`. It shows:

1. `EXPLAIN (ANALYZE, BUFFERS)` of the listener's claim statement (`q("claim")`, limit 100),
   run inside a transaction that is rolled back, and whether it is an index scan on
   `idx_campaign_messages_due`;
2. the time per claim: the claim statement with limit 100, committed, one after another until
   no pending row is left (what a listener's claim loop costs the database, without the
   context query), per claim and per row;
3. the same claims with the AFTER UPDATE statement trigger disabled (scratch database only), to
   show what the trigger adds to every UPDATE of the hot path; and on a table holding only the
   pending rows, for comparison;
4. the other periodic queries on the big table: `next_due` and the `backlog` gauge.

    uv run python bench/claim_cost.py [--url DSN] [--finished 1000000] [--pending 10000]
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import _common as c
import psycopg

from listener.queries import q

PARAMS: dict[str, Any] = {"limit": 100, "worker": "bench:claim", "lease": timedelta(seconds=30)}


def seed_finished(url: str, campaign: str, n: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO campaign_messages (campaign_id, lead_id, status, scheduled_at, attempts, "
            "generated_text, parts, parts_sent, provider_message_ids, sent_at, created_at, "
            "updated_at) "
            "SELECT %s, a.ids[1 + (g - 1) %% cardinality(a.ids)], 'sent', t, 1, "
            "'{\"messages\": [\"Olá! Mensagem ' || g || '\"]}', '[\"Olá!\"]'::jsonb, 1, "
            "'[\"EVO\"]'::jsonb, t + interval '2 seconds', t, t + interval '2 seconds' "
            "FROM (SELECT array_agg(id) AS ids FROM leads) a, generate_series(1, %s) g, "
            "LATERAL (SELECT now() - interval '30 days' * (g::float8 / %s) AS t) s",
            (campaign, n, n),
        )


def claim_all(url: str) -> list[float]:
    """Claim 100 at a time, committed, until nothing is left; ms per claim."""
    times: list[float] = []
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            started = time.perf_counter()
            rows = conn.execute(q("claim"), PARAMS).fetchall()
            elapsed = (time.perf_counter() - started) * 1000
            if not rows:
                break
            times.append(elapsed)
    return times


def timed(url: str, name: str, params: dict[str, Any] | None = None, reps: int = 20) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        values = []
        for _ in range(reps):
            started = time.perf_counter()
            conn.execute(q(name), params or {}).fetchall()
            values.append((time.perf_counter() - started) * 1000)
    values.sort()
    return round(values[len(values) // 2], 3)


def main() -> None:
    parser = c.base_parser(__doc__)
    parser.add_argument("--finished", type=int, default=1_000_000, help="sent rows")
    parser.add_argument("--pending", type=int, default=10_000, help="due pending rows")
    parser.add_argument("--leads", type=int, default=10_000)
    args = parser.parse_args()
    c.smoke(parser, args, finished=2_000, pending=200, leads=200)
    out: dict[str, Any] = {"finished": args.finished, "pending": args.pending}

    # Baseline: only the pending rows.
    url = c.recreate_db(args.url, args.db)
    c.seed_leads(url, args.leads)
    campaign = c.seed_campaign(url)
    c.seed_messages(url, campaign, args.pending)
    small = claim_all(url)
    out["claims_pending_only_ms"] = c.percentiles(small)

    # The big table.
    url = c.recreate_db(args.url, args.db)
    c.seed_leads(url, args.leads)
    campaign = c.seed_campaign(url)
    started = time.perf_counter()
    seed_finished(url, campaign, args.finished)
    c.seed_messages(url, campaign, args.pending)  # also VACUUM ANALYZE
    seeded = time.perf_counter() - started
    with psycopg.connect(url, autocommit=True) as conn:
        size = conn.execute(
            "SELECT pg_size_pretty(pg_total_relation_size('campaign_messages')), "
            "pg_size_pretty(pg_relation_size('idx_campaign_messages_due'))"
        ).fetchone()
        assert size is not None
        with conn.transaction(force_rollback=True):
            plan = [
                str(r[0]) for r in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + q("claim"), PARAMS)
            ]
    uses_due = any("idx_campaign_messages_due" in line for line in plan)
    out.update(
        {
            "seed_seconds": round(seeded, 1),
            "table_size": size[0],
            "due_index_size": size[1],
            "plan": plan,
            "index_scan_on_idx_campaign_messages_due": uses_due,
            "next_due_ms_median": timed(url, "next_due", {"after": datetime.now(UTC)}),
            "backlog_ms_median": timed(url, "backlog"),
        }
    )
    big = claim_all(url)
    out["claims_with_finished_ms"] = c.percentiles(big)
    # The same claims without the AFTER UPDATE statement trigger (NOTIFY + run counts), to
    # show its share of each claim. Scratch database only.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE campaign_messages SET status = 'pending', locked_by = NULL, "
            "locked_until = NULL WHERE status = 'processing'"
        )
        conn.execute("VACUUM ANALYZE campaign_messages")
        conn.execute("ALTER TABLE campaign_messages DISABLE TRIGGER campaign_messages_after_update")
    try:
        no_trigger = claim_all(url)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "ALTER TABLE campaign_messages ENABLE TRIGGER campaign_messages_after_update"
            )
    out["claims_with_finished_no_update_trigger_ms"] = c.percentiles(no_trigger)

    print(
        f"claim cost: {args.finished:,} sent rows + {args.pending:,} pending "
        f"(seeded in {seeded:.0f}s; table {size[0]} with indexes, idx_campaign_messages_due "
        f"{size[1]})"
    )
    print("  EXPLAIN (ANALYZE, BUFFERS) of the claim, limit 100, rolled back:")
    for line in plan:
        print("   |", line)
    print(f"  index scan on idx_campaign_messages_due: {'yes' if uses_due else 'NO'}")
    for label, stats in (
        (f"with {args.finished:,} finished rows", out["claims_with_finished_ms"]),
        ("same, update trigger disabled", out["claims_with_finished_no_update_trigger_ms"]),
        ("pending rows only", out["claims_pending_only_ms"]),
    ):
        print(
            f"  claim of 100, {label:<28}: p50 {stats['p50']:.2f} ms, p90 {stats['p90']:.2f}, "
            f"max {stats['max']:.2f} ({stats['n']} claims; p50 "
            f"{stats['p50'] * 10:.1f} us per row)"
        )
    print(
        f"  next_due {out['next_due_ms_median']:.2f} ms, backlog gauge "
        f"{out['backlog_ms_median']:.2f} ms (medians, big table)"
    )
    out["machine"] = c.machine(url)
    c.write_result("claim_cost", out, tag=args.tag)


if __name__ == "__main__":
    main()
