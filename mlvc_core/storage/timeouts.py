"""Every request to S3 or GCS has a timeout: a frozen server fails a call, never hangs it.

The request policy of :class:`~mlvc_core.storage.fsspec_store.FsspecStore`. A server that
accepts connections and never answers (or a network that drops packets) must not hang a
command, a tracked run or the interpreter's exit, so each backend gets finite defaults, which
storage options override key by key:

* S3: botocore ``config_kwargs`` ``connect_timeout`` :data:`CONNECT_TIMEOUT` s,
  ``read_timeout`` :data:`READ_TIMEOUT` s (the wait for the first or the next bytes of an
  answer; it starts once a request's body is sent, so a slow upload is not cut short) and
  ``retries`` ``{"mode": "standard", "total_max_attempts": 2}``; s3fs's own retry loop around
  each call (``S3FileSystem.retries``, 5 by default, not an option s3fs accepts) is set to
  :data:`S3_CALL_ATTEMPTS`. A frozen server fails a request after at most 2 x 2 attempts of
  15 s: about a minute, then :class:`~mlvc_core.errors.StorageError`.
  Requests are sent without ``Expect: 100-continue``, which botocore adds to every upload:
  aiohttp then waits for the server's ``100 Continue`` before sending the body and before
  arming any timeout, so a frozen server would hold every write forever. (The body is sent
  at once instead; a refused upload costs its bytes, at most a pack part.)
  The body itself is sent under a deadline: every 64 KiB of it must be taken by the socket
  within ``read_timeout`` (:mod:`.send_deadline`), so a server that accepts an upload and
  stops reading it fails the request like one that stops answering, while a long upload that
  keeps moving is never cut short (no limit is set on a whole request). Both are installed
  by one botocore ``before-send`` handler (:func:`send_s3_bodies_at_once`).
* GCS: gcsfs sends its requests with ``requests_timeout``, which is None by default: no
  timeout at all. The default here is ``aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT,
  sock_read=READ_TIMEOUT)`` (no limit on a whole transfer, only on waiting for the server).
  gcsfs retries a timed-out request 6 times with backoff (about 31 s in all), so a frozen
  server fails a request after about two minutes. A number given as ``requests_timeout`` is
  aiohttp's limit on the whole request. Request bodies are sent under the same deadline as
  on S3, ``sock_read`` seconds per 64 KiB (none with a number, which bounds the whole
  request anyway): gcsfs's ``session_kwargs`` get ``request_class``
  :class:`~mlvc_core.storage.send_deadline.DeadlineRequest` and the timeout as the session's
  default, which names the deadline (the caller's own ``session_kwargs`` are kept).
  gcsfs's extended filesystem (``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT``, on by default) asks the
  Storage Control API (gRPC) for each bucket's layout, retrying for 60 s: ``retry_timeout``
  defaults to :data:`READ_TIMEOUT` here (the plain filesystem ignores the option).
  Without a ``token`` option, the credentials are looked up under a deadline
  (:data:`~mlvc_core.storage.gcs.CREDENTIALS_TIMEOUT` seconds, by
  :func:`~mlvc_core.storage.gcs.default_token`) and handed to gcsfs, whose own lookup has no
  overall limit.

This module imports no backend library at import time (aiohttp only when a GCS store opens
or an S3 request with a body is sent).
"""

from __future__ import annotations

import copy
import functools
import logging
from typing import Any

from mlvc_core.storage.gcs import GCS_PROTOCOLS, default_token
from mlvc_core.storage.s3 import S3_PROTOCOLS

__all__ = [
    "CONNECT_TIMEOUT",
    "READ_TIMEOUT",
    "S3_CALL_ATTEMPTS",
    "bound_s3_retries",
    "describe",
    "send_s3_bodies_at_once",
    "with_timeouts",
]

