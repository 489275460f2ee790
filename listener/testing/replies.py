"""The scripted answers of the fake providers: what to answer (`Reply`), what was asked
(`Seen`), and how an answer is written (JSON, text, raw bytes, or a trickle that never ends)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Reply:
    """One scripted answer: `body` as JSON, or `text`, or `raw` bytes sent as they are (as
    JSON, invalid UTF-8 and all), after `delay` seconds. With `trickle`, the headers go out,
    then one byte of whitespace every `trickle` seconds, forever. In `llm_script` /
    `send_script`, an answer that gives none of these and a status under 300 is the endpoint's
    default success, after `delay`."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    text: str | None = None
    raw: bytes | None = None
    trickle: float = 0.0

    def given(self) -> bool:
        """Whether it says what to answer (else the endpoint answers its default success)."""
        return (
            self.body is not None
            or self.text is not None
            or self.raw is not None
            or self.trickle > 0
            or self.status >= 300
        )


@dataclass
class Seen:
    """One request the fake server received."""

    method: str
    path: str
    raw_path: str
    headers: dict[str, str]
    body: Any


def completion(content: str | None, **choice: Any) -> dict[str, Any]:
    """An OpenRouter chat completion body with one choice (`choice` adds to it)."""
    return {
        "id": "gen-1",
        "choices": [{"message": {"role": "assistant", "content": content}, **choice}],
    }


async def write_reply(request: web.Request, reply: Reply) -> web.StreamResponse:
    """The scripted answer, as it says: a trickle, raw bytes, text, or JSON."""
    if reply.trickle:
        return await trickle(request, reply)
    if reply.raw is not None:
        return web.Response(
            status=reply.status,
            body=reply.raw,
            headers={"Content-Type": "application/json", **reply.headers},
        )
    if reply.text is not None:
        return web.Response(status=reply.status, text=reply.text, headers=reply.headers)
    body = reply.body if reply.body is not None else {}
    return web.json_response(body, status=reply.status, headers=reply.headers)


async def trickle(request: web.Request, reply: Reply) -> web.StreamResponse:
    """Headers at once, then a byte now and then: every gap is shorter than a read timeout,
    the whole answer never ends. Stops when the client hangs up."""
    response = web.StreamResponse(status=reply.status, headers=reply.headers)
    response.content_type = "application/json"
    await response.prepare(request)
    while True:
        await response.write(b" ")
        await asyncio.sleep(reply.trickle)
