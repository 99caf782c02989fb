"""The data model: manifests, trees and commits, with one canonical msgpack encoding each.

Pure: no I/O. The same content always encodes to the same bytes, so it always gets the same id
(:func:`object_id`). Decoding validates shapes and, for trees, entry names, so a hostile tree can
never name a path outside its checkout directory.

* :class:`Manifest` - one file: its size and its ordered chunks ``(chunk id, length)``.
* :class:`Tree` - a directory: entries sorted by name; each a file (-> manifest), a directory
  (-> tree) or a symlink (its target inline).
* :class:`Commit` - a tree, parent commits, author, time, message and a free-form metadata
  mapping (experiment params, step, metrics...).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgpack

from mlvc_core import schema
from mlvc_core.errors import FormatError, UnsafePath
from mlvc_core.ids import DIGEST_SIZE, ObjectId, hash_bytes

# Kind codes, also used in pack indexes.
CHUNK = 0
MANIFEST = 1
TREE = 2
COMMIT = 3
KIND_NAMES = {CHUNK: "chunk", MANIFEST: "manifest", TREE: "tree", COMMIT: "commit"}
_TAGS = {"manifest": MANIFEST, "tree": TREE, "commit": COMMIT}

EntryKind = Literal["file", "dir", "link"]
MAX_OBJECT_SIZE = 256 << 20
"""Largest encoded object accepted (a manifest of a 1 TiB file is about 170 MiB)."""
MAX_CHUNK_SIZE = 16 << 20
"""Largest chunk any repository may hold: the ceiling of the chunker's ``max`` parameter.

Not the repository's own ``max``: payloads copied between repositories keep their chunking."""


def check_name(name: str) -> str:
    """Validate one path component of a tree entry; return it.

    A name is what a POSIX directory entry may be called: any bytes but ``/`` and NUL, except
    ``.`` and ``..``. A backslash is an ordinary character, as on Linux. Bytes that are not
    UTF-8 are held as Python holds them in file names (``surrogateescape``, see
    :func:`encode_name`).

    Raises:
        UnsafePath: Empty, ``.``/``..``, containing ``/`` or NUL, or not a file name at all
            (a surrogate that stands for no byte).
    """
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\x00" in name:
        raise UnsafePath(f"unsafe name in tree: {name!r}")
    try:
        name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise UnsafePath(f"not a file name: {name!r}") from None
    return name


def encode_name(text: str) -> str | bytes:
    """The stored form of a name or link target: a str if it is UTF-8, else its raw bytes.

    File names and link targets on POSIX are bytes; Python holds the bytes that are not UTF-8
    as lone surrogates (``os.fsdecode``'s ``surrogateescape``). Such a string has no UTF-8
    form, so it is stored as a msgpack ``bin`` of the original bytes instead: every UTF-8
    name keeps the ``str`` encoding of format version 1, and each name has exactly one form.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")
    return text


def decode_name(value: Any, what: str) -> str:
    """A name or link target from its stored form (see :func:`encode_name`).

    Raises:
        FormatError: Neither str nor bytes, or bytes that are valid UTF-8 (not canonical).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("utf-8", "surrogateescape")
        raise FormatError(f"{what} {value!r} is stored as bytes but is UTF-8")
    raise FormatError(f"{what} is not a string")


def _oid(value: Any, what: str) -> ObjectId:
    if not isinstance(value, bytes) or len(value) != DIGEST_SIZE:
        raise FormatError(f"{what} is not an object id")
    return ObjectId(value)


def canonical(value: Any) -> Any:
    """Normalise a metadata value so equal content encodes to equal bytes.

    Maps get sorted string keys; tuples become lists; non-finite floats become strings
    (``"nan"``, ``"inf"``) as JSON cannot carry them and tools reading ``--json`` rely on that.

    Raises:
        FormatError: A value msgpack cannot carry (sets, objects...).
    """
    if isinstance(value, Mapping):
        return {str(k): canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str, bytes)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    # numpy / torch scalars and the like
    item = getattr(value, "item", None)
    if callable(item):
        return canonical(item())
    raise FormatError(f"cannot store value of type {type(value).__name__}: {value!r}")


