"""Servers that stop answering, for timeout tests (loopback only, stopped by the tests).

* :class:`FrozenServer`: accepts every connection and never sends a byte back, as a hung
  server or a stalled load balancer does.
* :class:`FreezableProxy`: forwards to a real server (moto) until :meth:`FreezableProxy.freeze`;
  from then on it answers nothing, on new connections and on the ones already open (a client's
  pooled keep-alive connection included); after :meth:`FreezableProxy.thaw` new connections
  work again, the frozen ones never answer.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from types import TracebackType
from urllib.parse import urlsplit

LOOPBACK = "127.0.0.1"


class FrozenServer:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""

    def __init__(self) -> None:
        self._sock = socket.create_server((LOOPBACK, 0))
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)  # read nothing, answer nothing, close nothing

    @property
    def connections(self) -> int:
        """How many connections were accepted so far."""
        return len(self._held)

    def close(self) -> None:
        """Stop accepting and drop every held connection."""
        self._stop.set()
        self._thread.join(5)
        for conn in [self._sock, *self._held]:
            with contextlib.suppress(OSError):
                conn.close()

    def __enter__(self) -> FrozenServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class FreezableProxy:
    """A TCP proxy on 127.0.0.1 to ``target`` (an ``http://host:port`` URL) that can freeze.

    Frozen, it answers nothing: every connection open at :meth:`freeze` or accepted while
    frozen stays open and silent for good, as with a hung server behind a load balancer.
    After :meth:`thaw` new connections are forwarded again.
    """

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self._target = (parts.hostname or LOOPBACK, int(parts.port or 80))
        self._sock = socket.create_server((LOOPBACK, 0))
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._frozen = False
        self._era = 0  # connections of an era before the latest freeze are dead
        self._stop = threading.Event()
        self._open: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def freeze(self) -> None:
        """Answer nothing from now on, on open connections too (bytes stay unread)."""
        self._frozen = True
        self._era += 1

    def thaw(self) -> None:
        """Forward new connections again (the frozen ones stay silent)."""
        self._frozen = False
        self._era += 1

    def _accept(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._open.append(client)
            if self._frozen:
                continue  # held open and silent for good
            t = threading.Thread(target=self._serve, args=(client, self._era), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, client: socket.socket, era: int) -> None:
        try:
            upstream = socket.create_connection(self._target, timeout=10)
        except OSError:
            client.close()
            return
        self._open.append(upstream)
        ends = {client: upstream, upstream: client}
        try:
            while not self._stop.is_set():
                if self._era != era:  # frozen since: silent for good
                    self._stop.wait(0.1)
                    continue
                ready, _, _ = select.select(list(ends), [], [], 0.1)
                for src in ready:
                    data = src.recv(1 << 16)
                    if not data:
                        return
                    ends[src].sendall(data)
        except OSError:
            return
        finally:
            if self._era == era or self._stop.is_set():
                for s in (client, upstream):
                    with contextlib.suppress(OSError):
                        s.close()

    def close(self) -> None:
        """Stop the proxy and every connection through it."""
        self._stop.set()
        for s in [self._sock, *self._open]:
            with contextlib.suppress(OSError):
                s.close()
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> FreezableProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
