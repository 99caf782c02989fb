"""S3 specifics of :class:`~mlvc_core.storage.fsspec_store.FsspecStore` (through s3fs).

The guarantees are those of S3 itself (strong read-after-write and list-after-write):

* ``write`` is one PUT (multipart above s3fs's threshold); readers see old or new bytes.
* ``create`` is a PUT with ``If-None-Match: *`` (on ``CompleteMultipartUpload`` for very large
  objects): atomic on AWS S3, moto and SeaweedFS.
* ``read_versioned`` takes the ETag from the response of the same GET that returned the bytes
  (:func:`get`), so the version names exactly those bytes. ``write_if`` is a single PUT with
  ``If-Match: <etag>`` (or ``If-None-Match: *`` for ``expected=None``, :func:`put_if`); it
  returns the new ETag. A lost race reaches s3fs as ``FileExistsError`` (AWS, moto: the 412
  names its ``<Condition>``) or as an ``OSError`` whose ``__cause__`` is a botocore
  ``ClientError`` with HTTP 412 (SeaweedFS, Ceph), as a 404 on moto when the key vanished, or
  as 409 ``ConditionalRequestConflict`` (AWS, concurrent conditional writes); all of them
  become :class:`~mlvc_core.errors.PreconditionFailed`. ETags are content hashes for
  single-part PUTs, so the compare-and-swap is by value: a key rewritten with the very bytes it
  held before matches the old version again (harmless for refs). A PUT that s3fs retries after
  a lost response can report a conflict although it was applied: a conflict is never silent,
  but may be spurious, and callers re-read before retrying anyway.
* ``delete_if`` is a DELETE with ``If-Match: <etag>`` (:func:`delete_if`), honoured by AWS S3,
  moto and SeaweedFS; the store compares the version first as well.
* ``open_write`` streams through s3fs's buffered file: one PUT at close below the block size
  (s3fs ``default_block_size``, 50 MiB unless configured), a multipart upload above it, which
  S3 makes visible only on ``CompleteMultipartUpload``. ``abort`` (and a writer dropped without
  ``close``) aborts the multipart upload: no key and no billed parts are left behind; those a
  killed writer left are listed by :func:`list_uploads` and aborted by :func:`abort_upload`.
* ``list`` is ``ListObjectsV2`` (:func:`list_keys`), one request per 1,000 keys and nothing
  more; each key comes with its ETag, the version ``read_versioned`` returns for the same bytes.
  ``list_ranges`` requests the ranges between known keys at once (``StartAfter``), each
  continued until it reaches the next range (:func:`list_ranges`).

Functions here take the s3fs filesystem and full paths (``bucket/key``); mapping errors to
mlvc's and invalidating caches stay with the store. Only s3fs and botocore are imported here,
lazily.
"""

from __future__ import annotations

import asyncio
import errno
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, cast
from xml.etree import ElementTree

from mlvc_core.errors import PreconditionFailed
from mlvc_core.storage.base import KeyInfo, check_limit, split_bucket
from mlvc_core.storage.timestamps import to_epoch

__all__ = [
    "S3_PROTOCOLS",
    "UPLOAD_MARK",
    "abort_upload",
    "create",
    "delete_if",
    "error_code",
    "get",
    "head",
    "import_s3fs",
    "list_keys",
    "list_ranges",
    "list_uploads",
    "precondition_failed",
    "put_if",
]

S3_PROTOCOLS = frozenset({"s3", "s3a"})
PAGE_SIZE = 1000
"""Keys per ``ListObjectsV2`` request (S3's maximum)."""
RANGE_REQUESTS = 10
"""Range listings in flight at once (aiobotocore's default connection pool holds 10)."""

UPLOAD_MARK = "#upload="
"""Separates a key from an upload id in the names :func:`list_uploads` gives."""

Guard = Callable[[], AbstractContextManager[None]]
"""A context manager factory that maps one request's errors to mlvc's."""


_UNUSED_BACKENDS = ("httpx2", "httpx")
"""What aiobotocore imports at its own import for an HTTP backend mlvc never asks for."""


