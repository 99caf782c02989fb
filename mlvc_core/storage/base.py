"""The storage contract: a flat key -> bytes store with conditional writes.

Everything above this layer (packs, indexes, refs, config) is expressed as keys such as
``packs/ab/ab12...`` or ``refs/tags/production``. A backend implements :class:`Store`; every
backend runs the same conformance suite (``mlvc_core.testing.StoreContract``).

Contract, per method:

* ``read``/``read_range`` raise :class:`~mlvc_core.errors.KeyNotFound` for a missing key.
  ``read``/``read_versioned`` with a ``limit`` raise :class:`~mlvc_core.errors.FormatError`
  for a value larger than ``limit`` bytes before reading it (a repository is untrusted: a
  ref, config or index file the size of a disk must not cost that much memory); a local
  store also refuses anything but a regular file (a FIFO would block, ``/dev/zero`` never
  ends).
* ``write`` replaces a key as a whole: a reader sees the old or the new bytes, never a mix.
* ``create`` writes only if the key is absent and reports whether it did (atomic where the
  backend allows: local disk, S3 ``If-None-Match``, GCS ``ifGenerationMatch=0``).
* ``open_write`` streams a large object; it becomes visible under its key only on ``close()``,
  and ``abort()`` (or an exception inside a ``with`` block) leaves nothing behind.
* ``read_versioned``/``write_if`` are the compare-and-swap pair refs are built on: ``write_if``
  succeeds only if the key is still at the version read (``None``: only if it is absent) and
  raises :class:`~mlvc_core.errors.PreconditionFailed` otherwise. Never a silent overwrite.
  ``delete_if`` removes a key only if it is still at the version read (atomic on local
  disk, in memory, on S3 with ``If-Match`` and on GCS with ``ifGenerationMatch``).
* ``list`` yields every key that starts with a prefix (recursively; the prefix need not end
  at a ``/``), with size, modification time and, where the backend lists one, a version
  (the S3 ETag, the GCS generation) equal to the one ``read_versioned`` returns for the same
  bytes, so a listing tells whether a key changed without reading it. Partial writes are not
  keys (``list_temporary`` names those a killed writer left).
* ``list_ranges`` yields exactly what ``list`` yields for the same prefix. Its ``bounds``
  (keys a previous listing saw, e.g. every 900th) only say where an object store may cut the
  listing into ranges ``(-, b1], (b1, b2], ..., (bn, -)`` and request them all at once; each
  range is listed until it passes its upper bound, so keys added, removed or moved anywhere
  (between the bounds, beyond the last, the bounds themselves) are listed as ``list`` would.
  Stores whose listing is not paged (local disk, memory) list once and ignore the bounds.
* Failures of the backend itself surface as :class:`~mlvc_core.errors.StorageError`.

This module must not import fsspec or any backend library.
"""

from __future__ import annotations

import abc
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, NewType

from mlvc_core.errors import FormatError, KeyNotFound, PreconditionFailed

Version = NewType("Version", object)
"""An opaque token naming one state of a key (ETag, generation, content, counter...)."""


@dataclass(frozen=True)
class KeyInfo:
    """One listed key."""

    key: str
    size: int
    mtime: float
    """Seconds since the epoch of the last write."""
    version: str | None = None
    """The backend's version of exactly these bytes (S3 ETag, GCS generation, a counter), as
    ``str(read_versioned(key)[1])`` would name it; None where listings carry none (local disk:
    compare size and mtime instead)."""


def check_key(key: str) -> None:
    """Refuse a key no store accepts: empty, absolute, or with an empty, ``.`` or ``..`` part.

    Raises:
        ValueError: ``key`` is malformed.
    """
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid store key {key!r}")


def check_limit(key: str, size: int, limit: int | None) -> None:
    """Refuse a value of ``size`` bytes read with ``limit``.

    Raises:
        FormatError: ``size`` is more than ``limit``.
    """
    if limit is not None and size > limit:
        raise FormatError(
            f"{key} holds more than {limit} bytes, more than the format allows for it"
        )


def split_bucket(root: str, prefix: str) -> tuple[str, str, str]:
    """``(bucket, object-name prefix, head)`` of the keys under ``prefix`` in a bucket store.

    ``root`` is the store's ``bucket/path``; ``head`` is the part of every object name
    before the key (``path/``, or empty), so ``name[len(head):]`` is the key.
    """
    full = f"{root}/{prefix}" if root else prefix
    bucket, _, name_prefix = full.partition("/")
    return bucket, name_prefix, full[len(bucket) + 1 : len(full) - len(prefix)]


MAX_RANGES = 64
"""Most ranges one ranged listing is cut into (see :func:`range_bounds`)."""
_MAX_BOUND = 1024
"""Longest range bound kept (characters): S3 and GCS keys are at most 1,024 bytes."""


