"""A/B in one sitting: queue and HTTP throughput of two checkouts, interleaved.

Each round runs, for the old checkout and then the new one, `bench/queue_throughput.py` (one run
per concurrency) and `bench/http_throughput.py` (one run at concurrency 50, no client-only
ceiling), each with that checkout's own scripts, package and virtual environment (`uv run` in
its directory). Interleaving spreads the host's slow and fast spells over both sides; the
figure to compare is the ratio of the medians, beside the median and range of the rounds' own
ratios (each round's new over old: a host whose speed drifts within a sitting moves both sides
of a round together, so the pairs show how far one run of the comparison can be trusted). The
1-minute load average is read before and after every run, since other work on the machine
(tests, say) shares its cores.

    git worktree add /tmp/bench-old <commit> && (cd /tmp/bench-old && uv sync --frozen)
    uv run python bench/ab.py --old /tmp/bench-old --new /tmp/bench-new --rounds 3

`--smoke` runs one round of tiny backlogs with this checkout on both sides (the plumbing, not
a comparison).

Beside each rate it keeps the listener process's CPU per message, which other work on the
machine disturbs less than the rate. Writes bench/results/ab.json (or ab.<tag>.json) with every
run and the medians.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import _common as c


def git_head(path: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def run_script(
    checkout: Path, script: str, args: list[str], tag: str, url: str, db: str
) -> dict[str, Any]:
    """Run one benchmark script in `checkout` and return its JSON result with the load."""
    load_before = os.getloadavg()[0]
    command = ["uv", "run", "python", f"bench/{script}.py", "--url", url, "--db", db]
    command += ["--tag", tag, *args]
    done = subprocess.run(command, cwd=checkout, capture_output=True, text=True)
    load_after = os.getloadavg()[0]
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"{script} failed in {checkout}")
    result = json.loads((checkout / "bench" / "results" / f"{script}.{tag}.json").read_text())
    result["load_1m"] = [round(load_before, 2), round(load_after, 2)]
    return result


def main() -> None:
    parser = c.base_parser(__doc__)
    parser.add_argument("--old", type=Path, help="checkout of the old code")
    parser.add_argument("--new", type=Path, help="checkout of the new code")
    parser.add_argument("-n", type=int, default=None, help="backlog of each run (theirs: 20,000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queue-concurrency", type=int, nargs="+", default=[5, 50, 200])
    parser.add_argument(
        "--http-concurrency", type=int, default=50, help="0 skips the HTTP benchmark"
    )
    parser.add_argument(
        "--new-first",
        action="store_true",
        help="run the new checkout first in each round (to see whether the order matters)",
    )
    parser.set_defaults(db="listener_bench_ab")
    args = parser.parse_args()
    if c.smoke(parser, args, rounds=1, queue_concurrency=[50], http_concurrency=50, n=150):
        args.old = args.old or c.ROOT
        args.new = args.new or c.ROOT
        args.tag = args.tag or "smoke"
        c.drop_at_exit(args.url, args.db)
    if args.old is None or args.new is None:
        parser.error("--old and --new are required (two checkouts to compare)")

    sides = {"old": args.old.resolve(), "new": args.new.resolve()}
    order = ["new", "old"] if args.new_first else ["old", "new"]
    commits = {side: git_head(path) for side, path in sides.items()}
    print(f"A/B: old {commits['old']} ({sides['old']}), new {commits['new']} ({sides['new']})")
    rates: dict[str, dict[str, list[float]]] = {side: {} for side in sides}
    runs: list[dict[str, Any]] = []
    queue_args = ["--repeat", "1", "--concurrency", *map(str, args.queue_concurrency)]
    http_args = ["--repeat", "1", "--client-n", "0", "--concurrency", str(args.http_concurrency)]
    if args.n is not None:
        queue_args += ["-n", str(args.n)]
        http_args += ["-n", str(args.n)]
    for round_ in range(1, args.rounds + 1):
        for side in order:
            path = sides[side]
            tag = f"{args.tag or 'ab'}_{side}_{round_}"
            queue = run_script(path, "queue_throughput", queue_args, tag, args.url, args.db)
            http: dict[str, Any] = {"runs": [], "load_1m": []}
            if args.http_concurrency:
                http = run_script(path, "http_throughput", http_args, tag, args.url, args.db)
            figures: dict[str, float] = {}
            for kind, result in (("queue", queue), ("http", http)):
                for run in result["runs"]:
                    key = f"{kind} c{run['concurrency']}"
                    figures[key] = run["per_second"]
                    # CPU of the listener process per message: steadier than the rate when
                    # other work shares the cores.
                    cpu_us = run["cpu"]["listener_cpu_s"] / run["messages"] * 1e6
                    figures[f"{key} listener CPU us/msg"] = round(cpu_us, 1)
            for key, value in figures.items():
                rates[side].setdefault(key, []).append(value)
            loads = queue["load_1m"] + http["load_1m"]
            runs.append({"round": round_, "side": side, "figures": figures, "load_1m": loads})
            shown = ", ".join(f"{k} {v:,.0f}" for k, v in figures.items() if "CPU" not in k)
            print(f"  round {round_} {side}: {shown}  (load {min(loads):.1f}-{max(loads):.1f})")
            sys.stdout.flush()
    summary: dict[str, dict[str, float]] = {}
    for key in rates["old"]:
        old = statistics.median(rates["old"][key])
        new = statistics.median(rates["new"][key])
        pairs = [n / o for o, n in zip(rates["old"][key], rates["new"][key], strict=True)]
        summary[key] = {
            "old_median": old,
            "new_median": new,
            "ratio": round(new / old, 3),
            "pair_ratio_median": round(statistics.median(pairs), 3),
            "pair_ratio_min": round(min(pairs), 3),
            "pair_ratio_max": round(max(pairs), 3),
        }
        print(
            f"{key:>32}: old {old:>9,.1f}  new {new:>9,.1f}  new/old {new / old:.3f}"
            f"  (rounds' ratios: median {statistics.median(pairs):.3f},"
            f" {min(pairs):.3f}-{max(pairs):.3f})"
        )
    c.write_result(
        "ab",
        {
            "commits": commits,
            "order": order,
            "summary": summary,
            "runs": runs,
            "machine": c.machine(args.url),
        },
        tag=args.tag,
    )


if __name__ == "__main__":
    main()
