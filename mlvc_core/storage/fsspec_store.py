"""A :class:`~mlvc_core.storage.base.Store` over any fsspec filesystem (S3, GCS, memory...).

The only module of mlvc that imports fsspec; s3fs and gcsfs specifics are reached lazily, through
the filesystem object fsspec returns, so a backend's library is imported only when its URL is
opened. Keys map to ``<root>/<key>`` where ``<root>`` is the path part of the store's URL
(``s3://bucket/prefix`` -> ``bucket/prefix``).

What each backend guarantees:

**S3 (s3fs)** - the guarantees of S3 itself (strong read-after-write and list-after-write).

* ``write`` is one PUT (multipart above s3fs's threshold); readers see old or new bytes.
* ``create`` is a PUT with ``If-None-Match: *`` (on ``CompleteMultipartUpload`` for very large
  objects): atomic on AWS S3, moto and SeaweedFS.
* ``read_versioned`` takes the ETag from the response of the same GET that returned the bytes,
  so the version names exactly those bytes. ``write_if`` is a single PUT with ``If-Match: <etag>``
  (or ``If-None-Match: *`` for ``expected=None``); it returns the new ETag. A lost race reaches
  s3fs as ``FileExistsError`` (AWS, moto: the 412 names its ``<Condition>``) or as an ``OSError``
  whose ``__cause__`` is a botocore ``ClientError`` with HTTP 412 (SeaweedFS, Ceph), as a 404 on
  moto when the key vanished, or as 409 ``ConditionalRequestConflict`` (AWS, concurrent
  conditional writes); all of them become :class:`~mlvc_core.errors.PreconditionFailed`. ETags
  are content hashes for single-part PUTs, so the compare-and-swap is by value: a key rewritten
  with the very bytes it held before matches the old version again (harmless for refs). A PUT
  that s3fs retries after a lost response can report a conflict although it was applied: a
  conflict is never silent, but may be spurious, and callers re-read before retrying anyway.
* ``open_write`` streams through s3fs's buffered file: one PUT at close below the block size
  (s3fs ``default_block_size``, 50 MiB unless configured), a multipart upload above it, which S3
  makes visible only on ``CompleteMultipartUpload``. ``abort`` (and a writer dropped without
  ``close``) aborts the multipart upload: no key and no billed parts are left behind.
* ``list`` is ``ListObjectsV2``, one request per 1,000 keys and nothing more; each key comes
  with its ETag, the version ``read_versioned`` returns for the same bytes.

**GCS (gcsfs)** - the guarantees of GCS (strong consistency for objects and listings).

* ``create`` and ``write_if`` are *simple multipart* uploads (one POST,
  ``uploadType=multipart``) with ``ifGenerationMatch`` (``0`` for create-if-absent). They never
  go through resumable uploads: fake-gcs-server 1.54 ignores preconditions on resumable uploads
  (and so on gcsfs's ``open(path, "xb")`` and large ``pipe_file(mode="create")``). GCS answers
  any lost race with HTTP 412, which gcsfs raises as ``FileExistsError``.
* ``read_versioned`` reads the ``x-goog-generation`` header of the same GET that returned the
  bytes; if a server omits it, the generation is read first and the GET asks for exactly that
  generation. Versions are generations (strings): unlike ETags they change on every write.
* ``open_write`` uses gcsfs's file: a simple upload at close for small objects, a resumable
  upload (finalised only by its last chunk) for large ones; ``abort`` cancels the session.
* gcsfs must be imported with ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` in the environment
  when talking to an emulator (otherwise each bucket costs a 60 s gRPC probe); real GCS is fine
  either way.

**Every other filesystem** (``memory://`` and anything fsspec knows without conditional writes):
``create``/``read_versioned``/``write_if`` are made atomic by a lock *inside this process* only
(``read_versioned`` returns the bytes themselves as the version); two processes sharing such a
filesystem get no compare-and-swap guarantee. ``open_write`` spools to a local temporary file and
uploads it on close (``pipe_file`` for ``memory://``, ``put_file`` otherwise), so nothing is
visible before ``close``.

**Every request has a timeout.** A server that accepts connections and never answers (or a
network that drops packets) must not hang a command, a tracked run or the interpreter's exit,
so each backend gets finite defaults, which storage options override key by key:

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
* GCS: gcsfs sends its requests with ``requests_timeout``, which is None by default: no
  timeout at all. The default here is ``aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT,
  sock_read=READ_TIMEOUT)`` (no limit on a whole transfer, only on waiting for the server).
  gcsfs retries a timed-out request 6 times with backoff (about 31 s in all), so a frozen
  server fails a request after about two minutes. A number given as ``requests_timeout`` is
  aiohttp's limit on the whole request.

Listings use no cache: the filesystem is opened with ``use_listings_cache=False`` for S3 and GCS
and the store invalidates the cache after every write, so ``list`` after ``write`` or ``delete``
sees the change. Errors: a missing key raises :class:`~mlvc_core.errors.KeyNotFound`, a lost
race :class:`~mlvc_core.errors.PreconditionFailed`, any other failure of the backend
:class:`~mlvc_core.errors.StorageError` chained to the original exception.
"""

