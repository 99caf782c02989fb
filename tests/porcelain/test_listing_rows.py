"""The listing's row cache: a warm ``mlvc ls`` decodes nothing, yet always shows the store's state.

Every test compares what ``mlvc ls`` (and ``--json``) prints with a warm row cache against what
it prints from an empty cache directory, byte for byte, after the repository was changed by
another process, and after the row cache was damaged.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mlvc.cli import app
from mlvc.experiments import catalog as exps_catalog
from mlvc.repo import forget_shared
from mlvc_core.repository import Repository
from tests.porcelain.conftest import subprocess_env
from tests.s3_counter import CountingProxy
from tests.servers import MOTO_KEY, MOTO_SECRET, make_s3_bucket, moto_options
from tests.synth import make_experiments

ROWS = "refs.experiments.rows"

CHANGE = """
import json, sys
import mlvc
from mlvc.experiments.summary import ExperimentSummary, ref_name
from mlvc_core.repository import Repository
from tests.synth import make_experiments

url, options, ids = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
with Repository.open(url, **options) as repo:
    make_experiments(repo, 1, seed=99, start=500)             # a new experiment
    exp = mlvc.experiments.get(ids[0], repository=repo)
    exp.checkpoints[-1].remove()                               # its summary is recomputed
    ref = repo.refs.get(ref_name(ids[1]))                      # a summary rewritten in place
    summary = ExperimentSummary.from_dict(ref.summary)
    summary = summary.ended_with("failed", 1_700_000_999.0, "exception",
                                 {"type": "ValueError", "message": "diverged"})
    repo.refs.set(ref_name(ids[1]), ref.target, ref.target, summary.to_dict())
    mlvc.experiments.remove([ids[2]], repository=repo)         # one removed
"""


class Lister:
    """Runs ``mlvc ls`` in-process against one repository, with a cache directory per call."""

    def __init__(self, url: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
        self.url = url
        self.env = env
        self.decoded = 0
        real = exps_catalog._parse_ref_doc

        def counting(key: str, data: bytes) -> Any:
            self.decoded += 1
            return real(key, data)

        monkeypatch.setattr(exps_catalog, "_parse_ref_doc", counting)

    def __call__(self, cache: Path, *args: str) -> str:
        """What ``mlvc ls ARGS`` prints with the local cache in ``cache`` (a new process's view)."""
        exps_catalog._caches.clear()
        forget_shared()
        result = CliRunner().invoke(
            app,
            ["-q", "-R", self.url, "ls", *args],
            env={**self.env, "MLVC_CACHE_DIR": str(cache)},
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        return result.stdout

    def both(self, cache: Path) -> tuple[str, str]:
        """The table and the ``--json`` document."""
        return self(cache), self(cache, "--json")


@pytest.fixture(params=["local", "s3"])
def location(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, dict[str, Any], dict[str, str]]]:
    """``(url, storage options, environment for the CLI)``: a local repository, or one on moto."""
    if request.param == "local":
        yield str(tmp_path / "repo"), {}, {}
        return
    endpoint = request.getfixturevalue("moto_clean")
    options = moto_options(endpoint)
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": MOTO_KEY,
        "AWS_SECRET_ACCESS_KEY": MOTO_SECRET,
    }
    yield f"s3://{make_s3_bucket(options)}/repo", options, env


def _rows_file(cache: Path) -> Path:
    found = list(cache.glob(f"*/{ROWS}"))
    assert len(found) == 1, found
    return found[0]


