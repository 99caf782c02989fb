"""Reading one file of a snapshot as a stream: :class:`ChunkedReader`.

Seekable and read-only over a manifest; it reads only the chunks asked for, a run of
adjacent ones per request, each verified against its id. It never writes anything.
"""

from __future__ import annotations

import io
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from mlvc_core.errors import IntegrityError
from mlvc_core.ids import ObjectId, to_hex
from mlvc_core.objects import Manifest
from mlvc_core.packs import Location
from mlvc_core.repository import Repository

if TYPE_CHECKING:
    from mlvc_core.reads import Arena


class ChunkedReader(io.RawIOBase):
    """A seekable, read-only file object over a manifest: reads only the chunks it needs.

    A chunk is read together with those stored after it in the same pack (one request for
    up to a few MiB, see :meth:`Repository.chunk_runs`): reading a file front to back from a
    bucket costs a round trip per run, not per chunk. Once reads go front to back (a run is
    needed right where the last one ended), the next run is read on a worker thread while
    this one is consumed. Runs are decoded into the repository's reusable arenas
    (:meth:`Repository.read_run_into`) and copied once, into the caller's buffer. Memory
    holds at most two runs of decoded chunks, so any file can be read however large.
    """

    def __init__(self, repo: Repository, manifest: Manifest, name: str = "") -> None:
        super().__init__()
        self._repo = repo
        self._chunks = manifest.chunks
        self._starts: list[int] = []
        pos = 0
        for _, n in manifest.chunks:
            self._starts.append(pos)
            pos += n
        self._size = manifest.size
        self._pos = 0
        self._run: list[memoryview] = []  # the decoded chunks of the current run
        self._first = 0  # index of its first chunk
        self._arena: Arena | None = None  # where they are decoded
        self._end = -1  # index just past the current run
        self._ahead: tuple[int, Arena, Future[list[memoryview]]] | None = None  # the next run
        self.name = name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    @property
    def size(self) -> int:
        """Total size in bytes."""
        return self._size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"bad whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def _chunk(self, i: int) -> memoryview:
        """Chunk ``i``, valid until the next run is decoded over it (read it at once)."""
        if not self._first <= i < self._first + len(self._run):
            self._load(i)
        data = self._run[i - self._first]
        cid, length = self._chunks[i]
        if len(data) != length:
            raise IntegrityError(to_hex(cid), f"{len(data)} bytes, its manifest says {length}")
        return data

    def _load(self, i: int) -> None:
        """Decode the run that starts at chunk ``i`` (and the next one ahead, front to back).

        Each run is decoded into an arena of the repository's (no copies); the previous
        run's is handed back once nothing reads from it.
        """
        repo = self._repo
        sequential = i == self._end
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == i:
            _, arena, pending = ahead
            chunks = pending.result()
        else:
            # A run read ahead for another place is left to finish: its arena is dropped,
            # never handed back while a worker may still write into it.
            run = self._run_at(i)
            arena = repo.take_arena(run)
            chunks = repo.read_run_into(run, arena)
        self._release()
        self._run, self._first, self._arena = chunks, i, arena
        self._end = i + len(chunks)
        if sequential and self._end < len(self._chunks):
            run = self._run_at(self._end)
            nxt = repo.take_arena(run)
            self._ahead = (self._end, nxt, repo.pool.submit(repo.read_run_into, run, nxt))

    def _release(self) -> None:
        """Hand the current run's arena back (no chunk of it is read any more)."""
        arena, self._arena, self._run = self._arena, None, []
        if arena is not None:
            self._repo.give_arena(arena)

    def close(self) -> None:
        """Close the reader; its buffers go back to the repository."""
        if not self.closed:
            self._ahead = None  # left to finish; its arena is dropped
            self._release()
        super().close()

    def _run_at(self, i: int) -> list[tuple[ObjectId, Location]]:
        # Ids from i on, without copying the tail of a manifest of maybe 100 000s of chunks
        # at every run: chunk_runs takes only as many as one run needs.
        chunks = self._chunks
        return next(self._repo.chunk_runs(chunks[j][0] for j in range(i, len(chunks))))

    def readinto(self, b: Any) -> int:
        import bisect

        mv = memoryview(b).cast("B")
        if self._pos >= self._size or len(mv) == 0:
            return 0
        i = bisect.bisect_right(self._starts, self._pos) - 1
        data = self._chunk(i)
        off = self._pos - self._starts[i]
        n = min(len(mv), len(data) - off)
        mv[:n] = data[off : off + n]
        self._pos += n
        return n

    def readall(self) -> bytes:
        out = bytearray()
        while True:
            chunk = self.read(1 << 20)
            if not chunk:
                return bytes(out)
            out += chunk
