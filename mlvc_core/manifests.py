"""Manifests: one file's bytes -> chunks -> a manifest, streaming.

The pipeline for one file, all bounded in memory whatever the file's size:

1. the calling thread reads the file into a small ring of reusable buffers (no per-chunk
   allocation: fresh large allocations cost a page fault per 4 KiB) and cuts each buffer into
   content-defined chunks (pyfastcdc releases the GIL while it cuts); the bytes after the last
   cut point are carried into the next buffer, so boundaries do not depend on buffer size;
2. worker threads hash the chunks (BLAKE3), a run of four per task, and compress (zstd) only
   those the repository lacks - both release the GIL, so this runs on every core;
3. the calling thread takes results in order and appends new payloads to the session's pack.

Given the previous version of the file (a *guide*: the parent commit's file at the same path,
or the stat cache's last record of it), step 1 first lays the guide's chunks over the bytes
instead of cutting, and the workers check each against its expected id. Where one differs,
everything queued after it is dropped, the file is read again from there and cut, and the
guide is tried again once a chunk cut from the file turns out to be one of the guide's (the
offset between the two versions tells where). The result is exactly the manifest cutting gives:
a chunk boundary depends only on the bytes since the previous boundary, so a guide chunk whose
bytes match, starting at a true boundary, ends at one too (a guide's last chunk is used only at
the end of the file, where its end was not decided by content).

A buffer is refilled only after every chunk cut from it has been written, which bounds the
memory to the ring (``_NBUF`` buffers of ``_BUF`` or four of the largest chunks) plus the
compressed payloads in flight.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import mmap
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from mlvc_core import codec
from mlvc_core.bases import Base, BaseFinder, Delta, code_against
from mlvc_core.chunker import ChunkerParams, MiB, cut_between, make_fastcdc
from mlvc_core.ids import ObjectId, hash_bytes
from mlvc_core.objects import CHUNK, Manifest
from mlvc_core.session import WriteSession
from mlvc_core.tensorfile import chunk_boundaries

_BUF = 4 * MiB
"""Ring buffer size (at least four of the largest chunks)."""
_NBUF = 4
SMALL_FILE = 2 * MiB
"""Files up to this size are read whole and cut in one piece (no buffer ring)."""
_GROUP = 4
"""Chunks per worker task."""
_MAX_MISSES = 16
"""Failed guesses after which a file is just cut."""


Result = tuple[ObjectId, int, "bytes | memoryview | Delta | None"]
"""A worker's answer for one chunk: id, codec, payload to store (None: already stored)."""


def _store(
    oid: ObjectId, view: memoryview, level: int, planes: bool, has: Callable[[ObjectId], bool]
) -> tuple[ObjectId, int, bytes | memoryview | None]:
    """A hashed chunk's result: compressed unless the repository already has it."""
    if has(oid):
        return oid, codec.RAW, None
    c, payload = codec.compress(view, level, planes)
    return oid, c, payload


def _store_delta(
    oid: ObjectId,
    view: memoryview,
    level: int,
    planes: bool,
    has: Callable[[ObjectId], bool],
    base: Base,
    read_base: Callable[[ObjectId], bytes],
) -> Result:
    """:func:`_store`, keeping the chunk's difference from ``base`` when that is smaller."""
    if has(oid):
        return oid, codec.RAW, None
    return (oid, *code_against(view, base, read_base, level, planes))


def _process_group(
    pieces: list[tuple[memoryview, ObjectId | None]],
    level: int,
    planes: bool,
    has: Callable[[ObjectId], bool],
    seen: list[ObjectId],
    bases: list[Base | None] | None = None,
    read_base: Callable[[ObjectId], bytes] | None = None,
) -> list[Result]:
    """Worker: hash and :func:`_store` a run of chunks, one task for several (fewer hand-offs).

    A piece with an expected id (laid out from a previous version) that hashes to anything
    else ends the run: the result has one entry per piece before it. Ids go into ``seen`` as
    soon as they are known (before compressing), so the reading thread can spot a previous
    version's chunk without waiting for the compression. A piece with a base in ``bases``
    is stored as its difference from it where that is smaller (:func:`_store_delta`).
    """
    out: list[Result] = []
    for i, (view, expected) in enumerate(pieces):
        oid = hash_bytes(view)
        if expected is not None and oid != expected:
            break
        seen.append(oid)
        base = bases[i] if bases is not None else None
        if base is not None and read_base is not None:
            out.append(_store_delta(oid, view, level, planes, has, base, read_base))
        else:
            out.append(_store(oid, view, level, planes, has))
    return out


