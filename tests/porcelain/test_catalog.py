"""The experiment catalog: listings that cost a constant number of requests, counted at the server.

Requests are counted by a proxy in front of the S3 server (``tests/s3_counter.py``), so what is
asserted is what the server saw, whatever the client library did.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mlvc
from mlvc import experiments as exps_mod
from mlvc.experiments import catalog as exps_catalog
from mlvc_core import catalog as catalog_mod
from mlvc_core.catalog import LocalCache, catalog_key, decode_catalog, scan
from mlvc_core.repository import Repository
from mlvc_core.storage import LocalStore
from tests.porcelain.stores import CountingStore
from tests.s3_counter import CountingProxy
from tests.servers import make_s3_bucket, moto_options
from tests.synth import make_experiments

PREFIX = "refs/experiments/"


@pytest.fixture
def proxied_moto(moto_clean: str) -> Iterator[tuple[CountingProxy, str, dict[str, Any]]]:
    """A counting proxy in front of moto, a fresh bucket, and options pointing at the proxy."""
    proxy = CountingProxy(moto_clean)
    options = moto_options(proxy.url)
    bucket = make_s3_bucket(moto_options(moto_clean))
    try:
        yield proxy, f"s3://{bucket}/repo", options
    finally:
        proxy.close()


def _open(url: str, options: dict[str, Any], cache: Path) -> Repository:
    return Repository.open(url, cache_dir=cache, **options)


def _forget_local_caches() -> None:
    exps_catalog._caches.clear()


def _warm_ls_requests(
    proxy: CountingProxy, url: str, options: dict[str, Any], cache: Path, n: int
) -> tuple[dict[str, int], dict[str, int]]:
    """Requests of a cold and then a warm ``ls`` (each from a newly opened repository)."""
    with _open(url, options, cache) as repo:
        assert len(exps_mod.list(repository=repo)) == n  # cold: fills the local cache
    _forget_local_caches()
    proxy.reset()
    with _open(url, options, cache) as repo:
        assert len(exps_mod.list(repository=repo)) == n
    warm = proxy.snapshot()
    return warm, {}


def test_warm_ls_makes_the_same_requests_for_n_and_3n_experiments(
    proxied_moto: tuple[CountingProxy, str, dict[str, Any]], tmp_path: Path
) -> None:
    proxy, url, options = proxied_moto
    with Repository.init(url, **options) as repo:
        make_experiments(repo, 4, seed=1)
    warm_n, _ = _warm_ls_requests(proxy, url, options, tmp_path / "c1", 4)
    with Repository.open(url, **options) as repo:
        make_experiments(repo, 8, seed=2, start=4)
    warm_3n, _ = _warm_ls_requests(proxy, url, options, tmp_path / "c2", 12)
    assert warm_n == warm_3n, proxy.paths
    # Open (config), one listing of the refs (the catalog is listed with them), one of the
    # heartbeats; not one ref, index or pack read.
    assert warm_n == {"GET": 1, "LIST": 2}, proxy.paths


def test_cold_ls_reads_the_catalog_and_only_the_refs_changed_since(
    proxied_moto: tuple[CountingProxy, str, dict[str, Any]], tmp_path: Path
) -> None:
    proxy, url, options = proxied_moto
    with Repository.init(url, **options) as repo:
        ids = make_experiments(repo, 12, seed=3)
        exps_catalog.compact_catalog(repo, threshold=0)  # what a writer does when enough changed
        exp = exps_mod.get(ids[5], repository=repo)
        exp.checkpoints[0].remove()  # one ref changes after the catalog was written
        repo.refs.delete(f"experiments/{ids[7]}")  # one disappears
    _forget_local_caches()
    proxy.reset()
    with _open(url, options, tmp_path / "cold") as repo:
        listed = {e.id: e for e in exps_mod.list(repository=repo)}
    assert len(listed) == 11 and ids[7] not in listed
    assert listed[ids[5]].summary["removed"] == [exp.checkpoints[0].id]
    counts = proxy.snapshot()
    # config + catalog + the one changed ref; refs and heartbeats listed once each.
    assert counts == {"GET": 3, "LIST": 2}


def test_show_and_best_read_what_they_show(
    proxied_moto: tuple[CountingProxy, str, dict[str, Any]], tmp_path: Path
) -> None:
    proxy, url, options = proxied_moto
    with Repository.init(url, **options) as repo:
        ids = make_experiments(repo, 10, seed=4)
    cache = tmp_path / "cache"
    counts = []
    for _ in range(2):  # cold, then warm (a new process: only the disk cache survives)
        _forget_local_caches()
        proxy.reset()
        with _open(url, options, cache) as repo:
            best = exps_mod.get(ids[3][:10], repository=repo).best()
            assert best is not None and best.step is not None
        counts.append(proxy.snapshot())
    cold, warm = counts
    # config, a listing of the refs named by the prefix, the ref, a listing of its heartbeat,
    # the generation record, the index listing, the index files (cold only: then cached) and
    # the best checkpoint's commit.
    with _open(url, options, tmp_path / "other") as repo:
        indexes = len(repo.index_files())
    assert warm == {"GET": 4, "LIST": 3}
    assert cold == {"GET": 4 + indexes, "LIST": 3}


def test_listing_reads_no_index_and_get_by_prefix_lists_only_that_prefix(
    project: Path, tmp_path: Path
) -> None:
    store = CountingStore(LocalStore(tmp_path / "repo"))
    repo = Repository.init(store, cache_dir=tmp_path / "cache")
    ids = make_experiments(repo, 6, seed=5)
    _forget_local_caches()
    store = CountingStore(LocalStore(tmp_path / "repo"))
    repo = Repository.open(store, cache_dir=tmp_path / "cache")
    assert len(exps_mod.list(repository=repo)) == 6
    exp = exps_mod.get(ids[2][:9], repository=repo)
    assert exp.id == ids[2]
    assert store.counts[("list", "index")] == 0 and store.reads("index") == 0
    assert store.reads("packs") == 0


def test_compaction_is_a_compare_and_swap_and_a_lost_race_is_harmless(
    project: Path, tmp_path: Path
) -> None:
    repo = Repository.init(tmp_path / "repo")
    ids = make_experiments(repo, 5, seed=6)
    store = repo.store
    a = scan(store, PREFIX, LocalCache(None), 0.0, compact_threshold=0)
    assert a.compacted
    first = store.read(catalog_key(PREFIX))
    # Another process compacts between this scan's read of the catalog and its write.
    real_write_if = store.write_if
    raced = []

    def racing_write_if(key: str, data: bytes, expected: Any) -> Any:
        if key == catalog_key(PREFIX) and not raced:
            raced.append(True)
            make_experiments(repo, 1, seed=7, start=5)
            assert scan(store, PREFIX, LocalCache(None), 0.0, compact_threshold=0).compacted
        return real_write_if(key, data, expected)

    store.write_if = racing_write_if  # type: ignore[method-assign]
    repo.refs.delete(f"experiments/{ids[0]}")
    time.sleep(0.01)
    b = scan(store, PREFIX, LocalCache(None), 0.0, compact_threshold=0)
    assert raced and not b.compacted  # lost the race: the winner's catalog stays
    store.write_if = real_write_if  # type: ignore[method-assign]
    winner = decode_catalog(store.read(catalog_key(PREFIX)), PREFIX)
    assert store.read(catalog_key(PREFIX)) != first
    assert len(winner) == 5  # 5 - 1 removed + 1 new, as the winner saw them
    assert len(exps_mod.list(repository=repo)) == 5


def test_damaged_catalog_and_local_cache_are_only_hints(project: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    repo = Repository.init(tmp_path / "repo", cache_dir=cache_dir)
    ids = make_experiments(repo, 9, seed=8)
    exps_catalog.compact_catalog(repo, threshold=0)
    repo.store.write(catalog_key(PREFIX), b"MLVCCAT1" + b"\x00" * 40)  # damaged
    _forget_local_caches()
    (cache_dir / "refs.sqlite").write_bytes(b"this is not a database" * 100)
    listed = exps_mod.list(repository=Repository.open(tmp_path / "repo", cache_dir=cache_dir))
    assert sorted(e.id for e in listed) == sorted(ids)
    # The next compaction replaces the damaged catalog.
    assert exps_catalog.compact_catalog(repo, threshold=0).compacted
    assert len(decode_catalog(repo.store.read(catalog_key(PREFIX)), PREFIX)) == 9


def test_a_stopping_run_compacts_the_catalog(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog_mod, "COMPACT_MIN", 2)
    for i in range(4):
        with mlvc.track(params={"i": i}) as run:
            (project / "w.bin").write_bytes(bytes([i]) * 100)
            run.checkpoint(path="w.bin", step=0, metrics={"loss": float(i)})
    repo = mlvc.experiments.list()[0].repository
    entries = decode_catalog(repo.store.read(catalog_key(PREFIX)), PREFIX)
    assert len(entries) >= 3  # written by a run's stop once more than two refs were newer


def test_ls_all_lists_removed_experiments_from_tombstones_not_commits(
    project: Path, tmp_path: Path
) -> None:
    store = CountingStore(LocalStore(tmp_path / "repo"))
    repo = Repository.init(store, cache_dir=tmp_path / "cache")
    ids = make_experiments(repo, 4, seed=9, per_session=1)  # own packs: gc frees them whole
    mlvc.experiments.remove(ids[1], repository=repo)
    store.reset()
    everything = {e.id: e for e in exps_mod.list(repository=repo, include_removed=True)}
    assert set(everything) == set(ids)
    assert everything[ids[1]].status == "removed"
    assert everything[ids[1]].summary["checkpoints"] >= 1
    assert store.reads("packs") == 0  # no commit was read
    assert {e.id for e in exps_mod.list(repository=repo)} == set(ids) - {ids[1]}
    from mlvc_core.gc import collect

    collect(repo, dry_run=False, grace_seconds=0.0)
    after = exps_mod.list(repository=repo, include_removed=True)
    assert {e.id for e in after} == set(ids) - {ids[1]}  # collected: no longer listed
    assert not repo.store.exists(exps_catalog.tombstone_key(ids[1]))


def test_log_of_an_experiment_reads_each_small_pack_once(
    proxied_moto: tuple[CountingProxy, str, dict[str, Any]], tmp_path: Path
) -> None:
    from mlvc.commands.history import log

    proxy, url, options = proxied_moto
    with Repository.init(url, **options) as repo:
        ids = make_experiments(repo, 6, seed=10)
    with _open(url, options, tmp_path / "cache") as repo:
        chain = [e for e in log(repo, ids[0][:10]).entries]
        assert len(chain) >= 2  # the first commit and at least one checkpoint
    _forget_local_caches()
    proxy.reset()
    with _open(url, options, tmp_path / "cache") as repo:
        again = log(repo, ids[0][:10]).entries
    assert [e.commit.id for e in again] == [e.commit.id for e in chain]
    packs = [p for op, p in proxy.paths if op == "GET" and "/packs/" in p]
    assert len(packs) == 1, packs  # every commit of the chain from one read of its pack
    assert proxy.total() <= 10