def range_bounds(prefix: str, bounds: Sequence[str]) -> list[str]:
    """The bounds of a ranged listing that can cut it: those under ``prefix``, sorted, unique.

    Bounds are hints (a damaged local cache may hold anything), so only printable ASCII keys
    of at most :data:`_MAX_BOUND` characters are kept: a server may refuse a listing that
    starts after any other string (a lone surrogate cannot even be encoded), and a bound
    dropped only makes a range longer. (Sorting ASCII strings sorts their bytes, the order
    the servers list in.) At most :data:`MAX_RANGES` ranges are kept (their bounds evenly
    spaced): a damaged cache holding thousands of bounds costs at most that many requests.
    """
    kept = sorted(
        {
            b
            for b in bounds
            if isinstance(b, str)
            and b.startswith(prefix)
            and 0 < len(b) <= _MAX_BOUND
            and b.isascii()
            and b.isprintable()
        }
    )
    if len(kept) < MAX_RANGES:
        return kept
    step = len(kept) / MAX_RANGES
    return [kept[int(i * step)] for i in range(1, MAX_RANGES)]


class Writer(abc.ABC):
    """A streaming writer returned by :meth:`Store.open_write`."""

    @abc.abstractmethod
    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append bytes."""

    @abc.abstractmethod
    def close(self) -> None:
        """Publish the object under its key."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Discard everything written; the key is left untouched."""

    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class Store(abc.ABC):
    """A key -> bytes store. See the module docstring for the contract."""

    url: str
    """Where the store lives, for messages."""

    is_local: bool = False
    """True when reads are cheap local file reads (no cache needed)."""

    list_page_size: int = 1000
    """Keys a listing request returns at most, where listings come in pages (S3 ``MaxKeys``,
    GCS ``maxResults``); callers space the bounds of :meth:`list_ranges` by it."""

    @abc.abstractmethod
    def read(self, key: str, limit: int | None = None) -> bytes:
        """Return the whole value of ``key`` (refused if it is longer than ``limit``)."""

    @abc.abstractmethod
    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """Return ``length`` bytes of ``key`` from ``offset`` (fewer only at the end)."""

    def read_ranges(self, key: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Return several ``(offset, length)`` ranges of one key; backends may batch."""
        return [self.read_range(key, o, n) for o, n in ranges]

    def open_read(self, key: str) -> BinaryIO:
        """A seekable binary file object over ``key`` (default: reads it whole)."""
        import io

        return io.BytesIO(self.read(key))

    @abc.abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Replace ``key`` with ``data`` as a whole."""

    @abc.abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Write ``data`` only if ``key`` is absent; return False if it existed."""

    @abc.abstractmethod
    def open_write(self, key: str) -> Writer:
        """Stream a new object to ``key``; published on ``close()``."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """True if ``key`` exists."""

    @abc.abstractmethod
    def list(self, prefix: str) -> Iterator[KeyInfo]:
        """Every key that starts with ``prefix`` (``refs/`` or a partial name: ``refs/ab``)."""

    def list_ranges(self, prefix: str, bounds: Sequence[str]) -> Iterator[KeyInfo]:
        """Every key that starts with ``prefix``, as :meth:`list` yields them, listed by ranges.

        Args:
            prefix: As for :meth:`list`.
            bounds: Keys where the listing may be cut: ranges ``(-, b1], (b1, b2], ...,
                (bn, -)`` are requested at once by stores whose listings come in pages (S3,
                GCS). Hints only: any keys (present or not, sorted or not) give the same
                result; those not under ``prefix`` are ignored.

        Yields:
            Each key with its size, mtime and version, in key order, exactly once.

        Raises:
            StorageError: The backend failed.
        """
        return self.list(prefix)

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    @abc.abstractmethod
    def read_versioned(self, key: str, limit: int | None = None) -> tuple[bytes, Version]:
        """Return the value of ``key`` and a token naming this state of it.

        A value longer than ``limit`` bytes is refused (:func:`check_limit`).
        """

    @abc.abstractmethod
    def write_if(self, key: str, data: bytes, expected: Version | None) -> Version:
        """Write ``data`` only if ``key`` is still at ``expected`` (None: absent).

        Returns:
            The version token of the new state.

        Raises:
            PreconditionFailed: The key is not in the expected state.
        """

    def delete_if(self, key: str, expected: Version) -> None:
        """Remove ``key`` only if it is still at ``expected``.

        The default compares, then deletes: a write landing between the two is lost. Backends
        override it with an atomic conditional delete where they have one.

        Args:
            key: The key to remove.
            expected: A version from :meth:`read_versioned` or :meth:`write_if`.

        Raises:
            PreconditionFailed: The key is at another version, or absent.
        """
        try:
            _, current = self.read_versioned(key)
        except KeyNotFound:
            raise PreconditionFailed(key) from None
        if current != expected:
            raise PreconditionFailed(key)
        self.delete(key)

    def list_temporary(self, prefix: str) -> Iterator[KeyInfo]:
        """Temporary objects under ``prefix`` that :meth:`list` hides (partial writes).

        A writer killed in the middle of a write leaves them behind; only ``gc`` looks, and
        removes them with :meth:`delete_temporary` once their writers are gone. The default
        (backends whose partial writes are invisible and expire on their own) has none.
        """
        return iter(())

    def delete_temporary(self, key: str) -> None:  # noqa: B027 - optional hook
        """Remove a temporary object named by :meth:`list_temporary`."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default does nothing."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
