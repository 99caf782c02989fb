"""Shipped test helpers: the conformance suite every :class:`~mlvc_core.storage.Store` runs.

A new backend is a fixture plus ``class TestMyStore(StoreContract): ...`` whose ``store``
fixture yields a fresh, empty store. pytest is imported lazily so that importing this module
outside tests costs nothing.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from mlvc_core.errors import FormatError, KeyNotFound, PreconditionFailed
from mlvc_core.storage.base import Store


def _retrying_increment(store: Store, key: str, times: int) -> int:
    """Increment a counter under ``key`` ``times`` times by CAS; return the number of retries."""
    retries = 0
    done = 0
    while done < times:
        try:
            data, version = store.read_versioned(key)
        except KeyNotFound:
            data, version = b"0", None
        try:
            store.write_if(key, str(int(data) + 1).encode(), version)
            done += 1
        except PreconditionFailed:
            retries += 1
    return retries


class StoreContract:
    """Behaviour every store must have. Subclasses provide a ``store`` fixture."""

    def test_missing_key(self, store: Store) -> None:
        import pytest

        with pytest.raises(KeyNotFound):
            store.read("nope/missing")
        with pytest.raises(FileNotFoundError):  # KeyNotFound is a FileNotFoundError too
            store.read_range("nope/missing", 0, 1)
        assert not store.exists("nope/missing")

    def test_write_read_overwrite(self, store: Store) -> None:
        store.write("a/b/c", b"hello")
        assert store.read("a/b/c") == b"hello"
        assert store.exists("a/b/c")
        store.write("a/b/c", b"world!")
        assert store.read("a/b/c") == b"world!"

    def test_ranges(self, store: Store) -> None:
        data = bytes(range(256)) * 4
        store.write("r/x", data)
        assert store.read_range("r/x", 10, 5) == data[10:15]
        assert store.read_range("r/x", 1000, 100) == data[1000:]
        assert store.read_ranges("r/x", [(0, 3), (500, 7)]) == [data[0:3], data[500:507]]
        with store.open_read("r/x") as f:
            f.seek(300)
            assert f.read(4) == data[300:304]

    def test_create_only_if_absent(self, store: Store) -> None:
        assert store.create("c/k", b"first") is True
        assert store.create("c/k", b"second") is False
        assert store.read("c/k") == b"first"

    def test_streaming_write_published_on_close(self, store: Store) -> None:
        piece = os.urandom(1 << 20)
        w = store.open_write("s/big")
        for _ in range(12):
            w.write(piece)
        assert not store.exists("s/big")
        w.close()
        assert store.read("s/big") == piece * 12
        assert store.read_range("s/big", (5 << 20) + 7, 11) == piece[7:18]

    def test_streaming_write_abort_leaves_nothing(self, store: Store) -> None:
        import pytest

        w = store.open_write("s/aborted")
        w.write(b"x" * 1000)
        w.abort()
        assert not store.exists("s/aborted")
        with pytest.raises(RuntimeError), store.open_write("s/failed") as w2:
            w2.write(b"y" * 10)
            raise RuntimeError("boom")
        assert not store.exists("s/failed")
        assert [k.key for k in store.list("s/")] == []

    def test_list(self, store: Store) -> None:
        store.write("l/one", b"1")
        store.write("l/sub/two", b"22")
        store.write("l2/other", b"333")
        found = {k.key: k.size for k in store.list("l/")}
        assert found == {"l/one": 1, "l/sub/two": 2}
        assert list(store.list("absent/")) == []
        assert all(k.mtime > 0 for k in store.list("l/"))

    def test_list_partial_name(self, store: Store) -> None:
        for key in ("p/ab1", "p/ab2", "p/ac", "p/ab/deep"):
            store.write(key, b"x")
        assert sorted(k.key for k in store.list("p/ab")) == ["p/ab/deep", "p/ab1", "p/ab2"]
        assert [k.key for k in store.list("p/ab1")] == ["p/ab1"]
        assert list(store.list("p/zz")) == []
        assert list(store.list("nodir/zz")) == []

    def test_listed_version_names_the_bytes(self, store: Store) -> None:
        store.write("v/x", b"one")
        (first,) = store.list("v/x")
        _, version = store.read_versioned("v/x")
        if first.version is None:
            return  # this backend lists no versions (callers compare size and mtime)
        assert first.version == str(version)
        store.write_if("v/x", b"two!", version)
        (second,) = store.list("v/x")
        assert second.version != first.version
        assert second.version == str(store.read_versioned("v/x")[1])

    def test_reads_with_a_limit(self, store: Store) -> None:
        import pytest

        store.write("l/x", b"0123456789")
        store.write("l/empty", b"")
        assert store.read("l/x", 10) == b"0123456789"
        assert store.read("l/empty", 10) == b""
        assert store.read_versioned("l/x", 10)[0] == b"0123456789"
        with pytest.raises(FormatError):
            store.read("l/x", 9)
        with pytest.raises(FormatError):
            store.read_versioned("l/x", 9)
        with pytest.raises(KeyNotFound):
            store.read("l/missing", 9)

    def test_delete(self, store: Store) -> None:
        store.write("d/x", b"1")
        store.delete("d/x")
        assert not store.exists("d/x")
        store.delete("d/x")  # deleting a missing key is fine

    def test_compare_and_swap(self, store: Store) -> None:
        import pytest

        v1 = store.write_if("refs/x", b"one", None)
        with pytest.raises(PreconditionFailed):
            store.write_if("refs/x", b"again", None)
        data, v = store.read_versioned("refs/x")
        assert data == b"one"
        v2 = store.write_if("refs/x", b"two", v)
        with pytest.raises(PreconditionFailed):
            store.write_if("refs/x", b"three", v1)  # stale version loses
        assert store.read("refs/x") == b"two"
        store.write_if("refs/x", b"four", v2)
        assert store.read("refs/x") == b"four"
        with pytest.raises(PreconditionFailed):
            store.write_if("refs/missing", b"z", v2)  # expected a version, found nothing

    def test_concurrent_cas_loses_no_update(self, store: Store) -> None:
        threads, each = 6, 5
        errors: list[Any] = []

        def work() -> None:
            try:
                _retrying_increment(store, "refs/counter", each)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        ts = [threading.Thread(target=work) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert errors == []
        assert int(store.read("refs/counter")) == threads * each