def test_warm_ls_decodes_nothing_and_prints_what_a_cold_ls_prints(
    location: tuple[str, dict[str, Any], dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, options, env = location
    with Repository.init(url, **options) as repo:
        make_experiments(repo, 12, seed=1)
    monkeypatch.setitem(exps_catalog.RACY_SECONDS, "local", 0.0)
    ls = Lister(url, env, monkeypatch)
    cold = ls.both(tmp_path / "cold")
    assert cold[0].count("\n") == 13 and len(json.loads(cold[1])) == 12
    assert ls.decoded == 12  # the first run decodes every ref, the second none

    ls.decoded = 0
    warm = ls.both(tmp_path / "cold")
    assert warm == cold
    assert ls.decoded == 0
    assert _rows_file(tmp_path / "cold").stat().st_size > 0


def test_warm_ls_shows_exactly_what_another_process_changed(
    location: tuple[str, dict[str, Any], dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, options, env = location
    with Repository.init(url, **options) as repo:
        ids = make_experiments(repo, 8, seed=2)
    monkeypatch.setitem(exps_catalog.RACY_SECONDS, "local", 0.0)
    ls = Lister(url, env, monkeypatch)
    warm_cache = tmp_path / "warm"
    before = ls.both(warm_cache)

    subprocess.run(
        [sys.executable, "-c", CHANGE, url, json.dumps(options), json.dumps(ids)],
        env=subprocess_env(tmp_path, **env),
        check=True,
        timeout=120,
        cwd=tmp_path,
    )
    ls.decoded = 0
    warm = ls.both(warm_cache)
    assert ls.decoded == 3  # the new experiment and the two rewritten refs, nothing else
    cold = ls.both(tmp_path / "fresh")
    assert warm == cold
    assert warm != before

    listed = {e["id"]: e for e in json.loads(warm[1])}
    assert len(listed) == 8 and ids[2] not in listed
    assert listed[ids[1]]["status"] == "failed"
    assert listed[ids[1]]["error"] == "ValueError: diverged"
    assert listed[ids[0]]["removed"]  # the checkpoint removed in the other process
    assert ls.both(warm_cache) == cold  # and the row cache now holds the new state


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage", "foreign"])
def test_a_damaged_or_foreign_row_cache_is_ignored_and_rebuilt(
    damage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(tmp_path / "repo")
    with Repository.init(url) as repo:
        make_experiments(repo, 6, seed=3)
    other = str(tmp_path / "other")
    with Repository.init(other) as repo:
        make_experiments(repo, 6, seed=4)
    monkeypatch.setitem(exps_catalog.RACY_SECONDS, "local", 0.0)
    ls = Lister(url, {}, monkeypatch)
    cold = ls.both(tmp_path / "cold")
    cache = tmp_path / "cache"
    ls.both(cache)
    rows = _rows_file(cache)
    data = rows.read_bytes()
    if damage == "flip":
        middle = len(data) // 2
        rows.write_bytes(data[:middle] + bytes([data[middle] ^ 0x40]) + data[middle + 1 :])
    elif damage == "truncate":
        rows.write_bytes(data[: len(data) - 7])
    elif damage == "empty":
        rows.write_bytes(b"")
    elif damage == "garbage":
        rows.write_bytes(b"MLVCROW1" + bytes(range(256)) * 8)
    else:  # a valid row cache of another repository, in this one's place
        Lister(other, {}, monkeypatch).both(tmp_path / "other-cache")
        rows.write_bytes(_rows_file(tmp_path / "other-cache").read_bytes())
    ls.decoded = 0
    assert ls.both(cache) == cold
    assert ls.decoded == 6  # every ref decoded again (once), the row cache rewritten...
    ls.decoded = 0
    assert ls.both(cache) == cold
    assert ls.decoded == 0  # ...and used


def test_warm_ls_requests_stay_the_same_with_the_row_cache(
    moto_clean: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = CountingProxy(moto_clean)
    try:
        env = {
            "AWS_ENDPOINT_URL": proxy.url,
            "AWS_ACCESS_KEY_ID": MOTO_KEY,
            "AWS_SECRET_ACCESS_KEY": MOTO_SECRET,
        }
        url = f"s3://{make_s3_bucket(moto_options(moto_clean))}/repo"
        ls = Lister(url, env, monkeypatch)
        counts = []
        options = moto_options(moto_clean)
        Repository.init(url, **options).close()
        for n, start in ((5, 0), (15, 5)):
            with Repository.open(url, **options) as repo:
                make_experiments(repo, n, seed=5, start=start)
            cache = tmp_path / f"cache{n}"
            ls(cache)
            proxy.reset()
            ls.decoded = 0
            assert ls(cache).count("\n") == start + n + 1
            assert ls.decoded == 0
            counts.append(proxy.snapshot())
        # The config, one listing of the refs (with their catalog), one of the heartbeats.
        assert counts[0] == counts[1] == {"GET": 1, "LIST": 2}, proxy.paths
    finally:
        proxy.close()


SUMMARIES: list[dict[str, Any]] = [
    {"type": "experiment", "status": "running", "params": {}, "latest_metrics": {}},
    {
        "type": "experiment",
        "name": "n",
        "created": 1_700_000_000,
        "ended": 1.5,
        "params": {"nested": {"a": [1, 2.5, None, True]}, "s": "ü"},
        "status": "failed",
        "end_reason": "exception",
        "error": {"type": "ValueError", "message": "x"},
        "resumed": 2,
        "checkpoints": 3,
        "latest": "ab" * 32,
        "latest_step": 7,
        "latest_metrics": {"loss": "nan", "acc": float("inf"), "n": -0.0},
        "primary_metric": {"name": "loss", "goal": "maximize"},
        "best": {"checkpoint": "cd" * 32, "step": None, "value": "-inf"},
        "removed": ["ef" * 32],
        "future_field": {"kept": [1, "x"]},
    },
    {"type": "experiment", "status": "stopped", "params": {"seed": 2**70}, "latest_metrics": {}},
]


def test_rows_give_back_the_summaries_they_were_made_from(tmp_path: Path) -> None:
    from mlvc.experiments.rows import Row, load_rows, save_rows
    from mlvc.experiments.summary import ExperimentSummary
    from mlvc_core.ids import ObjectId

    rows = {
        f"refs/experiments/{i:064x}": Row(
            f'"etag{i}"', True, 1.25, ObjectId(bytes([i]) * 32), ExperimentSummary.from_dict(s)
        )
        for i, s in enumerate(SUMMARIES)
    }
    path = tmp_path / "x.rows"
    save_rows(path, "repo-1", "refs/experiments/", rows)
    back = load_rows(path, "repo-1", "refs/experiments/")
    big = "refs/experiments/" + f"{2:064x}"
    assert set(back) == set(rows) - {big}  # an integer msgpack cannot hold: not cached
    for key, row in back.items():
        assert row == rows[key]
        assert row.summary.to_dict() == rows[key].summary.to_dict()
        assert json.dumps(row.summary.to_dict()) == json.dumps(rows[key].summary.to_dict())
    assert load_rows(path, "repo-2", "refs/experiments/") == {}
    assert load_rows(path, "repo-1", "removed/experiments/") == {}


def test_a_compaction_writes_every_ref_even_those_the_row_cache_answered(tmp_path: Path) -> None:
    from mlvc.experiments.rows import load_rows
    from mlvc_core.catalog import LocalCache, catalog_key, decode_catalog, scan

    prefix = "refs/experiments/"
    with Repository.init(str(tmp_path / "repo"), cache_dir=tmp_path / "cache") as repo:
        ids = make_experiments(repo, 7, seed=6)
        exps_catalog.scan(repo)  # writes the row cache
        rows = load_rows(exps_catalog._rows_path(repo, prefix), repo.config.repo_id, prefix)
        assert len(rows) == 7
        # A local cache without the refs' bytes: the held ones must be read to be compacted.
        result = scan(
            repo.store, prefix, LocalCache(None), -1.0, compact_threshold=0, held=lambda: rows
        )
        assert result.held == set(rows) and result.docs == {} and result.compacted
        catalog = decode_catalog(repo.store.read(catalog_key(prefix)), prefix)
        assert sorted(catalog) == sorted(prefix + i for i in ids)
        for key, entry in catalog.items():
            assert entry.doc == repo.store.read(key)


def test_summaries_from_rows_print_and_derive_like_decoded_ones(tmp_path: Path) -> None:
    from mlvc.experiments.rows import Row, load_rows, save_rows
    from mlvc.experiments.summary import ExperimentSummary
    from mlvc_core.ids import ObjectId

    decoded = {
        f"refs/experiments/{i:064x}": ExperimentSummary.from_dict(s)
        for i, s in enumerate(SUMMARIES)
        if i != 2  # (an integer msgpack cannot hold: never cached)
    }
    rows = {k: Row('"e"', True, 1.0, ObjectId(b"\1" * 32), s) for k, s in decoded.items()}
    save_rows(tmp_path / "x.rows", "r", "refs/experiments/", rows)
    back = load_rows(tmp_path / "x.rows", "r", "refs/experiments/")
    assert set(back) == set(decoded)
    for key, fresh in decoded.items():
        cached = back[key].summary
        assert cached == fresh and repr(cached) == repr(fresh) and str(cached) == str(fresh)
        for derive in (
            lambda s: s.with_checkpoint("ab" * 32, 7, {"loss": 0.5}, ("loss", "minimize")),
            lambda s: s.ended_with("failed", 2.0, "exception", {"type": "E", "message": "m"}),
            lambda s: s.resumed_with({"lr": 0.1}),
        ):
            assert derive(cached) == derive(fresh)
            assert repr(derive(cached)) == repr(derive(fresh))
            assert derive(cached).to_dict() == derive(fresh).to_dict()
