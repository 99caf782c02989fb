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
* gcsfs must be imported with ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` in the environment
  when talking to an emulator (otherwise each bucket costs a 60 s gRPC probe); real GCS is fine
  either way.

Functions here take the gcsfs filesystem and full paths (``bucket/name``); mapping errors to
mlvc's and invalidating caches stay with the store. gcsfs is imported lazily.
"""

from __future__ import annotations

import json
from typing import Any

from mlvc_core.errors import PreconditionFailed, StorageError

__all__ = ["GCS_PROTOCOLS", "create", "delete_if", "get", "upload_if"]

GCS_PROTOCOLS = frozenset({"gs", "gcs"})

_BOUNDARY = "==mlvc-0a7f3c=="


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
