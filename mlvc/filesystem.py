"""``mlvc://``: any snapshot of a repository as a read-only fsspec filesystem.

``fsspec.open("mlvc://REF/path/in/snapshot")`` reads one file of the snapshot that ``REF``
names, lazily: only the chunks a read touches are fetched. ``REF`` is anything the command
line accepts (:func:`mlvc.experiments.revisions.resolve`): a commit, experiment or checkpoint id
(7+ hex digits), ``EXP@best`` / ``EXP@latest`` / ``EXP@step=N``, a tag, a branch, or
``tags/NAME`` / ``heads/NAME`` (such a two-part ref takes the first two path components).

The repository comes from the storage options (``repo`` and, for its store,
``repo_options``), else from the project's settings (``mlvc.toml``, ``MLVC_REPOSITORY``,
``./.mlvc``; see :mod:`mlvc.settings`), found from ``cwd``. The path ``mlvc://`` itself lists
tags and branches as directories.

Caching: trees and manifests are immutable, so what is read of them is kept (per
repository, see :meth:`Repository.read_object`); a full 64-digit commit id is resolved once;
names that move (branches, tags, ``EXP@best``, short prefixes) are resolved again after
``ref_ttl`` seconds (default 10; :meth:`MlvcFileSystem.invalidate_cache` forgets them now).
Each open file keeps a bounded cache of the decoded chunks it read.

Every write (``open(..., "wb")``, ``rm``, ``mkdir``, ``put``...) raises
:class:`mlvc.errors.ReadOnlyError`: snapshots are immutable, record new ones with
``mlvc commit`` or :func:`mlvc.track`.

Registered for ``mlvc://`` through the ``fsspec.specs`` entry point (``pyproject.toml``).
This is the one module of :mod:`mlvc` that imports fsspec.
"""

from __future__ import annotations

import bisect
import os
import posixpath
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from mlvc.errors import ReadOnlyError
from mlvc_core.errors import InvalidRefName, ObjectNotFound, RefNotFound, UsageError
from mlvc_core.ids import ObjectId, is_hex_prefix, to_hex
from mlvc_core.objects import Manifest, TreeEntry
from mlvc_core.refs import KINDS
from mlvc_core.repository import Repository

__all__ = ["MlvcFileSystem", "MlvcFile"]

PROTOCOL = "mlvc"
_MAX_LINKS = 40
"""Symlinks followed while resolving one path (as Linux's ELOOP limit)."""
_FILE_CACHE_BYTES = 64 << 20
"""Decoded chunks one open file keeps (least recently used dropped first)."""


def _refuse(*_args: Any, **_kwargs: Any) -> Any:
    raise ReadOnlyError(
        "mlvc:// is read-only: snapshots never change; record new files with `mlvc commit` "
        "or mlvc.track()"
    )


