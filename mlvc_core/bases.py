"""Delta bases: which stored chunk a new chunk of a tensor file is coded against.

A full fine-tune changes every tensor at every checkpoint, so no chunk deduplicates, but a
tensor's new bytes are close to its previous version's. In a version-3 repository large
tensors are cut into fixed blocks from their first byte (:class:`~mlvc_core.tensorfile.CutPlan`),
so the chunk at a tensor-relative offset lines up with the previous version's chunk at the
same offset whenever the tensor kept its name, dtype and shape, wherever either lies in its
file. :class:`BaseFinder` pairs them for one file:

* the new file's layout comes from the cut plan; the previous version's (the *guide*: the
  parent commit's file at the same path, or a checkpoint file of the same name up to its
  digits) is parsed from its header read through the repository (:class:`ChunkedReader`),
  never from the working tree;
* a data region is matched by its first tensor (name, dtype, shape), that tensor's offset
  in the region and the region's size;
* the base is the guide's chunk at the same region-relative offset with the same length,
  or, when that chunk is itself a delta, the chunk it was coded against (its *keyframe*).
  So every delta's base is a chunk stored on its own, and reading any chunk decodes at
  most one base: checking out the latest version costs at most twice the decoding of a
  repository without deltas, however long the run.

Only a chunk present in the current generation of the index is a base (the write session
refreshed the index under its shared lock, so gc cannot remove it before the session
publishes; see docs/format.md "Write ordering"). Anything that fails here (an unreadable
guide, a header that does not parse) means no base: the chunk is stored on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from mlvc_core import codec, delta
from mlvc_core.errors import MlvcError
from mlvc_core.ids import ObjectId
from mlvc_core.objects import CHUNK, Manifest
from mlvc_core.reader import ChunkedReader
from mlvc_core.repository import Repository
from mlvc_core.tensorfile import CutPlan, read_layout
from mlvc_core.tensorlayout import DTYPE_SIZES, TensorLayout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Base:
    """What one new chunk is coded against."""

    oid: ObjectId
    """The base chunk (stored on its own)."""
    dtype: str
    """The tensor's dtype (safetensors spelling)."""
    phase: int
    """Position of the chunk's first byte within its element."""


class Delta(NamedTuple):
    """A chunk's payload coded against a base chunk (codec :data:`~mlvc_core.codec.DELTA`)."""

    payload: bytes
    base: ObjectId


SURE_DELTA = 0.5
"""A difference smaller than this fraction of its chunk is kept without also compressing the
chunk on its own (which float weights never shrink that far): the choice never changes an id,
and it halves the work of a checkpoint whose tensors all moved a little."""


def code_against(
    view: memoryview,
    base: Base,
    read_base: Callable[[ObjectId], bytes],
    level: int,
    planes: bool,
) -> tuple[int, bytes | memoryview | Delta]:
    """``(codec, payload)`` of a new chunk: its difference from ``base`` when that is smaller.

    Args:
        view: The chunk's bytes.
        base: Its base (from :meth:`BaseFinder.base_for`).
        read_base: Reads a base chunk's verified bytes.
        level: zstd level of the chunk on its own.
        planes: Whether the byte-plane codec may be used on its own.

    Returns:
        ``(DELTA, Delta)``, or the chunk on its own as :func:`mlvc_core.codec.compress` gives
        it (also when the base cannot be read: a base is only a hint).
    """
    try:
        old = read_base(base.oid)
    except MlvcError:
        return codec.compress(view, level, planes)
    diff = delta.encode_difference(view, old, base.dtype, base.phase)
    if diff is not None and len(diff) <= SURE_DELTA * len(view):
        return codec.DELTA, Delta(diff, base.oid)
    c, payload = codec.compress(view, level, planes)
    if diff is not None and len(diff) < len(payload):
        return codec.DELTA, Delta(diff, base.oid)
    return c, payload


_RegionKey = tuple[str, str, tuple[int, ...], int, int]
"""(first tensor's name, dtype, shape, its offset in the region, the region's size)."""


def _regions(layout: TensorLayout) -> dict[int, tuple[_RegionKey, str, int]]:
    """Region start -> (its key, dtype, offset of its first tensor in it)."""
    out: dict[int, tuple[_RegionKey, str, int]] = {}
    tensors = sorted(layout.tensors, key=lambda t: (t.start, t.name))
    i = 0
    for start, end in layout.regions:
        while i < len(tensors) and tensors[i].start < start:
            i += 1
        if i < len(tensors) and tensors[i].start < end:
            t = tensors[i]
            key = (t.name, t.dtype, t.shape, t.start - start, end - start)
            out[start] = (key, t.dtype, t.start - start)
    return out


class BaseFinder:
    """The base of each aligned chunk of one new tensor file, against one guide."""

    def __init__(self, repo: Repository, plan: CutPlan, guide: Manifest) -> None:
        """Match the new file's regions with the guide's.

        Args:
            repo: The repository (its index at the current generation).
            plan: The new file's cut plan (a tensor file cut in fixed blocks).
            guide: The previous version's manifest.
        """
        self.repo = repo
        self._starts: list[int] = []
        self._match: dict[int, tuple[int, str, int]] = {}
        """New region start -> (old region start, dtype, first tensor's offset in it)."""
        self._chunks: dict[int, tuple[ObjectId, int]] = {}
        if plan.layout is None or not plan.blocks:
            return
        try:
            old_layout = read_layout(ChunkedReader(repo, guide), guide.size)
        except MlvcError as exc:  # a guide is only a hint
            log.debug("mlvc: no delta bases: the previous version is unreadable: %s", exc)
            return
        if old_layout is None:
            return
        old = {key: start for start, (key, _, _) in _regions(old_layout).items()}
        for start, (key, dtype, first) in _regions(plan.layout).items():
            if start in plan.blocks and key in old:
                self._match[start] = (old[key], dtype, first)
        self._starts = sorted(self._match)
        off = 0
        for oid, n in guide.chunks:
            self._chunks[off] = (oid, n)
            off += n

    def __bool__(self) -> bool:
        return bool(self._match)

    def base_for(self, offset: int, length: int) -> Base | None:
        """The base of the new chunk at file ``offset`` of ``length`` bytes, if it has one."""
        import bisect

        i = bisect.bisect_right(self._starts, offset) - 1
        if i < 0:
            return None
        start = self._starts[i]
        old_start, dtype, first = self._match[start]
        rel = offset - start
        found = self._chunks.get(old_start + rel)
        if found is None or found[1] != length:
            return None
        return self._stored_alone(found[0], dtype, (rel - first) % DTYPE_SIZES[dtype])

    def _stored_alone(self, oid: ObjectId, dtype: str, phase: int) -> Base | None:
        """``oid`` as a base, or its own base when it is a delta; None if not stored."""
        loc = self.repo.index_entry(oid)
        if loc is None or loc.kind != CHUNK:
            return None
        if loc.codec == codec.DELTA:
            if loc.base is None:
                return None
            keyframe = self.repo.index_entry(loc.base)
            if keyframe is None or keyframe.codec == codec.DELTA:
                return None
            oid = loc.base
        return Base(oid, dtype, phase)
