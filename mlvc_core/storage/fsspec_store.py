"""A :class:`~mlvc_core.storage.base.Store` over any fsspec filesystem (S3, GCS, memory...).

The fsspec store is this module and the modules it delegates to, the only ones of mlvc that
import fsspec, s3fs or gcsfs; s3fs and gcsfs specifics are reached lazily, through the
filesystem object fsspec returns, so a backend's library is imported only when its URL is
opened. Keys map to ``<root>/<key>`` where ``<root>`` is the path part of the store's URL
(``s3://bucket/prefix`` -> ``bucket/prefix``).

What each backend guarantees:

* **S3 (s3fs)**: conditional PUTs (``If-None-Match``/``If-Match``), ETags as versions,
  multipart uploads for streams: :mod:`mlvc_core.storage.s3`.
* **GCS (gcsfs)**: simple uploads with ``ifGenerationMatch``, generations as versions:
  :mod:`mlvc_core.storage.gcs`.
* **Every other filesystem** (``memory://`` and anything fsspec knows without conditional
  writes): ``create``/``read_versioned``/``write_if``/``delete_if`` are made atomic by a lock
  *inside this process* only, the version being the bytes themselves:
  :mod:`mlvc_core.storage.generic`. ``open_write`` spools to a local
  temporary file and uploads it on close (``pipe_file`` for ``memory://``, ``put_file``
  otherwise), so nothing is visible before ``close`` (:mod:`mlvc_core.storage.fsspec_writers`).

**Every request has a timeout** on S3 and GCS, finite by default and overridable by storage
options: :mod:`mlvc_core.storage.timeouts`.

Listings use no cache: the filesystem is opened with ``use_listings_cache=False`` for S3 and GCS
and the store invalidates the cache after every write, so ``list`` after ``write`` or ``delete``
sees the change. Errors: a missing key raises :class:`~mlvc_core.errors.KeyNotFound`, a lost
race :class:`~mlvc_core.errors.PreconditionFailed`, any other failure of the backend
:class:`~mlvc_core.errors.StorageError` chained to the original exception.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO, cast

import fsspec
import fsspec.asyn
import fsspec.core

from mlvc_core.errors import KeyNotFound, MlvcError, PreconditionFailed, StorageError, UsageError
from mlvc_core.storage import base, gcs, generic, s3
from mlvc_core.storage.base import KeyInfo, Store, Version, Writer, check_key, check_limit
from mlvc_core.storage.fsspec_writers import BufferedFileWriter, SpoolWriter
from mlvc_core.storage.timeouts import (
    bound_s3_retries,
    describe,
    send_s3_bodies_at_once,
    with_timeouts,
)
from mlvc_core.storage.timestamps import mtime

__all__ = ["FsspecStore"]

# Errors that are bugs in the caller or in mlvc, not failures of the backend.
_PROGRAMMING_ERRORS = (TypeError, AttributeError, NameError, AssertionError, NotImplementedError)


def _protocols(fs: Any) -> frozenset[str]:
    proto = fs.protocol
    return frozenset([proto] if isinstance(proto, str) else proto)


def _invalid_range(exc: BaseException) -> bool:
    """True if an exception is HTTP 416: a range that starts at or after the end of the object."""
    code, status = s3.error_code(exc)
    return code == "InvalidRange" or status == 416 or getattr(exc, "code", None) == 416


def _rebuild(url: str, storage_options: dict[str, Any]) -> FsspecStore:
    return FsspecStore(url, **storage_options)


class FsspecStore(Store):
    """A store under a prefix of any fsspec filesystem.

    Attributes:
        url: The URL the store was opened with (without a trailing ``/``).
        storage_options: The options given to the filesystem (for re-opening the store).
        fs: The fsspec filesystem.
        root: The path of the store's root inside ``fs`` (``bucket/prefix`` for S3 and GCS).
        backend: ``"s3"``, ``"gcs"`` or ``"generic"``: which conditional-write method is used.
    """

    def __init__(self, url: str, **storage_options: Any) -> None:
        """Open the store at ``url``; nothing is created or contacted yet.

        Args:
            url: Any URL fsspec understands, e.g. ``s3://bucket/prefix``, ``gs://bucket/prefix``
                or ``memory://name``. The bucket must exist.
            **storage_options: Passed to the filesystem (``key``/``secret``/``client_kwargs``
                for s3fs, ``token``/``project``/``endpoint_url`` for gcsfs...). Request
                timeouts default to finite values (:mod:`.timeouts`): s3fs's
                ``config_kwargs`` ``connect_timeout``/``read_timeout``/``retries`` and gcsfs's
                ``requests_timeout`` override them.

        Raises:
            TypeError: ``config_kwargs`` is not a mapping.
            UsageError: An unknown protocol, one whose package is not installed, or storage
                options its filesystem refuses.
        """
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options)
        protocol = fsspec.core.split_protocol(url)[0] or "file"
        options = with_timeouts(protocol, dict(storage_options))
        if protocol in s3.S3_PROTOCOLS | gcs.GCS_PROTOCOLS:
            # Listings go to the server every time: another process may have written since.
            options.setdefault("use_listings_cache", False)
        if protocol in s3.S3_PROTOCOLS:
            s3.import_s3fs()
        self._hooked_client: Any = None
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **options)
        except ImportError as exc:  # fsspec names the package a protocol needs
            raise UsageError(f"cannot open {url}: {exc}") from exc
        except (ValueError, TypeError) as exc:  # an unknown protocol, options it refuses
            raise UsageError(f"cannot open {url}: {exc}") from exc
        self.root: str = root.rstrip("/")
        protocols = _protocols(self.fs)
        if protocols & s3.S3_PROTOCOLS:
            self.backend = "s3"
            # s3fs retries each call itself, around botocore's retries: bound the product.
            bound_s3_retries(self.fs)
        elif protocols & gcs.GCS_PROTOCOLS:
            self.backend = "gcs"
        else:
            self.backend = "generic"

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (self.url, self.storage_options)

    # -- helpers -------------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        check_key(key)
        return f"{self.root}/{key}" if self.root else key

    @contextlib.contextmanager
    def _errors(self, key: str, action: str, *, missing_is_key: bool = True) -> Iterator[None]:
        """Map backend exceptions to mlvc's: KeyNotFound, StorageError."""
        try:
            self._prepare_client()
            yield
        except MlvcError:
            raise
        except (FileNotFoundError, IsADirectoryError) as exc:
            if missing_is_key:
                raise KeyNotFound(key) from exc
            raise StorageError(f"cannot {action} {key} in {self.url}: {exc}") from exc
        except _PROGRAMMING_ERRORS:
            raise
        except Exception as exc:
            raise StorageError(f"cannot {action} {key} in {self.url}: {describe(exc)}") from exc

    def _prepare_client(self) -> None:
        """Make sure the S3 client sends no ``Expect: 100-continue`` (:mod:`.timeouts`).

        s3fs creates its botocore client on first use and again if its connections were
        closed: checked before every call, registered once per client.
        """
        if self.backend != "s3":
            return
        client = self.fs._s3
        if client is None:
            client = self.fs.s3  # creates the client; sends nothing
        if client is not self._hooked_client:
            send_s3_bodies_at_once(client)
            self._hooked_client = client

    def _invalidate(self, key: str) -> None:
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(self._path(key))

    def _sync(self, coro_fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run an async helper on the filesystem's event loop."""
        return fsspec.asyn.sync(self.fs.loop, coro_fn, *args, **kwargs)

    # -- reads ---------------------------------------------------------------------------------

    def read(self, key: str, limit: int | None = None) -> bytes:
        """Return the whole value of ``key``.

        Raises:
            KeyNotFound: ``key`` does not exist.
            FormatError: It holds more than ``limit`` bytes.
            StorageError: The backend failed.
        """
        with self._errors(key, "read"):
            if self.backend == "s3":
                return s3.get(self.fs, self._path(key), key, limit, self._sync)[0]
            if limit is None:
                return bytes(self.fs.cat_file(self._path(key)))
        data = self.read_range(key, 0, limit + 1)
        check_limit(key, len(data), limit)
        return data

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """Return ``length`` bytes of ``key`` from ``offset`` (fewer only at the end).

        Raises:
            KeyNotFound: ``key`` does not exist.
            StorageError: The backend failed.
        """
        if offset < 0 or length < 0:
            raise ValueError(f"invalid range ({offset}, {length})")
        path = self._path(key)
        if length == 0:
            if not self.exists(key):
                raise KeyNotFound(key)
            return b""
        with self._errors(key, "read"):
            try:
                return bytes(self.fs.cat_file(path, start=offset, end=offset + length))
            except Exception as exc:
                if _invalid_range(exc):
                    return b""  # starts at or after the end of an existing object
                raise

    def read_ranges(self, key: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Return several ``(offset, length)`` ranges of one key, fetched concurrently.

        Raises:
            KeyNotFound: ``key`` does not exist.
            StorageError: The backend failed.
        """
        for offset, length in ranges:
            if offset < 0 or length < 0:
                raise ValueError(f"invalid range ({offset}, {length})")
        wanted = [i for i, (_, n) in enumerate(ranges) if n > 0]
        out = [b""] * len(ranges)
        if not wanted:
            if ranges and not self.exists(key):
                raise KeyNotFound(key)
            return out
        path = self._path(key)
        with self._errors(key, "read"):
            results = self.fs.cat_ranges(
                [path] * len(wanted),
                [ranges[i][0] for i in wanted],
                [ranges[i][0] + ranges[i][1] for i in wanted],
                on_error="return",
            )
            for i, res in zip(wanted, results, strict=True):
                if isinstance(res, BaseException):
                    if _invalid_range(res):
                        continue
                    raise res
                out[i] = bytes(res)
        return out

    def open_read(self, key: str) -> BinaryIO:
        """A seekable binary file over ``key`` that reads ranges on demand; caller closes it.

        Raises:
            KeyNotFound: ``key`` does not exist.
        """
        with self._errors(key, "read"):
            return cast(BinaryIO, self.fs.open(self._path(key), "rb"))

    def exists(self, key: str) -> bool:
        """True if ``key`` exists (as an object, not as a prefix of others)."""
        path = self._path(key)
        with self._errors(key, "stat", missing_is_key=False):
            try:
                if self.backend == "s3":
                    s3.head(self.fs, path)
                    return True
                return bool(self.fs.info(path).get("type") == "file")
            except FileNotFoundError:
                return False

    def list(self, prefix: str) -> Iterator[KeyInfo]:
        """Every key that starts with ``prefix``, recursively, sorted, with size and mtime.

        Raises:
            StorageError: The backend failed.
        """
        return self.list_ranges(prefix, ())

    def list_ranges(self, prefix: str, bounds: Sequence[str]) -> Iterator[KeyInfo]:
        """What :meth:`list` gives; S3 and GCS request the ranges between ``bounds`` at once.

        See :func:`.s3.list_ranges` and :func:`.gcs.list_ranges`; other filesystems list once.

        Raises:
            StorageError: The backend failed.
        """
        if prefix.startswith("/"):
            raise ValueError(f"invalid prefix {prefix!r}")
        cuts = base.range_bounds(prefix, bounds)
        if self.backend == "s3":
            guard = lambda: self._errors(prefix, "list", missing_is_key=False)  # noqa: E731
            yield from s3.list_ranges(
                self.fs, self.root, prefix, cuts, guard, self._sync, self.list_page_size
            )
            return
        with self._errors(prefix, "list", missing_is_key=False):
            if self.backend == "gcs" and cuts:
                yield from gcs.list_ranges(
                    self.fs, self.root, prefix, cuts, self._sync, self.list_page_size
                )
                return
            under = prefix.rpartition("/")[0]
            search = (f"{self.root}/{under}" if self.root else under) if under else self.root
            try:
                found = self.fs.find(search, withdirs=False, detail=True)
            except FileNotFoundError:
                return
        head = f"{self.root}/" if self.root else ""
        for name in sorted(found):
            info = found[name]
            name = name.lstrip("/") if not head.startswith("/") else name
            if info.get("type", "file") != "file" or not name.startswith(head):
                continue
            key = name[len(head) :]
            if not key or key.endswith("/") or not key.startswith(prefix):
                continue
            yield KeyInfo(key, int(info.get("size") or 0), mtime(info), self._listed_version(info))

    def _listed_version(self, info: dict[str, Any]) -> str | None:
        """The version a listing entry names, in the form :meth:`read_versioned` returns."""
        if self.backend == "s3":
            etag = info.get("ETag") or info.get("etag")
            return str(etag) if etag else None
        if self.backend == "gcs":
            generation = info.get("generation")
            return str(generation) if generation not in (None, "") else None
        return None

    # -- writes --------------------------------------------------------------------------------

    def write(self, key: str, data: bytes) -> None:
        """Replace ``key`` with ``data`` as a whole.

        Raises:
            StorageError: The backend failed.
        """
        path = self._path(key)
        with self._errors(key, "write", missing_is_key=False):
            self.fs.pipe_file(path, bytes(data))
        self._invalidate(key)

    def create(self, key: str, data: bytes) -> bool:
        """Write ``data`` only if ``key`` is absent (atomically: see the module docstring).

        Returns:
            True if written, False if ``key`` already existed (it is left untouched).

        Raises:
            StorageError: The backend failed.
        """
        backend = s3 if self.backend == "s3" else gcs if self.backend == "gcs" else generic
        try:
            with self._errors(key, "create", missing_is_key=False):
                return bool(backend.create(self.fs, self._path(key), bytes(data)))
        finally:
            self._invalidate(key)

    def open_write(self, key: str) -> Writer:
        """Stream a new object to ``key``: published by ``close()``, discarded by ``abort()``.

        Raises:
            StorageError: The backend failed.
        """
        path = self._path(key)
        if self.backend in ("s3", "gcs"):
            with self._errors(key, "write", missing_is_key=False):
                return BufferedFileWriter(self, key, self.fs.open(path, "wb"))
        return SpoolWriter(self, key)

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error.

        Raises:
            StorageError: The backend failed.
        """
        path = self._path(key)
        with self._errors(key, "delete", missing_is_key=False):
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                pass
        self._invalidate(key)

    def delete_if(self, key: str, expected: Version) -> None:
        """Remove ``key`` only if it is still at ``expected``.

        Atomic on S3 (``DeleteObject`` with ``If-Match``) and GCS (``ifGenerationMatch``); on
        other filesystems within this process only. The version is compared first as well, so
        a server that ignores the condition (fake-gcs-server) still refuses a stale version.

        Raises:
            PreconditionFailed: The key is at another version, or absent.
            StorageError: The backend failed.
        """
        path = self._path(key)
        if self.backend == "generic":
            with self._errors(key, "delete", missing_is_key=False):
                generic.delete_if(self.fs, path, key, expected)
            self._invalidate(key)
            return
        try:
            _, current_version = self.read_versioned(key)
        except KeyNotFound:
            raise PreconditionFailed(key) from None
        if current_version != expected:
            raise PreconditionFailed(key)
        backend = s3 if self.backend == "s3" else gcs
        try:
            with self._errors(key, "delete", missing_is_key=False):
                backend.delete_if(self.fs, path, key, str(expected))
        finally:
            self._invalidate(key)

    def list_temporary(self, prefix: str) -> Iterator[KeyInfo]:
        """Incomplete multipart uploads under ``prefix`` (S3): what a killed writer left.

        Named ``<key>#upload=<upload id>``; nothing on other backends (GCS resumable uploads
        and spooled local files expire on their own).

        Raises:
            StorageError: The backend failed.
        """
        if self.backend != "s3":
            return
        guard = lambda: self._errors(prefix, "list uploads", missing_is_key=False)  # noqa: E731
        yield from s3.list_uploads(self.fs, self.root, prefix, guard)

    def delete_temporary(self, key: str) -> None:
        """Abort an incomplete multipart upload named by :meth:`list_temporary`.

        Raises:
            StorageError: The backend failed.
        """
        name, mark, upload = key.rpartition(s3.UPLOAD_MARK)
        if not mark or self.backend != "s3":
            raise ValueError(f"{key!r} is not an incomplete upload")
        path = self._path(name)
        with self._errors(key, "abort upload", missing_is_key=False):
            s3.abort_upload(self.fs, path, upload)

    # -- compare-and-swap ----------------------------------------------------------------------

    def read_versioned(self, key: str, limit: int | None = None) -> tuple[bytes, Version]:
        """Return the value of ``key`` and the version of exactly those bytes.

        The version is the ETag on S3, the generation on GCS and the bytes themselves elsewhere.

        Raises:
            KeyNotFound: ``key`` does not exist.
            FormatError: It holds more than ``limit`` bytes.
            StorageError: The backend failed.
        """
        with self._errors(key, "read"):
            if self.backend == "s3":
                data, etag = s3.get(self.fs, self._path(key), key, limit, self._sync)
                return data, Version(etag)
            if self.backend == "gcs":
                data, generation = gcs.get(self.fs, self._path(key), f"{key} in {self.url}")
                check_limit(key, len(data), limit)
                return data, Version(generation)
            data = generic.read(self.fs, self._path(key), limit)
        check_limit(key, len(data), limit)
        return data, Version(data)

    def write_if(self, key: str, data: bytes, expected: Version | None) -> Version:
        """Write ``data`` only if ``key`` is still at ``expected`` (None: only if absent).

        Args:
            key: The key to write.
            data: Its new value.
            expected: A version from :meth:`read_versioned` or :meth:`write_if`, or None.

        Returns:
            The version of the new state.

        Raises:
            PreconditionFailed: The key is not in the expected state (another writer won).
            StorageError: The backend failed.
        """
        path = self._path(key)
        data = bytes(data)
        if self.backend == "s3":
            return self._s3_write_if(key, path, data, expected)
        if self.backend == "gcs":
            with self._errors(key, "write", missing_is_key=False):
                try:
                    generation = gcs.upload_if(
                        self.fs, path, data, 0 if expected is None else str(expected)
                    )
                except FileExistsError:
                    raise PreconditionFailed(key) from None
                finally:
                    self._invalidate(key)
            return Version(generation)
        with self._errors(key, "write", missing_is_key=False):
            generic.write_if(self.fs, path, key, data, expected)
        self._invalidate(key)
        return Version(data)

    def _s3_write_if(self, key: str, path: str, data: bytes, expected: Version | None) -> Version:
        try:
            with self._errors(key, "write", missing_is_key=False):
                etag = s3.put_if(
                    self.fs, path, key, data, None if expected is None else str(expected)
                )
        finally:
            self._invalidate(key)
        return Version(etag)

    def close(self) -> None:
        """Nothing to release: the filesystem instance is shared through fsspec's cache."""

    def __repr__(self) -> str:
        return f"FsspecStore({self.url!r})"
