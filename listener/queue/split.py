"""Turn an LLM reply (or user-supplied content) into the WhatsApp-sized parts of one message.

Pure and lossless: all the text of the reply ends up in the parts, in order (only whitespace at a
cut is dropped), within the part count, and no part is longer than the part limit. A text that
cannot fit in both limits is refused whole (`ReplyTooLong`), never sent cut short.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

_TERMINATORS = frozenset(".!?…")

# A fence anywhere in the reply, optionally tagged json: ```json\n...\n``` or ```\n...\n```.
# Models often put a line of their own before or after it ("Here it is:").
_FENCE = re.compile(r"```(?:json)?[^\S\n]*\n?(.*?)\s*```", re.DOTALL | re.IGNORECASE)
# A line holding only `|||`, with optional horizontal whitespace around it.
_BAR_LINE = re.compile(r"^[^\S\n]*\|\|\|[^\S\n]*$", re.MULTILINE)
# One or more blank (empty or whitespace-only) lines.
_BLANK_LINES = re.compile(r"\n\s*\n")


class UnsplittableReply(ValueError):
    """The reply (or content) yields no part that can be sent."""


class ReplyTooLong(UnsplittableReply):
    """The text cannot fit in `max_parts` parts of `max_chars` characters, however it is cut."""

    def __init__(self, what: str, length: int, max_parts: int, max_chars: int) -> None:
        super().__init__(
            f"the {what} is {length:,} characters: "
            f"more than {max_parts} parts of {max_chars:,} characters"
        )
        self.length = length
        self.max_parts = max_parts
        self.max_chars = max_chars


def split_reply(text: str, *, max_parts: int = 5, max_chars: int = 1000) -> list[str]:
    """Parse an LLM reply into at most `max_parts` trimmed parts of at most `max_chars` each."""
    _check_limits(max_parts, max_chars)
    if not text.strip():
        raise UnsplittableReply("the reply is empty or whitespace only")
    return split_messages(_parse(text), max_parts=max_parts, max_chars=max_chars)


def split_messages(messages: list[str], *, max_parts: int = 5, max_chars: int = 1000) -> list[str]:
    """The parts of a reply already parsed into its messages (the JSON's list of strings)."""
    _check_limits(max_parts, max_chars)
    parts = [s for m in messages if (s := m.strip())]
    if not parts:
        raise UnsplittableReply("the reply has no non-empty part (e.g. an empty messages list)")
    return _fit(parts, max_parts, max_chars, "reply")


def split_content(text: str, *, max_parts: int = 5, max_chars: int = 1000) -> list[str]:
    """Split user-supplied content sent as is: one part, cut only when longer than `max_chars`."""
    _check_limits(max_parts, max_chars)
    content = text.strip()
    if not content:
        raise UnsplittableReply("the content is empty or whitespace only")
    return _fit([content], max_parts, max_chars, "content")


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


def _fit(parts: list[str], max_parts: int, max_chars: int, what: str) -> list[str]:
    """At most `max_parts` parts of at most `max_chars` each, holding all the text of `parts`.

    Tried in order, the first that fits wins: the parts as they are (long ones cut at sentence
    boundaries); the overflow merged into the last part; the pieces re-packed in order; the whole
    text re-cut at sentence boundaries, then at whitespace, then hard at `max_chars`. When even
    hard cuts need more than `max_parts` parts, the text is too long: `ReplyTooLong`.
    """
    pieces = [piece for part in parts for piece in _cut(part, max_chars, _GENTLE)]
    if len(pieces) <= max_parts:
        return pieces
    merged = _SEPARATOR.join(pieces[max_parts - 1 :])
    if len(merged) <= max_chars:
        return [*pieces[: max_parts - 1], merged]
    whole = _SEPARATOR.join(parts)
    # Hard cuts put the most text in each part: if they need too many parts, every other way of
    # cutting does too. Checked first, so a huge reply is refused without trying them all.
    hard = _cut(whole, max_chars, ())
    if len(hard) > max_parts:
        raise ReplyTooLong(what, len(whole), max_parts, max_chars)
    packed = _pack(pieces, max_chars)
    if len(packed) <= max_parts:
        return packed
    for boundaries in (_GENTLE, (_last_space,)):
        recut = _cut(whole, max_chars, boundaries)
        if len(recut) <= max_parts:
            return recut
    return hard


#: What joins parts merged into one: a blank line, as between paragraphs.
_SEPARATOR = "\n\n"

#: Finds a cut in `text` within (start, limit], or returns 0 when it finds none.
Boundary = Callable[[str, int, int], int]


def _pack(pieces: list[str], max_chars: int) -> list[str]:
    """Join consecutive pieces (each at most `max_chars`) while the result stays within
    `max_chars`: in order and greedily, which gives the fewest parts for these pieces."""
    packed: list[str] = []
    for piece in pieces:
        if packed and len(packed[-1]) + len(_SEPARATOR) + len(piece) <= max_chars:
            packed[-1] += _SEPARATOR + piece
        else:
            packed.append(piece)
    return packed


def _cut(part: str, max_chars: int, boundaries: tuple[Boundary, ...]) -> list[str]:
    """Cut a trimmed text into pieces of at most `max_chars`, each at the first of `boundaries`
    that finds one, else hard at `max_chars`; whitespace around a cut is dropped."""
    pieces: list[str] = []
    start, end = 0, len(part)
    while end - start > max_chars:
        limit = start + max_chars
        at = _first_cut(part, start, limit, boundaries)
        pieces.append(part[start:at].rstrip())
        start = at
        while start < end and part[start].isspace():
            start += 1
    if start < end:
        pieces.append(part[start:])
    return pieces


def _first_cut(text: str, start: int, limit: int, boundaries: tuple[Boundary, ...]) -> int:
    """Where the first of `boundaries` that finds a cut puts it; `limit` when none does."""
    for find in boundaries:
        at = find(text, start, limit)
        if at:
            return at
    return limit


def _sentence_end(text: str, start: int, limit: int) -> int:
    """Largest index in (start, limit] just after a terminator and holding whitespace; 0 if none.
    `text[start]` is not whitespace and `limit` is a valid index."""
    for i in range(limit, start, -1):
        if text[i].isspace() and text[i - 1] in _TERMINATORS:
            return i
    return 0


def _last_space(text: str, start: int, limit: int) -> int:
    """Largest index in (start, limit] holding whitespace; 0 if none."""
    for i in range(limit, start, -1):
        if text[i].isspace():
            return i
    return 0


#: Sentence ends first, then whitespace: how a part too long for one message is cut.
_GENTLE: tuple[Boundary, ...] = (_sentence_end, _last_space)
