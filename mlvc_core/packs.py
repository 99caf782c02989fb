"""Pack files and their indexes.

A pack (``packs/<aa>/<id>``, ``id`` = 32 random hex digits) is::

    b"MLVCPCK1" | payload | payload | ... | index blob | u64 length of index blob | b"MLVCEND1"

Payloads are chunks or encoded objects, each compressed on its own (``mlvc_core.codec``). A
pack is streamed straight to its final store key (published atomically on close) and never
modified afterwards. Its index (``index/<id>``) is written after the pack, and the same index
blob also ends the pack itself so a lost index can be rebuilt from the pack alone.

Index blob::

    b"MLVCIDX1" | blake3(body) (32 bytes) | body = zstd(msgpack({"pack": id, "entries": [...]}))

with one entry ``[id, kind, offset, stored_len, raw_len, codec]`` per payload. Readers trust a
pack only through its index, so a pack whose writer died before the index was written is
invisible (and ``gc`` reclaims it after the grace period).

An index is untrusted input: :func:`decode_index` checks it against the format's limits
(:func:`check_entry`, :data:`MAX_PACK_ENTRIES`, :data:`MAX_INDEX_EXPANSION`) before anything
it declares is allocated, so memory follows the bytes an index really has, never what it claims.
"""

from __future__ import annotations

import struct
import uuid
from typing import NamedTuple

import msgpack

from mlvc_core.codec import CODECS, RAW, compress_blob, decompress_blob
from mlvc_core.errors import FormatError, IntegrityError
from mlvc_core.ids import DIGEST_SIZE, ObjectId, hash_bytes
from mlvc_core.objects import CHUNK, KIND_NAMES, MAX_CHUNK_SIZE, MAX_OBJECT_SIZE
from mlvc_core.storage.base import Store, Writer

PACK_MAGIC = b"MLVCPCK1"
END_MAGIC = b"MLVCEND1"
INDEX_MAGIC = b"MLVCIDX1"
PACK_PREFIX = "packs/"
INDEX_PREFIX = "index/"

MAX_PACK_ENTRIES = 1 << 20
"""Most payloads one pack (and so one index) may hold; writers start a new pack before."""
MAX_INDEX_EXPANSION = 4
"""An index body decodes to at most this many times its stored size (plus 64 KiB).

Every entry carries a 32-byte BLAKE3 id, which no compressor shrinks, in about 50 bytes of
msgpack: a real index compresses by less than 2x. A body claiming more is hostile.
"""
_MAX_INDEX_BODY = MAX_PACK_ENTRIES * 64 + (64 << 10)
"""Largest decoded index body: :data:`MAX_PACK_ENTRIES` entries of at most 64 bytes each."""


class Location(NamedTuple):
    """Where one payload lives."""

    pack: str
    offset: int
    stored_len: int
    raw_len: int
    codec: int
    kind: int


def pack_key(pack_id: str) -> str:
    """Store key of a pack."""
    return f"{PACK_PREFIX}{pack_id[:2]}/{pack_id}"


def index_key(pack_id: str) -> str:
    """Store key of a pack's index."""
    return f"{INDEX_PREFIX}{pack_id}"


def new_pack_id() -> str:
    """A fresh random pack id."""
    return uuid.uuid4().hex


def encode_index(pack_id: str, entries: list[tuple[ObjectId, Location]]) -> bytes:
    """Encode an index blob."""
    body = compress_blob(
        msgpack.packb(
            {
                "pack": pack_id,
                "entries": [
                    [oid, loc.kind, loc.offset, loc.stored_len, loc.raw_len, loc.codec]
                    for oid, loc in entries
                ],
            },
            use_bin_type=True,
        )
    )
    return INDEX_MAGIC + hash_bytes(body) + body


def decode_index(
    data: bytes, name: str, pack_id: str | None = None
) -> tuple[str, list[tuple[ObjectId, Location]]]:
    """Decode and verify an index blob (of pack ``pack_id``, if given).

    Raises:
        IntegrityError: The body does not match its recorded hash.
        FormatError: Not an index blob, the index of another pack, or an index breaking the
            format's limits (see :func:`check_entry`).
    """
    if data[:8] != INDEX_MAGIC:
        raise FormatError(f"index {name} has no index header")
    digest, body = data[8 : 8 + DIGEST_SIZE], data[8 + DIGEST_SIZE :]
    if hash_bytes(body) != digest:
        raise IntegrityError(name, "index does not match its checksum")
    limit = min(_MAX_INDEX_BODY, MAX_INDEX_EXPANSION * len(body) + (64 << 10))
    try:
        doc = msgpack.unpackb(
            decompress_blob(body, max_size=limit),
            raw=False,
            max_array_len=MAX_PACK_ENTRIES,
            max_map_len=64,
        )
        if not isinstance(doc, dict) or not isinstance(doc.get("pack"), str):
            raise FormatError("no pack id")
        if pack_id is not None and doc["pack"] != pack_id:
            raise FormatError(f"it is the index of pack {doc['pack'][:32]!r}")
        pack_id = doc["pack"]
        raw_entries = doc["entries"]
        if not isinstance(raw_entries, list) or len(raw_entries) > MAX_PACK_ENTRIES:
            raise FormatError(f"entries are not a list of at most {MAX_PACK_ENTRIES}")
        out = [check_entry(pack_id, e) for e in raw_entries]
    except FormatError as exc:
        raise FormatError(f"malformed index {name}: {exc}") from exc
    except (KeyError, TypeError, ValueError, IndexError, msgpack.UnpackException) as exc:
        raise FormatError(f"malformed index {name}: {exc}") from exc
    if len({oid for oid, _ in out}) != len(out):
        raise FormatError(f"malformed index {name}: an id is listed twice")
    return pack_id, out


