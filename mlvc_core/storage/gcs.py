"""GCS specifics of :class:`~mlvc_core.storage.fsspec_store.FsspecStore` (through gcsfs).

The guarantees are those of GCS (strong consistency for objects and listings):

* ``create`` and ``write_if`` are *simple multipart* uploads (one POST,
  ``uploadType=multipart``) with ``ifGenerationMatch`` (``0`` for create-if-absent,
  :func:`upload_if`). They never go through resumable uploads: fake-gcs-server 1.54 ignores
  preconditions on resumable uploads (and so on gcsfs's ``open(path, "xb")`` and large
  ``pipe_file(mode="create")``). GCS answers any lost race with HTTP 412, which gcsfs raises
  as ``FileExistsError``.
* ``read_versioned`` reads the ``x-goog-generation`` header of the same GET that returned the
  bytes (:func:`get`); if a server omits it, the generation is read first and the GET asks for
  exactly that generation. Versions are generations (strings): unlike ETags they change on
  every write.
* ``delete_if`` is a DELETE with ``ifGenerationMatch`` (:func:`delete_if`); fake-gcs-server
  1.54 ignores that precondition, so the store compares the generation first as well.
* ``open_write`` uses gcsfs's file: a simple upload at close for small objects, a resumable
  upload (finalised only by its last chunk) for large ones; ``abort`` cancels the session.
* ``list_ranges`` lists the ranges between known names at once, each by ``startOffset`` and
  ``endOffset`` (a half-open range the server cuts exactly) and its own page tokens
  (:func:`list_ranges`); ``list`` is gcsfs's ``find``.
* Credentials are looked up by :func:`default_token` when no ``token`` option is given, never
  by gcsfs's own chain (``google_default``, ``cache``, ``cloud``, then ``anon``), whose
  ``cloud`` step asks the GCE metadata server with retries and no overall limit: without a
  network it could hang a command for minutes. The lookup (google.auth's default credentials,
  then a first token, so no request waits for one) runs under a deadline,
  :data:`CREDENTIALS_TIMEOUT`; one that does not end in time, or finds credentials that cannot
  get a token, is a :class:`~mlvc_core.errors.StorageError` naming what to set. No credentials
  anywhere means anonymous access (public buckets), as with gcsfs.
* gcsfs must be imported with ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` in the environment
  when talking to an emulator (otherwise each bucket costs a 60 s gRPC probe); real GCS is fine
  either way.

Functions here take the gcsfs filesystem and full paths (``bucket/name``); mapping errors to
mlvc's and invalidating caches stay with the store. gcsfs is imported lazily.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any

from mlvc_core.errors import PreconditionFailed, StorageError
from mlvc_core.storage.base import KeyInfo, split_bucket
from mlvc_core.storage.timestamps import to_epoch

__all__ = [
    "CREDENTIALS_TIMEOUT",
    "GCS_PROTOCOLS",
    "create",
    "default_token",
    "delete_if",
    "get",
    "list_ranges",
    "upload_if",
]

GCS_PROTOCOLS = frozenset({"gs", "gcs"})
CREDENTIALS_TIMEOUT = 10.0
"""Seconds the lookup of default credentials (and their first token) may take."""
TOKEN_REQUEST_TIMEOUT = 5.0
"""Seconds one request for a token may wait for the server (within the lookup's deadline)."""
SET_CREDENTIALS = (
    "set GOOGLE_APPLICATION_CREDENTIALS to a service account key file or run `gcloud auth "
    "application-default login`; for anonymous access (a public bucket, an emulator at "
    "STORAGE_EMULATOR_HOST) off Google Cloud set NO_GCE_CHECK=true or pass the storage "
    "option token=anon"
)
"""What a user can set, for messages."""

_BOUNDARY = "==mlvc-0a7f3c=="


def _look_up(access: str) -> tuple[Any, str | None]:
    """google.auth's default credentials with a fresh token; ``("anon", None)`` if none exist.

    Raises:
        StorageError: Credentials were found but no token could be had for them.
    """
    import google.auth
    import google.auth.exceptions
    from google.auth.transport.requests import Request

    scope = f"https://www.googleapis.com/auth/devstorage.{access}"
    try:
        credentials, project = google.auth.default(scopes=[scope])
    except google.auth.exceptions.DefaultCredentialsError:
        return "anon", None
    try:
        credentials.refresh(_TimedRequest(Request()))  # type: ignore[no-untyped-call]
    except google.auth.exceptions.GoogleAuthError as exc:
        raise StorageError(
            f"cannot get a Google Cloud token with the default credentials ({exc}); "
            + SET_CREDENTIALS
        ) from exc
    return credentials, project


class _TimedRequest:
    """A google.auth transport request whose each call waits at most TOKEN_REQUEST_TIMEOUT."""

    def __init__(self, request: Any) -> None:
        self._request = request

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["timeout"] = min(float(kwargs.get("timeout") or 120), TOKEN_REQUEST_TIMEOUT)
        return self._request(*args, **kwargs)


def default_token(access: str = "full_control") -> tuple[Any, str | None]:
    """The ``token`` option for gcsfs when none is given: found within a deadline.

    Args:
        access: gcsfs's ``access`` option (``read_only``, ``read_write``, ``full_control``).

    Returns:
        google.auth's default credentials, refreshed, and their project (if they name one);
        or ``"anon"`` and None when no credentials are set up anywhere.

    Raises:
        StorageError: The lookup did not end within :data:`CREDENTIALS_TIMEOUT` seconds (the
            GCE metadata server did not answer), or credentials were found but no token could
            be had for them. The message names what to set.
    """
    found: list[tuple[Any, str | None]] = []
    failed: list[BaseException] = []

    def look() -> None:
        try:
            found.append(_look_up(access))
        except BaseException as exc:  # noqa: BLE001 - reported in the caller's thread
            failed.append(exc)

    # A thread, not a timeout per request: google.auth asks the metadata server in several
    # steps, each with its own retries. A lookup given up on ends on its own, unused.
    worker = threading.Thread(target=look, name="mlvc-gcs-credentials", daemon=True)
    worker.start()
    worker.join(CREDENTIALS_TIMEOUT)
    if found:
        return found[0]
    if failed:
        exc = failed[0]
        if isinstance(exc, StorageError):
            raise exc
        raise StorageError(
            f"cannot look up Google Cloud credentials ({type(exc).__name__}: {exc}); "
            + SET_CREDENTIALS
        ) from exc
    raise StorageError(
        f"no Google Cloud credentials found within {CREDENTIALS_TIMEOUT:g} s (the lookup "
        "waited for the GCE metadata server, which did not answer); " + SET_CREDENTIALS
    )


def _header(headers: Any, name: str) -> str | None:
    """Case-insensitive header lookup in any mapping."""
    value = headers.get(name) if hasattr(headers, "get") else None
    if value is not None:
        return str(value)
    lower = name.lower()
    for k, v in dict(headers).items():
        if str(k).lower() == lower:
            return str(v)
    return None


def upload_if(fs: Any, path: str, data: bytes, generation: str | int) -> str:
    """A simple multipart upload of ``data`` conditional on the live generation (0: absent).

    Returns:
        The generation of the new object.

    Raises:
        FileExistsError: The object is not at ``generation`` (HTTP 412).
    """
    from gcsfs.core import quote

    bucket, name, _ = fs.split_path(path)
    meta = json.dumps({"name": name}).encode()
    boundary = _BOUNDARY.encode()
    body = b"".join(
        [
            b"--" + boundary + b"\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n",
            meta,
            b"\r\n--" + boundary + b"\r\nContent-Type: application/octet-stream\r\n\r\n",
            bytes(data),
            b"\r\n--" + boundary + b"--",
        ]
    )
    out = fs.call(
        "POST",
        f"{fs._location}/upload/storage/v1/b/{quote(bucket)}/o",
        uploadType="multipart",
        ifGenerationMatch=str(generation),
        headers={"Content-Type": f'multipart/related; boundary="{_BOUNDARY}"'},
        data=body,
        json_out=True,
    )
    return str(out["generation"])


def create(fs: Any, path: str, data: bytes) -> bool:
    """One upload with ``ifGenerationMatch=0``; True if written, False if the object exists."""
    try:
        upload_if(fs, path, data, 0)
    except FileExistsError:
        return False
    return True


def get(fs: Any, path: str, what: str) -> tuple[bytes, str]:
    """The bytes at ``path`` and the generation of exactly those bytes.

    Args:
        fs: The gcsfs filesystem.
        path: ``bucket/name``.
        what: The key and store, for messages.

    Raises:
        FileNotFoundError: No such object.
        StorageError: It was replaced again and again while being read.
    """
    headers, data = fs.call("GET", fs.url(path))
    generation = _header(headers, "x-goog-generation")
    if generation is not None:
        return bytes(data), generation
    # Server without the header: pin the generation first, then read exactly it.
    for _ in range(10):
        generation = str(fs.info(path, refresh=True)["generation"])
        try:
            _, data = fs.call("GET", fs.url(path, generation=generation))
        except FileNotFoundError:
            continue  # replaced between the two requests
        return bytes(data), generation
    raise StorageError(f"cannot read {what}: it keeps changing")


def delete_if(fs: Any, path: str, key: str, expected: str) -> None:
    """One DELETE conditional on the generation ``expected`` (fake-gcs-server ignores it).

    Raises:
        PreconditionFailed: The object is at another generation (HTTP 412), or absent.
    """
    bucket, name, _ = fs.split_path(path)
    try:
        fs.call("DELETE", "b/{}/o/{}", bucket, name, ifGenerationMatch=expected)
    except (FileExistsError, FileNotFoundError):
        raise PreconditionFailed(key) from None


def list_ranges(
    fs: Any,
    root: str,
    prefix: str,
    bounds: list[str],
    sync: Callable[..., Any],
    page_size: int = 1000,
) -> list[KeyInfo]:
    """Every object under ``root/prefix``, listed as ranges cut at ``bounds``, all at once.

    Range ``i`` is ``[bounds[i-1], bounds[i])`` (``startOffset``, ``endOffset``: the server
    lists exactly the names in it), read page by page to its end, so the union is the whole
    listing whatever changed since the bounds were seen.

    Args:
        fs: The gcsfs filesystem.
        root: The store's root (``bucket/prefix``).
        prefix: The key prefix.
        bounds: Keys relative to ``root``, sorted, unique, each under ``prefix``.
        sync: Runs a coroutine function on ``fs``'s event loop.
        page_size: Objects per request (``maxResults``).

    Returns:
        Each key (relative to ``root``) with its size, mtime and generation, in name order.
    """
    bucket, name_prefix, head = split_bucket(root, prefix)
    edges: list[str | None] = [None, *(head + b for b in bounds), None]

    async def one(start: str | None, end: str | None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = await fs._call(
                "GET",
                "b/{}/o",
                bucket,
                json_out=True,
                prefix=name_prefix,
                startOffset=start,
                endOffset=end,
                maxResults=page_size,
                pageToken=token,
            )
            items.extend(page.get("items") or [])
            token = page.get("nextPageToken")
            if not token:
                return items

    async def gather() -> list[list[dict[str, Any]]]:
        return list(
            await asyncio.gather(*(one(a, b) for a, b in zip(edges, edges[1:], strict=False)))
        )

    try:
        ranges = sync(gather)
    except FileNotFoundError:
        return []
    out = []
    for items in ranges:
        for item in items:
            key = str(item["name"])[len(head) :]
            if key and not key.endswith("/"):
                generation = item.get("generation")
                out.append(
                    KeyInfo(
                        key,
                        int(item.get("size") or 0),
                        to_epoch(item.get("updated")) or 0.0,
                        str(generation) if generation not in (None, "") else None,
                    )
                )
    return out