def import_s3fs() -> None:
    """Import s3fs without the optional HTTP backend aiobotocore would import with it.

    aiobotocore imports ``httpx`` whenever it is installed (only for ``HttpxSession``, which
    mlvc never configures), and ``httpx`` imports its command line: ``rich``, ``pygments``
    and ``click``, about 0.1 s of every command that opens an S3 repository. While s3fs is
    imported, those names read as not installed (a ``None`` entry in ``sys.modules``);
    afterwards they import as usual, for anything else in the process (another thread that
    imports httpx in that window, while s3fs is imported, finds it missing). Nothing is hidden
    if s3fs, or httpx, is already imported.
    """
    if "s3fs" in sys.modules:
        return
    hidden = [name for name in _UNUSED_BACKENDS if name not in sys.modules]
    if len(hidden) < len(_UNUSED_BACKENDS):
        hidden = []  # the process uses one already: nothing to save
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import s3fs  # noqa: F401
    except ImportError:
        pass  # fsspec names the missing package when the URL is opened
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


def _client_error(exc: BaseException) -> dict[str, Any]:
    """The botocore error response behind an s3fs exception (empty if none)."""
    for err in (exc, exc.__cause__):
        resp = getattr(err, "response", None)
        if isinstance(resp, dict):
            return resp
    return {}


def error_code(exc: BaseException) -> tuple[str | None, int | None]:
    """The S3 error code and HTTP status behind an s3fs exception (None where unknown)."""
    resp = _client_error(exc)
    code = resp.get("Error", {}).get("Code")
    status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code, status


def precondition_failed(exc: BaseException) -> bool:
    """True if an s3fs exception means a conditional write lost (see the module docstring)."""
    if isinstance(exc, FileExistsError):
        return True
    code, status = error_code(exc)
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412


def get(
    fs: Any, path: str, key: str, limit: int | None, sync: Callable[..., Any]
) -> tuple[bytes, str]:
    """One GET: the bytes at ``path`` and the ETag of exactly those bytes.

    A body longer than ``limit`` is refused from its length, before it is read.

    Args:
        fs: The s3fs filesystem.
        path: ``bucket/key``.
        key: The store key, for messages.
        limit: Most bytes accepted, or None.
        sync: Runs a coroutine function on ``fs``'s event loop.

    Raises:
        FormatError: The value holds more than ``limit`` bytes.
    """
    bucket, s3key, _ = fs.split_path(path)

    async def get() -> tuple[bytes, str]:
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=s3key)
        body = resp["Body"]
        try:
            check_limit(key, int(resp.get("ContentLength") or 0), limit)
            data = await body.read()
        finally:
            body.close()
        return data, str(resp["ETag"])

    data, etag = cast(tuple[bytes, str], sync(get))
    check_limit(key, len(data), limit)
    return data, etag


def head(fs: Any, path: str) -> None:
    """One HEAD of ``path`` (s3fs's ``info`` may list the prefix as well).

    Raises:
        FileNotFoundError: No such object.
    """
    bucket, s3key, _ = fs.split_path(path)
    fs.call_s3("head_object", Bucket=bucket, Key=s3key)


def create(fs: Any, path: str, data: bytes) -> bool:
    """One PUT with ``If-None-Match: *``; True if written, False if the object exists."""
    try:
        fs.pipe_file(path, data, mode="create")
    except Exception as exc:
        if precondition_failed(exc):
            return False
        raise
    return True


def put_if(fs: Any, path: str, key: str, data: bytes, expected: str | None) -> str:
    """One conditional PUT: ``If-Match: expected``, or ``If-None-Match: *`` for None.

    Returns:
        The ETag of the new object.

    Raises:
        PreconditionFailed: The object is not at ``expected`` (or exists, for None).
    """
    bucket, s3key, _ = fs.split_path(path)
    condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": str(expected)}
    try:
        out = fs.call_s3("put_object", Bucket=bucket, Key=s3key, Body=data, **condition)
    except Exception as exc:
        if precondition_failed(exc):
            raise PreconditionFailed(key) from None
        code, _ = error_code(exc)
        if expected is not None and code in ("NoSuchKey", "404"):
            raise PreconditionFailed(key) from None  # moto: If-Match on a gone key
        raise
    return str(out["ETag"])


def delete_if(fs: Any, path: str, key: str, expected: str) -> None:
    """One conditional DELETE (``If-Match: expected``): AWS S3, moto and SeaweedFS honour it.

    Raises:
        PreconditionFailed: The object is at another version, or absent.
    """
    bucket, s3key, _ = fs.split_path(path)
    try:
        fs.call_s3("delete_object", Bucket=bucket, Key=s3key, IfMatch=expected)
    except FileNotFoundError:
        raise PreconditionFailed(key) from None
    except Exception as exc:
        code, _ = error_code(exc)
        if precondition_failed(exc) or code in ("NoSuchKey", "404"):
            raise PreconditionFailed(key) from None
        raise


