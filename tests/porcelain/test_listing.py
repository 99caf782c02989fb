"""Reading experiments back: listing (refs only, incremental), lookup, filters, removal, load."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

import mlvc
from mlvc.errors import AmbiguousId, ObjectNotFound, UsageError
from mlvc.experiments import catalog as exps_mod
from mlvc.experiments.revisions import resolve
from mlvc_core.history import commit_paths
from mlvc_core.repository import Repository
from mlvc_core.storage import LocalStore
from tests.porcelain.stores import CountingStore, wrap_repo


def _make(repo: object, n: int, project: Path) -> list[str]:
    ids = []
    for i in range(n):
        with mlvc.track(
            repository=repo, params={"lr": 10.0 ** -(i % 3), "i": i}, name=f"exp{i}"
        ) as run:
            (project / "w.bin").write_bytes(bytes([i]) * 1000)
            run.checkpoint(
                path="w.bin", step=0, metrics={"loss": 1.0 + i}, primary_metric=("loss", "min")
            )
            run.checkpoint(path="w.bin", step=1, metrics={"loss": 0.5 + i / 10})
        ids.append(run.id)
    return ids


def test_listing_reads_only_refs_and_relists_incrementally(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(exps_mod.RACY_SECONDS, "local", 0.3)
    cache = tmp_path / "cache" / "listing"
    repo, store = wrap_repo(CountingStore, tmp_path / "repo", cache)
    ids = _make(repo, 6, project)
    time.sleep(0.4)  # older than the racy window

    store.reset()
    listed = mlvc.experiments.list(repository=repo)
    assert sorted(e.id for e in listed) == sorted(ids)
    # At most every ref once (the runs' own listings at stop already cached most of them).
    assert store.reads("refs") <= 6
    assert store.counts[("list", "heartbeats")] == 1
    assert store.reads("packs") == 0 and store.reads("index") == 0  # no commit was read

    store.reset()
    again = mlvc.experiments.list(repository=repo)
    assert store.reads("refs") == 0  # every ref unchanged: served from the cache
    assert [e.summary for e in again] == [e.summary for e in listed]

    # One experiment changes: only its ref is read again.
    exp = mlvc.experiments.get(ids[3], repository=repo)
    exp.checkpoints[0].remove()
    time.sleep(0.4)
    store.reset()
    third = {e.id: e for e in mlvc.experiments.list(repository=repo)}
    assert store.reads("refs") == 1
    assert third[ids[3]].summary["removed"] == [exp.checkpoints[0].id]

    # The cache persists: a new process (a fresh repository object) reads nothing either.
    other_store = CountingStore(LocalStore(tmp_path / "repo"))
    other = Repository.open(other_store, cache_dir=cache)
    other_store.reset()
    assert len(mlvc.experiments.list(repository=other)) == 6
    assert other_store.reads("refs") == 0


def test_filter_sort_and_to_dict(project: Path) -> None:
    ids = _make(None, 4, project)
    all_ = mlvc.experiments.list()
    assert [e.id for e in all_] == ids[::-1]  # newest first
    assert {e.name for e in mlvc.experiments.list(filter="loss < 0.65")} == {"exp0", "exp1"}
    assert {e.name for e in mlvc.experiments.list(filter=["lr = 0.01"])} == {"exp2"}
    assert {e.name for e in mlvc.experiments.list(filter=["params.lr >= 0.1", "best < 0.6"])} == {
        "exp0"
    }
    assert {e.name for e in mlvc.experiments.list(filter="status = stopped")} == {
        f"exp{i}" for i in range(4)
    }
    assert {e.name for e in mlvc.experiments.list(filter="name != exp3")} == {
        "exp0",
        "exp1",
        "exp2",
    }
    assert mlvc.experiments.list(filter="status = running") == []
    with pytest.raises(UsageError, match="unknown field 'nosuchfield'"):
        mlvc.experiments.list(filter="nosuchfield > 1")
    with pytest.raises(UsageError, match="unknown field 'nosuchkey'"):
        mlvc.experiments.list(sort="nosuchkey")
    assert [e.name for e in mlvc.experiments.list(filter=lambda e: e.params["i"] % 2 == 1)] == [
        "exp3",
        "exp1",
    ]
    assert [e.name for e in mlvc.experiments.list(sort="loss")] == ["exp0", "exp1", "exp2", "exp3"]
    assert {e.name for e in mlvc.experiments.list(sort="-lr")[:2]} == {"exp3", "exp0"}
    with pytest.raises(UsageError, match="bad filter"):
        mlvc.experiments.list(filter="loss <<< 1")

    exp = all_[0]
    d = exp.to_dict(full=True)
    json.dumps(d, allow_nan=False)
    assert list(d)[:6] == ["id", "short_id", "name", "status", "created", "ended"]
    assert d["best"]["step"] == 1 and d["checkpoints"] == 2
    assert [c["step"] for c in d["checkpoint_list"]] == [0, 1]
    assert exp.metrics("loss") == [(0, 4.0), (1, 0.8)]
    json.dumps(exp.latest().to_dict(), allow_nan=False)


def test_get_by_prefix_ambiguous_unknown_and_resolve_any(project: Path) -> None:
    (exp_id,) = _make(None, 1, project)
    exp = mlvc.experiments.get(exp_id[:7])
    ckpt = exp.latest()
    assert mlvc.experiments.get(ckpt.id[:8]).id == exp_id  # a checkpoint id finds its experiment
    assert mlvc.checkpoints.get(ckpt.id[:8]) == ckpt
    assert mlvc.checkpoints.get(exp_id[:8]) == exp.best()
    repo = exp.repository
    assert isinstance(resolve(repo, exp_id[:9]).experiment, mlvc.Experiment)
    assert resolve(repo, ckpt.id).kind == "checkpoint" and resolve(repo, ckpt.id).id == ckpt.id
    assert resolve(repo, f"experiments/{exp_id[:8]}").id == exp_id
    plain = commit_paths(repo, project / "train.py", message="plain", branch="main")
    assert resolve(repo, plain.hex()[:10]).kind == "commit"

    # A second experiment ref sharing the first 7 digits makes that prefix ambiguous.
    twin = exp_id[:7] + ("0" if exp_id[7] != "0" else "1") + exp_id[8:]
    ref = repo.refs.get(f"experiments/{exp_id}")
    repo.refs.set(f"experiments/{twin}", ref.target, None, ref.summary)
    with pytest.raises(AmbiguousId) as info:
        mlvc.experiments.get(exp_id[:7])
    assert len(info.value.candidates) == 2
    assert mlvc.experiments.get(exp_id[:8]).id == exp_id
    with pytest.raises(ObjectNotFound):
        mlvc.experiments.get("abcdef0123")
    with pytest.raises(ObjectNotFound):
        mlvc.checkpoints.get("abcdef0123")


def test_remove_checkpoint_and_experiment(project: Path) -> None:
    ids = _make(None, 2, project)
    exp = mlvc.experiments.get(ids[0])
    best = exp.best()
    assert best.step == 1
    best.remove()
    exp = mlvc.experiments.get(ids[0])
    assert [c.step for c in exp.checkpoints] == [0]
    assert exp.best().step == 0 and exp.latest().step == 0 and exp.summary["checkpoints"] == 1
    assert best.removed and mlvc.checkpoints.get(best.id).removed  # still readable until gc

    assert mlvc.experiments.remove([ids[1][:8]]) == [ids[1]]
    assert [e.id for e in mlvc.experiments.list()] == [ids[0]]
    with pytest.raises(ObjectNotFound):
        mlvc.experiments.get(ids[1])
    removed = [e for e in mlvc.experiments.list(include_removed=True) if e.status == "removed"]
    assert [e.id for e in removed] == [ids[1]] and removed[0].summary["checkpoints"] == 2
    exp.remove()
    assert mlvc.experiments.list() == []


def test_load_tags_and_selectors(project: Path, tmp_path: Path) -> None:
    (exp_id,) = _make(None, 1, project)
    exp = mlvc.experiments.get(exp_id)
    step0 = exp.checkpoints[0]
    exp.repository.refs.set("tags/production", step0.oid, None)
    with mlvc.load("production", "w.bin") as f:
        assert f.read() == bytes([0]) * 1000
    assert mlvc.load(f"{exp_id[:8]}@step=0").joinpath("w.bin").is_file()
    assert mlvc.load(f"{exp_id[:8]}@latest", output_dir=tmp_path / "o") == tmp_path / "o"
    assert (tmp_path / "o" / "w.bin").is_file()
    with pytest.raises(ObjectNotFound):
        mlvc.load(f"{exp_id[:8]}@step=9")
    with pytest.raises(UsageError):
        mlvc.load(f"{exp_id[:8]}@worst")
    with pytest.raises(ObjectNotFound):
        mlvc.load("no-such-tag", "w.bin")

    with mlvc.track() as run:
        run.checkpoint(metrics={"loss": 0.1})  # no files
    assert list(mlvc.load(run.id[:8]).iterdir()) == []
    assert list(mlvc.load(run.id[:8], output_dir=tmp_path / "empty").iterdir()) == []


def test_plot(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (exp_id,) = _make(None, 1, project)
    exp = mlvc.experiments.get(exp_id)
    import matplotlib

    matplotlib.use("Agg")
    ax = exp.plot("loss")
    assert list(ax.lines[0].get_ydata()) == [1.0, 0.5]
    with pytest.raises(UsageError, match="no metric"):
        exp.plot("nope")
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(UsageError, match="pip install matplotlib"):
        exp.plot("loss")


def test_status_running_heartbeat_then_stopped(project: Path) -> None:
    run = mlvc.init(heartbeat_interval=0.1)
    exp = mlvc.experiments.get(run.id)
    assert exp.status == "running" and exp.to_dict()["status"] == "running"
    first_beat = exp.heartbeat
    time.sleep(0.35)
    again = mlvc.experiments.get(run.id)
    assert again.heartbeat > first_beat  # the daemon thread keeps it fresh
    run.close()
    stopped = mlvc.experiments.get(run.id)
    assert stopped.status == "stopped" and stopped.ended is not None
    assert stopped.summary["end_reason"] == "ok"
    assert list(exp.repository.store.list("heartbeats/")) == []  # a clean stop removes it


def test_non_finite_values_sort_last_and_keep_the_rest_in_order(project: Path) -> None:
    losses = [0.5, float("nan"), 0.1, float("inf"), 0.3, float("nan"), 0.2, float("-inf")]
    for i, loss in enumerate(losses):
        with mlvc.track(params={"i": i}, name=f"r{i}") as run:
            run.checkpoint(metrics={"loss": loss}, primary_metric=("loss", "min"))
    with mlvc.track(name="no-loss") as run:
        run.checkpoint(metrics={"acc": 1.0})

    def shown(sort: str) -> list[object]:
        values = []
        for e in mlvc.experiments.list(sort=sort):
            loss = e.summary["latest_metrics"].get("loss")
            values.append(loss if loss is not None else "-")
        return values

    ascending = shown("loss")
    assert ascending[:4] == [0.1, 0.2, 0.3, 0.5]
    assert sorted(map(str, ascending[4:8])) == ["-inf", "inf", "nan", "nan"]
    assert ascending[8] == "-"
    descending = shown("-loss")
    assert descending[:4] == [0.5, 0.3, 0.2, 0.1] and descending[8] == "-"
    below = mlvc.experiments.list(filter="loss < 0.25", sort="loss")
    assert [e.name for e in below] == ["r2", "r6", "r7"]  # -inf is below too, sorted last
    assert {e.name for e in mlvc.experiments.list(filter="loss = nan")} == set()
    assert len(mlvc.experiments.list(filter="loss > 100")) == 1  # inf


def test_ls_columns_say_what_filters_and_sort_use(project: Path) -> None:
    from typer.testing import CliRunner

    from mlvc.cli import app

    with mlvc.track(params={"config": "y" * 20_000, "lr": 0.1}, name="peaked") as run:
        for acc in [0.10, 0.150391, 0.13]:
            run.checkpoint(metrics={"val_acc": acc}, primary_metric=("val_acc", "max"))
    peaked = run.id
    with mlvc.track(params={"lr": 0.2}, name="steady") as run:
        run.checkpoint(metrics={"val_acc": 0.145}, primary_metric=("val_acc", "max"))
    runner = CliRunner()

    def ls(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, ["ls", *args], catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    table = ls()
    lines = table.splitlines()
    assert lines[0].split()[-2:] == ["latest", "best"]
    row = next(line for line in lines if line.startswith(peaked[:12]))
    assert "val_acc=0.13" in row and "val_acc=0.150391 @1" in row  # latest and best, labelled
    assert len(row) < 400 and "yyy..." in row  # the 20 kB param is shortened
    assert ls("-q", "-f", "val_acc > 0.14").split() == [run.id[:12]]  # the latest column
    assert sorted(ls("-q", "-f", "best.val_acc > 0.14").split()) == sorted(
        [peaked[:12], run.id[:12]]
    )  # the best column
    assert ls("-q", "--sort", "-best").split() == [peaked[:12], run.id[:12]]
    assert ls("-q", "--sort", "-val_acc").split() == [run.id[:12], peaked[:12]]
    err = ls("--sort", "nosuchkey", code=2)
    assert "unknown field 'nosuchkey'" in err and "val_acc" in err and "Traceback" not in err


def test_a_missing_step_lists_each_recorded_step_once(project: Path) -> None:
    with mlvc.track() as run:
        for step in (0, 1, 0, 1):  # a loop restarted inside one run records steps again
            run.checkpoint(step=step, metrics={"loss": 0.1})
    with pytest.raises(ObjectNotFound) as info:
        mlvc.load(f"{run.id[:8]}@step=7")
    assert info.value.detail == "steps of this experiment: 0, 1"
