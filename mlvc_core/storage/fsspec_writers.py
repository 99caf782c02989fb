"""Streaming writers of :class:`~mlvc_core.storage.fsspec_store.FsspecStore`.

Either way nothing is visible under the key before ``close()``, and ``abort()`` (or a writer
dropped without ``close()``) leaves nothing behind:

* :class:`BufferedFileWriter` streams into an s3fs/gcsfs buffered file (multipart or
  resumable upload above the block size, which the server publishes only when completed);
* :class:`SpoolWriter` spools to a local temporary file and uploads it on close, for
  filesystems whose open files are visible while written (``memory://``...).

This module imports no backend library; the store maps errors and uploads the spooled file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, TYPE_CHECKING, Any

from mlvc_core.storage.base import Writer

if TYPE_CHECKING:
    from mlvc_core.storage.fsspec_store import FsspecStore

__all__ = ["BufferedFileWriter", "SpoolWriter"]


class BufferedFileWriter(Writer):
    """Streams into an s3fs/gcsfs buffered file; aborting discards the upload."""

    def __init__(self, store: FsspecStore, key: str, f: Any) -> None:
        """Wrap ``f``, an fsspec file open for writing ``key`` in ``store``."""
        self._store = store
        self._key = key
        self._f: Any | None = f

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append bytes (uploaded a block at a time).

        Raises:
            StorageError: The backend failed.
        """
        if self._f is None:
            raise ValueError(f"writer for {self._key} is closed")
        with self._store._errors(self._key, "write", missing_is_key=False):
            return int(self._f.write(data))

    def close(self) -> None:
        """Publish the object (discarding the upload if that fails).

        Raises:
            StorageError: The backend failed.
        """
        if self._f is None:
            return
        f, self._f = self._f, None
        try:
            with self._store._errors(self._key, "write", missing_is_key=False):
                f.close()
        except BaseException:
            _discard(f)
            raise
        finally:
            self._store._invalidate(self._key)

    def abort(self) -> None:
        """Cancel the upload; the key is left untouched."""
        if self._f is None:
            return
        f, self._f = self._f, None
        _discard(f)

    def __del__(self) -> None:
        # A writer dropped without close() must not publish a partial object: the fsspec file's
        # own finaliser would commit it.
        with contextlib.suppress(Exception):
            self.abort()


def _discard(f: Any) -> None:
    """Cancel an fsspec write file (abort multipart/resumable upload) and disarm its close()."""
    try:
        # Also after a failed close(): fsspec marks the file closed, the upload may still be open.
        f.discard()
    except Exception:  # noqa: BLE001 - best effort; the upload was never completed anyway
        pass
    finally:
        f.closed = True  # AbstractBufferedFile.__del__/close() would otherwise commit


class SpoolWriter(Writer):
    """Spools to a local temporary file and uploads it on close.

    For filesystems whose open files are not invisible until committed (``memory://``...).
    """

    def __init__(self, store: FsspecStore, key: str) -> None:
        """Start spooling what will be ``key`` in ``store``."""
        self._store = store
        self._key = key
        self._tmp: IO[bytes] | None = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="mlvc-upload-", delete=False
        )

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append bytes to the local spool file."""
        if self._tmp is None:
            raise ValueError(f"writer for {self._key} is closed")
        return self._tmp.write(data)

    def close(self) -> None:
        """Upload the spooled bytes as the object; the spool file is removed either way.

        Raises:
            StorageError: The backend failed.
        """
        if self._tmp is None:
            return
        tmp, self._tmp = self._tmp, None
        store, key = self._store, self._key
        try:
            tmp.flush()
            path = store._path(key)
            with store._errors(key, "write", missing_is_key=False):
                protocol = store.fs.protocol
                if "memory" in ((protocol,) if isinstance(protocol, str) else protocol):
                    tmp.seek(0)
                    store.fs.pipe_file(path, tmp.read())
                else:
                    store.fs.put_file(tmp.name, path)
            store._invalidate(key)
        finally:
            tmp.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp.name)

    def abort(self) -> None:
        """Drop the spool file; nothing was uploaded."""
        if self._tmp is None:
            return
        tmp, self._tmp = self._tmp, None
        tmp.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp.name)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.abort()
