"""Summarise a py-spy profile in its raw (collapsed-stack) format: the share of samples whose
stack passes through given frames (inclusive), and the frames most often on top (self).

Record a benchmark with py-spy first, for example:

    uv run --with py-spy py-spy record --format raw --idle -r 200 \\
        -o bench/results/profile_http_c50.txt -- \\
        python bench/http_throughput.py --concurrency 50 --repeat 1 --client-n 0 --tag pyspy

then:

    uv run python bench/profile_summary.py bench/results/profile_http_c50.txt \\
        --under "http_throughput.py:112" --frames AsyncClient.post build_request ...

`--under` keeps only the samples whose stack contains that text (for instance the line of the
script that runs the drain, so seeding is left out). With `--idle`, samples of the event loop
waiting (the top frame is the loop's own `run`) are counted, so they show how idle the process
was. The summary is printed and written next to the profile as `<profile>.summary.json`.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


def load(path: Path, under: str | None) -> list[tuple[list[str], int]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if under is None or any(under in frame for frame in frames):
            rows.append((frames, int(count)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path, help="a py-spy --format raw file")
    parser.add_argument("--under", help="keep samples whose stack contains this text")
    parser.add_argument("--frames", nargs="*", default=[], help="report the inclusive share")
    parser.add_argument("--top", type=int, default=15, help="how many top (self) frames")
    args = parser.parse_args()

    rows = load(args.profile, args.under)
    total = sum(count for _, count in rows)
    if not total:
        raise SystemExit("no samples matched")
    tops: Counter[str] = Counter()
    for frames, count in rows:
        tops[frames[-1]] += count
    inclusive = {
        text: round(
            100 * sum(count for frames, count in rows if any(text in f for f in frames)) / total, 1
        )
        for text in args.frames
    }
    top = [
        {"frame": frame, "self_pct": round(100 * count / total, 1)}
        for frame, count in tops.most_common(args.top)
    ]
    print(f"{args.profile}: {total} samples" + (f" under {args.under!r}" if args.under else ""))
    print("inclusive (% of those samples):")
    for text, share in inclusive.items():
        print(f"  {share:5.1f}%  {text}")
    print("top of stack (self):")
    for item in top:
        print(f"  {item['self_pct']:5.1f}%  {item['frame']}")
    out = args.profile.with_name(args.profile.name + ".summary.json")
    out.write_text(
        json.dumps(
            {
                "profile": args.profile.name,
                "under": args.under,
                "samples": total,
                "inclusive_pct": inclusive,
                "top_self": top,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"-> {out}")


if __name__ == "__main__":
    main()
