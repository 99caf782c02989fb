"""Tensor files: where each tensor of a safetensors file or a PyTorch zip checkpoint lies.

Pure parsing of untrusted bytes, no repository access. A parsed file is a
:class:`TensorLayout`: its tensors (name, dtype, shape, byte range in the file) and its data
*regions*, the byte ranges that hold tensor data (one per safetensors tensor, one per torch
storage). Ingest places chunk boundaries at the edges of the large regions
(:func:`forced_boundaries`), so an unchanged tensor deduplicates exactly however the header
or its neighbours moved; ``mlvc diff --tensors`` compares tensors by their ranges.

Formats:

* **safetensors**: an 8-byte little-endian header length ``N``, ``N`` bytes of a UTF-8 JSON
  object, then the data buffer. Each entry except ``__metadata__`` (a string-to-string map)
  is ``{"dtype", "shape", "data_offsets": [begin, end]}``, offsets relative to the buffer. As
  the format requires, the header is at most :data:`MAX_SAFETENSORS_HEADER` bytes, keys are
  unique, every tensor's size is its shape's product times its dtype's width, and the tensors
  cover the buffer exactly, without holes or overlaps.
* **PyTorch zip** (``torch.save`` since 1.6): a zip archive ``<name>/data.pkl`` (the pickled
  object, tensors as persistent references to storages) plus one *stored* (uncompressed)
  member ``<name>/data/<key>`` per storage. A member's data starts after its local header
  (whose name and extra-field lengths may differ from the central directory's). The pickle
  is read by a restricted unpickler that runs no code: the few torch rebuild functions are
  replaced by recorders, every other global by an inert placeholder. Nested dicts and lists
  (a ``state_dict`` under ``"model"``) name their tensors by their keys joined with ``.``.
  Only contiguous tensors get a byte range; a strided view is left out of ``tensors`` (its
  storage is still a region).

Every offset, length and count is checked against the file's real size and the limits here
before use; a file that breaks any rule is not a tensor file (:class:`FormatError`, or None
from :func:`read_layout`), and callers treat it as plain bytes.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import IO, Any, Literal, Protocol, cast

from mlvc_core.errors import FormatError

__all__ = [
    "DTYPE_SIZES",
    "MAX_SAFETENSORS_HEADER",
    "TensorInfo",
    "SeekableFile",
    "TensorLayout",
    "chunk_boundaries",
    "forced_boundaries",
    "parse_safetensors",
    "parse_torch_zip",
    "read_layout",
]

MAX_SAFETENSORS_HEADER = 100_000_000
"""The safetensors format's own limit on the JSON header (bytes)."""
MAX_PICKLE = 64 << 20
"""A torch checkpoint's ``data.pkl`` larger than this is not parsed (bytes)."""
MAX_MEMBERS = 1 << 20
"""A zip archive with more members than this is not parsed."""
MAX_DEPTH = 32
"""Nesting depth of dicts and lists searched for tensors in a torch checkpoint."""

DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "F64": 8,
    "I64": 8,
    "U64": 8,
}
"""Element width in bytes of each dtype, by its safetensors name (used for torch too)."""

Kind = Literal["safetensors", "torch"]


class SeekableFile(Protocol):
    """A seekable binary file: ``open(..., "rb")``, ``BytesIO``, the repository's chunk reader."""

    def read(self, n: int = -1, /) -> bytes | None: ...  # noqa: D102

    def seek(self, offset: int, whence: int = 0, /) -> int: ...  # noqa: D102

    def tell(self) -> int: ...  # noqa: D102

    def seekable(self) -> bool: ...  # noqa: D102


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's place in a file.

    Attributes:
        name: Its key (safetensors) or dotted path in the pickled object (torch).
        dtype: A :data:`DTYPE_SIZES` key.
        shape: Dimensions, row-major.
        start: Offset of its first byte in the file.
        end: Offset just past its last byte (``end - start == prod(shape) * width``).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        """Size of its data in bytes."""
        return self.end - self.start


@dataclass(frozen=True)
class TensorLayout:
    """A parsed tensor file.

    Attributes:
        kind: ``safetensors`` or ``torch``.
        tensors: Its tensors, in file order.
        regions: ``(start, end)`` byte ranges of tensor data, sorted, not overlapping.
    """

    kind: Kind
    tensors: tuple[TensorInfo, ...]
    regions: tuple[tuple[int, int], ...]