def _timestamp(value: str) -> datetime:
    """An S3 timestamp, read as botocore reads it.

    ISO 8601 with a zone through ``datetime.fromisoformat`` (C); anything else (another form,
    or no zone, which botocore leaves naive) through botocore's own parser.
    """
    try:
        d: datetime | None = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        d = None
    if d is None or d.tzinfo is None:
        from botocore.parsers import DEFAULT_TIMESTAMP_PARSER  # type: ignore[import-untyped]

        return cast(datetime, DEFAULT_TIMESTAMP_PARSER(value))
    return d


_OBJECT_FIELDS: dict[str, Callable[[str], Any]] = {
    "Key": str,
    "ETag": str,
    "Size": int,
    "LastModified": _timestamp,
    "StorageClass": str,
    "ChecksumType": str,
}
"""The scalar members of a listed object (botocore's ``Object`` shape) that :func:`parse_contents`
converts itself; any other member (one botocore drops, as ``IsLatest``) leaves the page to it."""
_OBJECT_LISTS = frozenset({"ChecksumAlgorithm"})
"""Members that repeat (flattened lists of strings)."""
_LISTING_HOOK = "mlvc-listing-contents"


def parse_contents(
    response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any
) -> bool:
    """Parse the ``<Contents>`` of a ``ListObjectsV2`` response with ElementTree.

    It puts ``Contents`` (each object as botocore would give it: ``Key``, ``Size`` as an int,
    ``LastModified`` as an aware datetime, ``ETag`` quotes included...) into
    ``customized_response_dict``, which botocore merges into the parsed response, and leaves in
    the body only the rest (name, prefix, truncation, continuation token), which botocore
    parses as usual. botocore's shape-walking parser takes about 20 ms for a page of 1,000
    keys, this about 5 ms. A response with anything this does not know (an owner, a restore
    status, an error) is left untouched for botocore.

    Returns:
        True if the body is a well-formed ``ListBucketResult`` (so not an error document,
        whether or not its objects were taken out); False for anything else.
    """
    if response_dict.get("status_code") != 200 or not response_dict.get("body"):
        return False
    try:
        root = ElementTree.fromstring(response_dict["body"])
        tag = root.tag
        ns = tag[: tag.index("}") + 1] if tag.startswith("{") else ""
        if tag != ns + "ListBucketResult":
            return False
        contents, cut = ns + "Contents", len(ns)
        items: list[dict[str, Any]] = []
        rest = ElementTree.Element(tag)
        for node in root:
            if node.tag != contents:
                rest.append(node)
                continue
            item: dict[str, Any] = {}
            for member in node:
                name = member.tag[cut:]
                if len(member) or not member.tag.startswith(ns):
                    return True  # a nested member (Owner, RestoreStatus): botocore's to parse
                convert = _OBJECT_FIELDS.get(name)
                if convert is not None:
                    item[name] = convert(member.text or "")
                elif name in _OBJECT_LISTS:
                    item.setdefault(name, []).append(member.text or "")
                else:
                    return True  # a member this does not know
            items.append(item)
    except ElementTree.ParseError:
        return False
    except (ValueError, TypeError):
        return True  # well-formed, with a value this does not convert: botocore's to parse
    if items:
        customized_response_dict["Contents"] = items
    response_dict["body"] = ElementTree.tostring(rest)
    return True


