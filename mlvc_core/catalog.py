"""Ref catalogs: every ref under a prefix in one compacted object, read back incrementally.

Listing thousands of refs by reading each one costs a request per ref. A catalog is one object,
``<prefix>.catalog`` (``refs/experiments.catalog`` for ``refs/experiments/``), holding a copy of
every ref under the prefix as it was when the catalog was written, each with the *token* of the
state it was copied from. :func:`scan` lists the prefix (one LIST request per 1,000 keys, which
also lists the catalog itself), takes every ref whose listed token equals the token recorded for
it, from the local cache first and the catalog second, and reads only the refs that changed
since. The listing's pages are requested at once, as ranges between keys the previous listing
saw (:data:`BOUNDS_META`). A token is the version the backend lists (S3 ETag, GCS generation:
exact, it names the bytes), or ``size:mtime`` where listings carry no version (local disk), then
trusted only if the copy was read more than ``racy`` seconds after that mtime (a later write in
the same timestamp tick would otherwise go unnoticed, as git's "racy clean" problem). A caller
that keeps its own decoded copies passes their tokens as ``held``: refs they answer are not
loaded at all.

Compaction: when more refs are newer than the catalog than :func:`compact_after` allows, the
scanning process rewrites it from what it just validated, by compare-and-swap on the version it
read (a lost race means someone else compacted: nothing to do). Any process that lists refs may
compact (``ls``, and a tracked run when it stops). A catalog is only ever a hint: a copy whose
token no longer matches is ignored, a catalog that cannot be read or written is ignored, and a
damaged local cache is rebuilt. Format: ``docs/format.md`` ("Ref catalogs").

Must not import ``mlvc`` or know what a ref's document means: documents are opaque bytes here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import msgpack

from mlvc_core.codec import compress_blob, decompress_blob
from mlvc_core.errors import (
    FormatError,
    IntegrityError,
    KeyNotFound,
    PreconditionFailed,
    StorageError,
)
from mlvc_core.ids import DIGEST_SIZE, hash_bytes
from mlvc_core.refcache import Entry, LocalCache
from mlvc_core.storage.base import KeyInfo, Store, Version

__all__ = [
    "CATALOG_MAGIC",
    "Copied",
    "Entry",
    "LocalCache",
    "ScanResult",
    "catalog_key",
    "compact_after",
    "decode_catalog",
    "encode_catalog",
    "scan",
]

CATALOG_MAGIC = b"MLVCCAT1"
MAX_CATALOG_BYTES = 256 << 20
"""Largest decoded catalog accepted (about 300,000 experiment refs)."""
COMPACT_MIN = 32
"""A catalog is rewritten once more than ``max(COMPACT_MIN, refs // 16)`` refs are newer."""
READ_CATALOG_MIN = 8
"""Fewer refs than this missing from the local cache are read one by one, not via the catalog."""
MTIME_SLACK = 2.0
"""Seconds: without reading the catalog, a ref counts as newer than it only if listed with an
mtime this much after the catalog's (refs written while it was compacted may be missed: they
cost a cold reader a GET each, never a wrong answer)."""
_WORKERS = 16
BOUNDS_META = "bounds:"
"""Local cache meta entry (``bounds:<prefix>``): the keys where the last listing of ``prefix``
was cut into ranges (:func:`range_bounds_of`), a JSON list; the next listing requests those
ranges at once (:meth:`~mlvc_core.storage.base.Store.list_ranges`)."""


class Copied(Protocol):
    """What makes a copy of a ref trustworthy: the token it was read under (:class:`Entry`)."""

    @property
    def token(self) -> str:
        """The listed version of the state copied, or ``size:mtime``."""

    @property
    def exact(self) -> bool:
        """True if ``token`` is a backend version."""

    @property
    def read_at(self) -> float:
        """When the copy was read (epoch seconds)."""


def catalog_key(prefix: str) -> str:
    """The key of the catalog of ``prefix`` (``refs/experiments.catalog``).

    Returns:
        The store key.
    """
    return prefix.rstrip("/") + ".catalog"


def compact_after(refs: int) -> int:
    """How many refs may be newer than a catalog of ``refs`` refs before it is rewritten."""
    return max(COMPACT_MIN, refs // 16)


def listed_token(info: KeyInfo) -> tuple[str, bool]:
    """``(token, exact)`` of a listed key."""
    if info.version is not None:
        return info.version, True
    return f"{info.size}:{info.mtime!r}", False


def is_current(entry: Copied, info: KeyInfo, racy: float) -> bool:
    """True if ``entry`` is a copy of the state ``info`` lists."""
    token, exact = listed_token(info)
    if entry.token != token or entry.exact != exact:
        return False
    return exact or entry.read_at - info.mtime > racy


# ---------------------------------------------------------------------------------- encoding


def encode_catalog(prefix: str, entries: Iterable[Entry], written_at: float) -> bytes:
    """The bytes of a catalog object: magic, BLAKE3 of the body, zstd(msgpack) body."""
    body = compress_blob(
        msgpack.packb(
            {
                "prefix": prefix,
                "written_at": written_at,
                "entries": [[e.key, e.token, e.exact, e.read_at, e.doc] for e in entries],
            },
            use_bin_type=True,
        )
    )
    return CATALOG_MAGIC + hash_bytes(body) + body


def decode_catalog(data: bytes, prefix: str) -> dict[str, Entry]:
    """Decode and verify a catalog object; keep only entries under ``prefix``.

    Raises:
        IntegrityError: The body does not match its checksum.
        FormatError: Not a catalog, or malformed.
    """
    name = catalog_key(prefix)
    if data[: len(CATALOG_MAGIC)] != CATALOG_MAGIC:
        raise FormatError(f"{name} is not a ref catalog")
    start = len(CATALOG_MAGIC)
    digest, body = data[start : start + DIGEST_SIZE], data[start + DIGEST_SIZE :]
    if hash_bytes(body) != digest:
        raise IntegrityError(name, "catalog does not match its checksum")
    try:
        doc = msgpack.unpackb(decompress_blob(body, MAX_CATALOG_BYTES), raw=False)
        out = {}
        for key, token, exact, read_at, ref_doc in doc["entries"]:
            if isinstance(key, str) and key.startswith(prefix):
                out[key] = Entry(key, str(token), bool(exact), float(read_at), bytes(ref_doc))
    except (KeyError, TypeError, ValueError, msgpack.UnpackException) as exc:
        raise FormatError(f"malformed catalog {name}: {exc}") from exc
    return out


# ---------------------------------------------------------------------------------- scanning


@dataclass
class ScanResult:
    """What :func:`scan` found and what it cost.

    Attributes:
        docs: Store key -> bytes of every ref listed under the prefix, except those ``held``.
        entries: The same refs as the copies read or taken (token, read time, bytes).
        held: Listed refs the caller's own copies answered (no bytes loaded or read).
        listed: Every listed ref, in key order (those in ``docs`` and those ``held``).
        refs_read: Refs read one by one (they changed since the copies this process had).
        catalog_read: Whether the catalog object was read.
        compacted: Whether this scan rewrote the catalog.
        newer: Refs newer than the catalog (as far as this scan could tell).
    """

    docs: dict[str, bytes] = field(default_factory=dict)
    entries: dict[str, Entry] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)
    listed: list[str] = field(default_factory=list)
    refs_read: int = 0
    catalog_read: bool = False
    compacted: bool = False
    newer: int = 0


def _read_one(store: Store, key: str, info: KeyInfo) -> Entry | None:
    read_at = time.time()
    try:
        data, version = store.read_versioned(key)
    except KeyNotFound:
        return None  # deleted since the listing
    token, exact = listed_token(info)
    if exact:
        token = str(version)  # the version of exactly these bytes
    return Entry(key, token, exact, read_at, data)


def _read_many(store: Store, keys: list[str], listed: Mapping[str, KeyInfo]) -> list[Entry]:
    """Read ``keys`` (in parallel on remote stores); refs deleted meanwhile are left out."""
    if len(keys) > 4 and not store.is_local:
        with ThreadPoolExecutor(_WORKERS) as pool:
            got = list(pool.map(lambda k: _read_one(store, k, listed[k]), keys))
    else:
        got = [_read_one(store, k, listed[k]) for k in keys]
    return [e for e in got if e is not None]


def scan(
    store: Store,
    prefix: str,
    cache: LocalCache,
    racy: float,
    compact: bool = True,
    compact_threshold: int | None = None,
    held: Callable[[], Mapping[str, Copied]] | None = None,
) -> ScanResult:
    """Every ref under ``prefix``, reading only those changed since the local cache or catalog.

    Args:
        store: Where the refs live.
        prefix: A key prefix ending in ``/`` (``refs/experiments/``).
        cache: This machine's copies (updated in place).
        racy: Seconds after its mtime before a ``size:mtime`` copy is trusted.
        compact: Rewrite the catalog when too many refs are newer than it.
        compact_threshold: Override :func:`compact_after` (tests, benchmarks).
        held: Gives key -> the token of a copy the caller keeps in its own form (decoded
            rows); called once the listing is done, so the caller may load them meanwhile.
            A listed ref whose held copy is current (:func:`is_current`) is reported in
            ``held`` and its bytes are neither loaded nor read.

    Returns:
        A :class:`ScanResult`.

    Raises:
        StorageError: The listing or a ref read failed (catalog failures are ignored).
    """
    ckey = catalog_key(prefix)
    listed: dict[str, KeyInfo] = {}
    cat_info: KeyInfo | None = None
    bounds = _bounds(cache.get_meta(BOUNDS_META + prefix))
    for info in store.list_ranges(prefix.rstrip("/"), bounds):
        if info.key.startswith(prefix):
            listed[info.key] = info
        elif info.key == ckey:
            cat_info = info
    now_bounds = range_bounds_of(list(listed), store.list_page_size)
    if now_bounds != bounds:
        cache.set_meta(BOUNDS_META + prefix, json.dumps(now_bounds))
    result = ScanResult()
    copies = held() if held is not None else None
    if copies:
        result.held = {
            k for k, info in listed.items() if k in copies and is_current(copies[k], info, racy)
        }
    wanted = [k for k in listed if k not in result.held]
    if result.held:
        local = cache.load(prefix, wanted) if wanted else {}
        cached = cache.keys(prefix)
    else:
        local = cache.load(prefix)
        cached = list(local)
    used: dict[str, Entry] = {}
    stale: list[str] = []
    for key in wanted:
        hit = local.get(key)
        if hit is not None and is_current(hit, listed[key], racy):
            used[key] = hit
        else:
            stale.append(key)

    catalog: dict[str, Entry] | None = None
    cat_version: Version | None = None
    damaged = False
    cat_token = listed_token(cat_info)[0] if cat_info is not None else None
    adopted: list[Entry] = []
    if (
        cat_info is not None
        and stale
        and len(stale) >= min(READ_CATALOG_MIN, len(listed))
        and cache.get_meta(ckey) != cat_token
    ):
        catalog, cat_version = _read_catalog(store, prefix)
        damaged = catalog is None and cat_version is not None
        result.catalog_read = catalog is not None
        if catalog is not None:
            still = []
            for key in stale:
                hit = catalog.get(key)
                if hit is not None and is_current(hit, listed[key], racy):
                    used[key] = hit
                    adopted.append(hit)
                else:
                    still.append(key)
            stale = still
            if cat_token is not None:
                cache.set_meta(ckey, cat_token)

    fresh = _read_many(store, stale, listed) if stale else []
    used.update((e.key, e) for e in fresh)
    result.refs_read = len(stale)
    cache.update(adopted + fresh, (k for k in cached if k not in listed))
    result.listed = [k for k in listed if k in used or k in result.held]
    result.entries = {k: used[k] for k in result.listed if k in used}
    result.docs = {k: e.doc for k, e in result.entries.items()}

    if catalog is not None:
        result.newer = sum(
            1
            for k, info in listed.items()
            if k not in catalog or not is_current(catalog[k], info, racy)
        ) + sum(1 for k in catalog if k not in listed)
    elif cat_info is not None and not damaged:
        result.newer = sum(
            1 for info in listed.values() if info.mtime > cat_info.mtime + MTIME_SLACK
        )
    else:
        result.newer = len(listed)
    threshold = compact_after(len(listed)) if compact_threshold is None else compact_threshold
    if compact and result.newer > threshold:
        if cat_info is not None and catalog is None:
            _, cat_version = _read_catalog(store, prefix)
        if result.held:
            used.update(_copies_of(store, cache, sorted(result.held), listed, racy))
        entries = [used[k] for k in sorted(used)]
        written = _write_catalog(store, prefix, entries, cat_version, cat_info is not None)
        result.compacted = written is not None
        if written is not None:
            # What this process wrote it already has; a listed version names it exactly.
            exact = any(i.version is not None for i in listed.values())
            cache.set_meta(ckey, str(written) if exact else "")
    return result


def range_bounds_of(keys: list[str], page_size: int) -> list[str]:
    """Where to cut the next listing of ``keys`` (sorted) into ranges of a page each.

    As many ranges as the listing has pages, of equal size (the slack of the last page spread
    over all): ``keys[s-1], keys[2s-1], ...`` for ``s = ceil(n / ceil(n / page_size))``, the
    last key excluded (a range after it would be empty).
    """
    if len(keys) <= page_size:
        return []
    ranges = -(-len(keys) // page_size)
    spacing = -(-len(keys) // ranges)
    return keys[spacing - 1 : len(keys) - 1 : spacing]


def _bounds(text: str | None) -> list[str]:
    """The remembered range bounds (a hint: anything malformed counts as none)."""
    try:
        value = json.loads(text) if text else []
    except ValueError:
        return []
    return [b for b in value if isinstance(b, str)] if isinstance(value, list) else []


def _copies_of(
    store: Store, cache: LocalCache, keys: list[str], listed: Mapping[str, KeyInfo], racy: float
) -> dict[str, Entry]:
    """Current copies of ``keys`` with their bytes: from the local cache, else read."""
    local = cache.load("", keys)
    out = {k: e for k, e in local.items() if is_current(e, listed[k], racy)}
    fresh = _read_many(store, [k for k in keys if k not in out], listed)
    cache.update(fresh, ())
    out.update((e.key, e) for e in fresh)
    return out


def _read_catalog(store: Store, prefix: str) -> tuple[dict[str, Entry] | None, Version | None]:
    """The catalog's entries and version, or ``(None, None)`` if absent or unreadable."""
    try:
        data, version = store.read_versioned(catalog_key(prefix))
    except (KeyNotFound, StorageError):
        return None, None
    try:
        return decode_catalog(data, prefix), version
    except (FormatError, IntegrityError):
        return None, version  # damaged: the next compaction replaces it


def _write_catalog(
    store: Store, prefix: str, entries: list[Entry], version: Version | None, existed: bool
) -> Version | None:
    """Replace the catalog by compare-and-swap; its new version, or None if not written."""
    if existed and version is None:
        return None  # could not read the catalog's version: leave it to another scan
    blob = encode_catalog(prefix, entries, time.time())
    try:
        return store.write_if(catalog_key(prefix), blob, version)
    except (PreconditionFailed, StorageError, OSError):
        return None  # someone else compacted, or this process may not write: a hint only
