"""Crafting hostile repositories byte by byte: what a malicious or damaged repository holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlvc_core.ids import ObjectId, hash_bytes
from mlvc_core.objects import CHUNK, Object
from mlvc_core.packs import PackWriter
from mlvc_core.refs import PREFIX
from mlvc_core.repository import Repository
from mlvc_core.session import WriteSession

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BLOCK = 128 << 10


def rle_frame(total: int) -> bytes:
    """A zstd frame of RLE blocks that really decodes to ``total`` zero bytes (4 bytes/128 KiB).

    Its header declares no content size, so only the decoder's output tells how large it is.
    """
    out = bytearray(ZSTD_MAGIC + b"\x00" + bytes([(17 - 10) << 3]))  # no size; 128 KiB window
    left = total
    while left > 0:
        n = min(left, _BLOCK)
        left -= n
        header = (1 if left == 0 else 0) | (1 << 1) | (n << 3)  # last bit, RLE block, size
        out += header.to_bytes(3, "little") + b"\x00"
    return bytes(out)


def add_pack(repo: Repository, payloads: list[tuple[ObjectId, int, int, bytes, int]]) -> str:
    """Publish a pack and an index file holding ``(id, kind, codec, payload, raw_len)`` as given.

    Nothing is checked: the index declares whatever ``raw_len`` says.
    """
    w = PackWriter(repo.store)
    for oid, kind, codec, payload, raw_len in payloads:
        w.add(oid, kind, codec, payload, raw_len)
    repo.publish_index(w.finish())
    return w.pack_id


def bomb_chunk(repo: Repository, declared: int, real: int) -> ObjectId:
    """A chunk whose index declares ``declared`` bytes for a frame that yields ``real``."""
    frame = rle_frame(real)
    oid = hash_bytes(bytes(min(real, declared)))
    add_pack(repo, [(oid, CHUNK, 1, frame, declared)])
    return oid


def store(repo: Repository, *objects: Object) -> list[ObjectId]:
    """Store well-formed objects; return their ids."""
    with WriteSession(repo) as s:
        return [s.add_object(o) for o in objects]


def store_encoded(repo: Repository, kind: int, data: bytes) -> ObjectId:
    """Store raw object bytes (any msgpack at all) under their hash, as kind ``kind``."""
    oid = hash_bytes(data)
    add_pack(repo, [(oid, kind, 0, data, len(data))])
    return oid


def write_ref(repo_dir: Path, name: str, doc: Any) -> None:
    """Write a ref document (any JSON, or bytes as they are) straight into a local repository."""
    path = repo_dir / (PREFIX + name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