def _page_handler(check: Callable[..., Any]) -> Callable[..., None]:
    """The error-in-a-200 ``check`` of botocore and :func:`parse_contents`, one parse a page.

    botocore's ``_handle_200_error`` (a ``before-parse.s3.*`` handler) parses every 200
    response body to tell an embedded ``<Error>`` (or a truncated body) from a result, and
    turns it into a 500 for its retry logic: for a listing page, as long again as
    :func:`parse_contents`. A ``ListObjectsV2`` page that parses as a ``ListBucketResult`` is
    neither. Any other 200 answer to ``ListObjectsV2`` (an error document, a torn, empty or
    foreign body) becomes a 500 here, so it is retried and then raised: botocore would read an
    empty or foreign body as a last, empty page and the listing would end there, short.
    Every other operation still goes through ``check``.
    """

    def handle(
        operation_model: Any,
        response_dict: dict[str, Any],
        customized_response_dict: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if (
            getattr(operation_model, "name", None) == "ListObjectsV2"
            and customized_response_dict is not None
        ):
            if parse_contents(response_dict, customized_response_dict):
                return
            if response_dict.get("status_code") == 200:
                response_dict["status_code"] = 500  # not a listing page: retried, then raised
                return
        check(operation_model=operation_model, response_dict=response_dict, **kwargs)

    return handle


def _fast_listing(fs: Any, sync: Callable[..., Any]) -> None:
    """Put :func:`parse_contents` on this filesystem's S3 client (once).

    Where botocore's own check of each page is known, in its place (:func:`_page_handler`).
    Calling it again changes nothing (the handler is registered under one unique id).
    """
    if getattr(fs, "_s3", None) is None:
        sync(fs.set_session)
    client = getattr(fs, "_s3", None)
    events = getattr(getattr(client, "meta", None), "events", None)
    if events is None:
        return
    from botocore import handlers  # type: ignore[import-untyped]

    check = getattr(handlers, "_handle_200_error", None)
    if check is None:  # a botocore without it: its own check, if any, parses pages too
        events.register("before-parse.s3.ListObjectsV2", parse_contents, unique_id=_LISTING_HOOK)
    else:  # (if botocore registered it elsewhere, unregister does nothing and both run)
        events.unregister("before-parse.s3.*", check)
        events.register_first("before-parse.s3.*", _page_handler(check), unique_id=_LISTING_HOOK)


def _key_info(item: dict[str, Any], head: str) -> KeyInfo | None:
    """The :class:`KeyInfo` of one listed object (``head``: the store root's part of its key)."""
    key = str(item["Key"])[len(head) :]
    if not key or key.endswith("/"):
        return None
    return KeyInfo(
        key,
        int(item.get("Size") or 0),
        to_epoch(item.get("LastModified")) or 0.0,
        str(item["ETag"]) if item.get("ETag") else None,
    )


def list_keys(
    fs: Any,
    root: str,
    prefix: str,
    guard: Guard,
    sync: Callable[..., Any],
    page_size: int = PAGE_SIZE,
) -> Iterator[KeyInfo]:
    """``ListObjectsV2`` pages under ``root/prefix`` (one request per page of keys, none more).

    s3fs's ``find`` adds a HEAD and a second listing when nothing matches; a listing that
    ``ls`` makes for every experiment must cost exactly its pages.

    Args:
        fs: The s3fs filesystem.
        root: The store's root (``bucket/prefix``).
        prefix: The key prefix.
        guard: Wraps each request (error mapping).
        sync: Runs a coroutine function on ``fs``'s event loop.
        page_size: Keys per request (``MaxKeys``; S3 returns at most 1,000).

    Yields:
        Each key (relative to ``root``) with its size, mtime and ETag, in key order.
    """
    _fast_listing(fs, sync)
    bucket, key_prefix, head = split_bucket(root, prefix)
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key_prefix, "MaxKeys": page_size}
        if token:
            kwargs["ContinuationToken"] = token
        with guard():
            try:
                page = fs.call_s3("list_objects_v2", **kwargs)
            except FileNotFoundError:
                if token is None:
                    return  # no bucket: nothing listed
                raise  # a later page: the listing is cut short, not ended (StorageError)
        for item in page.get("Contents") or []:
            info = _key_info(item, head)
            if info is not None:
                yield info
        token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
        if not token:
            return


async def _list_range(
    fs: Any, args: dict[str, Any], after: str | None, upto: str | None, gate: asyncio.Semaphore
) -> list[dict[str, Any]]:
    """The objects of one range ``(after, upto]`` (full S3 keys; None: unbounded).

    The range's first page starts after ``after``; further pages follow its continuation
    tokens until a page reaches ``upto`` or the listing ends, so keys added inside the range
    since its bounds were seen are listed too (at one more request per page they fill).
    """
    kwargs = dict(args)
    if after is not None:
        kwargs["StartAfter"] = after
    items: list[dict[str, Any]] = []
    while True:
        async with gate:
            try:
                page = await fs._call_s3("list_objects_v2", **kwargs)
            except FileNotFoundError as exc:
                if "ContinuationToken" not in kwargs:
                    raise  # no bucket (if every range says so: see list_ranges)
                raise OSError(errno.EIO, f"a listing page went missing: {exc}") from exc
        contents = page.get("Contents") or []
        items.extend(contents)
        token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
        if not token or (upto is not None and contents and str(contents[-1]["Key"]) >= upto):
            break
        kwargs["ContinuationToken"] = token
    if upto is not None:
        items = [item for item in items if str(item["Key"]) <= upto]
    return items


