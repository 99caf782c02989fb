"""A deadline on sending a request body: a server that stops reading an upload fails it.

aiohttp (under s3fs and gcsfs) bounds the wait for a connection (``sock_connect``) and for the
server's answer (``sock_read``, armed only once the whole body is sent); nothing bounds the
sending itself. A server that accepted a PUT and then stopped reading its body leaves the
client waiting for its send buffer to drain, for ever; ``total`` would bound that, but only
by also cutting short a large upload on a slow link that is making progress.

Here the body is handed to the connection in pieces of :data:`PIECE` bytes, and each piece
must be taken by the socket within the timeout (aiohttp waits for the socket to drain once
more than 64 KiB are buffered). An upload keeps going as long as the socket keeps taking
bytes, however long the whole upload takes; one that the server stops taking fails after one
timeout with :class:`aiohttp.ServerTimeoutError` ("Timeout on sending the request body ..."),
which botocore reports as a read timeout and retries like one. The rate this demands is low:
the kernel wakes a blocked writer once about a third of the socket's send buffer is free
(Linux autotunes it up to 4 MiB, in step with the link), so the slowest upload that passes
is about 1.4 MiB per timeout at worst (~90 KiB/s with the default 15 s), and far less on a
link that is slow rather than a server that reads slowly.

Bodies covered: bytes-likes (gcsfs sends bytes), file objects (botocore turns s3fs's bytes
into a ``BytesIO``; the file is read as aiohttp reads it, never closed here) and async
iterables (botocore's ``aws-chunked`` bodies with a trailing checksum, sent to AWS over
HTTPS); any other body is sent by aiohttp as before. Only the store's own timeout policy
(:mod:`.timeouts`) uses this module, which imports aiohttp.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

import aiohttp
import aiohttp.payload

__all__ = ["PIECE", "DeadlinePayload", "DeadlineRequest", "with_send_deadline"]

PIECE = 64 * 1024
"""Bytes of a request body that the socket must take within the timeout."""


class _DeadlineWriter:
    """An aiohttp stream writer whose body writes each finish within ``timeout`` per piece."""

    def __init__(self, writer: Any, timeout: float) -> None:
        self._writer = writer
        self._timeout = timeout

    async def write(self, chunk: Any, **kwargs: Any) -> None:
        """Write ``chunk`` a piece at a time, each piece taken by the socket in time.

        Raises:
            aiohttp.ServerTimeoutError: The socket took no piece for ``timeout`` seconds.
        """
        view = memoryview(chunk).cast("B")
        for start in range(0, max(len(view), 1), PIECE):
            try:
                await asyncio.wait_for(
                    self._writer.write(view[start : start + PIECE], **kwargs), self._timeout
                )
            except asyncio.TimeoutError:
                raise aiohttp.ServerTimeoutError(
                    f"Timeout on sending the request body: the server took no {PIECE} bytes "
                    f"in {self._timeout:g} s"
                ) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


def _sendable(body: Any) -> bool:
    """True for the bodies this module bounds (see the module docstring)."""
    return isinstance(body, (bytes, bytearray, memoryview, io.IOBase)) or hasattr(body, "__aiter__")


class DeadlinePayload(aiohttp.payload.Payload):
    """A request body sent under a per-piece deadline (see the module docstring).

    The body is turned into aiohttp's own payload afresh for every send, so a retried request
    (botocore rewinds the body with ``seek(0)`` first) sends it whole again.
    """

    def __init__(self, body: Any, timeout: float) -> None:
        """Wrap ``body`` (bytes-like, file or async iterable); ``timeout`` in seconds per piece."""
        probe = aiohttp.payload.get_payload(body)
        super().__init__(body, headers=probe.headers)
        self._size = probe.size
        self.timeout = timeout

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        """The body as text (aiohttp's own payload's)."""
        return aiohttp.payload.get_payload(self._value).decode(encoding, errors)

    async def write(self, writer: Any) -> None:
        """Send the whole body (aiohttp before 3.12)."""
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        """Send the body, at most ``content_length`` bytes, each piece taken in time.

        Raises:
            aiohttp.ServerTimeoutError: The server stopped taking the body.
        """
        inner = aiohttp.payload.get_payload(self._value)
        bounded: Any = _DeadlineWriter(writer, self.timeout)  # duck-types aiohttp's writer
        if hasattr(inner, "write_with_length"):
            await inner.write_with_length(bounded, content_length)
        else:  # aiohttp before 3.12
            await inner.write(bounded)

    def seek(self, offset: int, whence: int = 0) -> int:
        """Rewind the body for a retry (botocore's ``reset_stream``); bytes need nothing."""
        seek = getattr(self._value, "seek", None)
        return int(seek(offset, whence)) if seek is not None else 0


def with_send_deadline(body: Any, timeout: float | None) -> Any:
    """``body`` wrapped in a :class:`DeadlinePayload`, or as it is if not covered or no timeout."""
    if timeout is None or timeout <= 0 or isinstance(body, DeadlinePayload):
        return body
    if not _sendable(body) or (isinstance(body, (bytes, bytearray, memoryview)) and not body):
        return body
    return DeadlinePayload(body, timeout)


class DeadlineRequest(aiohttp.ClientRequest):
    """An aiohttp request whose body is sent under the session's ``sock_read`` per piece.

    Given to a :class:`aiohttp.ClientSession` as ``request_class`` (gcsfs's
    ``session_kwargs``); the session's default timeout names the deadline.
    """

    def update_body_from_data(self, body: Any, *args: Any, **kwargs: Any) -> None:
        """Set the body as aiohttp does, wrapped in a :class:`DeadlinePayload`."""
        session = getattr(self, "_session", None)
        timeout = getattr(getattr(session, "timeout", None), "sock_read", None)
        super().update_body_from_data(with_send_deadline(body, timeout), *args, **kwargs)
