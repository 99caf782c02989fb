"""This machine's copies of refs (``<cache dir>/refs.sqlite``): what a ref catalog scan remembers.

Each copy is an :class:`Entry`: a ref's bytes and the token (listed version, or
``size:mtime``) of the state they were read in; :mod:`mlvc_core.catalog` decides when a copy
still stands for its ref. The cache also keeps a few named values (``meta``): the token of the
last catalog merged, where the last listing was cut into ranges. A hint (docs/format.md, "Local
caches are hints"): a database that cannot be opened or read is deleted and created again, and
a copy is stored after its BLAKE3 digest, so a damaged row is ignored (the ref read again).

Must not import the store or know what a ref's document means.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from mlvc_core.ids import DIGEST_SIZE, hash_bytes

__all__ = ["Entry", "LocalCache"]

_IN_BATCH = 500
"""Keys per ``IN (...)`` query (SQLite allows 999 parameters by default)."""


class Entry(NamedTuple):
    """One ref as copied into a catalog or the local cache."""

    key: str
    """Store key of the ref (``refs/experiments/<id>``)."""
    token: str
    """The listed version of the state copied, or ``size:mtime``."""
    exact: bool
    """True if ``token`` is a backend version (names the bytes); False for ``size:mtime``."""
    read_at: float
    """When the copy was read (seconds since the epoch, the reader's clock)."""
    doc: bytes
    """The ref's bytes as read."""


def _sealed(doc: bytes) -> bytes:
    """How a copy's bytes are stored: their BLAKE3 digest, then the bytes."""
    return hash_bytes(doc) + doc


def _entry(row: tuple[object, ...]) -> Entry | None:
    """The copy a database row holds; None if the row is damaged (then it is read again)."""
    key, token, exact, read_at, sealed = row
    if not (
        isinstance(key, str)
        and isinstance(token, str)
        and exact in (0, 1)
        and isinstance(read_at, float)
        and isinstance(sealed, bytes)
    ):
        return None
    doc = sealed[DIGEST_SIZE:]
    if sealed[:DIGEST_SIZE] != hash_bytes(doc):
        return None
    return Entry(key, token, bool(exact), read_at, doc)


class LocalCache:
    """Copies of refs on this machine, in SQLite (or in memory without a path).

    A hint: rows are trusted only through :func:`mlvc_core.catalog.is_current`; a database
    that cannot be opened or read is deleted and created again (or, failing that, replaced by
    memory).
    """

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._mem: dict[str, Entry] = {}
        self._meta: dict[str, str] = {}
        self._db: sqlite3.Connection | None = None
        if path is not None:
            self._db = self._open(path)

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS refs (key TEXT PRIMARY KEY, token TEXT, exact INTEGER, "
            "read_at REAL, doc BLOB)"
        )
        db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
        db.execute("SELECT count(*) FROM refs").fetchone()
        return db

    def _open(self, path: Path) -> sqlite3.Connection | None:
        try:
            return self._connect(path)
        except (sqlite3.Error, OSError):
            pass
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):  # damaged: start afresh
            with contextlib.suppress(OSError):
                p.unlink()
        try:
            return self._connect(path)
        except (sqlite3.Error, OSError):
            return None  # unusable: the cache lives in memory and only costs reads

    def _fail(self) -> None:
        """The database broke while in use: rebuild it (it is only a cache)."""
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
        self._db = None
        if self._path is not None:
            for p in (self._path, Path(f"{self._path}-wal"), Path(f"{self._path}-shm")):
                with contextlib.suppress(OSError):
                    p.unlink()
            self._db = self._open(self._path)

    def load(self, prefix: str, keys: Iterable[str] | None = None) -> dict[str, Entry]:
        """Every cached copy under ``prefix``, or only those of ``keys``."""
        with self._lock:
            if self._db is None:
                if keys is not None:
                    return {k: self._mem[k] for k in keys if k in self._mem}
                return {k: e for k, e in self._mem.items() if k.startswith(prefix)}
            try:
                if keys is None:
                    rows = self._db.execute(
                        "SELECT key, token, exact, read_at, doc FROM refs "
                        "WHERE key >= ? AND key < ?",
                        (prefix, prefix + "\uffff"),
                    ).fetchall()
                else:
                    wanted, rows = list(keys), []
                    for i in range(0, len(wanted), _IN_BATCH):
                        batch = wanted[i : i + _IN_BATCH]
                        rows += self._db.execute(
                            "SELECT key, token, exact, read_at, doc FROM refs WHERE key IN "
                            f"({','.join('?' * len(batch))})",
                            batch,
                        ).fetchall()
            except sqlite3.Error:
                self._fail()
                return {}
        return {e.key: e for e in map(_entry, rows) if e is not None}

    def keys(self, prefix: str) -> list[str]:
        """The keys of every cached copy under ``prefix``."""
        with self._lock:
            if self._db is None:
                return [k for k in self._mem if k.startswith(prefix)]
            try:
                rows = self._db.execute(
                    "SELECT key FROM refs WHERE key >= ? AND key < ?", (prefix, prefix + "\uffff")
                ).fetchall()
            except sqlite3.Error:
                self._fail()
                return []
        return [r[0] for r in rows]

    def update(self, rows: Iterable[Entry], gone: Iterable[str]) -> None:
        """Store fresh copies and forget refs that no longer exist."""
        rows, gone = list(rows), list(gone)
        if not rows and not gone:
            return
        with self._lock:
            if self._db is None:
                self._mem.update((e.key, e) for e in rows)
                for k in gone:
                    self._mem.pop(k, None)
                return
            try:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR REPLACE INTO refs VALUES (?, ?, ?, ?, ?)",
                    [(e.key, e.token, int(e.exact), e.read_at, _sealed(e.doc)) for e in rows],
                )
                self._db.executemany("DELETE FROM refs WHERE key = ?", [(k,) for k in gone])
                self._db.execute("COMMIT")
            except sqlite3.Error:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")

    def get_meta(self, name: str) -> str | None:
        """A remembered value (the token of the last catalog merged...)."""
        with self._lock:
            if self._db is None:
                return self._meta.get(name)
            try:
                row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
            except sqlite3.Error:
                return None
        return str(row[0]) if row is not None else None

    def set_meta(self, name: str, value: str) -> None:
        """Remember a value."""
        with self._lock:
            if self._db is None:
                self._meta[name] = value
                return
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))