def _int(value: object) -> int:
    if type(value) is not int or value < 0:
        raise FormatError(f"{value!r} is not a non-negative integer")
    return value


def check_entry(pack_id: str, e: object) -> tuple[ObjectId, Location]:
    """Validate one index entry against the format's limits; return it decoded.

    A chunk decodes to at most :data:`~mlvc_core.objects.MAX_CHUNK_SIZE` bytes and an object
    to at most :data:`~mlvc_core.objects.MAX_OBJECT_SIZE`; a raw payload is stored as it is,
    and a compressed one is kept only when smaller than its raw bytes.

    Raises:
        FormatError: A malformed entry, or one declaring more than the format allows.
    """
    if not isinstance(e, list) or len(e) < 6:
        raise FormatError(f"an entry ({type(e).__name__}) is not a list of 6 fields")
    oid, kind, offset, stored_len, raw_len, codec = e[:6]
    if not isinstance(oid, bytes) or len(oid) != DIGEST_SIZE:
        raise FormatError("an entry's id is not an object id")
    kind, offset, stored_len, raw_len, codec = map(_int, (kind, offset, stored_len, raw_len, codec))
    if kind not in KIND_NAMES or codec not in CODECS:
        raise FormatError(f"entry {oid.hex()} has unknown kind {kind} or codec {codec}")
    limit = MAX_CHUNK_SIZE if kind == CHUNK else MAX_OBJECT_SIZE
    if raw_len > limit:
        raise FormatError(
            f"{KIND_NAMES[kind]} {oid.hex()} declares {raw_len} bytes; the format allows {limit}"
        )
    if stored_len > raw_len + 1024 or (codec == RAW and stored_len != raw_len):
        raise FormatError(f"{oid.hex()} declares {stored_len} stored bytes for {raw_len}")
    if offset < len(PACK_MAGIC):
        raise FormatError(f"{oid.hex()} has offset {offset}, inside the pack header")
    return ObjectId(oid), Location(pack_id, offset, stored_len, raw_len, codec, kind)


def read_pack_trailer(store: Store, pack_id: str, size: int) -> bytes:
    """The index blob stored at the end of a pack (to rebuild a lost index).

    Raises:
        FormatError: The pack has no valid trailer (its writer died before closing it).
    """
    key = pack_key(pack_id)
    if size < 8 + 16:
        raise FormatError(f"pack {pack_id} is truncated")
    tail = store.read_range(key, size - 16, 16)
    if tail[8:] != END_MAGIC:
        raise FormatError(f"pack {pack_id} has no trailer")
    (n,) = struct.unpack("<Q", tail[:8])
    if n > size - 24:
        raise FormatError(f"pack {pack_id} has a bad trailer")
    return store.read_range(key, size - 16 - n, n)


class PackWriter:
    """Appends payloads to one new pack; :meth:`finish` publishes pack then index."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.pack_id = new_pack_id()
        self._out: Writer | None = store.open_write(pack_key(self.pack_id))
        self._out.write(PACK_MAGIC)
        self.size = len(PACK_MAGIC)
        self.entries: list[tuple[ObjectId, Location]] = []

    @property
    def full(self) -> bool:
        """True once the pack holds :data:`MAX_PACK_ENTRIES` payloads (start another)."""
        return len(self.entries) >= MAX_PACK_ENTRIES

    def add(
        self, oid: ObjectId, kind: int, codec: int, payload: bytes | memoryview, raw_len: int
    ) -> Location:
        """Append one payload; return where it went."""
        assert self._out is not None, "pack already finished"
        loc = Location(self.pack_id, self.size, len(payload), raw_len, codec, kind)
        self._out.write(payload)
        self.size += len(payload)
        self.entries.append((oid, loc))
        return loc

    def finish(self) -> list[tuple[ObjectId, Location]]:
        """Close the pack, then write its index. Returns the entries."""
        assert self._out is not None, "pack already finished"
        blob = encode_index(self.pack_id, self.entries)
        self._out.write(blob)
        self._out.write(struct.pack("<Q", len(blob)) + END_MAGIC)
        out, self._out = self._out, None
        out.close()
        self.store.write(index_key(self.pack_id), blob)
        return self.entries

    def abort(self) -> None:
        """Discard the pack."""
        if self._out is not None:
            self._out.abort()
            self._out = None
