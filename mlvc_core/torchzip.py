"""PyTorch zip checkpoints: where each tensor's data lies, read without running the pickle.

``torch.save`` (since 1.6) writes a zip archive ``<name>/data.pkl`` (the pickled object,
tensors as persistent references to storages) plus one *stored* (uncompressed) member
``<name>/data/<key>`` per storage. A member's data starts after its local header (whose name
and extra-field lengths may differ from the central directory's). The pickle is read by a
restricted unpickler that runs no code: the few torch rebuild functions are replaced by
recorders, every other global by an inert placeholder. Nested dicts and lists (a
``state_dict`` under ``"model"``) name their tensors by their keys joined with ``.``. Only
contiguous tensors get a byte range; a strided view is left out of ``tensors`` (its storage is
still a region). Every offset, length and count is checked against the file's real size and
the limits here before use.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import IO, Any, cast

from mlvc_core.errors import FormatError
from mlvc_core.tensorlayout import (
    DTYPE_SIZES,
    SeekableFile,
    TensorInfo,
    TensorLayout,
    file_size,
    read_exact,
)

__all__ = ["MAX_DEPTH", "MAX_MEMBERS", "MAX_PICKLE", "parse_torch_zip"]

MAX_PICKLE = 64 << 20
"""A torch checkpoint's ``data.pkl`` larger than this is not parsed (bytes)."""
MAX_MEMBERS = 1 << 20
"""A zip archive with more members than this is not parsed."""
MAX_DEPTH = 32
"""Nesting depth of dicts and lists searched for tensors in a torch checkpoint."""


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
    size = file_size(f) if size is None else size
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
        local = read_exact(f, info.header_offset, 30)
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