from __future__ import annotations

import contextlib
import copy
import email.utils
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import IO, Any, BinaryIO, cast

import fsspec
import fsspec.asyn
import fsspec.core

from mlvc_core.errors import KeyNotFound, MlvcError, PreconditionFailed, StorageError
from mlvc_core.storage.base import KeyInfo, Store, Version, Writer, check_limit

__all__ = ["FsspecStore"]

_S3_PROTOCOLS = frozenset({"s3", "s3a"})
_GCS_PROTOCOLS = frozenset({"gs", "gcs"})

# Serialises create/compare-and-swap on filesystems without conditional writes (memory://...).
# One lock per process: fsspec's memory filesystem is itself one dict per process.
_LOCAL_CAS_LOCK = threading.RLock()

# Errors that are bugs in the caller or in mlvc, not failures of the backend.
_PROGRAMMING_ERRORS = (TypeError, AttributeError, NameError, AssertionError, NotImplementedError)

_BOUNDARY = "==mlvc-0a7f3c=="

_QUIET = logging.NullHandler()

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


def _check_key(key: str) -> None:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid store key {key!r}")


def _protocols(fs: Any) -> frozenset[str]:
    proto = fs.protocol
    return frozenset([proto] if isinstance(proto, str) else proto)


def _client_error(exc: BaseException) -> dict[str, Any]:
    """The botocore error response behind an s3fs exception (empty if none)."""
    for err in (exc, exc.__cause__):
        resp = getattr(err, "response", None)
        if isinstance(resp, dict):
            return resp
    return {}


def _s3_error_code(exc: BaseException) -> tuple[str | None, int | None]:
    resp = _client_error(exc)
    code = resp.get("Error", {}).get("Code")
    status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code, status


def _s3_precondition_failed(exc: BaseException) -> bool:
    """True if an s3fs exception means a conditional write lost (see module docstring)."""
    if isinstance(exc, FileExistsError):
        return True
    code, status = _s3_error_code(exc)
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412


