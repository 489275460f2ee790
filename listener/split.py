"""Turn an LLM reply (or user-supplied content) into the WhatsApp-sized parts of one message.

Pure and lossless: every word of the reply ends up in some part, in order, within the part count.
"""

from __future__ import annotations

import json
import re

_TERMINATORS = frozenset(".!?…")

# A fence anywhere in the reply, optionally tagged json: ```json\n...\n``` or ```\n...\n```.
# Models often put a line of their own before or after it ("Here it is:").
_FENCE = re.compile(r"```(?:json)?[^\S\n]*\n?(.*?)\s*```", re.DOTALL | re.IGNORECASE)
# A line holding only `|||`, with optional horizontal whitespace around it.
_BAR_LINE = re.compile(r"^[^\S\n]*\|\|\|[^\S\n]*$", re.MULTILINE)
# One or more blank (empty or whitespace-only) lines.
_BLANK_LINES = re.compile(r"\n\s*\n")


class UnsplittableReply(ValueError):
    """The reply (or content) yields no non-empty part to send."""


def split_reply(text: str, *, max_parts: int = 5, max_chars: int = 1000) -> list[str]:
    """Parse an LLM reply into at most `max_parts` trimmed parts of about `max_chars` each."""
    _check_limits(max_parts, max_chars)
    if not text.strip():
        raise UnsplittableReply("the reply is empty or whitespace only")
    parts = [p.strip() for p in _parse(text)]
    parts = [p for p in parts if p]
    if not parts:
        raise UnsplittableReply("the reply has no non-empty part (e.g. an empty messages list)")
    return _fit(parts, max_parts, max_chars)


def split_content(text: str, *, max_parts: int = 5, max_chars: int = 1000) -> list[str]:
    """Split user-supplied content sent as is: one part, cut only when longer than `max_chars`."""
    _check_limits(max_parts, max_chars)
    content = text.strip()
    if not content:
        raise UnsplittableReply("the content is empty or whitespace only")
    return _fit([content], max_parts, max_chars)


def _check_limits(max_parts: int, max_chars: int) -> None:
    if max_parts < 1:
        raise ValueError(f"max_parts must be at least 1, got {max_parts}")
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")


def _parse(text: str) -> list[str]:
    """Raw parts by the first format that fits: JSON, fenced JSON, `|||` lines, paragraphs."""
    stripped = text.strip()
    parts = _json_parts(stripped)
    if parts is None:
        # The first fence holding JSON of the right shape; the words around it are the model
        # talking to us, not to the lead.
        for fence in _FENCE.finditer(stripped):
            parts = _json_parts(fence.group(1))
            if parts is not None:
                break
    if parts is not None:
        return parts
    # Invalid or wrong-shaped JSON lands here too, so the whole text is kept.
    if _BAR_LINE.search(text):
        return _BAR_LINE.split(text)
    return _BLANK_LINES.split(text)


def _json_parts(text: str) -> list[str] | None:
    """The strings of `{"messages": [...]}` or `[...]`; None if not JSON of that shape."""
    try:
        value: object = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict):
        value = value.get("messages")
    if not isinstance(value, list):
        return None
    parts: list[str] = []
    for item in value:
        if isinstance(item, str):
            parts.append(item)
        elif isinstance(item, int | float) and not isinstance(item, bool):
            parts.append(str(item))
        else:
            # null, booleans, objects, nested lists: wrong shape; the caller keeps the raw text.
            return None
    return parts


def _fit(parts: list[str], max_parts: int, max_chars: int) -> list[str]:
    """Cut every part to `max_chars`, then merge the overflow into the last allowed part."""
    cut = [piece for part in parts for piece in _cut(part, max_chars)]
    if len(cut) <= max_parts:
        return cut
    # Merging wins over length: the cap is on message count, so the last part may exceed max_chars.
    return [*cut[: max_parts - 1], "\n\n".join(cut[max_parts - 1 :])]


def _cut(part: str, max_chars: int) -> list[str]:
    """Cut a trimmed part at sentence boundaries, else whitespace, else hard at `max_chars`."""
    pieces: list[str] = []
    rest = part
    while len(rest) > max_chars:
        at = _sentence_end(rest, max_chars) or _last_space(rest, max_chars) or max_chars
        pieces.append(rest[:at].rstrip())
        rest = rest[at:].lstrip()
    if rest:
        pieces.append(rest)
    return pieces


def _sentence_end(text: str, limit: int) -> int:
    """Largest index <= limit just after a terminator that is followed by whitespace; 0 if none."""
    for i in range(limit, 0, -1):
        if text[i].isspace() and text[i - 1] in _TERMINATORS:
            return i
    return 0


def _last_space(text: str, limit: int) -> int:
    """Largest index <= limit holding whitespace; 0 if none. `text` starts non-blank."""
    for i in range(limit, 0, -1):
        if text[i].isspace():
            return i
    return 0
