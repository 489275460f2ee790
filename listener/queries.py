"""Every SQL statement of the listener, loaded by name from `queries.sql`.

Keeping SQL in one named file (as Procrastinate does) means a reviewer sees every query the
daemon runs in one place, and no module builds SQL from strings.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import LiteralString, cast

_BLOCK = re.compile(r"^-- (?P<name>[a-z_]+) --$", re.MULTILINE)


def _load() -> dict[str, LiteralString]:
    text = resources.files("listener").joinpath("queries.sql").read_text(encoding="utf-8")
    found: dict[str, LiteralString] = {}
    matches = list(_BLOCK.finditer(text))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip()
        # Drop the description comment lines; keep the statement.
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        found[match.group("name")] = cast(LiteralString, "\n".join(lines).strip())  # type: ignore[redundant-cast]
    return found


QUERIES: dict[str, LiteralString] = _load()


def q(name: str) -> LiteralString:
    """The statement called `name` in queries.sql (KeyError names a missing one)."""
    return QUERIES[name]
