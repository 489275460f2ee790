"""Phone numbers: the digits Evolution wants, and the masked form that logs show."""

from __future__ import annotations

import re

_NOT_DIGIT = re.compile(r"[^0-9]")  # ASCII digits only: Evolution wants 0-9


def normalize_phone(raw: str | None) -> str | None:
    """Digits only, with country code; None when it cannot be a phone number (10-15 digits)."""
    if not raw:
        return None
    digits = _NOT_DIGIT.sub("", raw)
    return digits if 10 <= len(digits) <= 15 else None


def mask_phone(number: str) -> str:
    """Hide the middle of a phone number for log lines: `5511987654321` -> `55119*****321`."""
    size = len(number)
    if size >= 12:
        head, tail = 5, 3
    elif size >= 9:
        head, tail = 4, 3
    elif size >= 5:
        head, tail = 1, 2
    else:
        return "*" * size
    return number[:head] + "*" * (size - head - tail) + number[size - tail :]


# Something that may be a phone number in any form a provider echoes it: digits with optional
# spaces, dashes, dots, parentheses and a leading +, as in `+55 (11) 98765-4321` or the JID
# `551187654321@s.whatsapp.net`, or glued to a word. Masked when it holds 8 digits or more;
# dates and IPv4 addresses are left alone.
_PHONE_LIKE = re.compile(
    r"(?<![\d*])"  # not the tail of a longer number, nor next to an already masked one
    r"(?!\d{4}-\d\d-\d\d)"  # a date
    r"(?!\d{1,3}(?:\.\d{1,3}){3}(?!\d))"  # an IPv4 address
    r"\+?\d[\d ().-]*\d(?![\d*])"
)
_LEAST_PHONE_DIGITS = 8


def _mask_match(match: re.Match[str]) -> str:
    digits = _NOT_DIGIT.sub("", match.group(0))
    return mask_phone(digits) if len(digits) >= _LEAST_PHONE_DIGITS else match.group(0)


def mask_phone_like(text: str) -> str:
    """`text` with anything that looks like a phone number masked (for logs and errors)."""
    return _PHONE_LIKE.sub(_mask_match, text)
