"""Stat cache: skip re-reading files that have not changed since the last commit.

Maps an absolute path to the ``(size, mtime_ns, inode, ctime_ns)`` it had when it was stored and
the id of its manifest. A hit is trusted only if all four match and the manifest is still in the
repository. Files modified within the last two seconds are recorded as never matching, because
a later write in the same timestamp tick would go unnoticed (git's "racy clean" problem).

A path whose stat no longer matches still names its previous manifest (:meth:`StatCache.previous`):
a file rewritten in place usually keeps much of its content, and ingest verifies that content
against the old chunks instead of cutting it again.

Kept in SQLite in the repository's local cache directory; one cache per repository. The cache
is a hint, never trusted over the repository: a file SQLite cannot read (garbage, truncated,
locked by a dead process's journal) is deleted and rebuilt empty (:attr:`StatCache.damaged`
says why, for the caller to warn), an error while in use turns the cache off for the rest of
the run instead of failing the commit, and a hit is used only once the caller has checked its
manifest (present in the repository, recording the file's size).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path

from mlvc_core.ids import DIGEST_SIZE, ObjectId, hash_bytes

_RACY_NS = 2_000_000_000


_COLUMNS = ["path", "size", "mtime_ns", "ino", "ctime_ns", "manifest", "tag"]
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, "
    "mtime_ns INTEGER, ino INTEGER, ctime_ns INTEGER, manifest BLOB, tag BLOB)"
)


def _tag(path: str, size: int, mtime_ns: int, ino: int, ctime_ns: int, manifest: bytes) -> bytes:
    """Binds a row's fields together: a row naming another row's manifest is no hit."""
    fields = f"{size},{mtime_ns},{ino},{ctime_ns}".encode()
    return hash_bytes(os.fsencode(path) + b"\0" + fields + b"\0" + manifest)[:16]


def _judge(
    path: str, row: tuple[object, ...] | None, st: os.stat_result | None
) -> tuple[ObjectId, bool] | None:
    """A row's manifest id and whether ``st`` still matches it; None if not well-formed."""
    if (
        row is None
        or len(row) != 6
        or not all(isinstance(v, int) for v in row[:4])
        or not isinstance(row[4], bytes)
        or len(row[4]) != DIGEST_SIZE
        or row[5] != _tag(path, *row[:5])  # type: ignore[arg-type]
    ):
        return None
    same = st is not None and tuple(row[:4]) == (
        st.st_size,
        st.st_mtime_ns,
        st.st_ino,
        st.st_ctime_ns,
    )
    return ObjectId(bytes(row[4])), same


_MANY = 500
"""Paths per query of :meth:`StatCache.previous_many` (SQLite allows 999 parameters at least)."""


class StatCache:
    """A SQLite-backed stat cache. Safe to share between threads of one process."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        self.path = p
        self.damaged: str | None = None
        """Why the cache file was discarded and rebuilt on open (None if it was sound)."""
        self._lock = threading.Lock()
        self._pending: list[tuple[str, int, int, int, int, bytes, bytes]] = []
        self._db: sqlite3.Connection | None = None
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a hint only: without it every file is read
            self.damaged = f"cannot be kept in {p.parent} ({exc}); every file is read"
            return
        try:
            self._db = self._connect()
        except sqlite3.Error as exc:
            self.damaged = f"{p} was unreadable ({exc}); rebuilt empty"
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{p}{suffix}").unlink(missing_ok=True)
            try:
                self._db = self._connect()
            except sqlite3.Error:
                self._db = None  # no cache this run: every file is read

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            str(self.path), timeout=30, check_same_thread=False, isolation_level=None
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            row = db.execute("PRAGMA quick_check(1)").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {row[0] if row else 'failed'}")
            cols = [r[1] for r in db.execute("PRAGMA table_info(files)")]
            if cols != _COLUMNS:  # written by another version of mlvc: start afresh
                db.execute("DROP TABLE files")
                db.execute(_SCHEMA)
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _fail(self, exc: sqlite3.Error) -> None:
        """Turn the cache off after an error in use (the caller holds the lock)."""
        if self.damaged is None:
            self.damaged = f"{self.path} failed ({exc}); not used for the rest of this run"
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
        self._db = None
        self._pending.clear()

    def lookup(self, path: str, st: os.stat_result) -> ObjectId | None:
        """The manifest id recorded for ``path`` if its stat still matches."""
        found = self.previous(path, st)
        return found[0] if found is not None and found[1] else None

    def previous(self, path: str, st: os.stat_result | None = None) -> tuple[ObjectId, bool] | None:
        """The manifest id last recorded for ``path``, and whether ``st`` still matches it.

        A file that no longer matches was most likely rewritten in place, often with much of
        its old content: its old manifest is a good guide for ingesting the new one. A row
        that is not well-formed is no hit.
        """
        with self._lock:
            if self._db is None:
                return None
            try:
                row = self._db.execute(
                    "SELECT size, mtime_ns, ino, ctime_ns, manifest, tag FROM files WHERE path = ?",
                    (path,),
                ).fetchone()
            except sqlite3.Error as exc:
                self._fail(exc)
                return None
        return _judge(path, row, st)

    def previous_many(
        self, items: list[tuple[str, os.stat_result | None]]
    ) -> list[tuple[ObjectId, bool] | None]:
        """:meth:`previous` for many paths with one query per :data:`_MANY` of them.

        Returns one answer per ``(path, stat)``, in order.
        """
        rows: dict[str, tuple[object, ...]] = {}
        paths = list(dict.fromkeys(p for p, _ in items))
        with self._lock:
            if self._db is None:
                return [None] * len(items)
            try:
                for i in range(0, len(paths), _MANY):
                    part = paths[i : i + _MANY]
                    marks = ",".join("?" * len(part))
                    for row in self._db.execute(
                        "SELECT path, size, mtime_ns, ino, ctime_ns, manifest, tag FROM files "
                        f"WHERE path IN ({marks})",
                        part,
                    ):
                        rows[row[0]] = row[1:]
            except sqlite3.Error as exc:
                self._fail(exc)
                return [None] * len(items)
        return [_judge(path, rows.get(path), st) for path, st in items]

    def record(self, path: str, st: os.stat_result, manifest: ObjectId) -> None:
        """Remember ``path``'s manifest (buffered until :meth:`flush`)."""
        size = st.st_size
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < _RACY_NS:
            # Modified too recently to trust its stat (a write within the timestamp's
            # granularity would go unseen): kept as a guide only, never to skip the file.
            size = -1
        with self._lock:
            if self._db is not None:
                fields = (size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, bytes(manifest))
                self._pending.append((path, *fields, _tag(path, *fields)))

    def flush(self) -> None:
        """Write buffered records (dropped, and the cache turned off, if SQLite fails)."""
        with self._lock:
            rows, self._pending = self._pending, []
            if rows and self._db is not None:
                try:
                    self._db.execute("BEGIN")
                    self._db.executemany(
                        "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)", rows
                    )
                    self._db.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._fail(exc)

    def close(self) -> None:
        """Flush and close."""
        self.flush()
        with self._lock:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._db = None
