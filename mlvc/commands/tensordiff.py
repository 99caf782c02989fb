"""``mlvc diff A B --tensors``: how much each tensor of two snapshots' checkpoints moved.

For every safetensors file or PyTorch zip checkpoint (by name: :data:`TENSOR_SUFFIXES`)
present in both snapshots and parsed as one on both sides (:mod:`mlvc_core.tensorfile`),
each tensor is reported as unchanged, changed (with the largest and mean absolute difference
of its values and the relative norm ``||b - a|| / ||a||``), added, removed or retyped (its
dtype or shape differs). Files are read through the repository's chunk reader, a block of
at most :data:`BLOCK_BYTES` of each side at a time, so memory stays bounded whatever the
tensor's size; a tensor whose byte range is covered by the same chunks on both sides is
unchanged without being read at all (tensor-aligned chunking makes that the common case).
Values are compared as float64 (bf16 widened through its bits to float32). Pure: returns
data, prints nothing.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from mlvc.experiments.revisions import Target, resolve
from mlvc_core.ids import ObjectId
from mlvc_core.objects import Manifest
from mlvc_core.reader import ChunkedReader
from mlvc_core.repository import Repository
from mlvc_core.tensorfile import read_layout
from mlvc_core.tensorlayout import DTYPE_SIZES, TensorInfo, TensorLayout
from mlvc_core.trees import walk_tree

__all__ = ["TENSOR_SUFFIXES", "TensorChange", "TensorDiff", "TensorFileDiff", "tensor_diff"]

TENSOR_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
"""Files with these names are read as tensor files (if they parse as one)."""
BLOCK_BYTES = 8 << 20
"""Bytes of each side compared at a time."""

Status = Literal["unchanged", "changed", "added", "removed", "retyped"]


@dataclass(frozen=True)
class TensorChange:
    """One tensor of a file present in both snapshots.

    Attributes:
        name: Its name in the file.
        status: ``unchanged``, ``changed``, ``added``, ``removed`` or ``retyped`` (other
            dtype or shape: values not compared).
        dtype: Its dtype in B (in A when removed), safetensors spelling.
        shape: Its shape in B (in A when removed).
        old_dtype: Its dtype in A when retyped, else None.
        old_shape: Its shape in A when retyped, else None.
        changed_values: Elements whose bits differ (changed only).
        max_abs: Largest ``|b - a|`` (changed, numeric dtypes; NaN if a value is NaN).
        mean_abs: Mean ``|b - a|`` over all elements (same conditions).
        rel_norm: ``||b - a|| / ||a||`` (L2 over all elements; inf when ``a`` is all zero).
    """

    name: str
    status: Status
    dtype: str
    shape: tuple[int, ...]
    old_dtype: str | None = None
    old_shape: tuple[int, ...] | None = None
    changed_values: int | None = None
    max_abs: float | None = None
    mean_abs: float | None = None
    rel_norm: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (non-finite numbers become strings when printed)."""
        return {
            "name": self.name,
            "status": self.status,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "old_dtype": self.old_dtype,
            "old_shape": None if self.old_shape is None else list(self.old_shape),
            "changed_values": self.changed_values,
            "max_abs": self.max_abs,
            "mean_abs": self.mean_abs,
            "rel_norm": self.rel_norm,
        }


@dataclass(frozen=True)
class TensorFileDiff:
    """The tensors of one file present in both snapshots."""

    path: str
    kind: str
    tensors: list[TensorChange] = field(default_factory=list)

    @property
    def changed(self) -> int:
        """Tensors not unchanged."""
        return sum(t.status != "unchanged" for t in self.tensors)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "path": self.path,
            "kind": self.kind,
            "changed": self.changed,
            "tensors": [t.to_dict() for t in self.tensors],
        }


@dataclass(frozen=True)
class TensorDiff:
    """Tensor-level differences between two snapshots."""

    a: Target
    b: Target
    files: list[TensorFileDiff]
    not_tensor_files: list[str] = field(default_factory=list)
    """Files in both snapshots whose content differs but that were not compared: not tensor
    files, not parsable as one, or of another kind of tensor file on each side."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "files": [f.to_dict() for f in self.files],
            "not_tensor_files": list(self.not_tensor_files),
        }


class _Side:
    """One snapshot's version of a file: its manifest, a reader and its layout."""

    def __init__(self, repo: Repository, manifest_id: ObjectId, path: str) -> None:
        self.manifest_id = manifest_id
        self.manifest: Manifest = repo.read_manifest(manifest_id)
        self.reader = ChunkedReader(repo, self.manifest, path)
        self.starts: list[int] = []
        pos = 0
        for _, n in self.manifest.chunks:
            self.starts.append(pos)
            pos += n
        self.layout: TensorLayout | None = read_layout(self.reader, self.manifest.size)

    def chunks_of(self, t: TensorInfo) -> list[tuple[ObjectId, int, int]]:
        """``(chunk id, start relative to the tensor, length)`` of the chunks covering it."""
        i = max(0, bisect.bisect_right(self.starts, t.start) - 1)
        out = []
        while i < len(self.starts) and self.starts[i] < t.end:
            oid, n = self.manifest.chunks[i]
            out.append((oid, self.starts[i] - t.start, n))
            i += 1
        return out

    def read(self, start: int, n: int) -> bytes:
        self.reader.seek(start)
        out = bytearray()
        while len(out) < n:
            piece = self.reader.read(n - len(out))
            if not piece:
                break
            out += piece
        return bytes(out)


