"""The local ref cache (``refs.sqlite``) is a hint: a damaged row is never taken for a ref."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from mlvc_core.refcache import Entry, LocalCache

PREFIX = "refs/experiments/"


def _entry(name: str, doc: bytes) -> Entry:
    return Entry(PREFIX + name, "5:1700000000.0", False, 1_700_000_100.0, doc)


def test_copies_come_back_as_stored(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path / "refs.sqlite")
    entries = [_entry("a", b'{"loss":0.25}'), _entry("b", b"")]
    cache.update(entries, ())
    again = LocalCache(tmp_path / "refs.sqlite")  # another process
    assert again.load(PREFIX) == {e.key: e for e in entries}
    assert again.load(PREFIX, [PREFIX + "b"]) == {PREFIX + "b": entries[1]}


def test_a_damaged_row_is_ignored_not_taken_for_the_ref(tmp_path: Path) -> None:
    path = tmp_path / "refs.sqlite"
    cache = LocalCache(path)
    cache.update([_entry(n, b'{"n":"' + n.encode() + b'","loss":0.25}') for n in "abcdef"], ())
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        # Bytes changed under an intact token, a type other than a copy's, a truncated copy.
        (doc,) = db.execute("SELECT doc FROM refs WHERE key = ?", (PREFIX + "a",)).fetchone()
        db.execute(
            "UPDATE refs SET doc = ? WHERE key = ?", (doc.replace(b"0.25", b"0.75"), PREFIX + "a")
        )
        db.execute("UPDATE refs SET doc = 1000000000 WHERE key = ?", (PREFIX + "b",))
        db.execute("UPDATE refs SET read_at = 'soon' WHERE key = ?", (PREFIX + "c",))
        db.execute("UPDATE refs SET token = x'35' WHERE key = ?", (PREFIX + "d",))
        db.execute("UPDATE refs SET doc = substr(doc, 1, 10) WHERE key = ?", (PREFIX + "e",))
    loaded = LocalCache(path).load(PREFIX)
    assert sorted(loaded) == [PREFIX + "f"]
    assert loaded[PREFIX + "f"].doc == b'{"n":"f","loss":0.25}'
