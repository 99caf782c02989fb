"""Stat cache: skip re-reading files that have not changed since the last commit.

Maps an absolute path to the ``(size, mtime_ns, inode, ctime_ns)`` it had when it was stored and
the id of its manifest. A hit is trusted only if all four match and the manifest is still in the
repository. Files modified within the last two seconds are recorded as never matching, because
a later write in the same timestamp tick would go unnoticed (git's "racy clean" problem).

A path whose stat no longer matches still names its previous manifest (:meth:`StatCache.previous`):
a file rewritten in place usually keeps much of its content, and ingest verifies that content
against the old chunks instead of cutting it again.

Kept in SQLite in the repository's local cache directory; one cache per repository.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

from mlvc_core.ids import ObjectId

_RACY_NS = 2_000_000_000


class StatCache:
    """A SQLite-backed stat cache. Safe to share between threads of one process."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            str(p), timeout=30, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, "
            "mtime_ns INTEGER, ino INTEGER, ctime_ns INTEGER, manifest BLOB)"
        )
        self._lock = threading.Lock()
        self._pending: list[tuple[str, int, int, int, int, bytes]] = []

    def lookup(self, path: str, st: os.stat_result) -> ObjectId | None:
        """The manifest id recorded for ``path`` if its stat still matches."""
        found = self.previous(path, st)
        return found[0] if found is not None and found[1] else None

    def previous(self, path: str, st: os.stat_result | None = None) -> tuple[ObjectId, bool] | None:
        """The manifest id last recorded for ``path``, and whether ``st`` still matches it.

        A file that no longer matches was most likely rewritten in place, often with much of
        its old content: its old manifest is a good guide for ingesting the new one.
        """
        with self._lock:
            row = self._db.execute(
                "SELECT size, mtime_ns, ino, ctime_ns, manifest FROM files WHERE path = ?", (path,)
            ).fetchone()
        if row is None:
            return None
        same = st is not None and tuple(row[:4]) == (
            st.st_size,
            st.st_mtime_ns,
            st.st_ino,
            st.st_ctime_ns,
        )
        return ObjectId(bytes(row[4])), same

    def record(self, path: str, st: os.stat_result, manifest: ObjectId) -> None:
        """Remember ``path``'s manifest (buffered until :meth:`flush`)."""
        size = st.st_size
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < _RACY_NS:
            # Modified too recently to trust its stat (a write within the timestamp's
            # granularity would go unseen): kept as a guide only, never to skip the file.
            size = -1
        with self._lock:
            self._pending.append(
                (path, size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, bytes(manifest))
            )

    def flush(self) -> None:
        """Write buffered records."""
        with self._lock:
            rows, self._pending = self._pending, []
            if rows:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")

    def close(self) -> None:
        """Flush and close."""
        self.flush()
        self._db.close()