_NUMPY = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I8": "i1", "U8": "u1", "BOOL": "u1"}
_NUMPY.update({"I16": "<i2", "U16": "<u2", "I32": "<i4", "U32": "<u4", "I64": "<i8"})
_NUMPY["U64"] = "<u8"
_BITS = {1: "u1", 2: "<u2", 4: "<u4", 8: "<u8"}


def _values(raw: bytes, dtype: str) -> Any:
    """The elements of ``raw`` as float64 (None for a dtype numpy cannot read)."""
    import numpy as np

    if dtype == "BF16":
        wide = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << np.uint32(16)
        return wide.view(np.float32).astype(np.float64)
    code = _NUMPY.get(dtype)
    return None if code is None else np.frombuffer(raw, dtype=code).astype(np.float64)


def _compare(a: _Side, b: _Side, ta: TensorInfo, tb: TensorInfo) -> TensorChange:
    import numpy as np

    if ta.dtype != tb.dtype or ta.shape != tb.shape:
        return TensorChange(tb.name, "retyped", tb.dtype, tb.shape, ta.dtype, ta.shape)
    if a.manifest_id == b.manifest_id or a.chunks_of(ta) == b.chunks_of(tb):
        return TensorChange(tb.name, "unchanged", tb.dtype, tb.shape)
    width = DTYPE_SIZES[ta.dtype]
    block = max(width, BLOCK_BYTES // width * width)
    changed = 0
    numeric = ta.dtype in _NUMPY or ta.dtype == "BF16"
    max_abs = sum_abs = sum_d2 = sum_a2 = 0.0
    with np.errstate(all="ignore"):
        for off in range(0, ta.nbytes, block):
            n = min(block, ta.nbytes - off)
            ra, rb = a.read(ta.start + off, n), b.read(tb.start + off, n)
            if ra == rb:
                if numeric:
                    va = _values(ra, ta.dtype)
                    sum_a2 += float(np.dot(va, va))
                continue
            bits_a = np.frombuffer(ra, dtype=_BITS[width])
            changed += int(np.count_nonzero(bits_a != np.frombuffer(rb, dtype=_BITS[width])))
            if not numeric:
                continue
            va, vb = _values(ra, ta.dtype), _values(rb, tb.dtype)
            d = np.abs(vb - va)
            top = float(d.max())  # NaN if any difference is
            max_abs = top if math.isnan(top) or top > max_abs else max_abs
            sum_abs += float(d.sum())
            sum_d2 += float(np.dot(d, d))
            sum_a2 += float(np.dot(va, va))
    if changed == 0:
        return TensorChange(tb.name, "unchanged", tb.dtype, tb.shape)
    if not numeric:
        return TensorChange(tb.name, "changed", tb.dtype, tb.shape, changed_values=changed)
    count = max(1, math.prod(ta.shape))
    rel = math.sqrt(sum_d2) / math.sqrt(sum_a2) if sum_a2 > 0 else math.inf
    if math.isnan(sum_d2) or math.isnan(sum_a2):
        rel = math.nan
    return TensorChange(
        tb.name,
        "changed",
        tb.dtype,
        tb.shape,
        changed_values=changed,
        max_abs=max_abs,
        mean_abs=sum_abs / count,
        rel_norm=rel,
    )


def _file_diff(path: str, a: _Side, b: _Side) -> TensorFileDiff | None:
    la, lb = a.layout, b.layout
    if la is None or lb is None or la.kind != lb.kind:
        return None
    ia = {t.name: t for t in la.tensors}
    ib = {t.name: t for t in lb.tensors}
    out: list[TensorChange] = []
    for t in lb.tensors:
        old = ia.get(t.name)
        if old is None:
            out.append(TensorChange(t.name, "added", t.dtype, t.shape))
        else:
            out.append(_compare(a, b, old, t))
    out.extend(
        TensorChange(t.name, "removed", t.dtype, t.shape) for t in la.tensors if t.name not in ib
    )
    return TensorFileDiff(path, lb.kind, out)


def _files(repo: Repository, tree: ObjectId) -> dict[str, ObjectId]:
    return {
        path: entry.oid
        for path, entry in walk_tree(repo, tree)
        if entry.kind == "file" and entry.oid is not None
    }


def tensor_diff(repo: Repository, spec_a: str, spec_b: str) -> TensorDiff:
    """Compare the tensors of the checkpoint files two snapshots both hold.

    Args:
        repo: The repository.
        spec_a: The old side: any id form (:func:`mlvc.experiments.revisions.resolve`).
        spec_b: The new side.

    Returns:
        One entry per tensor file present in both, sorted by path; in each, B's tensors in
        file order, then those only A has. Files in both whose content differs but that are
        not tensor files (or do not parse as one) are listed, sorted, in ``not_tensor_files``.

    Raises:
        ObjectNotFound: Either id names nothing.
        AmbiguousId: Either prefix matches several ids.
        IntegrityError: A chunk read back does not match its id.
    """
    ta, tb = resolve(repo, spec_a), resolve(repo, spec_b)
    files_a = _files(repo, repo.read_commit(ta.commit_id).tree)
    files_b = _files(repo, repo.read_commit(tb.commit_id).tree)
    out: list[TensorFileDiff] = []
    skipped: list[str] = []
    for path in sorted(set(files_a) & set(files_b)):
        d = None
        if path.endswith(TENSOR_SUFFIXES):
            a, b = _Side(repo, files_a[path], path), _Side(repo, files_b[path], path)
            try:
                d = _file_diff(path, a, b)
            finally:
                a.reader.close()
                b.reader.close()
        if d is not None:
            out.append(d)
        elif files_a[path] != files_b[path]:
            skipped.append(path)
    return TensorDiff(ta, tb, out, skipped)