def _invalid_range(exc: BaseException) -> bool:
    """True if an exception is HTTP 416: a range that starts at or after the end of the object."""
    code, status = _s3_error_code(exc)
    return code == "InvalidRange" or status == 416 or getattr(exc, "code", None) == 416


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _to_epoch(value: Any) -> float | None:
    """Seconds since the epoch from a datetime, a number or an ISO-8601/RFC-1123 string."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return float(value.timestamp())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return float(value)
        except ValueError:
            pass
        text = _FRACTION.sub(r"\1", value.strip())
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            return _to_epoch(datetime.fromisoformat(text))
        except ValueError:
            pass
        try:
            return _to_epoch(email.utils.parsedate_to_datetime(value))
        except (TypeError, ValueError):
            return None
    return None


_MTIME_FIELDS = ("mtime", "LastModified", "updated", "last_modified", "modified", "created",
                 "timeCreated", "ctime")  # fmt: skip


def _mtime(info: dict[str, Any]) -> float:
    """The modification time of an fsspec info dict, whatever the backend calls it."""
    for name in _MTIME_FIELDS:
        if name in info:
            seconds = _to_epoch(info[name])
            if seconds is not None:
                return seconds
    return 0.0


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


_UPLOAD_MARK = "#upload="
"""Separates a key from an upload id in the names :meth:`FsspecStore.list_temporary` gives."""


_NO_EXPECT = "mlvc-no-expect-100-continue"


def _drop_expect(request: Any, **_: Any) -> None:
    """A botocore ``before-send`` handler: send the body at once (see the module docstring)."""
    if "Expect" in request.headers:
        del request.headers["Expect"]  # not a signed header: the signature stays valid


def _describe(exc: BaseException) -> str:
    """An exception in words; a bare timeout (fsspec's, asyncio's) says that it is one."""
    text = str(exc).strip()
    if text:
        return text
    if isinstance(exc, TimeoutError):
        return "no answer from the server in time (timed out)"
    return type(exc).__name__


def _with_timeouts(protocol: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with finite request timeouts for S3 and GCS where they set none."""
    if protocol in _S3_PROTOCOLS:
        config = options.get("config_kwargs") or {}
        if not isinstance(config, dict):
            raise TypeError(f"storage option config_kwargs must be a table, not {config!r}")
        # botocore normalises the retries table in place: hand it copies.
        return {**options, "config_kwargs": copy.deepcopy({**_S3_CONFIG, **config})}
    if protocol in _GCS_PROTOCOLS and options.get("requests_timeout") is None:
        import aiohttp  # gcsfs's HTTP client, there whenever gcsfs is

        # gcsfs logs each failed request with its traceback; where the program configured no
        # logging, Python would print them to stderr: mlvc reports the failure itself.
        logging.getLogger("gcsfs").addHandler(_QUIET)

        timeout = aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)
        return {**options, "requests_timeout": timeout}
    return options


def _rebuild(url: str, storage_options: dict[str, Any]) -> FsspecStore:
    return FsspecStore(url, **storage_options)


class _BufferedFileWriter(Writer):
    """Streams into an s3fs/gcsfs buffered file; aborting discards the upload."""

    def __init__(self, store: FsspecStore, key: str, f: Any) -> None:
        self._store = store
        self._key = key
        self._f: Any | None = f

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._f is None:
            raise ValueError(f"writer for {self._key} is closed")
        with self._store._errors(self._key, "write", missing_is_key=False):
            return int(self._f.write(data))

    def close(self) -> None:
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