def _file_size(f: SeekableFile) -> int:
    pos = f.tell()
    size = f.seek(0, io.SEEK_END)
    f.seek(pos)
    return size


def _read_exact(f: SeekableFile, offset: int, n: int) -> bytes:
    f.seek(offset)
    out = bytearray()
    while len(out) < n:
        piece = f.read(n - len(out))
        if not piece:
            raise FormatError(f"file ends {n - len(out)} bytes early at offset {offset}")
        out += piece
    return bytes(out)


# ---------------------------------------------------------------------------------- safetensors


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise FormatError(f"safetensors header repeats the key {k!r}")
        out[k] = v
    return out


def _int(v: object, what: str) -> int:
    if type(v) is not int or v < 0:
        raise FormatError(f"safetensors {what} is not a non-negative integer: {v!r}")
    return v


def parse_safetensors(f: SeekableFile, size: int | None = None) -> TensorLayout:
    """Parse a safetensors file's header.

    Args:
        f: A seekable binary file positioned anywhere; its position is changed.
        size: The file's size in bytes (taken from ``f`` when None).

    Returns:
        Its tensors in file order; each tensor is a region.

    Raises:
        FormatError: Not a valid safetensors file (see the module docstring for the rules).
    """
    size = _file_size(f) if size is None else size
    if size < 8:
        raise FormatError("too short for a safetensors header")
    (n,) = struct.unpack("<Q", _read_exact(f, 0, 8))
    if n > MAX_SAFETENSORS_HEADER or 8 + n > size:
        raise FormatError(f"safetensors header length {n} is out of range for {size} bytes")
    raw = _read_exact(f, 8, n)
    if not raw.startswith(b"{"):
        raise FormatError("safetensors header is not a JSON object")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"undecodable safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise FormatError("safetensors header is not a JSON object")
    base, buffer = 8 + n, size - 8 - n
    tensors: list[TensorInfo] = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise FormatError("safetensors __metadata__ is not a string map")
            continue
        if not isinstance(entry, dict):
            raise FormatError(f"safetensors entry {name!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise FormatError(f"tensor {name!r} has an unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2:
            raise FormatError(f"tensor {name!r} has a malformed shape or data_offsets")
        dims = tuple(_int(d, "dimension") for d in shape)
        begin, end = (_int(o, "offset") for o in offsets)
        if not begin <= end <= buffer:
            raise FormatError(f"tensor {name!r} lies outside the data buffer")
        if math.prod(dims) * DTYPE_SIZES[dtype] != end - begin:
            raise FormatError(f"tensor {name!r}: shape {list(dims)} does not fit {end - begin} B")
        tensors.append(TensorInfo(name, dtype, dims, base + begin, base + end))
    tensors.sort(key=lambda t: (t.start, t.end))
    at = base
    for t in tensors:
        if t.start != at:
            raise FormatError(f"safetensors data has a hole or overlap before {t.name!r}")
        at = t.end
    if at != size:
        raise FormatError("safetensors tensors do not cover the data buffer")
    return TensorLayout(
        "safetensors", tuple(tensors), tuple((t.start, t.end) for t in tensors if t.nbytes)
    )


# ---------------------------------------------------------------------------------- torch zip

_STORAGES = {
    "FloatStorage": "F32",
    "DoubleStorage": "F64",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
}
_DTYPES = {
    "float32": "F32",
    "float64": "F64",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "float8_e5m2": "F8_E5M2",
    "float8_e4m3fn": "F8_E4M3",
}
_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")


class _Inert:
    """Stands in for any global a checkpoint's pickle names: accepts anything, does nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:  # noqa: D102
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _Dict(dict[Any, Any]):
    """An OrderedDict stand-in that accepts the attributes torch pickles (``_metadata``)."""


@dataclass(frozen=True)
class _StorageType:
    dtype: str

    def __call__(self, *args: Any) -> _Inert:
        return _Inert()


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: str
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str


def _ints(v: Any) -> tuple[int, ...]:
    if not isinstance(v, tuple | list) or not all(type(x) is int and x >= 0 for x in v):
        raise FormatError("torch checkpoint has a malformed tensor size or stride")
    return tuple(v)


def _rebuild(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> _TensorRef:
    if not isinstance(storage, _Storage) or type(offset) is not int or offset < 0:
        raise FormatError("torch checkpoint has a malformed tensor")
    return _TensorRef(storage, offset, _ints(size), _ints(stride), storage.dtype)


def _rebuild_v3(
    storage: Any, offset: Any, size: Any, stride: Any, grad: Any, hooks: Any, dtype: Any, *r: Any
) -> _TensorRef:
    t = _rebuild(storage, offset, size, stride)
    if isinstance(dtype, _StorageType):
        return _TensorRef(t.storage, t.offset, t.shape, t.stride, dtype.dtype)
    return t


def _parameter(data: Any, *rest: Any) -> Any:
    return data


class _Unpickler(pickle.Unpickler):
    """Reads a checkpoint's ``data.pkl`` without running any code it names."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild
        if module == "torch._utils" and name == "_rebuild_tensor_v3":
            return _rebuild_v3
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _parameter
        if module == "collections" and name == "OrderedDict":
            return _Dict
        if module == "torch" and name in _STORAGES:
            return _StorageType(_STORAGES[name])
        if module == "torch" and name in _DTYPES:
            return _StorageType(_DTYPES[name])
        return type(name, (_Inert,), {})

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise FormatError("torch checkpoint has an unknown persistent reference")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType) or not isinstance(key, str):
            raise FormatError("torch checkpoint has a malformed storage reference")
        if not _KEY.fullmatch(key) or type(numel) is not int or numel < 0:
            raise FormatError("torch checkpoint has a malformed storage reference")
        return _Storage(key, stype.dtype, numel)


