"""Text that may reach Postgres from outside (an LLM reply, a provider's message id or error):
Postgres `text` refuses NUL, and psycopg cannot encode a lone surrogate (what a JSON `\\ud800`
escape decodes to) as UTF-8. Cleaned once, at the boundary where provider text comes in."""

from __future__ import annotations

import re

# NUL, and UTF-16 surrogates with no partner (they have no UTF-8 form).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def clean_text(text: str) -> str:
    """`text` without NUL bytes, and with each lone surrogate replaced by U+FFFD."""
    # The common case costs no copy and no scan in Python: NUL is found by memchr, and a
    # string is ASCII (a flag CPython keeps), or encodes to UTF-8, exactly when it holds no
    # lone surrogate. Only text with something to clean goes through the expression.
    if "\x00" not in text:
        if text.isascii():
            return text
        try:
            text.encode()
        except UnicodeEncodeError:
            pass
        else:
            return text
    return _UNSTORABLE.sub(lambda m: "" if m.group(0) == "\x00" else "\ufffd", text)
