"""``mlvc ls`` lists its pages as ranges requested at once, and prints what a cold ``ls`` prints.

A listing of the experiment refs comes in pages (1,000 keys on S3); each needs the previous
page's continuation token when listed one after another. With the keys a previous listing saw,
the pages are requested at once as ranges (``Store.list_ranges``). The page size is made small
here (4 keys) so that a dozen experiments take several pages. Requests are counted at the
server by a proxy (``tests/s3_counter.py``).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlvc_core.catalog import BOUNDS_META, range_bounds_of
from mlvc_core.repository import Repository
from mlvc_core.storage.base import MAX_RANGES, range_bounds
from mlvc_core.storage.fsspec_store import FsspecStore
from tests.porcelain.conftest import subprocess_env
from tests.porcelain.test_listing_rows import CHANGE, Lister
from tests.s3_counter import CountingProxy
from tests.servers import MOTO_KEY, MOTO_SECRET, make_s3_bucket, moto_options
from tests.synth import make_experiments

PAGE = 4


@pytest.fixture
def proxied(
    moto_clean: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[CountingProxy, str, dict[str, Any], dict[str, str]]]:
    """A counting proxy in front of moto, a repository URL, its options and the CLI's env."""
    monkeypatch.setattr(FsspecStore, "list_page_size", PAGE)
    proxy = CountingProxy(moto_clean)
    options = moto_options(moto_clean)
    url = f"s3://{make_s3_bucket(options)}/repo"
    env = {
        "AWS_ENDPOINT_URL": proxy.url,
        "AWS_ACCESS_KEY_ID": MOTO_KEY,
        "AWS_SECRET_ACCESS_KEY": MOTO_SECRET,
    }
    try:
        yield proxy, url, options, env
    finally:
        proxy.close()


def _ref_lists(proxy: CountingProxy) -> list[str]:
    return [p for op, p in proxy.paths if op == "LIST" and "refs%2Fexperiments" in p]


def test_warm_ls_requests_its_pages_at_once_and_prints_what_a_cold_ls_prints(
    proxied: tuple[CountingProxy, str, dict[str, Any], dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy, url, options, env = proxied
    with Repository.init(url, **options) as repo:
        ids = make_experiments(repo, 14, seed=7)  # 14 refs and their catalog: 4 pages
    ls = Lister(url, env, monkeypatch)
    warm_cache = tmp_path / "warm"
    proxy.reset()
    cold = ls(warm_cache), ls(tmp_path / "cold-json", "--json")
    assert len(_ref_lists(proxy)) == 2 * 4
    assert not any("start-after" in p for p in _ref_lists(proxy))  # no bounds known yet

    proxy.reset()
    assert ls.both(warm_cache) == cold
    ranged = _ref_lists(proxy)
    assert len(ranged) == 2 * 4  # per command: as many requests as pages, none more...
    assert sum("start-after" in p for p in ranged) == 2 * 3  # ...all but the first by range
    assert proxy.snapshot() == {"GET": 2, "LIST": 2 * 5}  # config; refs; heartbeats

    subprocess.run(  # another process adds, rewrites and removes experiments
        [sys.executable, "-c", CHANGE, url, json.dumps(options), json.dumps(ids)],
        env=subprocess_env(tmp_path, **env),
        check=True,
        timeout=120,
        cwd=tmp_path,
    )
    warm = ls.both(warm_cache)
    assert warm == ls.both(tmp_path / "cold")
    assert warm != cold
    assert len(json.loads(warm[1])) == 14


@pytest.mark.parametrize("n", [5, 15])
def test_warm_ls_makes_one_request_per_page_as_a_sequential_listing_does(
    n: int,
    proxied: tuple[CountingProxy, str, dict[str, Any], dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy, url, options, env = proxied
    with Repository.init(url, **options) as repo:
        make_experiments(repo, n, seed=8)
        sequential = list(repo.store.list("refs/experiments"))
    pages = -(-len(sequential) // PAGE)
    ls = Lister(url, env, monkeypatch)
    ls(tmp_path / "cache")
    proxy.reset()
    ls(tmp_path / "cache")
    assert proxy.snapshot() == {"GET": 1, "LIST": pages + 1}, proxy.paths


def test_range_bounds_cut_a_listing_into_equal_pages() -> None:
    keys = [f"k{i:05d}" for i in range(9_900)]
    bounds = range_bounds_of(keys, 1000)
    assert len(bounds) == 9  # ten ranges, as many as the listing has pages
    cuts = [keys.index(b) + 1 for b in bounds]
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, len(keys)], strict=True)]
    assert sizes == [990] * 10  # each leaves room for 10 keys added before the next listing
    assert range_bounds_of(keys[:1000], 1000) == []  # one page: nothing to cut
    assert range_bounds_of(keys[:1001], 1000) == [keys[500]]


def test_thousands_of_remembered_bounds_cut_a_listing_into_at_most_max_ranges() -> None:
    keys = [f"refs/experiments/{i:06d}" for i in range(5_000)]
    cut = range_bounds("refs/experiments/", [*reversed(keys), "elsewhere/x", *keys[:50]])
    assert len(cut) == MAX_RANGES - 1 and cut == sorted(set(cut)) and set(cut) <= set(keys)
    at = [keys.index(b) for b in cut]
    gaps = [b - a for a, b in zip(at, at[1:], strict=False)]
    assert max(gaps) - min(gaps) <= 1  # evenly spaced
    assert range_bounds("refs/experiments/", keys[:10]) == keys[:10]  # few: all kept


def test_ls_with_damaged_range_bounds_in_its_cache_prints_what_a_cold_ls_prints(
    proxied: tuple[CountingProxy, str, dict[str, Any], dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _proxy, url, options, env = proxied
    with Repository.init(url, **options) as repo:
        make_experiments(repo, 10, seed=9)
    ls = Lister(url, env, monkeypatch)
    cold = ls.both(tmp_path / "cold")
    warm_cache = tmp_path / "warm"
    ls(warm_cache)
    (db,) = warm_cache.glob("*/refs.sqlite")
    damaged = ["refs/experiments/\ud800", "refs/experiments/0\x00", "refs/experiments/f\uffff"]
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        con.execute(
            "UPDATE meta SET value = ? WHERE name = ?",
            (json.dumps(damaged), BOUNDS_META + "refs/experiments/"),
        )
    for rows in warm_cache.glob("*/*.rows"):
        rows.unlink()  # every row from the scan
    assert ls.both(warm_cache) == cold