def _flatten(obj: Any) -> list[tuple[str, _TensorRef]]:
    """Tensors in a checkpoint's object, named by their dotted key paths.

    Each container is visited once (a pickle can share or nest one in itself), at most
    :data:`MAX_DEPTH` deep and :data:`MAX_MEMBERS` in all.
    """
    out: list[tuple[str, _TensorRef]] = []
    seen: set[int] = set()
    stack: list[tuple[Any, str, int]] = [(obj, "", 0)]
    while stack and len(seen) < MAX_MEMBERS:
        item, prefix, depth = stack.pop()
        if isinstance(item, _TensorRef):
            out.append((prefix, item))
            continue
        if depth >= MAX_DEPTH or id(item) in seen:
            continue
        if isinstance(item, dict):
            pairs = [(k, v) for k, v in item.items() if isinstance(k, str | int)]
        elif isinstance(item, list | tuple):
            pairs = list(enumerate(item))
        else:
            continue
        seen.add(id(item))
        for k, v in reversed(pairs):
            stack.append((v, f"{prefix}.{k}" if prefix else str(k), depth + 1))
    return out


def _contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    if len(shape) != len(stride):
        return False
    expect = 1
    for dim, st in zip(reversed(shape), reversed(stride), strict=True):
        if dim != 1 and st != expect:
            return False
        expect *= dim
    return True


def parse_torch_zip(f: SeekableFile, size: int | None = None) -> TensorLayout:
    """Parse a ``torch.save`` zip checkpoint.

    Args:
        f: A seekable binary file; its position is changed.
        size: The file's size in bytes (taken from ``f`` when None).

    Returns:
        Its contiguous tensors, in file order; each storage member's data is a region.

    Raises:
        FormatError: Not a torch zip checkpoint, or one that breaks the checks above.
    """
    size = _file_size(f) if size is None else size
    try:
        zf = zipfile.ZipFile(cast(IO[bytes], f))
        return _parse_zip(zf, f, size)
    except FormatError:
        raise
    except _ZIP_ERRORS as exc:
        raise FormatError(f"not a readable zip archive: {exc!r}") from exc


_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    OSError,
    ValueError,
    EOFError,
    struct.error,
    NotImplementedError,
    KeyError,
    OverflowError,
)
"""What :mod:`zipfile` raises on malformed archives."""


