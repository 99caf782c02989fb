"""Servers that stop answering, for timeout tests (loopback only, stopped by the tests).

* :class:`FrozenServer`: accepts every connection and never sends a byte back, as a hung
  server or a stalled load balancer does.
* :class:`StallingServer`: accepts every connection, reads a request's headers and the first
  bytes of its body, then stops reading (never answers, never closes): the client's send
  buffers fill and an upload stalls, as behind a server or proxy that stopped draining it.
* :class:`TricklingServer`: takes each request's body slowly but steadily (its last
  ``fast_tail`` bytes at once), then answers ``200 OK`` (with an ETag, enough for an S3 PUT),
  as a slow link does.
* :class:`FreezableProxy`: forwards to a real server (moto) until :meth:`FreezableProxy.freeze`;
  from then on it answers nothing, on new connections and on the ones already open (a client's
  pooled keep-alive connection included); after :meth:`FreezableProxy.thaw` new connections
  work again, the frozen ones never answer. After :meth:`FreezableProxy.stall_uploads` it
  forwards small requests but stops reading any connection that sends more than a limit (an
  upload): it stays open and silent, as behind a server that stopped draining uploads, until
  :meth:`FreezableProxy.thaw` closes it.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
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


class StallingServer:
    """A TCP server on 127.0.0.1 that takes a request's headers and ``body_bytes``, then stalls.

    Its sockets have a small receive buffer, so a client's upload stalls after a few hundred
    KiB beyond what it read (plus the client's own send buffer), not after megabytes.
    """

    def __init__(self, body_bytes: int = 64 * 1024) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Set before listen(): accepted sockets inherit it, and the window is small from the start.
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self._sock.bind((LOOPBACK, 0))
        self._sock.listen()
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._body_bytes = body_bytes
        self._held: list[socket.socket] = []
        self.headers: list[bytes] = []
        """The head (request line and headers) of each request received."""
        self.body_received: list[int] = []
        """Bytes of body read from each connection before it stalled."""
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)
            t = threading.Thread(target=self._take_some, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _take_some(self, conn: socket.socket) -> None:
        """Read the head and up to ``body_bytes`` of body, then nothing more (never close)."""
        data = b""
        conn.settimeout(0.1)
        while not self._stop.is_set():
            head, sep, rest = data.partition(b"\r\n\r\n")
            if sep and len(rest) >= self._body_bytes:
                break
            try:
                more = conn.recv(1 << 14)
            except TimeoutError:
                continue
            except OSError:
                return
            if not more:
                return
            data += more
        head, sep, rest = data.partition(b"\r\n\r\n")
        self.headers.append(head)
        self.body_received.append(len(rest))

    @property
    def connections(self) -> int:
        """How many connections were accepted so far."""
        return len(self._held)

    def close(self) -> None:
        """Stop accepting and drop every held connection."""
        self._stop.set()
        for conn in [self._sock, *self._held]:
            with contextlib.suppress(OSError):
                conn.close()
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> StallingServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class TricklingServer:
    """A TCP server on 127.0.0.1 that reads each request body at ``rate`` bytes/s, then answers.

    The last ``fast_tail`` bytes are read at once: what the client's kernel buffers held when
    its last write returned, so that the wait for the answer measures the server, not the link.
    """

    def __init__(self, rate: int, fast_tail: int = 5 << 20) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self._sock.bind((LOOPBACK, 0))
        self._sock.listen()
        self.url = f"http://{LOOPBACK}:{int(self._sock.getsockname()[1])}"
        self._rate = rate
        self._fast_tail = fast_tail
        self.received: list[int] = []
        """Body bytes of each request answered."""
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                more = conn.recv(1 << 14)
                if not more:
                    return
                data += more
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            got, start = len(body), time.monotonic()
            while got < length and not self._stop.is_set():
                if length - got > self._fast_tail:  # paced: never ahead of the rate
                    self._stop.wait(max(0.0, start + got / self._rate - time.monotonic()))
                more = conn.recv(min(1 << 16, length - got))
                if not more:
                    return
                got += len(more)
            self.received.append(got)
            conn.sendall(b'HTTP/1.1 200 OK\r\nETag: "0"\r\nContent-Length: 0\r\n\r\n')

    def close(self) -> None:
        """Stop serving."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.close()
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> TricklingServer:
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
    After :meth:`thaw` new connections are forwarded again. Its client sockets have a small
    receive buffer, so an upload it stops reading stalls the client within a few hundred KiB.
    """

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self._target = (parts.hostname or LOOPBACK, int(parts.port or 80))
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self._sock.bind((LOOPBACK, 0))
        self._sock.listen()
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._frozen = False
        self._stall_limit: int | None = None
        self._era = 0  # connections of an era before the latest freeze are dead
        self._stop = threading.Event()
        self._open: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def freeze(self) -> None:
        """Answer nothing from now on, on open connections too (bytes stay unread)."""
        self._frozen = True
        self._era += 1

    def stall_uploads(self, limit: int = 1 << 20) -> None:
        """From now on stop reading any connection once it sent ``limit`` more bytes.

        Small requests still pass; an upload stalls part way, its connection open and silent.
        """
        self._stall_limit = limit

    def thaw(self) -> None:
        """Forward new connections again (frozen ones stay silent, stalled ones are closed)."""
        self._frozen = False
        self._stall_limit = None
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
        sent = 0  # by the client since uploads stall
        stalled = False
        try:
            while not self._stop.is_set():
                limit = self._stall_limit
                if stalled and self._era != era:
                    return  # thawed: drop it (moto serves nothing while a body is pending)
                stalled = stalled or (limit is not None and sent > limit)
                if self._era != era or stalled:
                    self._stop.wait(0.1)  # frozen or stalled since: silent for good
                    continue
                if limit is None:
                    sent = 0
                ready, _, _ = select.select(list(ends), [], [], 0.1)
                for src in ready:
                    data = src.recv(1 << 16)
                    if not data:
                        return
                    ends[src].sendall(data)
                    sent += len(data) if src is client else 0
        except OSError:
            return
        finally:
            if self._era == era or self._stop.is_set() or stalled:
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
