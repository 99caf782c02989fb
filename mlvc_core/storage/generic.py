"""Conditional writes of the fsspec store on filesystems that have none (``memory://``...).

For :class:`~mlvc_core.storage.fsspec_store.FsspecStore` on anything fsspec knows without
conditional writes.
``create``, ``read_versioned``, ``write_if`` and ``delete_if`` are made atomic by one lock
*inside this process* only, and the version of a value is its bytes; two processes sharing
such a filesystem get no compare-and-swap guarantee. (fsspec's memory filesystem is itself
one dict per process.)

Functions here take the filesystem and full paths; mapping errors to mlvc's and
invalidating caches stay with the store. No backend library is imported here.
"""

from __future__ import annotations

import threading
from typing import Any

from mlvc_core.errors import PreconditionFailed

__all__ = ["create", "delete_if", "read", "write_if"]

_LOCK = threading.RLock()
"""Serialises the conditional operations of every such filesystem in this process."""


def create(fs: Any, path: str, data: bytes) -> bool:
    """Write ``data`` at ``path`` unless something is there; True if written."""
    with _LOCK:
        if fs.exists(path):
            return False
        fs.pipe_file(path, data)
    return True


def read(fs: Any, path: str, limit: int | None) -> bytes:
    """The bytes at ``path`` (at most ``limit + 1`` of them), read under the lock.

    Raises:
        FileNotFoundError: Nothing at ``path``.
    """
    with _LOCK:
        if limit is None:
            return bytes(fs.cat_file(path))
        return bytes(fs.cat_file(path, start=0, end=limit + 1))


def write_if(fs: Any, path: str, key: str, data: bytes, expected: object) -> None:
    """Write ``data`` at ``path`` if it still holds the bytes ``expected`` (None: absent).

    Raises:
        PreconditionFailed: It holds something else.
    """
    with _LOCK:
        try:
            current: object = bytes(fs.cat_file(path))
        except FileNotFoundError:
            current = None
        if current != expected:
            raise PreconditionFailed(key)
        fs.pipe_file(path, data)


def delete_if(fs: Any, path: str, key: str, expected: object) -> None:
    """Remove ``path`` if it still holds the bytes ``expected``.

    Raises:
        PreconditionFailed: It holds something else, or nothing.
    """
    with _LOCK:
        try:
            current: object = bytes(fs.cat_file(path))
        except FileNotFoundError:
            raise PreconditionFailed(key) from None
        if current != expected:
            raise PreconditionFailed(key)
        fs.rm_file(path)
