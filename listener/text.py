"""Text that may reach Postgres from outside (an LLM reply, a provider's message id or error):
Postgres `text` refuses NUL, and psycopg cannot encode a lone surrogate (what a JSON `\\ud800`
escape decodes to) as UTF-8. Cleaned once, at the boundary where provider text comes in; cut to a
length before it reaches a log line; folded before it is compared with words. And a list of
texts as JSON, written directly (a message's parts, an offline reply)."""

from __future__ import annotations

import re
import unicodedata
from json.encoder import encode_basestring

# A log line or a metric label shows this much of a text from outside.
LOG_CHARS = 80

# What `fold` keeps: ASCII letters, digits and spaces.
_NOT_WORD = re.compile(r"[^0-9a-z ]+")

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


def cut(text: object, limit: int = LOG_CHARS) -> str:
    """Outside text fit for a log line or a metric label: cleaned (NUL, lone surrogates,
    control characters shown escaped) and cut to `limit` characters."""
    shown = clean_text(text if isinstance(text, str) else repr(text))
    if len(shown) > limit:
        shown = f"{shown[:limit]}...({len(shown)} chars)"
    return shown.encode("unicode_escape").decode("ascii") if not shown.isprintable() else shown


def fold(text: str) -> str:
    """Case and accents folded, punctuation and emoji removed, spaces collapsed."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(_NOT_WORD.sub(" ", plain).split())


def json_texts(texts: list[str]) -> str:
    """`json.dumps(texts, ensure_ascii=False)` for a list of strings, written directly: the
    same text, without making an encoder per call (a message's parts, on the hot path)."""
    # encode_basestring is what json.dumps(..., ensure_ascii=False) calls for each string.
    return "[" + ", ".join(map(encode_basestring, texts)) + "]"