CONNECT_TIMEOUT = 5.0
"""Default seconds to wait for a connection to S3 or GCS (see the module docstring)."""
READ_TIMEOUT = 15.0
"""Default seconds to wait for the server's answer (or its next bytes) once a request is sent."""
S3_CALL_ATTEMPTS = 2
"""Attempts of s3fs's own retry loop around each call (each one retried by botocore too)."""
_S3_CONFIG = {
    "connect_timeout": CONNECT_TIMEOUT,
    "read_timeout": READ_TIMEOUT,
    "retries": {"mode": "standard", "total_max_attempts": 2},
}

_QUIET = logging.NullHandler()

_NO_EXPECT = "mlvc-no-expect-100-continue"


def with_timeouts(protocol: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with finite request timeouts for S3 and GCS where they set none.

    Args:
        protocol: The URL's protocol (``s3``, ``gs``...).
        options: The storage options given by the caller (not modified).

    Returns:
        A new dict of options; the same one for other protocols.

    Raises:
        TypeError: ``config_kwargs`` is not a mapping.
        StorageError: GCS without a ``token`` option: no credentials could be looked up in
            time (:func:`~mlvc_core.storage.gcs.default_token`).
    """
    if protocol in S3_PROTOCOLS:
        config = options.get("config_kwargs") or {}
        if not isinstance(config, dict):
            raise TypeError(f"storage option config_kwargs must be a table, not {config!r}")
        # botocore normalises the retries table in place: hand it copies.
        return {**options, "config_kwargs": copy.deepcopy({**_S3_CONFIG, **config})}
    if protocol in GCS_PROTOCOLS:
        import aiohttp  # gcsfs's HTTP client, there whenever gcsfs is

        from mlvc_core.storage.send_deadline import DeadlineRequest

        # gcsfs logs each failed request with its traceback; where the program configured no
        # logging, Python would print them to stderr: mlvc reports the failure itself.
        logging.getLogger("gcsfs").addHandler(_QUIET)

        timeout = options.get("requests_timeout")
        if timeout is None:
            timeout = aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)
        # The session's default timeout names the send deadline of each request's body.
        send = timeout if isinstance(timeout, aiohttp.ClientTimeout) else aiohttp.ClientTimeout()
        session = {"request_class": DeadlineRequest, "timeout": send}
        session.update(options.get("session_kwargs") or {})
        bounded = {**options, "requests_timeout": timeout, "session_kwargs": session}
        # gcsfs's extended filesystem (GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT) asks the Storage
        # Control API (gRPC) for a bucket's layout, retrying for 60 s; others ignore this.
        bounded.setdefault("retry_timeout", READ_TIMEOUT)
        if options.get("token") is None:
            token, project = default_token(str(options.get("access") or "full_control"))
            bounded["token"] = token
            if project and not options.get("project"):
                bounded["project"] = project
        return bounded
    return options


def bound_s3_retries(fs: Any) -> None:
    """Bound s3fs's own retry loop, which runs around botocore's retries, on ``fs``."""
    fs.retries = min(int(getattr(fs, "retries", S3_CALL_ATTEMPTS)), S3_CALL_ATTEMPTS)


def _prepare_send(request: Any, read_timeout: float | None = None, **_: Any) -> None:
    """A botocore ``before-send`` handler: send the body at once, under a send deadline.

    See the module docstring; the deadline is the request's read timeout (botocore's own
    per-request override, else the client's).
    """
    if "Expect" in request.headers:
        del request.headers["Expect"]  # not a signed header: the signature stays valid
    if request.body is None:
        return
    from mlvc_core.storage.send_deadline import with_send_deadline

    context = getattr(request, "context", None) or {}
    request.body = with_send_deadline(request.body, context.get("read_timeout") or read_timeout)


def send_s3_bodies_at_once(client: Any) -> None:
    """Make a botocore S3 client send bodies at once and under a deadline (idempotent)."""
    handler = functools.partial(_prepare_send, read_timeout=client.meta.config.read_timeout)
    client.meta.events.register("before-send.s3", handler, unique_id=_NO_EXPECT)


def describe(exc: BaseException) -> str:
    """An exception in words; a bare timeout (fsspec's, asyncio's) says that it is one."""
    text = str(exc).strip()
    if text:
        return text
    if isinstance(exc, TimeoutError):
        return "no answer from the server in time (timed out)"
    return type(exc).__name__
