"""The repository's in-memory caches stay within their bound and forget the oldest first."""

from __future__ import annotations

from mlvc_core.caches import LRU


def test_bounded_by_bytes_the_least_recently_used_goes_first() -> None:
    cache: LRU[str, bytes] = LRU(10, len)
    cache.put("a", b"1234")
    cache.put("b", b"1234")
    assert cache.get("a") == b"1234"  # now "b" is the oldest
    cache.put("c", b"1234")
    assert cache.get("b") is None
    assert cache.get("a") == b"1234" and cache.get("c") == b"1234"


def test_the_newest_entry_is_kept_whatever_it_weighs() -> None:
    cache: LRU[str, bytes] = LRU(10, len)
    cache.put("small", b"x")
    cache.put("huge", b"x" * 100)
    assert cache.get("huge") == b"x" * 100
    assert cache.get("small") is None
    cache.discard("huge")
    cache.put("after", b"123456789")  # the weight went back to zero with the discard
    cache.put("more", b"1")
    assert cache.get("after") is not None and cache.get("more") is not None


def test_bounded_by_count_by_default() -> None:
    cache: LRU[int, str] = LRU(3)
    for i in range(5):
        cache.put(i, str(i))
    assert [cache.get(i) for i in range(5)] == [None, None, "2", "3", "4"]
