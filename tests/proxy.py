"""A loopback TCP proxy for tests that can freeze: a database that stops answering.

Frozen, the proxy still accepts connections but forwards no byte in either direction, so every
connection stays open and nothing answers (what a stalled network path or a stopped Postgres
looks like from the client: TCP keepalives are answered, queries are not). Unfrozen, what was
held back is forwarded, so the queries under way complete. It runs in its own thread, so it
keeps its promise however busy the test's event loop is.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Iterator
from types import TracebackType

import psycopg


class FreezingProxy:
    """Forwards 127.0.0.1:<port> to an upstream host and port until closed."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.setblocking(False)
        self.port: int = self._server.getsockname()[1]
        self._frozen = threading.Event()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._peers: dict[socket.socket, socket.socket] = {}
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._server, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._pump, name="freezing-proxy", daemon=True)
        self._thread.start()

    @classmethod
    def to(cls, url: str) -> FreezingProxy:
        """A proxy to the server of a Postgres DSN."""
        info = psycopg.conninfo.conninfo_to_dict(url)
        return cls(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432))

    def url(self, url: str) -> str:
        """The same DSN, through this proxy."""
        info = psycopg.conninfo.conninfo_to_dict(url)
        info["host"] = "127.0.0.1"
        info["port"] = str(self.port)
        return psycopg.conninfo.make_conninfo(
            **{k: str(v) for k, v in info.items() if v is not None}
        )

    def _connect_upstream(self) -> socket.socket:
        host, port = self._upstream
        if host.startswith("/"):  # a socket directory, as the embedded Postgres gives
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.settimeout(5)
            upstream.connect(f"{host}/.s.PGSQL.{port}")
            return upstream
        return socket.create_connection(self._upstream, timeout=5)

    @property
    def connections(self) -> int:
        """Client connections open through the proxy now."""
        with self._lock:
            return len(self._peers) // 2

    def freeze(self) -> None:
        self._frozen.set()

    def unfreeze(self) -> None:
        self._frozen.clear()

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        self.freeze()
        try:
            yield
        finally:
            self.unfreeze()

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=5)
        with self._lock:
            for sock in list(self._peers):
                with contextlib.suppress(OSError):
                    sock.close()
            self._peers.clear()
        self._server.close()
        self._selector.close()

    def __enter__(self) -> FreezingProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _accept(self) -> None:
        try:
            client, _ = self._server.accept()
        except BlockingIOError:
            return
        try:
            upstream = self._connect_upstream()
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.setblocking(True)
            sock.settimeout(5)
        with self._lock:
            self._peers[client] = upstream
            self._peers[upstream] = client
        self._selector.register(client, selectors.EVENT_READ)
        self._selector.register(upstream, selectors.EVENT_READ)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            peer = self._peers.pop(sock, None)
            if peer is not None:
                self._peers.pop(peer, None)
        for s in (sock, peer):
            if s is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(s)
            with contextlib.suppress(OSError):
                s.close()

    def _pump(self) -> None:
        while not self._closing.is_set():
            for key, _ in self._selector.select(timeout=0.01):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._server:
                    self._accept()
                    continue
                if self._frozen.is_set():
                    continue  # leave the bytes where they are: nothing answers
                with self._lock:
                    peer = self._peers.get(sock)
                if peer is None:
                    continue
                try:
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionResetError
                    peer.sendall(data)
                except OSError:
                    self._drop(sock)
            if self._frozen.is_set():
                # A readable socket stays readable: do not spin on it while frozen.
                self._closing.wait(0.01)
