"""Pack files and their indexes.

A pack (``packs/<aa>/<id>``, ``id`` = 32 random hex digits) is::

    b"MLVCPCK1" | payload | payload | ... | index blob | u64 length of index blob | b"MLVCEND1"

Payloads are chunks or encoded objects, each compressed on its own (``mlvc_core.codec``). A
pack is streamed straight to its final store key (published atomically on close) and never
modified afterwards. Its index (``index/<id>``) is written after the pack, and the same index
blob also ends the pack itself so a lost index can be rebuilt from the pack alone.

Pack index blob (the pack's trailer; also a version-1 index file)::

    b"MLVCIDX1" | blake3(body) (32 bytes) | body = zstd(msgpack({"pack": id, "entries": [...]}))

with one entry ``[id, kind, offset, stored_len, raw_len, codec]`` per payload, plus a seventh
field, the base chunk's id, for a delta (codec 3, format version 3).

Index file (format version 2, ``index/<id>``, ``id`` = the first 32 hex digits of BLAKE3 of the
file's bytes, so a copy is checked against its name), covering any
number of packs (one per write session flush; merged by writers and rewritten by ``gc``)::

    b"MLVCIDX2" | blake3(body) (32 bytes) | body = zstd(msgpack({"packs": [pack id, ...],
                                   "entries": [[id, pack no, kind, offset, stored_len, raw_len,
                                               codec(, base)], ...]}))

``pack no`` indexes ``packs``. Readers trust a pack only through an index file, so a pack whose
writer died before its index was written is invisible (and ``gc`` reclaims it).

An index (of either version) is untrusted input: :func:`decode_index` and
:func:`decode_index_file` check it against the format's limits (:func:`check_entry`,
:data:`MAX_PACK_ENTRIES`, :data:`MAX_INDEX_EXPANSION`) before anything it declares is
allocated, so memory follows the bytes an index really has, never what it claims.
"""

from __future__ import annotations

import json
import struct
import uuid
from typing import Any, NamedTuple

import msgpack

from mlvc_core.codec import CODECS, DELTA, RAW, compress_blob, decompress_blob
from mlvc_core.errors import FormatError, IntegrityError
from mlvc_core.ids import DIGEST_SIZE, ObjectId, hash_bytes
from mlvc_core.objects import CHUNK, KIND_NAMES, MAX_CHUNK_SIZE, MAX_OBJECT_SIZE
from mlvc_core.storage.base import Store, Writer

PACK_MAGIC = b"MLVCPCK1"
END_MAGIC = b"MLVCEND1"
INDEX_MAGIC = b"MLVCIDX1"
INDEX_FILE_MAGIC = b"MLVCIDX2"
PACK_PREFIX = "packs/"
INDEX_PREFIX = "index/"
HEX = frozenset("0123456789abcdef")

MAX_PACK_ENTRIES = 1 << 20
"""Most payloads one pack (and so one index) may hold; writers start a new pack before."""
MAX_INDEX_EXPANSION = 4
"""An index body decodes to at most this many times its stored size (plus 64 KiB).

Every entry carries a 32-byte BLAKE3 id, which no compressor shrinks, in about 50 bytes of
msgpack: a real index compresses by less than 2x. A body claiming more is hostile.
"""
_MAX_INDEX_BODY = MAX_PACK_ENTRIES * 64 + (64 << 10)
"""Largest decoded index body: :data:`MAX_PACK_ENTRIES` entries of at most 64 bytes each."""
MAX_INDEX_FILE_SIZE = 8 + DIGEST_SIZE + _MAX_INDEX_BODY + (1 << 20)
"""Largest index file read: its header, a body no larger than it decodes to, and slack."""
MAX_GENERATION_SIZE = 16 << 20
"""Largest generation record read (it names the index files gc left: about 40 bytes each)."""


class Location(NamedTuple):
    """Where one payload lives."""

    pack: str
    offset: int
    stored_len: int
    raw_len: int
    codec: int
    kind: int
    base: ObjectId | None = None
    """The base chunk of a delta payload (codec :data:`~mlvc_core.codec.DELTA`), else None."""


def pack_key(pack_id: str) -> str:
    """Store key of a pack."""
    return f"{PACK_PREFIX}{pack_id[:2]}/{pack_id}"


