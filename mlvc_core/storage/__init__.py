"""Storage backends behind one contract (:class:`Store`) and :func:`open_store` to pick one by URL.

``/path`` and ``file://`` open a :class:`LocalStore`; anything else that fsspec understands
(``s3://``, ``gs://``, ``memory://``...) opens a
:class:`~mlvc_core.storage.fsspec_store.FsspecStore`,
imported only when needed so local use never pays for fsspec's import.
"""

from __future__ import annotations

import os
from typing import Any

from mlvc_core.storage.base import KeyInfo, Store, Version, Writer
from mlvc_core.storage.local import LocalStore
from mlvc_core.storage.memory import MemoryStore

__all__ = [
    "KeyInfo",
    "LocalStore",
    "MemoryStore",
    "Store",
    "Version",
    "Writer",
    "open_store",
    "is_local_url",
]


def is_local_url(url: str) -> bool:
    """True if ``url`` names a local directory."""
    return "://" not in url or url.startswith("file://")


def open_store(url: str | os.PathLike[str], **storage_options: Any) -> Store:
    """Open the store at ``url``.

    Args:
        url: A local path, ``file://`` URL, or any fsspec URL (``s3://bucket/prefix``...).
        **storage_options: Passed to the fsspec filesystem (endpoint, credentials...).

    Returns:
        A :class:`Store`; the location need not exist yet.
    """
    url = os.fspath(url)
    if is_local_url(url):
        path = url[len("file://") :] if url.startswith("file://") else url
        return LocalStore(os.path.expanduser(path))
    from mlvc_core.storage.fsspec_store import FsspecStore

    return FsspecStore(url, **storage_options)
