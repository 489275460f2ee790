"""Serving an aiohttp app on a port of ours: the metrics port (listener/metrics.py) and the
webhook receiver's (listener/feedback/receiver.py) bind the same way and fail the same way, with one
line that names the setting."""

from __future__ import annotations

import asyncio
import logging
import socket

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from listener.errors import ConfigurationError
from listener.text import cut

log = logging.getLogger(__name__)


class _OneLineBadRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (bad header bytes, a bad chunk) at ERROR with a
    traceback, so anyone who can reach the port can fill the log. Such a record is logged
    again here as one WARNING line without the traceback (it was answered 400 already)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError) or exc.code >= 500:
            return True
        log.warning(
            "bad HTTP request (answered %d): %s",
            exc.code,
            cut(exc.message, 200),
            extra={"action": "bad_http_request"},
        )
        return False


_SERVER_LOG = logging.getLogger("aiohttp.server")
if not any(isinstance(f, _OneLineBadRequests) for f in _SERVER_LOG.filters):
    _SERVER_LOG.addFilter(_OneLineBadRequests())


async def serve_app(
    app: web.Application, host: str, port: int, setting: str, *, auto_decompress: bool = True
) -> web.AppRunner:
    """Serve `app` on every address of `host` at `port`; the caller stops it with
    `runner.cleanup()`. A port that is taken (also by another listener starting at the same
    moment) or a host that is not an address of this machine is a ConfigurationError naming
    `{setting}_HOST/{setting}_PORT` (for instance `LISTENER_METRICS`)."""
    try:
        sockets = await _listen(host, port)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ConfigurationError(
            f"bad setting {setting}_HOST/{setting}_PORT: cannot listen on {host}:{port}: {reason}"
        ) from exc
    runner = web.AppRunner(app, access_log=None, auto_decompress=auto_decompress)
    try:
        await runner.setup()
        for sock in sockets:
            await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        for sock in sockets:
            sock.close()
        raise
    return runner


async def _listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address of `host`, bound and listening here.

    Not left to the event loop: when another process takes the port between our bind and our
    listen (two listeners started at the same moment; SO_REUSEADDR lets both binds succeed),
    uvloop drops the listen error and aiohttp fails later with an AttributeError. Our own
    `listen()` raises the OSError that says the port is in use."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # One socket per family, as asyncio does: no dual stack on the IPv6 one.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