class MlvcFileSystem(AbstractFileSystem):  # type: ignore[misc]  # fsspec is untyped
    """A read-only view of a repository's snapshots: ``mlvc://REF/path``.

    Args:
        repo: The repository: an open :class:`~mlvc_core.repository.Repository`, a URL or a
            local path; None for the project's repository (``mlvc.toml``...).
        repo_options: Storage options of the repository's own filesystem (endpoint,
            region...; credentials come from the environment as usual).
        cwd: Where to look for ``mlvc.toml`` when ``repo`` is None (default: the current
            directory).
        ref_ttl: Seconds a resolved moving name (branch, tag, ``EXP@best``...) is reused.
        **kwargs: Passed to :class:`fsspec.spec.AbstractFileSystem`.

    Raises:
        NotARepository: Nothing at the configured location (on first use).
    """

    protocol = PROTOCOL
    root_marker = ""
    cachable = True

    def __init__(
        self,
        repo: Repository | str | os.PathLike[str] | None = None,
        repo_options: dict[str, Any] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        ref_ttl: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._repo_arg = repo
        self._repo_options = dict(repo_options or {})
        self._cwd = os.fspath(cwd) if cwd is not None else None
        self._repo: Repository | None = repo if isinstance(repo, Repository) else None
        self._repo_pid = os.getpid()
        self.ref_ttl = float(ref_ttl)
        self._refs: dict[str, tuple[float, ObjectId]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ repository, names

    @property
    def repo(self) -> Repository:
        """The repository (opened on first use, again in a forked child process)."""
        if isinstance(self._repo_arg, Repository):
            return self._repo_arg
        if self._repo is None or self._repo_pid != os.getpid():
            from mlvc.repo import shared_repo
            from mlvc.settings import load_settings

            settings = load_settings(
                repository=self._repo_arg, cwd=self._cwd, storage_options=self._repo_options
            )
            self._repo = shared_repo(settings)
            self._repo_pid = os.getpid()
            self._refs.clear()
        return self._repo

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]  # type: ignore[return-value]
        text = os.fspath(path) if not isinstance(path, str) else path
        if text.startswith(f"{PROTOCOL}://"):
            text = text[len(PROTOCOL) + 3 :]
        elif text.startswith(f"{PROTOCOL}::"):
            text = text[len(PROTOCOL) + 2 :]
        return posixpath.normpath("/" + text).lstrip("/") if text.strip("/") else ""

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        """``REF/inner/path`` -> ``(REF, "inner/path")``; ``tags/x/...`` keeps two parts."""
        parts = path.split("/")
        n = 2 if parts[0] in KINDS and len(parts) > 1 else 1
        return "/".join(parts[:n]), "/".join(parts[n:])

    def invalidate_cache(self, path: str | None = None) -> None:
        """Forget resolved names (branches, tags...), so the next access reads them again."""
        with self._lock:
            self._refs.clear()

    def resolve_ref(self, ref: str) -> ObjectId:
        """The commit id a name stands for now (see the module docstring for the forms).

        Raises:
            FileNotFoundError: Nothing by that name.
        """
        now = time.monotonic()
        with self._lock:
            hit = self._refs.get(ref)
        if hit is not None and (hit[0] == float("inf") or now - hit[0] < self.ref_ttl):
            return hit[1]
        from mlvc.experiments.revisions import resolve

        try:
            commit_id = resolve(self.repo, ref).commit_id
        except (ObjectNotFound, RefNotFound, InvalidRefName, UsageError) as exc:
            raise FileNotFoundError(f"{PROTOCOL}://{ref}: {exc}") from exc
        fixed = len(ref) == 64 and is_hex_prefix(ref)
        with self._lock:
            self._refs[ref] = (float("inf") if fixed else now, commit_id)
        return commit_id

    def _entry(self, path: str) -> tuple[str, TreeEntry | None, ObjectId]:
        """``(REF, entry, commit)`` for a stripped path; entry None for the snapshot root.

        Symlinks inside the snapshot are followed (at most :data:`_MAX_LINKS`).

        Raises:
            FileNotFoundError: No such name or no such path.
        """
        ref, inner = self._split(path)
        commit_id = self.resolve_ref(ref)
        tree = self.repo.read_commit(commit_id).tree
        parts = [p for p in inner.split("/") if p]
        entry: TreeEntry | None = None
        hops = 0
        i = 0
        current: ObjectId | None = tree
        while i < len(parts):
            if current is None:
                raise FileNotFoundError(f"{PROTOCOL}://{path}: not a directory on the way")
            entry = self.repo.read_tree(current).get(parts[i])
            if entry is None:
                raise FileNotFoundError(f"{PROTOCOL}://{path}")
            if entry.kind == "link":
                hops += 1
                if hops > _MAX_LINKS:
                    raise FileNotFoundError(f"{PROTOCOL}://{path}: too many symlinks")
                target = posixpath.normpath(posixpath.join("/".join(parts[:i]), entry.target or ""))
                if target.startswith("..") or posixpath.isabs(entry.target or ""):
                    raise FileNotFoundError(f"{PROTOCOL}://{path}: symlink leaves the snapshot")
                parts = [p for p in target.split("/") if p and p != "."] + parts[i + 1 :]
                i, current, entry = 0, tree, None
                continue
            current = entry.oid if entry.kind == "dir" else None
            i += 1
        return ref, entry, commit_id

    # ------------------------------------------------------------------ the read contract

    def _root_listing(self) -> list[dict[str, Any]]:
        names = {
            name.partition("/")[2]
            for kind in ("tags", "heads")
            for name, _info in self.repo.refs.list_keys(kind)
        }
        return [{"name": n, "size": 0, "type": "directory"} for n in sorted(names)]

    def _details(self, name: str, entry: TreeEntry | None, commit_id: ObjectId) -> dict[str, Any]:
        if entry is None:
            commit = self.repo.read_commit(commit_id)
            size = sum(e.size for e in self.repo.read_tree(commit.tree).entries)
            return {"name": name, "size": size, "type": "directory", "commit": to_hex(commit_id)}
        return {
            "name": name,
            "size": entry.size if entry.kind == "file" else 0,
            "type": "directory" if entry.kind == "dir" else "file",
            "mode": entry.mode,
            "oid": to_hex(entry.oid) if entry.oid is not None else None,
            "commit": to_hex(commit_id),
        }

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """Details of one path.

        Keys: ``name``, ``size`` (bytes), ``type`` (``file``/``directory``), ``mode``,
        ``oid`` (the manifest or tree id, hex) and ``commit`` (hex).

        Raises:
            FileNotFoundError: No such name or path.
        """
        path = self._strip_protocol(path)
        if not path:
            return {"name": "", "size": 0, "type": "directory"}
        _ref, entry, commit_id = self._entry(path)
        return self._details(path, entry, commit_id)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        """The entries of a directory (or the one file a file path names).

        Raises:
            FileNotFoundError: No such name or path.
        """
        path = self._strip_protocol(path)
        if not path:
            listing = self._root_listing()
        else:
            _ref, entry, commit_id = self._entry(path)
            if entry is not None and entry.kind != "dir":
                listing = [self._details(path, entry, commit_id)]
            else:
                tree = entry.oid if entry is not None else self.repo.read_commit(commit_id).tree
                assert tree is not None
                listing = []
                for e in self.repo.read_tree(tree).entries:
                    child = f"{path}/{e.name}"
                    if e.kind == "link":
                        try:
                            _r, target, _c = self._entry(child)
                        except FileNotFoundError:
                            continue  # a dangling link: nothing to read
                        listing.append({**self._details(child, target, commit_id), "islink": True})
                    else:
                        listing.append(self._details(child, e, commit_id))
        return listing if detail else [d["name"] for d in listing]

    def _manifest(self, path: str) -> tuple[Manifest, dict[str, Any]]:
        path = self._strip_protocol(path)
        if not path:
            raise IsADirectoryError(f"{PROTOCOL}://")
        _ref, entry, commit_id = self._entry(path)
        if entry is None or entry.kind == "dir" or entry.oid is None:
            raise IsADirectoryError(f"{PROTOCOL}://{path}")
        return self.repo.read_manifest(entry.oid), self._details(path, entry, commit_id)

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> MlvcFile:
        if mode != "rb":
            _refuse()
        manifest, details = self._manifest(path)
        return MlvcFile(
            self,
            details["name"],
            ChunkRangeReader(self.repo, manifest),
            details,
            block_size=block_size,
            cache_options=cache_options,
            **kwargs,
        )

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        """Bytes ``[start, end)`` of a file (negative values count from its end).

        Only the chunks covering the range are fetched, one request per run of them stored
        together.

        Raises:
            FileNotFoundError: No such file.
            IsADirectoryError: A directory.
        """
        manifest, _ = self._manifest(path)
        size = manifest.size
        lo = 0 if start is None else (max(size + start, 0) if start < 0 else min(start, size))
        hi = size if end is None else (max(size + end, 0) if end < 0 else min(end, size))
        return ChunkRangeReader(self.repo, manifest).read(lo, hi)

    def checksum(self, path: str) -> int:
        """A number identifying a file's content (from its manifest id)."""
        oid = self.info(path).get("oid") or ""
        return int(oid[:16] or "0", 16)

    def ukey(self, path: str) -> str:
        """A key that changes when a path's content does (its manifest or tree id)."""
        info = self.info(path)
        return str(info.get("oid") or info.get("commit") or "")

    # ------------------------------------------------------------------ writes: refused

    mkdir = makedirs = rmdir = _rm = rm = rm_file = _refuse
    pipe_file = put_file = cp_file = mv = touch = _refuse
    copy = move = put = pipe = rename = _refuse


class ChunkRangeReader:
    """Bytes ``[start, end)`` of one file, fetching only the chunks that cover them.

    Chunks missing from the cache are read in runs (chunks stored one after another in one
    pack: one request each, see :meth:`Repository.chunk_runs`); decoded chunks are kept, up
    to :data:`_FILE_CACHE_BYTES`, so small reads near each other cost nothing more. A read
    that continues where the previous one ended is treated as streaming: it also fetches the
    rest of the run it starts in, and the next run is read on a worker thread meanwhile (on a
    bucket, reading front to back costs one round trip per run, overlapped with the reader).
    """

    def __init__(self, repo: Repository, manifest: Manifest) -> None:
        self.repo = repo
        self.size = manifest.size
        self._ids = [cid for cid, _ in manifest.chunks]
        self._starts: list[int] = []
        pos = 0
        for _cid, n in manifest.chunks:
            self._starts.append(pos)
            pos += n
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cached = 0
        self._last_end = -1
        self._lock = threading.Lock()
        self._ahead: tuple[int, Future[list[bytes]]] | None = None

    def _index(self, pos: int) -> int:
        return bisect.bisect_right(self._starts, pos) - 1

    def _keep(self, i: int, data: bytes) -> None:
        if i in self._cache:
            return
        self._cache[i] = data
        self._cached += len(data)
        while self._cached > _FILE_CACHE_BYTES and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= len(old)

    def _read_run_at(self, i: int) -> list[bytes]:
        run = next(self.repo.chunk_runs(self._ids[k] for k in range(i, len(self._ids))))
        return self.repo.read_run(run)

    def _fetch(self, first: int, last: int, stream: bool) -> dict[int, bytes]:
        got: dict[int, bytes] = {}
        i = first
        while i <= last:
            if i in self._cache:
                self._cache.move_to_end(i)
                got[i] = self._cache[i]
                i += 1
                continue
            if self._ahead is not None and self._ahead[0] == i:
                chunks = self._ahead[1].result()
                self._ahead = None
                for k, data in enumerate(chunks, start=i):
                    got[k] = data
                    self._keep(k, data)
                i += len(chunks)
                continue
            j = i
            while j + 1 <= last and j + 1 not in self._cache:
                j += 1
            stop = len(self._ids) if stream else j + 1
            ids = (self._ids[k] for k in range(i, stop))
            for run in self.repo.chunk_runs(ids):
                for k, data in enumerate(self.repo.read_run(run), start=i):
                    got[k] = data
                    self._keep(k, data)
                i += len(run)
                if i > j:
                    break
            i = max(i, j + 1)
        nxt = max(got) + 1
        if stream and nxt < len(self._ids) and nxt not in self._cache:
            if self._ahead is None or self._ahead[0] != nxt:
                self._ahead = (nxt, self.repo.pool.submit(self._read_run_at, nxt))
        return got

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` (clipped to the file).

        Raises:
            IntegrityError: A chunk read back does not match its id.
        """
        end = min(end, self.size)
        if start >= end:
            return b""
        first, last = self._index(start), self._index(end - 1)
        with self._lock:
            got = self._fetch(first, last, stream=start == self._last_end)
            self._last_end = end
        out = bytearray()
        for k in range(first, last + 1):
            data = got[k]
            lo = max(start - self._starts[k], 0)
            hi = min(end - self._starts[k], len(data))
            out += data[lo:hi]
        return bytes(out)


class MlvcFile(AbstractBufferedFile):  # type: ignore[misc]  # fsspec is untyped
    """A read-only, seekable file of a snapshot (``fs.open(path)``).

    Reads go through :class:`ChunkRangeReader`, which caches decoded chunks itself, so the
    default fsspec cache type here is ``none``; ``cache_type=`` picks another one.
    """

    def __init__(
        self,
        fs: MlvcFileSystem,
        path: str,
        reader: ChunkRangeReader,
        details: dict[str, Any],
        block_size: int | None = None,
        cache_type: str = "none",
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.reader = reader
        super().__init__(
            fs,
            path,
            mode="rb",
            block_size=block_size or "default",
            cache_type=cache_type,
            cache_options=cache_options,
            size=reader.size,
            **kwargs,
        )
        self.details = details

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.reader.read(start, end)
