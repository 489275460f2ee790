"""Postgres CPU per message of the hot path's statements: claim (with its contexts), store_parts
and record_parts, run by hand in batches on one connection.

The backend's own CPU time is read from `/proc/<pid>/schedstat` around each statement (so the
server must run on this machine), which other work on a shared machine disturbs far less than
a rate: it is the time the backend ran, not the time it waited for a core. The figure is CPU
microseconds per message for each statement, averaged over `--batches` batches of `--batch`
one-part messages (a commit each, as the listener's group commits are).

It uses the named queries of the checkout it runs in, so two checkouts compare by copying this
script (with `_common.py`) into the other one and running it there; a checkout whose claim does
not load the contexts runs its `lead_contexts` statement too, counted with the claim:

    uv run python bench/statement_cpu.py [--batches 100] [--batch 50] [--rounds 3]

(`/proc/<pid>/schedstat` must exist: Linux with the server on this machine.)
"""

from __future__ import annotations

import json
import statistics
import uuid
from pathlib import Path
from typing import Any

import _common as c
import psycopg

from listener.queries import q

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
        }
    return {
        "ids": ids,
        "part_nos": [0] * n,
        "provider_ids": ["SANDBOX" + uuid.uuid4().hex.upper() for _ in ids],
        "finals": [True] * n,
        "instances": ["sandbox"] * n,
        "worker": worker,
    }


def one_round(url: str, batches: int, batch: int) -> dict[str, float]:
    """Drain `batches * batch` fresh one-part messages by hand; CPU µs per message by step."""
    c.seed_leads(url, batches * batch)
    campaign = c.seed_campaign(url)
    c.seed_messages(url, campaign, batches * batch)
    spent = {"claim": 0.0, "store_parts": 0.0, "record_parts": 0.0}
    done = 0
    worker = "statement-cpu"
    separate_contexts = "get_lead_full_context" not in q("claim")
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        pid = row[0]
        for _ in range(batches):
            before = backend_cpu(pid)
            claim = {"limit": batch, "worker": worker, "lease": "5 minutes"}
            rows = conn.execute(q("claim"), claim).fetchall()
            if separate_contexts and rows:
                lead_ids = list({r[2] for r in rows})
                conn.execute(q("lead_contexts"), {"lead_ids": lead_ids}).fetchall()
            spent["claim"] += backend_cpu(pid) - before
            ids = [r[0] for r in rows]
            if not ids:
                break
            for statement in ("store_parts", "record_parts"):
                before = backend_cpu(pid)
                conn.execute(q(statement), params(statement, ids, worker)).fetchall()
                spent[statement] += backend_cpu(pid) - before
            done += len(ids)
        sent = conn.execute("SELECT count(*) FROM campaign_messages WHERE status = 'sent'")
        check = sent.fetchone()
    c.require(
        check is not None and check[0] == done == batches * batch,
        f"only {done} of {batches * batch} messages went through",
    )
    per = {k: round(v / done * 1e6, 1) for k, v in spent.items()}
    per["total"] = round(sum(per.values()), 1)
    return per


def main() -> None:
    parser = c.base_parser(__doc__)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50, help="messages per statement")
    parser.add_argument("--rounds", type=int, default=3, help="fresh databases; medians kept")
    args = parser.parse_args()
    c.smoke(parser, args, batches=2, batch=5, rounds=1)
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
