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

`--smoke` summarises a small made-up profile in py-spy's raw format instead (CI: the parsing
and the shares still work) and fails unless the shares come out as built.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

# A made-up raw profile: 10 samples, 6 of them under `drain`, 3 with `post` on top.
_SMOKE_PROFILE = """\
main (bench.py:10);drain (bench.py:20);post (client.py:5) 3
main (bench.py:10);drain (bench.py:20);record (store.py:9) 2
main (bench.py:10);drain (bench.py:20);run (loop.py:1) 1
main (bench.py:10);seed (bench.py:30) 4
"""


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
    parser.add_argument("profile", type=Path, nargs="?", help="a py-spy --format raw file")
    parser.add_argument("--under", help="keep samples whose stack contains this text")
    parser.add_argument("--frames", nargs="*", default=[], help="report the inclusive share")
    parser.add_argument("--top", type=int, default=15, help="how many top (self) frames")
    parser.add_argument("--smoke", action="store_true", help="summarise a made-up profile (CI)")
    args = parser.parse_args()
    if args.smoke:
        with tempfile.TemporaryDirectory() as folder:
            args.profile = Path(folder) / "smoke_profile.txt"
            args.profile.write_text(_SMOKE_PROFILE, encoding="utf-8")
            args.under, args.frames = "drain", ["post", "record"]
            summary = summarise(args)
        if summary["samples"] != 6 or summary["inclusive_pct"] != {"post": 50.0, "record": 33.3}:
            raise SystemExit(f"profile_summary.py: the made-up profile gave {summary}")
        return
    if args.profile is None:
        parser.error("a profile file is required (or --smoke)")
    summarise(args)


def summarise(args: argparse.Namespace) -> dict[str, object]:
    """Print the summary of `args.profile` and write it beside the profile; return it."""

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
    summary: dict[str, object] = {
        "profile": args.profile.name,
        "under": args.under,
        "samples": total,
        "inclusive_pct": inclusive,
        "top_self": top,
    }
    out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"-> {out}")
    return summary


if __name__ == "__main__":
    main()