def _parse_zip(zf: zipfile.ZipFile, f: SeekableFile, size: int) -> TensorLayout:
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise FormatError(f"zip archive has more than {MAX_MEMBERS} members")
    pkls = [i for i in infos if re.fullmatch(r"[^/]+/data\.pkl", i.filename)]
    if len(pkls) != 1:
        raise FormatError("not a torch checkpoint (no single <name>/data.pkl)")
    prefix = pkls[0].filename[: -len("data.pkl")]
    order = next((i for i in infos if i.filename == prefix + "byteorder"), None)
    if order is not None and order.file_size <= 16 and zf.read(order).strip() != b"little":
        raise FormatError("big-endian torch checkpoints are not supported")
    members: dict[str, tuple[int, int]] = {}
    for info in infos:
        if not info.filename.startswith(prefix + "data/"):
            continue
        key = info.filename[len(prefix) + 5 :]
        if not _KEY.fullmatch(key) or info.compress_type != zipfile.ZIP_STORED:
            raise FormatError(f"torch storage member {info.filename!r} is not stored plain")
        if not 0 <= info.header_offset <= size - 30:
            raise FormatError(f"bad local header offset for {info.filename!r}")
        local = _read_exact(f, info.header_offset, 30)
        if local[:4] != b"PK\x03\x04":
            raise FormatError(f"bad local header for {info.filename!r}")
        name_len, extra_len = struct.unpack_from("<HH", local, 26)
        start = info.header_offset + 30 + name_len + extra_len
        if info.file_size != info.compress_size or start + info.file_size > size:
            raise FormatError(f"torch storage {key!r} lies outside the file")
        members[key] = (start, start + info.file_size)
    if pkls[0].file_size > MAX_PICKLE:
        raise FormatError(f"torch checkpoint's data.pkl is larger than {MAX_PICKLE} bytes")
    try:
        with zf.open(pkls[0]) as pf:
            raw = pf.read(MAX_PICKLE + 1)
        if len(raw) > MAX_PICKLE:
            raise FormatError(f"torch checkpoint's data.pkl is larger than {MAX_PICKLE} bytes")
        obj = _Unpickler(io.BytesIO(raw)).load()
    except FormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of untrusted pickle bytes
        raise FormatError(f"unreadable torch checkpoint pickle: {exc!r}") from exc
    found = _flatten(obj)
    tensors: list[TensorInfo] = []
    for name, ref in found:
        width = DTYPE_SIZES[ref.dtype]
        span = members.get(ref.storage.key)
        if span is None or ref.storage.numel * DTYPE_SIZES[ref.storage.dtype] > span[1] - span[0]:
            raise FormatError(f"tensor {name!r} refers to a missing or short storage")
        if not _contiguous(ref.shape, ref.stride):
            continue
        start = span[0] + ref.offset * width
        end = start + math.prod(ref.shape) * width
        if end > span[1]:
            raise FormatError(f"tensor {name!r} runs past its storage")
        tensors.append(TensorInfo(name, ref.dtype, ref.shape, start, end))
    tensors.sort(key=lambda t: (t.start, t.end, t.name))
    regions = tuple(sorted(s for s in members.values() if s[1] > s[0]))
    return TensorLayout("torch", tuple(tensors), regions)


# ---------------------------------------------------------------------------------- detection


def read_layout(f: SeekableFile, size: int | None = None) -> TensorLayout | None:
    """Parse ``f`` as a torch zip checkpoint or a safetensors file, whichever it is.

    Args:
        f: A seekable binary file; its position is restored before returning.
        size: The file's size in bytes (taken from ``f`` when None).

    Returns:
        Its layout, or None when it is neither (or a malformed one).
    """
    pos = f.tell()
    try:
        size = _file_size(f) if size is None else size
        head = _read_exact(f, 0, min(size, 9))
        if head.startswith(b"PK\x03\x04"):
            return parse_torch_zip(f, size)
        if len(head) == 9 and head[8:9] == b"{":
            return parse_safetensors(f, size)
        return None
    except FormatError:
        return None
    finally:
        f.seek(pos)


def forced_boundaries(layout: TensorLayout, min_region: int) -> list[int]:
    """Offsets where chunks must end: both edges of every region of ``min_region`` bytes or more.

    Args:
        layout: The file's layout.
        min_region: Smaller regions (biases, norms) are left to content-defined chunking
            together with their neighbours, so they make no tiny chunks.

    Returns:
        Sorted, distinct offsets inside the file (never 0).
    """
    edges = {e for start, end in layout.regions if end - start >= min_region for e in (start, end)}
    edges.discard(0)
    return sorted(edges)


def chunk_boundaries(f: SeekableFile, min_region: int) -> list[int]:
    """Forced chunk boundaries for the file ``f`` is positioned at the start of (ingest's hook).

    Args:
        f: A binary file at offset 0; left where it was.
        min_region: See :func:`forced_boundaries` (the chunker's minimum chunk size).

    Returns:
        :func:`forced_boundaries` of a tensor file; empty for anything else (plain
        content-defined chunking), and for a file that is not seekable or not at its start.
    """
    try:
        if not f.seekable() or f.tell() != 0:
            return []
    except (OSError, ValueError):
        return []
    layout = read_layout(f)
    return [] if layout is None else forced_boundaries(layout, min_region)