def index_file_key(index_id: str) -> str:
    """Store key of an index file."""
    return f"{INDEX_PREFIX}{index_id}"


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
                    + ([] if loc.base is None else [loc.base])
                    for oid, loc in entries
                ],
            },
            use_bin_type=True,
        )
    )
    return INDEX_MAGIC + hash_bytes(body) + body


def _index_body(data: bytes, name: str) -> Any:
    """The decoded msgpack body of an index blob or file (after its 8-byte magic).

    The body's checksum is verified first; it is decompressed and unpacked within the
    format's limits (:data:`MAX_INDEX_EXPANSION`, :data:`MAX_PACK_ENTRIES`).

    Raises:
        IntegrityError: The body does not match its recorded hash.
        FormatError, msgpack.UnpackException, ValueError: Not decodable within the limits.
    """
    digest, body = data[8 : 8 + DIGEST_SIZE], data[8 + DIGEST_SIZE :]
    if hash_bytes(body) != digest:
        raise IntegrityError(name, "index does not match its checksum")
    limit = min(_MAX_INDEX_BODY, MAX_INDEX_EXPANSION * len(body) + (64 << 10))
    return msgpack.unpackb(
        decompress_blob(body, max_size=limit),
        raw=False,
        max_array_len=MAX_PACK_ENTRIES,
        max_map_len=64,
    )


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
    try:
        doc = _index_body(data, name)
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

    ``e`` is ``[id, kind, offset, stored_len, raw_len, codec]``, followed by the base id when
    (and only when) the codec is :data:`~mlvc_core.codec.DELTA`. A chunk decodes to at most
    :data:`~mlvc_core.objects.MAX_CHUNK_SIZE` bytes and an object to at most
    :data:`~mlvc_core.objects.MAX_OBJECT_SIZE`; a raw payload is stored as it is, and a
    compressed one is kept only when smaller than its raw bytes. Only chunks are deltas, and
    never of themselves.

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
    base = e[6] if len(e) > 6 else None
    if codec == DELTA:
        if not isinstance(base, bytes) or len(base) != DIGEST_SIZE or base == oid:
            raise FormatError(f"delta {oid.hex()} names no valid base")
        if kind != CHUNK:
            raise FormatError(f"{KIND_NAMES[kind]} {oid.hex()} is stored as a delta")
    elif base is not None:
        raise FormatError(f"{oid.hex()} names a base but is not a delta")
    limit = MAX_CHUNK_SIZE if kind == CHUNK else MAX_OBJECT_SIZE
    if raw_len > limit:
        raise FormatError(
            f"{KIND_NAMES[kind]} {oid.hex()} declares {raw_len} bytes; the format allows {limit}"
        )
    if stored_len > raw_len + 1024 or (codec == RAW and stored_len != raw_len):
        raise FormatError(f"{oid.hex()} declares {stored_len} stored bytes for {raw_len}")
    if offset < len(PACK_MAGIC):
        raise FormatError(f"{oid.hex()} has offset {offset}, inside the pack header")
    return ObjectId(oid), Location(
        pack_id, offset, stored_len, raw_len, codec, kind, None if base is None else ObjectId(base)
    )


class IndexFile(NamedTuple):
    """A decoded index file: the packs it covers and their payloads' locations."""

    packs: tuple[str, ...]
    entries: list[tuple[ObjectId, Location]]


def encode_index_file(entries: list[tuple[ObjectId, Location]]) -> bytes:
    """Encode an index file covering every pack ``entries`` name (format version 2)."""
    packs: dict[str, int] = {}
    rows = []
    for oid, loc in entries:
        n = packs.setdefault(loc.pack, len(packs))
        row = [oid, n, loc.kind, loc.offset, loc.stored_len, loc.raw_len, loc.codec]
        rows.append(row if loc.base is None else [*row, loc.base])
    body = compress_blob(msgpack.packb({"packs": list(packs), "entries": rows}, use_bin_type=True))
    return INDEX_FILE_MAGIC + hash_bytes(body) + body


def index_file_id(blob: bytes) -> str:
    """The id of a version-2 index file: the first 32 hex digits of BLAKE3 of its bytes.

    Named by content, an index file (or a locally cached copy of one) is checked against
    its name before it is believed.
    """
    return hash_bytes(blob).hex()[:32]


