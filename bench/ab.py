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

The rounds' ratios are also summed up as their geometric mean with a 95 % bootstrap interval
(resampled rounds, a fixed seed), and split into the rounds where the host ran fast and those
where it ran slow. A round is put in a half by the mean of its two rates, never by one side's:
sorted by the old side's rate alone, the rounds where the old code happened to run fast are
the rounds where the ratio happened to be low (regression to the mean), and two identical
checkouts would seem to lose on a fast host and win on a slow one.

`--pool` reads result files of earlier runs (one of each order, say) and prints the same
summary over all their rounds, without running anything.
"""

from __future__ import annotations

import json
import math
import os
import random
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


def bootstrap(values: list[float], stat: Any, *, draws: int = 4000) -> tuple[float, float]:
    """A 95 % interval of `stat` over `values` by resampling them (seeded: the same rounds give
    the same interval)."""
    rng = random.Random(1)
    found = sorted(stat(rng.choices(values, k=len(values))) for _ in range(draws))
    return found[int(draws * 0.025)], found[int(draws * 0.975) - 1]


def geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per figure: each side's median, the ratio of the medians, the rounds' own ratios (median,
    range, geometric mean and its interval), and the rounds' median ratio in the fast and the
    slow half of the sitting (split by the mean of each round's two figures)."""
    pairs: dict[str, list[tuple[float, float]]] = {}
    by_round: dict[tuple[int, int], dict[str, dict[str, float]]] = {}
    for run in runs:
        by_round.setdefault((run.get("run", 0), run["round"]), {})[run["side"]] = run["figures"]
    for sides in by_round.values():
        if "old" in sides and "new" in sides:
            for key, old in sides["old"].items():
                if key in sides["new"]:
                    pairs.setdefault(key, []).append((old, sides["new"][key]))
    summary: dict[str, dict[str, Any]] = {}
    for key, both in pairs.items():
        old = statistics.median(o for o, _ in both)
        new = statistics.median(n for _, n in both)
        ratios = [n / o for o, n in both]
        low, high = bootstrap(ratios, geomean)
        means = [(o + n) / 2 for o, n in both]
        middle = statistics.median(means)
        # Rates: fast means high; CPU per message: fast means low.
        fast_high = "CPU" not in key
        halves: dict[bool, list[float]] = {True: [], False: []}
        for ratio, mean in zip(ratios, means, strict=True):
            halves[(mean >= middle) == fast_high].append(ratio)
        fast, slow = halves[True], halves[False]
        summary[key] = {
            "rounds": len(both),
            "old_median": old,
            "new_median": new,
            "ratio": round(new / old, 3),
            "pair_ratio_median": round(statistics.median(ratios), 3),
            "pair_ratio_min": round(min(ratios), 3),
            "pair_ratio_max": round(max(ratios), 3),
            "pair_ratio_geomean": round(geomean(ratios), 3),
            "pair_ratio_geomean_95": [round(low, 3), round(high, 3)],
            "fast_half_median": round(statistics.median(fast), 3) if fast else None,
            "slow_half_median": round(statistics.median(slow), 3) if slow else None,
        }
    return summary


def show(summary: dict[str, dict[str, Any]]) -> None:
    for key, s in summary.items():
        low, high = s["pair_ratio_geomean_95"]
        fast, slow = (
            "-" if s[half] is None else f"{s[half]:.3f}"
            for half in ("fast_half_median", "slow_half_median")
        )
        print(
            f"{key:>32}: old {s['old_median']:>9,.1f}  new {s['new_median']:>9,.1f}"
            f"  new/old {s['ratio']:.3f}  ({s['rounds']} rounds' ratios: median"
            f" {s['pair_ratio_median']:.3f}, {s['pair_ratio_min']:.3f}-{s['pair_ratio_max']:.3f};"
            f" geometric mean {s['pair_ratio_geomean']:.3f}, 95 % {low:.3f}-{high:.3f};"
            f" fast half {fast}, slow half {slow})"
        )


def pool(files: list[Path]) -> None:
    """The summary over the rounds of earlier runs' result files."""
    runs: list[dict[str, Any]] = []
    commits: set[tuple[str, str]] = set()
    for number, path in enumerate(files):
        try:
            result = json.loads(path.read_text())
            commits.add((result["commits"]["old"], result["commits"]["new"]))
            runs += [{**run, "run": number} for run in result["runs"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"{path}: not a result of ab.py ({exc})") from None
    if len(commits) > 1:
        print(f"note: the files compare different commits: {sorted(commits)}")
    print(f"pooled {len(files)} runs: " + ", ".join(f"{o} -> {n}" for o, n in sorted(commits)))
    show(summarize(runs))


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
    parser.add_argument(
        "--pool",
        type=Path,
        nargs="+",
        metavar="RESULT",
        help="sum up the rounds of these earlier result files (bench/results/ab*.json) instead"
        " of running",
    )
    parser.set_defaults(db="listener_bench_ab")
    args = parser.parse_args()
    if args.pool:
        pool(args.pool)
        return
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
            loads = queue["load_1m"] + http["load_1m"]
            runs.append({"round": round_, "side": side, "figures": figures, "load_1m": loads})
            shown = ", ".join(f"{k} {v:,.0f}" for k, v in figures.items() if "CPU" not in k)
            print(f"  round {round_} {side}: {shown}  (load {min(loads):.1f}-{max(loads):.1f})")
            sys.stdout.flush()
    summary = summarize(runs)
    show(summary)
    written = c.write_result(
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
    if args.smoke:  # the pooling's plumbing too
        pool([written, written])


if __name__ == "__main__":
    main()
