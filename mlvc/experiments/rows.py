"""The listing's row cache: experiment summaries already decoded and checked, on this machine.

Without it, every ``mlvc ls`` decodes and checks every ref document again (JSON, the schema
checks, the typed summary: about 40 us a ref, 0.4 s at 10,000 experiments) although nothing
changed. One file per ref prefix, ``<cache dir>/<name>.rows``, holds each ref's summary in the
typed form it was checked into (:meth:`ExperimentSummary.to_row`), with the *token* of the
state it was decoded from (the version the listing names: S3 ETag, GCS generation, or
``size:mtime``; see :mod:`mlvc_core.catalog`). A row answers for a ref only if the listing shows
that same token (:func:`mlvc_core.catalog.is_current`, the rule for every cached copy of a ref).

The file is a hint (docs/format.md, "Local caches are hints"): one that is missing, truncated,
fails its checksum, or was written for another repository, prefix or row layout is ignored as a
whole and rewritten after the listing. Format: docs/format.md ("Listing rows").

This module owns the file; it neither lists nor decodes refs.
"""

from __future__ import annotations

import contextlib
import gc
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, cast

import msgpack

from mlvc.experiments.summary import ROW_FIELDS, ExperimentSummary
from mlvc_core.ids import DIGEST_SIZE, ObjectId, hash_bytes

__all__ = ["ROWS_MAGIC", "Row", "load_rows", "paused_gc", "save_rows"]

ROWS_MAGIC = b"MLVCROW1"
ROWS_VERSION = 1
"""Bumped whenever what a row holds, or how a ref is checked before it becomes one, changes."""
MAX_ROWS_BYTES = 1 << 30
"""A rows file larger than this is ignored (about 2 million experiments)."""


class Row(NamedTuple):
    """One experiment ref, checked, with the token of the state it was read in."""

    token: str
    """The listed version of the ref's state (or ``size:mtime``)."""
    exact: bool
    """True if ``token`` is a backend version (names the bytes)."""
    read_at: float
    """When the ref's bytes were read (epoch seconds, this machine's clock)."""
    target: ObjectId
    """The commit the ref points at."""
    summary: ExperimentSummary


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while thousands of rows are built.

    Decoding a listing creates hundreds of thousands of small containers, none of them in a
    cycle; each collection the allocations trigger walks every live object, which measured at
    a quarter of the listing's CPU. Reference counting still frees everything as usual.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _header(repo_id: str, prefix: str) -> list[Any]:
    return [ROWS_VERSION, list(ROW_FIELDS), repo_id, prefix]


def load_rows(path: Path, repo_id: str, prefix: str) -> dict[str, Row]:
    """The rows kept in ``path`` for ``repo_id``'s refs under ``prefix`` (key -> row).

    Returns:
        Every row, or nothing at all if the file is absent, unreadable, damaged or foreign.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_ROWS_BYTES + 1)
    except OSError:
        return {}
    start = len(ROWS_MAGIC)
    if len(data) > MAX_ROWS_BYTES or data[:start] != ROWS_MAGIC:
        return {}
    digest, body = data[start : start + DIGEST_SIZE], data[start + DIGEST_SIZE :]
    if hash_bytes(body) != digest:
        return {}
    try:
        header, presents, rows = msgpack.unpackb(body, raw=False)
        if header != _header(repo_id, prefix):
            return {}
        sets = [frozenset(names) for names in presents]
        out: dict[str, Row] = {}
        for key, token, exact, read_at, target, summary in rows:
            if not (isinstance(key, str) and key.startswith(prefix)):
                return {}
            summary[-1] = sets[summary[-1]]
            out[key] = Row(
                str(token),
                bool(exact),
                float(read_at),
                ObjectId(bytes(target)),
                ExperimentSummary.from_row(summary),
            )
    except (TypeError, ValueError, IndexError, msgpack.UnpackException):
        return {}
    return out


def _packed(key: str, row: Row, presents: dict[tuple[str, ...], int]) -> bytes | None:
    summary = row.summary.to_row()
    names = tuple(summary[-1])
    summary[-1] = presents.setdefault(names, len(presents))  # rows share a few: a table
    try:
        return cast(
            bytes,
            msgpack.packb(
                [key, row.token, row.exact, row.read_at, bytes(row.target), summary],
                use_bin_type=True,
            ),
        )
    except (TypeError, ValueError, OverflowError):
        return None  # not representable (an integer beyond 64 bits...): decoded every time


def save_rows(path: Path, repo_id: str, prefix: str, rows: Mapping[str, Row]) -> None:
    """Replace ``path`` with ``rows`` (atomically: readers see the old file or the new one).

    A row msgpack cannot hold is left out; a file that cannot be written is left as it was
    (the next listing decodes those refs again).
    """
    presents: dict[tuple[str, ...], int] = {}
    packed = [p for p in (_packed(k, rows[k], presents) for k in sorted(rows)) if p is not None]
    head = msgpack.packb(
        [_header(repo_id, prefix), [list(names) for names in presents]], use_bin_type=True
    )
    body = _array3(head, packed)
    data = ROWS_MAGIC + hash_bytes(body) + body
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass  # only a cache
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _array3(head: bytes, items: list[bytes]) -> bytes:
    """``[header, presents, [item, ...]]`` in msgpack, from the packed parts.

    ``head`` is ``[header, presents]`` packed: a one-byte array header (two elements), then
    the two elements, which are kept.
    """
    packer = msgpack.Packer(use_bin_type=True)
    return b"".join(
        (packer.pack_array_header(3), head[1:], packer.pack_array_header(len(items)), *items)
    )
