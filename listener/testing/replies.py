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


def evolution_error(status: int, message: str) -> Reply:
    """An error as Evolution 2.3.7 answers it: a thrown Error is a 500 with its message (main.ts's
    handler); a BadRequestException a 400 with a list of messages."""
    if status == 400:
        body = {"status": 400, "error": "Bad Request", "response": {"message": [message]}}
    else:
        error = "Internal Server Error"
        body = {"status": status, "error": error, "response": {"message": message}}
    return Reply(status, body)


def not_found(instance: str) -> Reply:
    """Evolution 2.3.7's answer for an instance it does not know (instance.guard.ts)."""
    message = f'The "{instance}" instance does not exist'
    return Reply(404, {"status": 404, "error": "Not Found", "response": {"message": [message]}})


# What Evolution 2.3.7 answers for an instance that cannot send (whatsapp.baileys.service.ts),
# by how: (the sendText answer, the connectionState `state`, None when it has none).
UNREADY: dict[str, tuple[Reply, str | None]] = {
    # The socket closed: Baileys' Boom from the number's WhatsApp check.
    "closed": (evolution_error(500, "Connection Closed"), "close"),
    # The same, once the number's WhatsApp check was cached: inside the send's try.
    "closed_cached": (evolution_error(400, "Error: Connection Closed"), "close"),
    # Created, never connected: no Baileys client at all.
    "never_connected": (
        evolution_error(500, "Cannot read properties of undefined (reading 'onWhatsApp')"),
        "close",
    ),
    # The same, the number's check cached: inside the send's try, Baileys' `sendMessage` off
    # the missing client (a send without `delay`, the listener's default)...
    "never_connected_cached": (
        evolution_error(
            400, "TypeError: Cannot read properties of undefined (reading 'sendMessage')"
        ),
        "close",
    ),
    # ... or, with a typing `delay`, `presenceSubscribe` before it.
    "never_connected_cached_typing": (
        evolution_error(
            400, "TypeError: Cannot read properties of undefined (reading 'presenceSubscribe')"
        ),
        "close",
    ),
    # In Evolution's database, not loaded in its memory.
    "not_loaded": (
        evolution_error(500, "Cannot read properties of undefined (reading 'textMessage')"),
        None,
    ),
}
