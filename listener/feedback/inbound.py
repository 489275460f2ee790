"""Pure: what the webhook receiver accepts from outside before it decodes, stores or logs it.
Anything a request carries may be hostile or absurd: a body nested a thousand deep,
a time in the year 1 or 10,000, a 12,000-character id, an instance name with a NUL or a lone
surrogate. What cannot be applied later must be refused now, with a 400, because an event the
receiver acknowledged is kept until it is applied.

`nesting_within` bounds JSON nesting before `json.loads` sees the bytes; `check_events` cleans
the strings of parsed events (NUL, lone surrogates) and refuses the ones out of bounds; `cut`
makes any outside text fit for a log line or a metric label.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta

from listener.feedback.events import (
    BadEvent,
    ConnectionChange,
    Event,
    Reply,
    SentEvent,
    StatusUpdate,
)
from listener.text import clean_text

# Evolution's bodies nest about ten deep (data.message.extendedTextMessage.contextInfo...).
MAX_DEPTH = 32
# A WhatsApp message id is 16 to 40 characters (`3EB0...`, `BAE5...`); Evolution's instance
# names are short labels; a JID's digits are a phone number (15 at most) or a LID (about 15).
MAX_ID = 128
MAX_INSTANCE = 128
MAX_DIGITS = 32
MAX_STATE = 32
# WhatsApp's own limit on a text message.
MAX_TEXT = 65_536
# Event times outside [EARLIEST, now + AHEAD] are not times a phone reported: Postgres would
# store the year 1 +14:00 as a BC date that no client can read back. A reply's own time
# (`messageTimestamp`) outside them is not used: the reply is at its receipt (a status has no
# time of its own; Evolution's `date_time` is never read). One up to a day ahead is kept, and
# clamped to its receipt when it is applied (and counted).
EARLIEST = datetime(2015, 1, 1, tzinfo=UTC)
AHEAD = timedelta(days=1)
# Outside text in a log line or a metric label is cut to this.

# A JSON string (escapes included), or a bracket outside strings.
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[{]|[\]}]')
_OPENERS = frozenset(b"[{")


def nesting_within(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON in `raw` nests at most `limit` deep, found without decoding it (a
    deep enough document makes `json.loads` raise RecursionError, and costs time before)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return True  # the common case: too few brackets to nest that deep, two C scans
    depth = 0
    for match in _TOKENS.finditer(raw):
        token = match.group()
        if len(token) != 1:
            continue  # a string: brackets inside it do not nest
        if token[0] in _OPENERS:
            depth += 1
            if depth > limit:
                return False
        else:
            depth -= 1
    return True


def sane_time(at: datetime, now: datetime) -> bool:
    """A time a phone or a server could have reported: from 2015 to a day ahead of `now`."""
    try:
        return EARLIEST <= at <= now + AHEAD
    except (OverflowError, TypeError):  # a naive or unrepresentable time
        return False


def _bounded(value: str, limit: int, what: str) -> str:
    value = clean_text(value)
    if len(value) > limit:
        raise BadEvent(f"{what} longer than {limit} characters ({len(value)})")
    return value


def check_events(events: list[Event], now: datetime | None = None) -> list[Event]:
    """The events cleaned of what Postgres cannot store (NUL, lone surrogates), or BadEvent
    when one is out of bounds (an id, an instance, digits or a text too long): refused at the
    door, it is never acknowledged and so never blocks the inbox. A reply's own time out of
    range is dropped instead (the reply is kept, at its receipt: an opt-out is never lost for
    a clock)."""
    now = now or datetime.now(UTC)
    checked: list[Event] = []
    for event in events:
        instance = _bounded(event.instance, MAX_INSTANCE, "`instance`")
        if isinstance(event, StatusUpdate):
            checked.append(
                dataclasses.replace(
                    event,
                    instance=instance,
                    provider_id=_bounded(event.provider_id, MAX_ID, "`keyId`"),
                )
            )
        elif isinstance(event, Reply):
            at = event.at if event.at is None or sane_time(event.at, now) else None
            if any(len(phone) > MAX_DIGITS for phone in event.phones):
                raise BadEvent(f"`remoteJid` longer than {MAX_DIGITS} digits")
            text = _bounded(event.text, MAX_TEXT, "the message text")
            checked.append(dataclasses.replace(event, instance=instance, text=text, at=at))
        elif isinstance(event, SentEvent):
            if len(event.number) > MAX_DIGITS:
                raise BadEvent(f"`remoteJid` longer than {MAX_DIGITS} digits")
            checked.append(
                dataclasses.replace(
                    event,
                    instance=instance,
                    provider_id=_bounded(event.provider_id, MAX_ID, "`key.id`"),
                    text=_bounded(event.text, MAX_TEXT, "the message text"),
                )
            )
        elif isinstance(event, ConnectionChange):
            state = _bounded(event.state, MAX_STATE, "`state`")
            checked.append(dataclasses.replace(event, instance=instance, state=state))
        else:  # an event this module does not know yet: its instance is still cleaned
            checked.append(dataclasses.replace(event, instance=instance))
    return checked
