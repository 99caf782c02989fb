"""Shipped test helpers: the conformance suites every :class:`~mlvc_core.storage.Store` runs.

* :class:`StoreContract`: the key -> bytes contract itself (reads, limits, streaming writes,
  listings, compare-and-swap);
* :class:`RefStoreContract`: what users rely on from refs kept in that store
  (:class:`~mlvc_core.refs.RefStore`): create-if-absent, compare-and-swap moves with exactly one
  winner among concurrent movers, conditional deletes, listings by kind whose versions change
  on every move, summaries that round-trip, and garbage refused with a typed error.

A new backend is a fixture plus ``class TestMyStore(StoreContract, RefStoreContract): ...``
whose ``store`` fixture yields a fresh, empty store. pytest is imported lazily so that
importing this module outside tests costs nothing.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from typing import Any

from mlvc_core.errors import (
    FormatError,
    InvalidRefName,
    KeyNotFound,
    PreconditionFailed,
    RefConflict,
    RefNotFound,
)
from mlvc_core.ids import ObjectId, hash_bytes, to_hex
from mlvc_core.refs import MAX_REF_SIZE, Ref, RefStore
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

    def test_ranged_listing_equals_the_listing(self, store: Store) -> None:
        store.list_page_size = 4  # many pages from few keys
        assert list(store.list_ranges("g/", ["g/k05", "g/k10"])) == []  # nothing there yet
        for i in range(0, 40, 2):
            store.write(f"g/k{i:02d}", b"x" * i)
        store.write("g/sub/deep", b"d")
        store.write("g.sibling", b"s")  # sorts before g/ but is not under it
        store.write("h/other", b"o")

        def same(bounds: list[str]) -> list[str]:
            ranged = list(store.list_ranges("g/", bounds))
            assert ranged == list(store.list("g/")), bounds
            return [k.key for k in ranged]

        seen = same([])
        bounds = seen[2::3]  # every third key, as a caller keeps them
        assert same(bounds) == seen
        store.write("g/k01", b"added before the first bound")
        store.write("g/k07", b"added between bounds")
        store.write("g/k99", b"added beyond the last bound")
        store.delete(bounds[1])  # a bound itself is gone
        store.delete("g/k16")
        same(bounds)
        for i in range(20):  # one range outgrows its page many times over
            store.write(f"g/k08x{i:02d}", b"crowded")
        same(bounds)
        for key in ("g/k20", "g/k22", "g/k24", "g/k26", "g/k28"):
            store.delete(key)  # whole ranges emptied
        same(bounds)
        # Bounds are hints: unsorted, repeated, absent, outside the prefix, past the end.
        assert same(["zz/none", "g/k30", "g/k03", "g/k03", "a", "g/zzz", "g.sibling"])
        # ...and keys no listing holds: unencodable, control characters, too long.
        assert same(["g/\ud800", "g/k10\x00", "g/k12\uffff", "g/\U0010ffff", "g/" + "k" * 2000])
        assert same(["g/k1 ?#%&+=", "g/k2\\/../~", "g/k3%00%ZZ"])  # odd, but printable
        assert list(store.list_ranges("none/", bounds)) == []

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

    def test_delete_if(self, store: Store) -> None:
        import pytest

        v1 = store.write_if("refs/d", b"one", None)
        v2 = store.write_if("refs/d", b"two", v1)
        with pytest.raises(PreconditionFailed):
            store.delete_if("refs/d", v1)  # stale version: the key stays
        assert store.read("refs/d") == b"two"
        store.delete_if("refs/d", v2)
        assert not store.exists("refs/d")
        assert [k.key for k in store.list("refs/d")] == []
        with pytest.raises(PreconditionFailed):
            store.delete_if("refs/d", v2)  # expected a version, found nothing

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


def _oid(text: str) -> ObjectId:
    return hash_bytes(text.encode())


def _race(threads: int, attempt: Callable[[int], ObjectId]) -> list[ObjectId | None]:
    """Run ``attempt(i)`` in ``threads`` threads released together.

    Returns:
        Per thread, what ``attempt`` returned, or None where it raised :class:`RefConflict`.

    Raises:
        AssertionError: A thread raised anything else (its exception chained).
    """
    barrier = threading.Barrier(threads)
    results: list[ObjectId | None] = [None] * threads
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            results[i] = attempt(i)
        except RefConflict:
            results[i] = None
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise AssertionError(f"a mover failed: {errors[0]!r}") from errors[0]
    return results


GARBAGE_REFS = [
    b"",
    b"not json",
    b"\xff\xfe\x00\x01",
    b"[]",
    b'"a string"',
    b"{}",
    b'{"target": 5}',
    b'{"target": "not-a-hex-id"}',
    b'{"target": "' + b"A" * 64 + b'"}',
    b'{"target": "' + b"0" * 64 + b'", "history": 3}',
    b'{"target": "' + b"0" * 64 + b'", "history": [{"target": "nope"}]}',
    b'{"target": "' + b"0" * 64 + b'", "type": ["tag"]}',
    b"[" * 100_000 + b"]" * 100_000,
]
"""Stored ref documents that no mlvc writes; every one must read as a FormatError."""

INVALID_REF_NAMES = [
    "",
    "tags",
    "tags/",
    "nokind/x",
    "refs/tags/x",
    "tags/../x",
    "tags/a/b",
    "tags/.hidden",
    "tags/-dash",
    "tags/x.lock",
    "tags/with space",
    "tags/" + "a" * 129,
]
"""Ref names :func:`~mlvc_core.refs.validate_name` refuses."""


class RefStoreContract:
    """What users rely on from refs in a store. Subclasses provide a ``store`` fixture.

    The store must be fresh and empty; every test builds a :class:`RefStore` over it.
    """

    def test_ref_create_only_if_absent(self, store: Store) -> None:
        import pytest

        refs = RefStore(store)
        a, b = _oid("a"), _oid("b")
        for name in ("heads/main", "experiments/e-1", "tags/production"):
            created = refs.set(name, a, None, {"type": "x"})
            assert (created.name, created.target) == (name, a)
            with pytest.raises(RefConflict) as lost:
                refs.set(name, b, None, {"type": "y"})
            assert lost.value.actual == to_hex(a)
            now = refs.require(name)
            assert (now.target, now.summary) == (a, {"type": "x"})

    def test_ref_compare_and_swap_move(self, store: Store) -> None:
        import pytest

        refs = RefStore(store)
        a, b, c, d = (_oid(x) for x in "abcd")
        first = refs.set("tags/t", a, None)
        assert first.version == refs.require("tags/t").version  # usable without a re-read
        second = refs.set("tags/t", b, a)
        with pytest.raises(RefConflict) as stale:
            refs.set("tags/t", c, a)  # stale expected target
        assert (stale.value.expected, stale.value.actual) == (to_hex(a), to_hex(b))
        assert refs.require("tags/t").target == b
        with pytest.raises(RefConflict):
            refs.move(first, c, {})  # stale version
        with pytest.raises(RefConflict):
            refs.update_summary(first, {"note": "late"})
        third = refs.move(second, c, {"step": 3})
        assert refs.require("tags/t") == third
        # A summary edit is a change too: a move based on the ref before it loses.
        edited = refs.update_summary(third, {"step": 3, "hidden": ["x"]})
        with pytest.raises(RefConflict):
            refs.move(third, d, {"step": 4})
        assert refs.require("tags/t") == edited
        refs.move(edited, d, {"step": 4})
        assert refs.require("tags/t").target == d
        with pytest.raises(RefConflict):
            refs.set("tags/absent", a, b)  # expected a target, there is no ref

    def test_ref_concurrent_movers_exactly_one_wins(self, store: Store) -> None:
        refs = RefStore(store)
        refs.set("heads/main", _oid("start"), None)
        threads = 6
        for rnd in range(4):
            before = refs.require("heads/main")

            def by_target(i: int, rnd: int = rnd, before: Ref = before) -> ObjectId:
                mine = _oid(f"{rnd}-{i}")
                refs.set("heads/main", mine, before.target, {"racer": i})
                return mine

            def by_version(i: int, rnd: int = rnd, before: Ref = before) -> ObjectId:
                mine = _oid(f"{rnd}-{i}")
                refs.move(before, mine, {"racer": i})
                return mine

            results = _race(threads, by_target if rnd % 2 == 0 else by_version)
            winners = [r for r in results if r is not None]
            assert len(winners) == 1, f"round {rnd}: {len(winners)} movers won"
            after = refs.require("heads/main")
            assert after.target == winners[0]
            assert after.summary == {"racer": results.index(winners[0])}

    def test_ref_delete_with_expected_target(self, store: Store) -> None:
        import pytest

        refs = RefStore(store)
        a, b = _oid("a"), _oid("b")
        refs.set("tags/t", a, None)
        refs.set("tags/t", b, a)
        with pytest.raises(RefConflict):
            refs.delete("tags/t", a)  # it moved on: the newer target is kept
        assert refs.require("tags/t").target == b
        refs.delete("tags/t", b)
        assert refs.get("tags/t") is None
        assert [n for n, _ in refs.list_keys("tags")] == []
        with pytest.raises(RefNotFound):
            refs.delete("tags/t", b)
        with pytest.raises(RefNotFound):
            refs.delete("tags/t")
        refs.set("tags/t", a, None)  # the name is free again
        refs.delete("tags/t")
        assert refs.get("tags/t") is None

    def test_ref_delete_on_condition_of_the_ref_read(self, store: Store) -> None:
        import pytest

        refs = RefStore(store)
        a = _oid("a")
        read = refs.set("tags/t", a, None, {"type": "tag"})
        edited = refs.update_summary(read, {"type": "tag", "note": "newer"})  # same target
        with pytest.raises(RefConflict):
            refs.delete("tags/t", read)  # changed since read, though not its target
        assert refs.require("tags/t") == edited
        listed = refs.scan("tags")[0][0]  # as listed: no version, compared whole instead
        refs.delete("tags/t", listed)
        assert refs.get("tags/t") is None
        with pytest.raises(RefConflict):
            refs.delete("tags/t", edited)  # gone meanwhile
        store.write("refs/tags/bad", GARBAGE_REFS[1])
        refs.set("tags/ok", a, None)
        with pytest.raises(RefConflict):
            refs.delete_unreadable("tags/ok")  # readable: not removed as if it were not
        refs.delete_unreadable("tags/bad")
        assert refs.get("tags/bad") is None and refs.get("tags/ok") is not None
        with pytest.raises(RefNotFound):
            refs.delete_unreadable("tags/bad")

    def test_ref_listing_by_kind_with_versions(self, store: Store) -> None:
        refs = RefStore(store)
        a, b, c = _oid("a"), _oid("b"), _oid("c")
        refs.set("heads/main", a, None)
        refs.set("experiments/e-1", a, None, {"type": "experiment"})
        refs.set("tags/prod", a, None, {"type": "tag"})
        refs.set("tags/prod-old", b, None, {"type": "tag"})
        store.write("refs/unknown/x", b"{}")  # not a kind of ref: never listed
        store.write("refsx/tags/y", b"{}")
        assert sorted(n for n, _ in refs.list_keys("tags")) == ["tags/prod", "tags/prod-old"]
        assert [n for n, _ in refs.list_keys("heads")] == ["heads/main"]
        assert sorted(n for n, _ in refs.list_keys()) == [
            "experiments/e-1",
            "heads/main",
            "tags/prod",
            "tags/prod-old",
        ]
        assert [r.name for r in refs.list("experiments")] == ["experiments/e-1"]
        assert [(r.name, r.target) for r in refs.list("tags")] == [
            ("tags/prod", a),
            ("tags/prod-old", b),
        ]
        versions = []
        ref = refs.require("tags/prod")
        for i, target in enumerate((b, c, a)):  # back to a: still a new version
            listed = dict(refs.list_keys("tags"))["tags/prod"]
            versions.append(listed.version)
            ref = refs.move(ref, target, {"type": "tag", "move": i})
        listed = dict(refs.list_keys("tags"))["tags/prod"]
        versions.append(listed.version)
        if versions[0] is None:
            assert set(versions) == {None}  # this backend lists no versions (size and mtime)
            return
        assert len(set(versions)) == len(versions), versions
        assert versions[-1] == str(refs.require("tags/prod").version)
        assert listed.size == len(store.read("refs/tags/prod"))

    def test_ref_summary_round_trips(self, store: Store) -> None:
        refs = RefStore(store)
        a, b = _oid("a"), _oid("b")
        summary: dict[str, Any] = {
            "type": "tag",
            "set_at": 1_700_000_000.25,
            "set_by": "zoë@host",
            "history": [
                {"target": to_hex(a), "set_at": 1.5, "set_by": "ann", "moved_at": 2.0},
            ],
            "params": {"lr": 0.001, "layers": [64, 32], "name": "ünïcode ✓", "nested": {}},
            "done": True,
            "note": None,
            "step": 12,
        }
        written = refs.set("tags/t", b, None, summary)
        assert written.summary == summary
        assert refs.require("tags/t").summary == summary
        assert [r.summary for r in refs.list("tags")] == [summary]
        assert [to_hex(a)] == [e["target"] for e in refs.require("tags/t").summary["history"]]
        exp = {"type": "experiment", "metrics": {"loss": 0.5}, "status": "running"}
        refs.set("experiments/e-1", a, None, exp)
        assert [r.summary for r in refs.list("experiments")] == [exp]
        stored = json.loads(store.read("refs/tags/t"))
        assert stored == {**summary, "target": to_hex(b)}  # readable JSON, target beside

    def test_ref_garbage_refused_with_format_error(self, store: Store) -> None:
        import pytest

        refs = RefStore(store)
        refs.set("tags/good", _oid("a"), None)
        refs.set("experiments/good", _oid("a"), None)
        for i, garbage in enumerate(GARBAGE_REFS):
            store.write(f"refs/tags/bad-{i}", garbage)
            with pytest.raises(FormatError):
                refs.get(f"tags/bad-{i}")
        store.write("refs/experiments/bad", GARBAGE_REFS[1])
        for kind in ("tags", "experiments"):
            good, bad = refs.scan(kind)
            assert [r.name for r in good] == [f"{kind}/good"]
            expected_bad = len(GARBAGE_REFS) if kind == "tags" else 1
            assert len(bad) == expected_bad
            with pytest.raises(FormatError):
                refs.list(kind)
        with pytest.raises(FormatError):
            refs.delete("tags/bad-1", _oid("a"))
        refs.delete("tags/bad-1")  # removable without reading it

    def test_ref_oversize_refused(self, store: Store) -> None:
        import pytest

        refs = RefStore(store)
        pad = b"x" * MAX_REF_SIZE
        store.write("refs/tags/huge", b'{"target": "' + b"0" * 64 + b'", "pad": "' + pad + b'"}')
        with pytest.raises(FormatError):
            refs.get("tags/huge")
        good, bad = refs.scan("tags")
        assert (good, [name for name, _ in bad]) == ([], ["tags/huge"])

    def test_ref_invalid_names_refused(self, store: Store) -> None:
        import pytest

        refs = RefStore(store)
        a = _oid("a")
        for name in INVALID_REF_NAMES:
            with pytest.raises(InvalidRefName):
                refs.set(name, a, None)
            with pytest.raises(InvalidRefName):
                refs.get(name)
            with pytest.raises(InvalidRefName):
                refs.delete(name)
        assert list(refs.list_keys()) == []
        store.write("refs/tags/-planted", b'{"target": "' + b"0" * 64 + b'"}')
        good, bad = refs.scan("tags")
        assert (good, [name for name, _ in bad]) == ([], ["tags/-planted"])
