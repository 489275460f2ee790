"""How the status page writes values: counts, durations, relative times, money, masked text.
Pure functions, used by the section views and as the templates' filters."""

from __future__ import annotations

from datetime import datetime

from listener.phones import mask_phone_like
from listener.web.snapshot import FOREVER, NEVER

#: What an empty cell shows.
NONE = "\u2013"


def number(value: int | float | None) -> str:
    """A count with thousands separators, or the empty cell's dash."""
    return NONE if value is None else f"{value:,}"


def span(seconds: float) -> str:
    """A duration as the page shows it: `3m 5s`, `2h`, `now`."""
    if seconds < 1:
        return "now" if seconds < 0.5 else "1s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            whole, rest = divmod(int(seconds), size)
            small = {"d": ("h", 3600), "h": ("m", 60), "m": ("s", 1)}[unit]
            part = rest // small[1]
            return f"{whole}{unit}" + (f" {part}{small[0]}" if part else "")
    return f"{int(seconds)}s"


def ago(then: datetime | None, now: datetime) -> str:
    """`then` relative to `now`: `3m 5s ago`, `in 2h`, `never`."""
    if then is None or then == NEVER:
        return "never"
    if then == FOREVER:
        return "not until further notice"
    seconds = (now - then).total_seconds()
    return f"{span(abs(seconds))} ago" if seconds >= 0 else f"in {span(-seconds)}"


def endless(then: datetime | None) -> bool:
    """Whether a time is one of Postgres' infinities (shown as words, with no exact time)."""
    return then in (NEVER, FOREVER)


def local_time(then: datetime) -> str:
    """The exact time, in the server's zone, for a tooltip or the header."""
    return f"{then.astimezone():%Y-%m-%d %H:%M:%S %Z}"


def money(value: object) -> str:
    return f"${float(value):,.4f}"  # type: ignore[arg-type]


def masked(text: str | None) -> str:
    """A reason as stored, with anything that looks like a phone number masked."""
    return mask_phone_like(text or "")
