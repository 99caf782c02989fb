"""Reading one file of a snapshot as a stream: :class:`ChunkedReader`.

Seekable and read-only over a manifest; it reads only the chunks asked for, a run of
adjacent ones per request, each verified against its id. It never writes anything.
"""

from __future__ import annotations

import io
from concurrent.futures import Future
from typing import Any

from mlvc_core.errors import IntegrityError
from mlvc_core.ids import ObjectId, to_hex
from mlvc_core.objects import Manifest
from mlvc_core.packs import Location
from mlvc_core.repository import Repository


class ChunkedReader(io.RawIOBase):
    """A seekable, read-only file object over a manifest: reads only the chunks it needs.

    A chunk is read together with those stored after it in the same pack (one request for
    up to a few MiB, see :meth:`Repository.chunk_runs`): reading a file front to back from a
    bucket costs a round trip per run, not per chunk. Once reads go front to back (a run is
    needed right where the last one ended), the next run is read on a worker thread while
    this one is consumed. Memory holds at most two runs of decoded chunks, so any file can
    be read however large.
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
        self._cache: dict[int, bytes] = {}
        self._end = -1  # index just past the cached run
        self._ahead: tuple[int, Future[list[bytes]]] | None = None  # the next run, being read
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

    def _chunk(self, i: int) -> bytes:
        data = self._cache.get(i)
        if data is None:
            sequential = i == self._end
            if self._ahead is not None and self._ahead[0] == i:
                chunks = self._ahead[1].result()
            else:
                chunks = self._repo.read_run(self._run_at(i))
            self._ahead = None
            self._cache = dict(enumerate(chunks, start=i))
            self._end = i + len(chunks)
            if sequential and self._end < len(self._chunks):
                ahead = self._repo.pool.submit(self._repo.read_run, self._run_at(self._end))
                self._ahead = (self._end, ahead)
            data = self._cache[i]
        cid, length = self._chunks[i]
        if len(data) != length:
            raise IntegrityError(to_hex(cid), f"{len(data)} bytes, its manifest says {length}")
        return data

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
