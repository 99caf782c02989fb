"""Restore: trees -> files on disk (or streams), verified and confined to the target directory.

Guarantees (tests guard each):

* nothing outside ``dest`` is written: entry names are validated when trees are decoded,
  symlink targets must stay inside ``dest``, and every parent directory is checked with
  ``realpath`` so a pre-existing symlink inside ``dest`` cannot redirect a write;
* existing files are not overwritten unless ``force``; conflicts are all found before the
  first byte is written;
* each file is streamed chunk by chunk (read and verified on worker threads, a bounded number
  in flight) into a temporary name beside its target, then renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from mlvc_core import walk
from mlvc_core.errors import FileExistsConflict, IntegrityError, UnsafePath, UsageError
from mlvc_core.ids import ObjectId, to_hex
from mlvc_core.objects import Manifest, TreeEntry
from mlvc_core.packs import Location
from mlvc_core.repository import ProgressFn, Repository


def walk_tree(
    repo: Repository, tree_id: ObjectId, prefix: str = ""
) -> Iterator[tuple[str, TreeEntry]]:
    """Every entry below a tree as ``(relative posix path, entry)``, depth first, sorted.

    Budgeted: see :func:`mlvc_core.walk.walk_tree`.
    """
    return walk.walk_tree(repo, tree_id, prefix)


def find_entry(repo: Repository, tree_id: ObjectId, path: str) -> TreeEntry | None:
    """The tree entry at a ``/``-separated path, or None."""
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts:
        return None
    entry: TreeEntry | None = None
    current: ObjectId | None = tree_id
    for part in parts:
        if current is None:
            return None
        entry = repo.read_tree(current).get(part)
        if entry is None:
            return None
        current = entry.oid if entry.kind == "dir" else None
    return entry


def check_link(rel: str, target: str) -> None:
    """Refuse a symlink whose target would point outside the checkout.

    Raises:
        UnsafePath: An absolute target, or one that climbs out of the root.
    """
    if posixpath.isabs(target) or target.startswith("\\") or (len(target) > 1 and target[1] == ":"):
        raise UnsafePath(f"symlink {rel!r} points to an absolute path {target!r}")
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    if joined == ".." or joined.startswith("../"):
        raise UnsafePath(f"symlink {rel!r} points outside the checkout: {target!r}")


def _select(
    entries: list[tuple[str, TreeEntry]], paths: Iterable[str] | None
) -> list[tuple[str, TreeEntry]]:
    if paths is None:
        return entries
    wanted = [p.strip("/") for p in paths]
    chosen = []
    for rel, e in entries:
        if any(rel == w or rel.startswith(w + "/") for w in wanted):
            chosen.append((rel, e))
    missing = [w for w in wanted if not any(r == w or r.startswith(w + "/") for r, _ in chosen)]
    if missing:
        raise UsageError(f"not in this snapshot: {', '.join(missing)}")
    return chosen


def _inside(root_real: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real + os.sep)


def _make_parents(root_real: str, dest: Path, rel_dir: str) -> Path:
    parent = dest
    for part in rel_dir.split("/") if rel_dir else []:
        parent = parent / part
        if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
            if not _inside(root_real, str(parent)) or not parent.is_dir():
                raise UnsafePath(f"{parent} is not a directory inside the checkout")
        parent.mkdir(exist_ok=True)
        if not _inside(root_real, str(parent)):
            raise UnsafePath(f"{parent} resolves outside the checkout")
    return parent


def write_file(
    repo: Repository,
    manifest: Manifest,
    target: Path,
    mode: int,
    progress: ProgressFn | None = None,
) -> None:
    """Stream a manifest's chunks into ``target`` (temp file, then rename)."""
    tmp = target.with_name(f".{target.name}.mlvc-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            chunks = repo.read_chunks(cid for cid, _ in manifest.chunks)
            for (cid, length), data in zip(manifest.chunks, chunks, strict=True):
                if len(data) != length:  # the manifest and the chunk disagree: write neither
                    raise IntegrityError(
                        to_hex(cid), f"{len(data)} bytes, its manifest says {length}"
                    )
                f.write(data)
                if progress is not None:
                    progress(len(data))
        os.chmod(tmp, mode & 0o777)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def restore_tree(
    repo: Repository,
    tree_id: ObjectId,
    dest: Path,
    paths: Iterable[str] | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> list[str]:
    """Write the files of a tree under ``dest``; return the relative paths written.

    Raises:
        FileExistsConflict: Existing files would be overwritten and ``force`` is false.
        UnsafePath: An entry would land outside ``dest``.
        UsageError: A requested path is not in the tree.
    """
    entries = _select(list(walk_tree(repo, tree_id)), paths)
    for rel, e in entries:
        if e.kind == "link":
            check_link(rel, e.target or "")
    leaves = [(rel, e) for rel, e in entries if e.kind != "dir"]
    dest.mkdir(parents=True, exist_ok=True)
    if not force:
        conflicts = [rel for rel, _ in leaves if os.path.lexists(dest / rel)]
        if conflicts:
            raise FileExistsConflict(conflicts)
    root_real = os.path.realpath(dest)
    written = []
    for rel, e in entries:
        parent_rel, _, name = rel.rpartition("/")
        if e.kind == "dir":
            _make_parents(root_real, dest, rel)
            continue
        parent = _make_parents(root_real, dest, parent_rel)
        target = parent / name
        if os.path.lexists(target):
            if target.is_dir() and not target.is_symlink():
                raise FileExistsConflict([rel])
            if e.kind == "link":
                target.unlink()
        if e.kind == "link":
            os.symlink(e.target or "", target)
        else:
            assert e.oid is not None
            write_file(repo, repo.read_manifest(e.oid), target, e.mode, progress)
        written.append(rel)
    return written


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
