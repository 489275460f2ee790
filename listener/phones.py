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