def _pack(doc: dict[str, Any]) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Manifest:
    """A file: total size and ordered ``(chunk id, length)`` pairs."""

    size: int
    chunks: tuple[tuple[ObjectId, int], ...]

    kind = MANIFEST

    def encode(self) -> bytes:
        """Canonical bytes."""
        return _pack({"t": "manifest", "size": self.size, "chunks": [list(c) for c in self.chunks]})


@dataclass(frozen=True)
class TreeEntry:
    """One name in a directory."""

    name: str
    kind: EntryKind
    oid: ObjectId | None = None
    """Manifest id (file) or tree id (dir); None for a link."""
    size: int = 0
    """File size, or total size of a directory's files."""
    mode: int = 0o644
    target: str | None = None
    """Symlink target, for links."""

    def to_list(self) -> list[Any]:
        """Encoded form (names and targets that are not UTF-8 as bytes: :func:`encode_name`)."""
        target = encode_name(self.target) if self.target is not None else None
        return [encode_name(self.name), self.kind, self.oid, self.size, self.mode, target]


@dataclass(frozen=True)
class Tree:
    """A directory: entries with unique names, sorted by name."""

    entries: tuple[TreeEntry, ...] = ()

    kind = TREE

    def __post_init__(self) -> None:
        entries = tuple(sorted(self.entries, key=lambda e: e.name))
        for a, b in zip(entries, entries[1:], strict=False):
            if a.name == b.name:
                raise FormatError(f"tree has two entries named {a.name!r}")
        object.__setattr__(self, "entries", entries)

    def encode(self) -> bytes:
        """Canonical bytes."""
        return _pack({"t": "tree", "entries": [e.to_list() for e in self.entries]})

    def get(self, name: str) -> TreeEntry | None:
        """The entry called ``name``."""
        for e in self.entries:
            if e.name == name:
                return e
        return None

    @property
    def size(self) -> int:
        """Sum of the entries' sizes."""
        return sum(e.size for e in self.entries)


@dataclass(frozen=True)
class Commit:
    """A snapshot: a tree plus history and metadata."""

    tree: ObjectId
    parents: tuple[ObjectId, ...] = ()
    author: str = ""
    time: float = 0.0
    message: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    kind = COMMIT

    def encode(self) -> bytes:
        """Canonical bytes."""
        return _pack(
            {
                "t": "commit",
                "tree": self.tree,
                "parents": list(self.parents),
                "author": self.author,
                "time": float(self.time),
                "message": self.message,
                "meta": canonical(self.metadata),
            }
        )


Object = Manifest | Tree | Commit


def object_id(obj: Object) -> ObjectId:
    """The id of an object: BLAKE3 of its canonical encoding."""
    return hash_bytes(obj.encode())


_MODE_MAX = 0o7777

# Metadata fields of experiment, resume and checkpoint commits (docs/experiments.md) that
# readers use; a commit whose meta ``type`` is one of these must carry them well-typed.
_RUN_TYPES = ("experiment", "resume", "checkpoint")
_RUN_META: schema.Spec = {
    "type": schema.is_str,
    "experiment": schema.optional(schema.is_str),
    "name": schema.optional(schema.is_str),
    "step": schema.optional(schema.is_int),
    "metrics": schema.dict_of(lambda v: v is None or schema.is_number(v) or schema.is_str(v)),
    "primary_metric": schema.optional(
        schema.shaped({"name": schema.is_str, "goal": schema.is_str})
    ),
    "paths": schema.list_of(schema.is_str),
    "params": schema.is_dict,
    "env": schema.is_dict,
    "started": schema.optional(schema.is_number),
    "code_path": schema.optional(schema.is_str),
}


def _uint(value: Any, what: str, limit: int) -> int:
    if not schema.is_int(value) or not 0 <= value <= limit:
        raise FormatError(f"{what} is not an integer in 0..{limit}: {value!r}")
    return int(value)


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise FormatError(f"{what} is not a list")
    return value


