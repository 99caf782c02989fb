"""A counting HTTP proxy in front of an S3 server: requests counted where the server sees them.

Tests and benchmarks point s3fs at :attr:`CountingProxy.url` instead of the server; every request
passes through unchanged (headers included, so SigV4 signatures still verify) and is counted by
S3 operation: ``LIST``, ``GET``, ``HEAD``, ``PUT``, ``DELETE``, ``CreateMultipartUpload``,
``UploadPart``, ``CompleteMultipartUpload``, ``AbortMultipartUpload``, ``ListMultipartUploads``,
``DeleteObjects``, ``POST`` (anything else).
"""

from __future__ import annotations

import collections
import http.client
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"}


def operation(method: str, path: str) -> str:
    """The S3 operation a request performs."""
    parsed = urllib.parse.urlsplit(path)
    query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
    if method == "GET":
        if "uploads" in query:
            return "ListMultipartUploads"
        if (
            "list-type" in query
            or parsed.path.rstrip("/").count("/") <= 1
            and not query.get("uploadId")
        ):
            return "LIST"
        return "GET"
    if method == "PUT":
        return "UploadPart" if "uploadId" in query else "PUT"
    if method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload"
        if "uploadId" in query:
            return "CompleteMultipartUpload"
        if "delete" in query:
            return "DeleteObjects"
        return "POST"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DELETE"
    return method


class CountingProxy:
    """Forwards HTTP to ``upstream`` (``http://host:port``) and counts S3 operations.

    Attributes:
        counts: Operation -> number of requests since the last :meth:`reset`.
        paths: ``(operation, path)`` of every request since the last reset.
    """

    def __init__(self, upstream: str, latency: float = 0.0) -> None:
        """Listen on a free port of 127.0.0.1 (``url``).

        Args:
            upstream: The server to forward to.
            latency: Seconds each request waits before it is forwarded (a distant server's
                round trip; requests in flight at once wait at once).
        """
        up = urllib.parse.urlsplit(upstream)
        self._host, self._port = up.hostname or "127.0.0.1", up.port or 80
        self.counts: collections.Counter[str] = collections.Counter()
        self.paths: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                op = operation(self.command, self.path)
                with proxy._lock:
                    proxy.counts[op] += 1
                    proxy.paths.append((op, self.path))
                body = self._read_body()
                if latency:
                    time.sleep(latency)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                if body is not None:
                    headers["Content-Length"] = str(len(body))
                conn = proxy._connection()
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException):
                    proxy._drop()
                    raise
                self.send_response_only(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _read_body(self) -> bytes | None:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return (
                    self.rfile.read(n) if n else (b"" if self.command in ("PUT", "POST") else None)
                )

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815

        self._local = threading.local()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=120)
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def reset(self) -> None:
        """Forget the counts."""
        with self._lock:
            self.counts.clear()
            self.paths.clear()

    def total(self) -> int:
        """Requests since the last reset."""
        with self._lock:
            return sum(self.counts.values())

    def snapshot(self) -> dict[str, int]:
        """The counts, as a plain dict."""
        with self._lock:
            return dict(self.counts)

    def close(self) -> None:
        """Stop the proxy."""
        self._server.shutdown()
        self._server.server_close()
