"""`python -m listener.testing`: the fake providers as a process of their own (the
benchmarks' `FakeServer`). Prints its base URL on the first line, then serves until terminated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from listener.testing.fakes import FakeProviders


def _ms_range(text: str) -> tuple[float, float] | None:
    """`min,max` (or one value) in ms, as seconds; None when it is all zero."""
    low, _, high = text.partition(",")
    try:
        bounds = (float(low) / 1000, float(high or low) / 1000)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not `min,max` in ms") from None
    if not 0 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: min must be at most max, both >= 0")
    return bounds if bounds[1] > 0 else None


async def _serve_forever(fakes: FakeProviders, port: int) -> None:
    await fakes.start(port)
    sys.stdout.write(fakes.url + "\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m listener.testing", description="fake OpenRouter + Evolution API"
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--llm-latency", type=_ms_range, default=None, help="min,max ms")
    parser.add_argument("--send-latency", type=_ms_range, default=None, help="min,max ms")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--record-prefix", default="")
    parser.add_argument("--record-sends", action="store_true", help="per-instance send times")
    args = parser.parse_args(argv)
    fakes = FakeProviders(
        llm_delay_range=args.llm_latency,
        send_delay_range=args.send_latency,
        seed=args.seed,
        arrival_prefix=args.record_prefix,
        record_send_times=args.record_sends,
        keep_requests=False,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(fakes, args.port))


if __name__ == "__main__":
    main()