class _Guide:
    """A previous version of a file: its chunks, by id and by offset."""

    def __init__(self, manifest: Manifest, max_len: int) -> None:
        self.chunks = manifest.chunks
        self.by_offset: dict[int, int] = {}
        self.end_of: dict[ObjectId, int] = {}
        """End offset of each chunk that occurs once (a repeated one says nothing of where)."""
        repeated: set[ObjectId] = set()
        off = 0
        for i, (oid, n) in enumerate(self.chunks):
            self.by_offset[off] = i
            off += n
            if oid in self.end_of:
                repeated.add(oid)
            self.end_of[oid] = off
        for oid in repeated:
            del self.end_of[oid]
        self.usable = all(n <= max_len for _, n in self.chunks)


@dataclass
class _Pending:
    """A run of chunks queued to the workers."""

    buffer: int
    offset: int
    """Offset in the file of the first byte."""
    lengths: list[int]
    guided: bool
    """Laid out from a guide (each piece checked against its expected id), not cut."""
    future: Future[list[Result]] | None = None
    seen: list[ObjectId] = field(default_factory=list)

    def hit(self, ends: dict[ObjectId, int]) -> tuple[int, int] | None:
        """(end in the file, end in the guide) of the last hashed chunk the guide holds."""
        if self.guided:
            return None
        seen = list(self.seen)
        for i in range(len(seen) - 1, -1, -1):
            if seen[i] in ends:
                return self.offset + sum(self.lengths[: i + 1]), ends[seen[i]]
        return None


class TooLarge(Exception):
    """A file grew past :data:`SMALL_FILE` before a worker thread read it."""


