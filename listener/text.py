"""Text that may reach Postgres from outside (an LLM reply, a provider's message id or error):
Postgres `text` refuses NUL, and psycopg cannot encode a lone surrogate (what a JSON `\\ud800`
escape decodes to) as UTF-8. Cleaned once, at the boundary where provider text comes in."""

from __future__ import annotations

import re

# NUL, and UTF-16 surrogates with no partner (they have no UTF-8 form).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def clean_text(text: str) -> str:
    """`text` without NUL bytes, and with each lone surrogate replaced by U+FFFD."""
    if not _UNSTORABLE.search(text):
        return text  # the common case: no copy
    return _UNSTORABLE.sub(lambda m: "" if m.group(0) == "\x00" else "\ufffd", text)
