"""Tensor layouts: the shared vocabulary of tensor files (dtypes, tensors, data regions).

A parsed tensor file is a :class:`TensorLayout`: its tensors (name, dtype, shape, byte range
in the file) and its data *regions*, the byte ranges that hold tensor data. The parsers
(:mod:`mlvc_core.tensorfile` for safetensors, :mod:`mlvc_core.torchzip` for PyTorch zip
checkpoints) produce it from any :class:`SeekableFile`, including the repository's chunked
reader; this module holds only the types and the bounded reading helpers they share.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal, Protocol

from mlvc_core.errors import FormatError

__all__ = ["DTYPE_SIZES", "SeekableFile", "TensorInfo", "TensorLayout", "file_size", "read_exact"]

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


def file_size(f: SeekableFile) -> int:
    """The size of ``f`` in bytes; its position is kept."""
    pos = f.tell()
    size = f.seek(0, io.SEEK_END)
    f.seek(pos)
    return size


def read_exact(f: SeekableFile, offset: int, n: int) -> bytes:
    """Exactly ``n`` bytes of ``f`` from ``offset``.

    Raises:
        FormatError: The file ends first.
    """
    f.seek(offset)
    out = bytearray()
    while len(out) < n:
        piece = f.read(n - len(out))
        if not piece:
            raise FormatError(f"file ends {n - len(out)} bytes early at offset {offset}")
        out += piece
    return bytes(out)