def decode_index_file(data: bytes, name: str, index_id: str | None = None) -> IndexFile:
    """Decode and verify an index file of either version (stored as ``index_id``, if given).

    A version-1 file is one pack's index blob, named by its pack (see :func:`decode_index`);
    a version-2 file is named by :func:`index_file_id`.

    Raises:
        IntegrityError: The body does not match its recorded hash, or the file is not the
            one ``index_id`` names.
        FormatError: Not an index file.
    """
    if data[:8] == INDEX_MAGIC:
        pack_id, entries = decode_index(data, name, index_id)
        return IndexFile((pack_id,), entries)
    if data[:8] != INDEX_FILE_MAGIC:
        raise FormatError(f"index {name} has no index header")
    if index_id is not None and index_file_id(data) != index_id:
        raise IntegrityError(name, "index file does not match its name")
    try:
        doc = _index_body(data, name)
        if not isinstance(doc, dict):
            raise FormatError("not a map")
        packs, rows = doc["packs"], doc["entries"]
        if not isinstance(packs, list) or not isinstance(rows, list):
            raise FormatError("packs and entries are not lists")
        for p in packs:
            if not isinstance(p, str) or len(p) != 32 or not all(c in HEX for c in p):
                raise FormatError(f"bad pack id {str(p)[:40]!r}")
        out = []
        for e in rows:
            if not isinstance(e, list) or len(e) < 7 or type(e[1]) is not int:
                raise FormatError(f"entry {str(e)[:80]} is not a list of 7 fields")
            if not 0 <= e[1] < len(packs):
                raise FormatError(f"entry names pack number {e[1]} of {len(packs)}")
            out.append(check_entry(packs[e[1]], [e[0], *e[2:]]))
    except FormatError as exc:
        raise FormatError(f"malformed index {name}: {exc}") from exc
    except (KeyError, TypeError, ValueError, IndexError, msgpack.UnpackException) as exc:
        raise FormatError(f"malformed index {name}: {exc}") from exc
    return IndexFile(tuple(packs), out)


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
    """Appends payloads to one new pack; :meth:`finish` publishes it (not its index file)."""

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
        self,
        oid: ObjectId,
        kind: int,
        codec: int,
        payload: bytes | memoryview,
        raw_len: int,
        base: ObjectId | None = None,
    ) -> Location:
        """Append one payload (``base``: a delta's base chunk); return where it went."""
        assert self._out is not None, "pack already finished"
        loc = Location(self.pack_id, self.size, len(payload), raw_len, codec, kind, base)
        self._out.write(payload)
        self.size += len(payload)
        self.entries.append((oid, loc))
        return loc

    def finish(self) -> list[tuple[ObjectId, Location]]:
        """Close (publish) the pack, its own index blob as trailer. Returns the entries.

        The caller then publishes an index file covering them (:func:`encode_index_file`):
        until it does, the pack is invisible to readers.
        """
        assert self._out is not None, "pack already finished"
        blob = encode_index(self.pack_id, self.entries)
        self._out.write(blob)
        self._out.write(struct.pack("<Q", len(blob)) + END_MAGIC)
        out, self._out = self._out, None
        out.close()
        return self.entries

    def abort(self) -> None:
        """Discard the pack."""
        if self._out is not None:
            self._out.abort()
            self._out = None


GENERATION_KEY = "generation"


class Generation(NamedTuple):
    """The repository generation: gc advances it whenever it deletes anything.

    ``indexes`` names every index file gc left behind (all others that existed before it ran
    are gone or about to be); files written after it are not named. None for generation 0
    (no gc has deleted anything yet).
    """

    number: int
    indexes: tuple[str, ...] | None

    def encode(self, when: float) -> bytes:
        """JSON form (``when``: seconds since the epoch, for people reading it)."""
        doc = {"generation": self.number, "indexes": list(self.indexes or ()), "time": when}
        return json.dumps(doc).encode()

    @classmethod
    def decode(cls, data: bytes) -> Generation:
        """Parse a generation record.

        Raises:
            FormatError: Not one.
        """
        try:
            doc = json.loads(data)
            number = int(doc["generation"])
            indexes = tuple(str(i) for i in doc["indexes"])
        except (ValueError, TypeError, KeyError) as exc:
            raise FormatError(f"malformed generation record: {exc}") from exc
        if number < 0 or any(not i or "/" in i for i in indexes):
            raise FormatError("malformed generation record")
        return cls(number, indexes)
