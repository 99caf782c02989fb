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

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

from mlvc_core.errors import FormatError
from mlvc_core.tensorlayout import (
    DTYPE_SIZES,
    SeekableFile,
    TensorInfo,
    TensorLayout,
    file_size,
    read_exact,
)
from mlvc_core.torchzip import parse_torch_zip

__all__ = [
    "MAX_SAFETENSORS_HEADER",
    "CutPlan",
    "chunk_boundaries",
    "forced_boundaries",
    "parse_safetensors",
    "read_layout",
]

MAX_SAFETENSORS_HEADER = 100_000_000
"""The safetensors format's own limit on the JSON header (bytes)."""

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
    size = file_size(f) if size is None else size
    if size < 8:
        raise FormatError("too short for a safetensors header")
    (n,) = struct.unpack("<Q", read_exact(f, 0, 8))
    if n > MAX_SAFETENSORS_HEADER or 8 + n > size:
        raise FormatError(f"safetensors header length {n} is out of range for {size} bytes")
    raw = read_exact(f, 8, n)
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
        size = file_size(f) if size is None else size
        head = read_exact(f, 0, min(size, 9))
        if head.startswith(b"PK\x03\x04"):
            return parse_torch_zip(f, size)
        if len(head) == 9 and head[8:9] == b"{":
            return parse_safetensors(f, size)
        return None
    except FormatError:
        return None
    finally:
        f.seek(pos)


@dataclass(frozen=True)
class CutPlan:
    """Where a tensor file's chunks must end, and which stretches are cut at fixed size.

    Attributes:
        layout: The parsed file (None: not a tensor file; plain content-defined cutting).
        boundaries: Sorted file offsets where a chunk must end (never 0).
        blocks: Offsets (0 or among ``boundaries``) where a *fixed block* starts: the stretch
            up to the next boundary (or the file's end) is one chunk, not cut by content.
    """

    layout: TensorLayout | None = None
    boundaries: list[int] = field(default_factory=list)
    blocks: frozenset[int] = frozenset()


def forced_boundaries(layout: TensorLayout, min_region: int, block: int = 0) -> CutPlan:
    """The cut plan of a tensor file: both edges of every region of ``min_region`` bytes or more.

    Args:
        layout: The file's layout.
        min_region: Smaller regions (biases, norms) are left to content-defined chunking
            together with their neighbours, so they make no tiny chunks.
        block: When positive, a large region is cut into fixed blocks of this many bytes from
            its first byte (the last one shorter), so the chunks of a changed tensor sit at
            the same tensor-relative offsets as its previous version's (a delta's base is the
            chunk at the same place); 0 cuts inside regions by content.

    Returns:
        The plan: boundaries are sorted, distinct offsets inside the file (never 0).
    """
    edges: set[int] = set()
    starts: set[int] = set()
    for start, end in layout.regions:
        if end - start < min_region:
            continue
        edges.update((start, end))
        if block > 0:
            cuts = range(start, end, block)
            starts.update(cuts)
            edges.update(cuts)
    edges.discard(0)
    return CutPlan(layout, sorted(edges), frozenset(starts))


def chunk_boundaries(f: SeekableFile, min_region: int, block: int = 0) -> CutPlan:
    """The cut plan of the file ``f`` is positioned at the start of (ingest's hook).

    Args:
        f: A binary file at offset 0; left where it was.
        min_region: See :func:`forced_boundaries` (the chunker's minimum chunk size).
        block: See :func:`forced_boundaries` (the repository's tensor block size, or 0).

    Returns:
        :func:`forced_boundaries` of a tensor file; an empty plan for anything else (plain
        content-defined chunking), and for a file that is not seekable or not at its start.
    """
    try:
        if not f.seekable() or f.tell() != 0:
            return CutPlan()
    except (OSError, ValueError):
        return CutPlan()
    layout = read_layout(f)
    return CutPlan() if layout is None else forced_boundaries(layout, min_region, block)