def list_ranges(
    fs: Any,
    root: str,
    prefix: str,
    bounds: list[str],
    guard: Guard,
    sync: Callable[..., Any],
    page_size: int = PAGE_SIZE,
) -> Iterator[KeyInfo]:
    """What :func:`list_keys` yields, requested as ranges cut at ``bounds``, all at once.

    Range ``i`` is ``(bounds[i-1], bounds[i]]`` (the first starts at the prefix, the last
    runs to the end): its first page is a ``ListObjectsV2`` with ``StartAfter`` the range's
    lower bound, and it goes on page by page until it reaches its upper bound (or the end of
    the listing); keys past the upper bound belong to the next range and are dropped. Every key
    under the prefix lies in exactly one range, and each range is listed to its end, so the
    union is the listing :func:`list_keys` gives, whatever changed since the bounds were seen;
    only the requests differ: one per range when no range outgrew a page (bounds spaced by a
    little less than ``page_size`` leave room).

    Args:
        fs: The s3fs filesystem.
        root: The store's root (``bucket/prefix``).
        prefix: The key prefix.
        bounds: Keys relative to ``root``, sorted, unique, each under ``prefix``.
        guard: Wraps the requests (error mapping).
        sync: Runs a coroutine function on ``fs``'s event loop.
        page_size: Keys per request (``MaxKeys``).

    Yields:
        Each key (relative to ``root``) with its size, mtime and ETag, in key order.
    """
    if not bounds:
        yield from list_keys(fs, root, prefix, guard, sync, page_size)
        return
    _fast_listing(fs, sync)
    bucket, key_prefix, head = split_bucket(root, prefix)
    args = {"Bucket": bucket, "Prefix": key_prefix, "MaxKeys": page_size}
    edges: list[str | None] = [None, *(head + b for b in bounds), None]

    async def gather() -> list[list[dict[str, Any]] | BaseException]:
        gate = asyncio.Semaphore(RANGE_REQUESTS)
        ranges = zip(edges, edges[1:], strict=False)
        jobs = (_list_range(fs, args, a, b, gate) for a, b in ranges)
        return list(await asyncio.gather(*jobs, return_exceptions=True))

    with guard():
        answers = sync(gather)
        failed = [a for a in answers if isinstance(a, BaseException)]
        if failed and all(isinstance(a, FileNotFoundError) for a in answers):
            return  # no bucket: every range says so
        if failed:  # a range not found beside ranges that were: cut short, not empty
            raise failed[0]
    ranges = cast(list[list[dict[str, Any]]], answers)
    for items in ranges:
        for item in items:
            info = _key_info(item, head)
            if info is not None:
                yield info


def list_uploads(fs: Any, root: str, prefix: str, guard: Guard) -> Iterator[KeyInfo]:
    """Incomplete multipart uploads under ``root/prefix``: what a killed writer left.

    Yields:
        ``<key><UPLOAD_MARK><upload id>`` (key relative to ``root``), size 0, the time the
        upload was initiated.
    """
    bucket, root_key, _ = fs.split_path(root)
    head = f"{root_key}/" if root_key else ""
    args: dict[str, Any] = {"Bucket": bucket, "Prefix": head + prefix}
    while True:
        with guard():
            resp = fs.call_s3("list_multipart_uploads", **args)
        for u in resp.get("Uploads") or []:
            name = str(u["Key"])
            if name.startswith(head):
                when = to_epoch(u.get("Initiated")) or 0.0
                yield KeyInfo(f"{name[len(head) :]}{UPLOAD_MARK}{u['UploadId']}", 0, when)
        if not resp.get("IsTruncated"):
            return
        args["KeyMarker"] = resp.get("NextKeyMarker")
        args["UploadIdMarker"] = resp.get("NextUploadIdMarker")


def abort_upload(fs: Any, path: str, upload: str) -> None:
    """Abort the multipart upload ``upload`` of ``path``; one already gone is not an error."""
    bucket, s3key, _ = fs.split_path(path)
    try:
        fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=s3key, UploadId=upload)
    except FileNotFoundError:
        pass  # already completed or aborted
