"""Pack files and their indexes.

A pack (``packs/<aa>/<id>``, ``id`` = 32 random hex digits) is::

    b"MLVCPCK1" | payload | payload | ... | index blob | u64 length of index blob | b"MLVCEND1"

Payloads are chunks or encoded objects, each compressed on its own (``mlvc_core.codec``). A
pack is streamed straight to its final store key (published atomically on close) and never
modified afterwards. Its index (``index/<id>``) is written after the pack, and the same index
blob also ends the pack itself so a lost index can be rebuilt from the pack alone.

Pack index blob (the pack's trailer; also a version-1 index file)::

    b"MLVCIDX1" | blake3(body) (32 bytes) | body = zstd(msgpack({"pack": id, "entries": [...]}))

with one entry ``[id, kind, offset, stored_len, raw_len, codec]`` per payload.

Index file (format version 2, ``index/<id>``, ``id`` = 32 random hex digits), covering any
number of packs (one per write session flush; merged by writers and rewritten by ``gc``)::

    b"MLVCIDX2" | blake3(body) (32 bytes) | body = zstd(msgpack({"packs": [pack id, ...],
                                   "entries": [[id, pack no, kind, offset, stored_len, raw_len,
                                               codec], ...]}))

``pack no`` indexes ``packs``. Readers trust a pack only through an index file, so a pack whose
writer died before its index was written is invisible (and ``gc`` reclaims it).
"""

from __future__ import annotations

import json
import struct
import uuid
from typing import NamedTuple

import msgpack

from mlvc_core.codec import compress_blob, decompress_blob
from mlvc_core.errors import FormatError, IntegrityError
from mlvc_core.ids import DIGEST_SIZE, ObjectId, hash_bytes
from mlvc_core.storage.base import Store, Writer

PACK_MAGIC = b"MLVCPCK1"
END_MAGIC = b"MLVCEND1"
INDEX_MAGIC = b"MLVCIDX1"
INDEX_FILE_MAGIC = b"MLVCIDX2"
PACK_PREFIX = "packs/"
INDEX_PREFIX = "index/"


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
                    for oid, loc in entries
                ],
            },
            use_bin_type=True,
        )
    )
    return INDEX_MAGIC + hash_bytes(body) + body


def decode_index(data: bytes, name: str) -> tuple[str, list[tuple[ObjectId, Location]]]:
    """Decode and verify an index blob.

    Raises:
        IntegrityError: The body does not match its recorded hash.
        FormatError: Not an index blob.
    """
    if data[:8] != INDEX_MAGIC:
        raise FormatError(f"index {name} has no index header")
    digest, body = data[8 : 8 + DIGEST_SIZE], data[8 + DIGEST_SIZE :]
    if hash_bytes(body) != digest:
        raise IntegrityError(name, "index does not match its checksum")
    try:
        doc = msgpack.unpackb(decompress_blob(body), raw=False)
        pack_id = str(doc["pack"])
        out = [
            (
                ObjectId(e[0]),
                Location(pack_id, int(e[2]), int(e[3]), int(e[4]), int(e[5]), int(e[1])),
            )
            for e in doc["entries"]
        ]
    except (KeyError, TypeError, ValueError, IndexError, msgpack.UnpackException) as exc:
        raise FormatError(f"malformed index {name}: {exc}") from exc
    return pack_id, out


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
        rows.append([oid, n, loc.kind, loc.offset, loc.stored_len, loc.raw_len, loc.codec])
    body = compress_blob(msgpack.packb({"packs": list(packs), "entries": rows}, use_bin_type=True))
    return INDEX_FILE_MAGIC + hash_bytes(body) + body


def decode_index_file(data: bytes, name: str) -> IndexFile:
    """Decode and verify an index file of either version.

    A version-1 file is one pack's index blob (see :func:`decode_index`).

    Raises:
        IntegrityError: The body does not match its recorded hash.
        FormatError: Not an index file.
    """
    if data[:8] == INDEX_MAGIC:
        pack_id, entries = decode_index(data, name)
        return IndexFile((pack_id,), entries)
    if data[:8] != INDEX_FILE_MAGIC:
        raise FormatError(f"index {name} has no index header")
    digest, body = data[8 : 8 + DIGEST_SIZE], data[8 + DIGEST_SIZE :]
    if hash_bytes(body) != digest:
        raise IntegrityError(name, "index does not match its checksum")
    try:
        doc = msgpack.unpackb(decompress_blob(body), raw=False)
        packs = tuple(str(p) for p in doc["packs"])
        out = [
            (
                ObjectId(e[0]),
                Location(packs[e[1]], int(e[3]), int(e[4]), int(e[5]), int(e[6]), int(e[2])),
            )
            for e in doc["entries"]
        ]
    except (KeyError, TypeError, ValueError, IndexError, msgpack.UnpackException) as exc:
        raise FormatError(f"malformed index {name}: {exc}") from exc
    for p in packs:
        if len(p) != 32 or not all(c in "0123456789abcdef" for c in p):
            raise FormatError(f"malformed index {name}: bad pack id {p[:40]!r}")
    for oid, loc in out:
        if not isinstance(oid, bytes) or len(oid) != DIGEST_SIZE or min(loc[1:5]) < 0:
            raise FormatError(f"malformed index {name}: bad entry")
    return IndexFile(packs, out)


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