class _SpoolWriter(Writer):
    """Spools to a local temporary file and uploads it on close.

    For filesystems whose open files are not invisible until committed (``memory://``...).
    """

    def __init__(self, store: FsspecStore, key: str) -> None:
        self._store = store
        self._key = key
        self._tmp: IO[bytes] | None = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="mlvc-upload-", delete=False
        )

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._tmp is None:
            raise ValueError(f"writer for {self._key} is closed")
        return self._tmp.write(data)

    def close(self) -> None:
        if self._tmp is None:
            return
        tmp, self._tmp = self._tmp, None
        try:
            tmp.flush()
            self._store._upload_file(self._key, tmp)
        finally:
            tmp.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp.name)

    def abort(self) -> None:
        if self._tmp is None:
            return
        tmp, self._tmp = self._tmp, None
        tmp.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp.name)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.abort()


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
                timeouts default to finite values (see the module docstring): s3fs's
                ``config_kwargs`` ``connect_timeout``/``read_timeout``/``retries`` and gcsfs's
                ``requests_timeout`` override them.

        Raises:
            TypeError: ``config_kwargs`` is not a mapping.
        """
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options)
        protocol = fsspec.core.split_protocol(url)[0] or "file"
        options = _with_timeouts(protocol, dict(storage_options))
        if protocol in _S3_PROTOCOLS | _GCS_PROTOCOLS:
            # Listings go to the server every time: another process may have written since.
            options.setdefault("use_listings_cache", False)
        self._hooked_client: Any = None
        self.fs, root = fsspec.core.url_to_fs(url, **options)
        self.root: str = root.rstrip("/")
        protocols = _protocols(self.fs)
        if protocols & _S3_PROTOCOLS:
            self.backend = "s3"
            # s3fs retries each call itself, around botocore's retries: bound the product.
            self.fs.retries = min(
                int(getattr(self.fs, "retries", S3_CALL_ATTEMPTS)), S3_CALL_ATTEMPTS
            )
        elif protocols & _GCS_PROTOCOLS:
            self.backend = "gcs"
        else:
            self.backend = "generic"

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (self.url, self.storage_options)

    # -- helpers -------------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        _check_key(key)
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
            raise StorageError(f"cannot {action} {key} in {self.url}: {_describe(exc)}") from exc

    def _prepare_client(self) -> None:
        """Make sure the S3 client sends no ``Expect: 100-continue`` (module docstring).

        s3fs creates its botocore client on first use and again if its connections were
        closed: checked before every call, registered once per client.
        """
        if self.backend != "s3":
            return
        client = self.fs._s3
        if client is None:
            client = self.fs.s3  # creates the client; sends nothing
        if client is not self._hooked_client:
            client.meta.events.register("before-send.s3", _drop_expect, unique_id=_NO_EXPECT)
            self._hooked_client = client

    def _invalidate(self, key: str) -> None:
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(self._path(key))

    def _sync(self, coro_fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run an async helper on the filesystem's event loop."""
        return fsspec.asyn.sync(self.fs.loop, coro_fn, *args, **kwargs)

    def _s3_get(self, key: str, limit: int | None = None) -> tuple[bytes, str]:
        """One GET: the bytes of ``key`` and the ETag of exactly those bytes.

        A body longer than ``limit`` is refused from its length, before it is read.
        """
        bucket, s3key, _ = self.fs.split_path(self._path(key))
        fs = self.fs

        async def get() -> tuple[bytes, str]:
            resp = await fs._call_s3("get_object", Bucket=bucket, Key=s3key)
            body = resp["Body"]
            try:
                check_limit(key, int(resp.get("ContentLength") or 0), limit)
                data = await body.read()
            finally:
                body.close()
            return data, str(resp["ETag"])

        data, etag = cast(tuple[bytes, str], self._sync(get))
        check_limit(key, len(data), limit)
        return data, etag

    def _gcs_upload_if(self, key: str, data: bytes, generation: str | int) -> str:
        """A simple multipart upload conditional on the live generation (0: absent).

        Returns:
            The generation of the new object.
        """
        from gcsfs.core import quote

        bucket, name, _ = self.fs.split_path(self._path(key))
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
        out = self.fs.call(
            "POST",
            f"{self.fs._location}/upload/storage/v1/b/{quote(bucket)}/o",
            uploadType="multipart",
            ifGenerationMatch=str(generation),
            headers={"Content-Type": f'multipart/related; boundary="{_BOUNDARY}"'},
            data=body,
            json_out=True,
        )
        self._invalidate(key)
        return str(out["generation"])

    def _gcs_get(self, key: str) -> tuple[bytes, str]:
        """The bytes of ``key`` and the generation of exactly those bytes."""
        path = self._path(key)
        headers, data = self.fs.call("GET", self.fs.url(path))
        generation = _header(headers, "x-goog-generation")
        if generation is not None:
            return bytes(data), generation
        # Server without the header: pin the generation first, then read exactly it.
        for _ in range(10):
            generation = str(self.fs.info(path, refresh=True)["generation"])
            try:
                _, data = self.fs.call("GET", self.fs.url(path, generation=generation))
            except FileNotFoundError:
                continue  # replaced between the two requests
            return bytes(data), generation
        raise StorageError(f"cannot read {key} in {self.url}: it keeps changing")

    def _upload_file(self, key: str, tmp: IO[bytes]) -> None:
        path = self._path(key)
        with self._errors(key, "write", missing_is_key=False):
            if "memory" in _protocols(self.fs):
                tmp.seek(0)
                self.fs.pipe_file(path, tmp.read())
            else:
                self.fs.put_file(tmp.name, path)
        self._invalidate(key)

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
                return self._s3_get(key, limit)[0]
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
                    bucket, s3key, _ = self.fs.split_path(path)
                    self.fs.call_s3("head_object", Bucket=bucket, Key=s3key)
                    return True
                return bool(self.fs.info(path).get("type") == "file")
            except FileNotFoundError:
                return False

    def list(self, prefix: str) -> Iterator[KeyInfo]:
        """Every key that starts with ``prefix``, recursively, sorted, with size and mtime.

        Raises:
            StorageError: The backend failed.
        """
        if prefix.startswith("/"):
            raise ValueError(f"invalid prefix {prefix!r}")
        if self.backend == "s3":
            yield from self._s3_list(prefix)
            return
        base = prefix.rpartition("/")[0]
        search = (f"{self.root}/{base}" if self.root else base) if base else self.root
        head = f"{self.root}/" if self.root else ""
        with self._errors(prefix, "list", missing_is_key=False):
            try:
                found = self.fs.find(search, withdirs=False, detail=True)
            except FileNotFoundError:
                return
        for name in sorted(found):
            info = found[name]
            name = name.lstrip("/") if not head.startswith("/") else name
            if info.get("type", "file") != "file" or not name.startswith(head):
                continue
            key = name[len(head) :]
            if not key or key.endswith("/") or not key.startswith(prefix):
                continue
            yield KeyInfo(key, int(info.get("size") or 0), _mtime(info), self._listed_version(info))

    def _fast_listing_parser(self) -> None:
        """Parse S3 timestamps with ``datetime.fromisoformat`` (C) instead of dateutil.

        botocore parses every ``LastModified`` of a listing with dateutil, about 50 us each:
        most of the CPU of listing 10,000 refs. The parser factory belongs to this
        filesystem's own client; anything not ISO 8601 still goes to botocore's parser.
        """
        if getattr(self.fs, "_s3", None) is None:
            self._sync(self.fs.set_session)
        endpoint = getattr(getattr(self.fs, "_s3", None), "_endpoint", None)
        factory = getattr(endpoint, "_response_parser_factory", None)
        if factory is None or getattr(factory, "_mlvc_fast_timestamps", False):
            return
        from botocore.parsers import DEFAULT_TIMESTAMP_PARSER  # type: ignore[import-untyped]

        def parse(value: Any) -> Any:
            try:
                d = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
            except ValueError:
                return DEFAULT_TIMESTAMP_PARSER(value)
            return d if d.tzinfo is not None else d.replace(tzinfo=timezone.utc)

        factory.set_parser_defaults(timestamp_parser=parse)
        factory._mlvc_fast_timestamps = True

    def _s3_list(self, prefix: str) -> Iterator[KeyInfo]:
        """``ListObjectsV2`` pages under ``prefix`` (one request per 1,000 keys, none more).

        s3fs's ``find`` adds a HEAD and a second listing when nothing matches; a listing that
        ``ls`` makes for every experiment must cost exactly its pages.
        """
        self._fast_listing_parser()
        full = f"{self.root}/{prefix}" if self.root else prefix
        bucket, _, key_prefix = full.partition("/")
        head = full[len(bucket) + 1 : len(full) - len(prefix)]
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key_prefix}
            if token:
                kwargs["ContinuationToken"] = token
            with self._errors(prefix, "list", missing_is_key=False):
                try:
                    page = self.fs.call_s3("list_objects_v2", **kwargs)
                except FileNotFoundError:
                    return
            for item in page.get("Contents") or []:
                key = str(item["Key"])[len(head) :]
                if not key or key.endswith("/"):
                    continue
                yield KeyInfo(
                    key,
                    int(item.get("Size") or 0),
                    _to_epoch(item.get("LastModified")) or 0.0,
                    str(item["ETag"]) if item.get("ETag") else None,
                )
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token:
                return

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
        path = self._path(key)
        data = bytes(data)
        with self._errors(key, "create", missing_is_key=False):
            if self.backend == "s3":
                try:
                    self.fs.pipe_file(path, data, mode="create")
                except Exception as exc:
                    if _s3_precondition_failed(exc):
                        return False
                    raise
                finally:
                    self._invalidate(key)
                return True
            if self.backend == "gcs":
                try:
                    self._gcs_upload_if(key, data, 0)
                except FileExistsError:
                    return False
                return True
            with _LOCAL_CAS_LOCK:
                if self.fs.exists(path):
                    return False
                self.fs.pipe_file(path, data)
            self._invalidate(key)
            return True

    def open_write(self, key: str) -> Writer:
        """Stream a new object to ``key``: published by ``close()``, discarded by ``abort()``.

        Raises:
            StorageError: The backend failed.
        """
        path = self._path(key)
        if self.backend in ("s3", "gcs"):
            with self._errors(key, "write", missing_is_key=False):
                return _BufferedFileWriter(self, key, self.fs.open(path, "wb"))
        return _SpoolWriter(self, key)

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

    def list_temporary(self, prefix: str) -> Iterator[KeyInfo]:
        """Incomplete multipart uploads under ``prefix`` (S3): what a killed writer left.

        Named ``<key>#upload=<upload id>``; nothing on other backends (GCS resumable uploads
        and spooled local files expire on their own).

        Raises:
            StorageError: The backend failed.
        """
        if self.backend != "s3":
            return
        bucket, root_key, _ = self.fs.split_path(self.root)
        head = f"{root_key}/" if root_key else ""
        args: dict[str, Any] = {"Bucket": bucket, "Prefix": head + prefix}
        while True:
            with self._errors(prefix, "list uploads", missing_is_key=False):
                resp = self.fs.call_s3("list_multipart_uploads", **args)
            for u in resp.get("Uploads") or []:
                name = str(u["Key"])
                if name.startswith(head):
                    when = _to_epoch(u.get("Initiated")) or 0.0
                    yield KeyInfo(f"{name[len(head) :]}{_UPLOAD_MARK}{u['UploadId']}", 0, when)
            if not resp.get("IsTruncated"):
                return
            args["KeyMarker"] = resp.get("NextKeyMarker")
            args["UploadIdMarker"] = resp.get("NextUploadIdMarker")

    def delete_temporary(self, key: str) -> None:
        """Abort an incomplete multipart upload named by :meth:`list_temporary`.

        Raises:
            StorageError: The backend failed.
        """
        name, mark, upload = key.rpartition(_UPLOAD_MARK)
        if not mark or self.backend != "s3":
            raise ValueError(f"{key!r} is not an incomplete upload")
        bucket, s3key, _ = self.fs.split_path(self._path(name))
        with self._errors(key, "abort upload", missing_is_key=False):
            try:
                self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=s3key, UploadId=upload)
            except FileNotFoundError:
                pass  # already completed or aborted

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
                data, etag = self._s3_get(key, limit)
                return data, Version(etag)
            if self.backend == "gcs":
                data, generation = self._gcs_get(key)
                check_limit(key, len(data), limit)
                return data, Version(generation)
            with _LOCAL_CAS_LOCK:
                if limit is None:
                    data = bytes(self.fs.cat_file(self._path(key)))
                else:
                    data = bytes(self.fs.cat_file(self._path(key), start=0, end=limit + 1))
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
                    generation = self._gcs_upload_if(
                        key, data, 0 if expected is None else str(expected)
                    )
                except FileExistsError:
                    raise PreconditionFailed(key) from None
            return Version(generation)
        with self._errors(key, "write", missing_is_key=False), _LOCAL_CAS_LOCK:
            try:
                current: object = bytes(self.fs.cat_file(path))
            except FileNotFoundError:
                current = None
            if current != expected:
                raise PreconditionFailed(key)
            self.fs.pipe_file(path, data)
        self._invalidate(key)
        return Version(data)

    def _s3_write_if(self, key: str, path: str, data: bytes, expected: Version | None) -> Version:
        bucket, s3key, _ = self.fs.split_path(path)
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": str(expected)}
        try:
            with self._errors(key, "write", missing_is_key=False):
                try:
                    out = self.fs.call_s3(
                        "put_object", Bucket=bucket, Key=s3key, Body=data, **condition
                    )
                except Exception as exc:
                    if _s3_precondition_failed(exc):
                        raise PreconditionFailed(key) from None
                    code, _ = _s3_error_code(exc)
                    if expected is not None and code in ("NoSuchKey", "404"):
                        raise PreconditionFailed(key) from None  # moto: If-Match on a gone key
                    raise
        finally:
            self._invalidate(key)
        return Version(str(out["ETag"]))

    def close(self) -> None:
        """Nothing to release: the filesystem instance is shared through fsspec's cache."""

    def __repr__(self) -> str:
        return f"FsspecStore({self.url!r})"
