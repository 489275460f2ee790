"""The status page's HTTP side: `GET /` (one snapshot, rendered) and `GET /static/status.css`
(the stylesheet, a file of the package), on the metrics port. The page is read-only, runs no
script and loads nothing from elsewhere, and says so to the browser (SECURITY_HEADERS)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, Protocol

import psycopg
from aiohttp import web
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from listener.phones import DEFAULT_REGION
from listener.web.live import Hold, InstanceLive, Live
from listener.web.read import read_snapshot
from listener.web.render import STYLESHEET_PATH, render, render_unavailable
from listener.web.snapshot import Snapshot

if TYPE_CHECKING:
    from listener.settings import Settings


class _Gate(Protocol):
    """A provider's hold, as the page reads it (listener/providers/gate.py)."""

    name: str

    @property
    def remaining(self) -> float: ...

    @property
    def reason(self) -> str: ...


class _Health(Protocol):
    """The sender numbers' health this listener read (listener/pacing/health.py)."""

    @property
    def ttl(self) -> float: ...

    def known(self) -> dict[str, tuple[str, float]]: ...

    def held_until(self, instance: str) -> float | None: ...


class Running(Protocol):
    """What the page reads of the running processor: its busy slots, the numbers' health, the
    providers' holds (a Protocol, so the page does not import the queue)."""

    @property
    def held(self) -> int: ...

    @property
    def instances(self) -> _Health: ...

    @property
    def llm_gate(self) -> _Gate: ...

    @property
    def sender_gate(self) -> _Gate: ...


log = logging.getLogger(__name__)

#: No script runs and nothing is loaded from elsewhere: say so to the browser too. Styles come
#: from the daemon's own stylesheet only (no inline style anywhere on the page).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src data:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def stylesheet() -> bytes:
    """The page's stylesheet, as the package holds it."""
    return resources.files("listener.web").joinpath("static", "status.css").read_bytes()


class StatusPage:
    """The page's handlers: a snapshot read through `pool`, rendered; and its stylesheet."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        live: Callable[[], Live | None] = lambda: None,
        timeout: float = 5.0,
        region: str = DEFAULT_REGION,
    ) -> None:
        self._pool = pool
        self._live = live
        self._region = region
        self._timeout = timeout
        self._css = stylesheet()

    def routes(self) -> list[web.RouteDef]:
        """The page's routes on the metrics port."""
        return [web.get("/", self.handle), web.get(STYLESHEET_PATH, self.handle_stylesheet)]

    async def handle(self, _: web.Request) -> web.Response:
        try:
            snapshot = await self.snapshot()
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning(
                "status page: could not read the database: %s",
                exc,
                extra={"action": "status_page_failed"},
            )
            body = render_unavailable(" ".join(str(exc).split()), self._live())
            return self._html(body, status=503)
        return self._html(render(snapshot))

    async def handle_stylesheet(self, _: web.Request) -> web.Response:
        return web.Response(
            body=self._css,
            content_type="text/css",
            charset="utf-8",
            headers={"Cache-Control": "max-age=300", **SECURITY_HEADERS},
        )

    async def snapshot(self) -> Snapshot:
        async with self._pool.connection(timeout=self._timeout) as conn:
            snapshot = await read_snapshot(conn, self._live())
        snapshot.region = self._region
        return snapshot

    @staticmethod
    def _html(body: str, *, status: int = 200) -> web.Response:
        return web.Response(
            text=body,
            status=status,
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-store", **SECURITY_HEADERS},
        )


def live_state(settings: Settings, health: dict[str, object], processor: Running) -> Live:
    """This listener's state for the page: its health, busy slots, the sender instances it
    has read (the held ones until their next check) and the providers it holds back from."""
    wall, mono = datetime.now(UTC), time.monotonic()

    def at(moment: float) -> datetime:
        return wall + timedelta(seconds=moment - mono)

    health_of = processor.instances
    instances = tuple(
        # A hold (a restriction) ends at its own time; any other state is read again after
        # the cache's time to live.
        InstanceLive(name, state, at(read), at(health_of.held_until(name) or read + health_of.ttl))
        for name, (state, read) in sorted(health_of.known().items())
    )
    holds = tuple(
        Hold(gate.name, wall + timedelta(seconds=gate.remaining), gate.reason)
        for gate in (processor.llm_gate, processor.sender_gate)
        if gate.remaining > 0
    )
    return Live(
        worker_id=settings.worker_id,
        health=health,
        in_flight=processor.held,
        concurrency=settings.concurrency,
        default_instance=settings.evolution_instance,
        instances=instances,
        holds=holds,
    )