def _decode_manifest(doc: dict[str, Any]) -> Manifest:
    size = _uint(doc["size"], "manifest size", 1 << 62)
    chunks = []
    for c in _list(doc["chunks"], "manifest chunks"):
        if not isinstance(c, list) or len(c) != 2:
            raise FormatError("manifest chunk is not [id, length]")
        chunks.append((_oid(c[0], "chunk"), _uint(c[1], "chunk length", MAX_CHUNK_SIZE)))
    if sum(n for _, n in chunks) != size:
        raise FormatError("manifest chunk lengths do not add up to its size")
    return Manifest(size, tuple(chunks))


def _decode_tree(doc: dict[str, Any]) -> Tree:
    entries = []
    for raw in _list(doc["entries"], "tree entries"):
        if not isinstance(raw, list) or len(raw) != 6:
            raise FormatError("tree entry is not a list of 6 fields")
        name, kind, oid, size, mode, target = raw
        name = check_name(decode_name(name, "entry name"))
        mode = _uint(mode, f"mode of {name!r}", _MODE_MAX)
        if kind == "link":
            if target is None:
                raise FormatError(f"link {name!r} has no target")
            target = decode_name(target, f"target of link {name!r}")
            entries.append(TreeEntry(name, "link", None, 0, mode, target))
        elif kind in ("file", "dir"):
            size = _uint(size, f"size of {name!r}", 1 << 62)
            entries.append(TreeEntry(name, kind, _oid(oid, name), size, mode, None))
        else:
            raise FormatError(f"unknown entry kind {kind!r}")
    return Tree(tuple(entries))


def _decode_commit(doc: dict[str, Any]) -> Commit:
    for key, ok in (
        ("author", schema.is_str),
        ("message", schema.is_str),
        ("meta", schema.is_dict),
    ):
        if not ok(doc[key]):
            raise FormatError(f"commit field {key!r} has the wrong type")
    if not schema.is_number(doc["time"]) or isinstance(doc["time"], str):
        raise FormatError("commit time is not a number")
    meta = doc["meta"]
    if meta.get("type") in _RUN_TYPES:
        schema.check(meta, _RUN_META, f"{meta['type']} metadata")
    return Commit(
        tree=_oid(doc["tree"], "tree"),
        parents=tuple(_oid(p, "parent") for p in _list(doc["parents"], "commit parents")),
        author=doc["author"],
        time=float(doc["time"]),
        message=doc["message"],
        metadata=dict(meta),
    )


def decode(data: bytes) -> Object:
    """Decode canonical bytes into an object, validating its shape and every field's type.

    Raises:
        FormatError: Not a well-formed object (wrong types included).
        UnsafePath: A tree entry with an unsafe name or link target.
    """
    if len(data) > MAX_OBJECT_SIZE:
        raise FormatError("object too large")
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException, TypeError, RecursionError) as exc:
        raise FormatError(f"undecodable object: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("t"), str) or doc["t"] not in _TAGS:
        raise FormatError("not an mlvc object")
    t = doc["t"]
    try:
        if t == "manifest":
            return _decode_manifest(doc)
        if t == "tree":
            return _decode_tree(doc)
        return _decode_commit(doc)
    except (UnsafePath, FormatError):
        raise
    except (KeyError, ValueError, TypeError, IndexError, OverflowError) as exc:
        raise FormatError(f"malformed {t} object: {exc!r}") from exc


def iter_tree_refs(obj: Object) -> Iterator[tuple[int, ObjectId]]:
    """The ``(kind, id)`` of every object ``obj`` points at directly."""
    if isinstance(obj, Commit):
        yield TREE, obj.tree
        for p in obj.parents:
            yield COMMIT, p
    elif isinstance(obj, Tree):
        for e in obj.entries:
            if e.oid is not None:
                yield (MANIFEST if e.kind == "file" else TREE), e.oid
    else:
        for cid, _ in obj.chunks:
            yield CHUNK, cid