class FileIngester:
    """Turns files into manifests within one :class:`WriteSession`. One per thread."""

    def __init__(self, session: WriteSession, worker: bool = False) -> None:
        """Set up.

        Args:
            session: Where to store.
            worker: Used on a worker thread of the repository's pool: small files only
                (a larger one raises :class:`TooLarge`: the ring would wait on the pool
                it runs on), and progress is left to the thread that hands out the work.
        """
        self.session = session
        self.worker = worker
        self.repo = session.repo
        self._cutter: Any = None  # made when a file is first cut (a commit may cut none)
        # The ring's buffers, mapped one by one as a file first needs them: a commit that reads
        # nothing (stat cache hits) or only small files pays for none of them.
        self._bufs: list[mmap.mmap] = []
        self._level = self.repo.config.compression_level
        self._planes = self.repo.config.byte_planes
        self._buf_size = max(
            _BUF, 4 * self.repo.config.chunker.max, 4 * self.repo.config.tensor_block
        )

    def _cdc(self) -> Any:
        if self._cutter is None:
            self._cutter = make_fastcdc(self.repo.config.chunker)
        return self._cutter

    def ingest(
        self, f: Any, size_hint: int | None = None, guide: Manifest | None = None
    ) -> Manifest:
        """Read a binary file object to its end; store its chunks; return its manifest.

        Args:
            f: A binary file object with ``readinto`` (or ``read``).
            size_hint: The expected size; files well below the ring buffer's size are read in
                one piece instead of through the ring.
            guide: The manifest of a previous version of the file (same repository). Where
                the file still holds the guide's chunks they are verified by hash instead of
                being searched for by the chunker (see :func:`_process_group`); the result is the
                same manifest either way. Needs a seekable ``f``.
        """
        if size_hint is not None and size_hint <= SMALL_FILE:
            return self._ingest_small(f.read())
        if self.worker:
            raise TooLarge
        # A tensor file's large tensors are chunked on their own (their chunks stay the same
        # wherever they move): cutting ends a chunk at each of these offsets, and the guide
        # lays out none of its chunks across one.
        plan = chunk_boundaries(f, self.repo.config.chunker.min, self.repo.config.tensor_block)
        bounds = plan.boundaries
        finder = BaseFinder(self.repo, plan, guide) if guide is not None and plan.blocks else None
        g = _Guide(guide, self._buf_size // 2) if guide is not None and guide.chunks else None
        if g is not None and not (g.usable and f.seekable()):
            g = None
        start = f.tell() if g is not None else 0
        session = self.session
        pending: deque[_Pending] = deque()
        chunks: list[tuple[ObjectId, int]] = []
        restart: list[int] = []  # file offset to read again from, after a guess failed
        ends = g.end_of if g is not None else {}
        hits: list[tuple[int, int]] = []  # (end in the file, end in the guide) of a cut chunk

        # The last chunk laid out from the guide, and where it starts: its bytes match, but
        # FastCDC decides a boundary by the byte after it too, so its end is a boundary only
        # once the next chunk matches as well (or the file ends there).
        held: list[tuple[Result, int]] = []
        held_at = 0

        def accept(result: Result, length: int) -> None:
            oid, c, payload = result
            if isinstance(payload, Delta):
                session.add_payload(oid, CHUNK, c, payload.payload, length, payload.base)
            elif payload is not None:
                session.add_payload(oid, CHUNK, c, payload, length)
            chunks.append((oid, length))
            session.read_bytes += length
            if session.progress is not None:
                session.progress(length)

        def take(p: _Pending) -> None:
            nonlocal held_at
            assert p.future is not None
            results = p.future.result()
            if held:
                if not (p.guided and results):
                    # A mismatch right after it, or cutting went on from its end: cut it again.
                    held.clear()
                    restart.append(held_at)
                    return
                accept(*held.pop())
            off = p.offset
            for i, (result, length) in enumerate(zip(results, p.lengths, strict=False)):
                if p.guided and i == len(results) - 1:
                    if len(results) < len(p.lengths):  # the next one differs: cut it again
                        restart.append(off)
                        return
                    oid, c, payload = result
                    if isinstance(payload, memoryview):  # the ring buffer is refilled meanwhile
                        payload = bytes(payload)
                    held.append(((oid, c, payload), length))
                    held_at = off
                else:
                    accept(result, length)
                off += length
            if len(results) < len(p.lengths):
                restart.append(off)
            elif (h := p.hit(ends)) is not None:
                hits.append(h)

        def drain(until_buffer: int | None) -> None:
            while pending and (
                until_buffer is None or any(p.buffer == until_buffer for p in pending)
            ):
                p = pending.popleft()
                assert p.future is not None
                if restart:
                    p.future.result()  # speculative: wait until no worker reads its buffer
                else:
                    take(p)

        # Where a boundary is in the file minus where the guide has it: 0 until an insertion
        # or deletion shifts the content. ``expect`` is the guide's chunk to try next, if any.
        delta = 0
        expect: int | None = 0 if g is not None else None
        evidence = -1  # end offset of the last guide chunk found by hashing and acted on
        misses = 0
        base = 0  # file offset of the buffer's first byte
        tail = b""
        bi = 0
        eof = False
        try:
            while True:
                drain(bi)
                if restart:
                    drain(None)
                    base = evidence = restart[0]
                    restart.clear()
                    misses += 1
                    if misses > _MAX_MISSES:
                        g = None  # the guide keeps failing: just cut
                    f.seek(start + base)
                    tail, expect, eof = b"", None, False
                if eof:
                    drain(None)
                    if restart:
                        continue
                    if held:  # it ends where the file does: a boundary
                        accept(*held.pop())
                    break
                if bi == len(self._bufs):
                    # Anonymous mappings: pages are zeroed by the kernel as they are first
                    # written, so a file of a few MiB touches a few MiB (a bytearray would zero
                    # all of it first), and later files reuse what earlier ones touched.
                    self._bufs.append(mmap.mmap(-1, self._buf_size))
                mv = memoryview(self._bufs[bi])
                filled = len(tail)
                mv[:filled] = tail
                while filled < self._buf_size:
                    n = f.readinto(mv[filled:])
                    if not n:
                        eof = True
                        break
                    filled += n
                if filled == 0:
                    continue
                data = mv[:filled]
                pos = 0
                if g is not None and expect is None:
                    # Back in step with the guide? The newest chunk hashed so far that the guide
                    # holds tells how far the content has shifted.
                    found = next(
                        (h for p in reversed(pending) if (h := p.hit(ends)) is not None),
                        hits[-1] if hits else None,
                    )
                    if found is not None and found[0] > evidence:
                        evidence, delta = found[0], found[0] - found[1]
                        expect = g.by_offset.get(base - delta)
                if g is not None and expect is not None:
                    expect, pos = self._lay_out(g, expect, data, base, eof, bi, pending, bounds)
                if pos < filled and (g is None or expect is None):
                    rest = data[pos:filled]
                    cuts = cut_between(self._cdc(), rest, base + pos, bounds, plan.blocks)
                    if not eof:
                        cuts.pop()  # the last piece ends at the buffer's end, not at a boundary
                    for i in range(0, len(cuts), _GROUP):
                        run = cuts[i : i + _GROUP]
                        self._submit(
                            _Pending(bi, base + pos + run[0][0], [n for _, n in run], False),
                            [(rest[off : off + n], None) for off, n in run],
                            pending,
                            [finder.base_for(base + pos + off, n) for off, n in run]
                            if finder
                            else None,
                        )
                    pos += sum(n for _, n in cuts)
                tail = bytes(data[pos:filled])
                base += pos
                bi = (bi + 1) % _NBUF
        except BaseException:
            # Workers still hashing or compressing read this ingester's buffers: let none
            # outlive the call, so a failed file leaves nothing running behind it.
            for p in pending:
                assert p.future is not None
                with contextlib.suppress(Exception):
                    p.future.result()
            raise
        return Manifest(sum(n for _, n in chunks), tuple(chunks))

    def _read_base(self, oid: ObjectId) -> bytes:
        """A delta base's bytes, not cached (each is read once per commit)."""
        return self.repo.read_base(oid, cache=False)

    def _submit(
        self,
        p: _Pending,
        pieces: list[tuple[memoryview, ObjectId | None]],
        pending: deque[_Pending],
        bases: list[Base | None] | None = None,
    ) -> None:
        p.future = self.repo.pool.submit(
            _process_group,
            pieces,
            self._level,
            self._planes,
            self.session.has,
            p.seen,
            bases,
            self._read_base if bases is not None else None,
        )
        pending.append(p)

    def _lay_out(
        self,
        g: _Guide,
        expect: int,
        data: memoryview,
        base: int,
        eof: bool,
        bi: int,
        pending: deque[_Pending],
        bounds: list[int],
    ) -> tuple[int | None, int]:
        """Queue the guide's chunks from ``expect`` over ``data`` for verification.

        Returns the guide chunk to try at the next buffer (None: cut from here on) and how
        far into ``data`` the queued chunks reach.
        """
        filled = len(data)
        pos = group_at = 0
        pieces: list[tuple[memoryview, ObjectId | None]] = []
        lengths: list[int] = []

        def submit() -> None:
            self._submit(_Pending(bi, base + group_at, lengths, True), pieces, pending)

        while expect < len(g.chunks):
            oid, n = g.chunks[expect]
            if pos + n > filled:
                break
            if expect == len(g.chunks) - 1 and not (eof and pos + n == filled):
                break  # the guide's last chunk was cut by its end of file, not by content
            edge = bisect.bisect_right(bounds, base + pos)
            if edge < len(bounds) and bounds[edge] < base + pos + n:
                break  # a forced boundary (a tensor's edge) inside it: cut from here
            pieces.append((data[pos : pos + n], oid))
            lengths.append(n)
            pos += n
            expect += 1
            if len(pieces) == _GROUP:
                submit()
                pieces, lengths, group_at = [], [], pos
        if pieces:
            submit()
        more = not eof and expect < len(g.chunks) and pos + g.chunks[expect][1] > filled
        return (expect if more else None), pos

    def _ingest_small(self, data: bytes) -> Manifest:
        """A small file: cut in one piece, hash and compress here (no thread round trips).

        Below the chunker's minimum size a file is one chunk (FastCDC looks for no boundary
        before it), which needs no cutter.
        """
        session = self.session
        chunks: list[tuple[ObjectId, int]] = []
        view = memoryview(data)
        if len(data) < self.repo.config.chunker.min:
            cuts = [(0, len(data))] if data else []
        else:
            config = self.repo.config
            plan = chunk_boundaries(io.BytesIO(data), config.chunker.min, config.tensor_block)
            cuts = cut_between(self._cdc(), view, 0, plan.boundaries, plan.blocks)
        for offset, length in cuts:
            piece = view[offset : offset + length]
            oid = hash_bytes(piece)
            oid, codec_id, payload = _store(oid, piece, self._level, self._planes, session.has)
            if payload is not None:
                session.add_payload(oid, CHUNK, codec_id, payload, length)
            chunks.append((oid, length))
        if not self.worker:
            session.read_bytes += len(data)
            if session.progress is not None and data:
                session.progress(len(data))
        return Manifest(len(data), tuple(chunks))


def ingest_bytes(session: WriteSession, data: bytes) -> Manifest:
    """Store an in-memory buffer as a file; return its manifest (small files, tests)."""
    return FileIngester(session).ingest(io.BytesIO(data))


def chunk_ids_of(data: bytes, params: ChunkerParams) -> list[ObjectId]:
    """Chunk ids ``data`` would get (for tests and tools)."""
    cdc = make_fastcdc(params)
    return [hash_bytes(memoryview(data)[c.offset : c.offset + c.length]) for c in cdc.cut_buf(data)]
