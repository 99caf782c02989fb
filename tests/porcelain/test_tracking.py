"""Recording runs in-process: background commits, failures, resume, what gets recorded."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

import mlvc
from mlvc.errors import FileExistsConflict, TrackingError
from mlvc.repo import open_repo
from mlvc.tracking import outbox
from mlvc_core.chunker import ChunkerParams
from mlvc_core.repository import Repository
from tests.cutting import count_cuts
from tests.porcelain.stores import FailingStore, GatedStore, wrap_repo


def _payload(seed: int, size: int = 200_000) -> bytes:
    return (seed.to_bytes(4, "little") * (size // 4 + 1))[:size] + os.urandom(64)


def test_checkpoint_returns_at_once_and_waits_only_when_queue_full(
    project: Path, tmp_path: Path
) -> None:
    repo, store = wrap_repo(GatedStore, tmp_path / "repo", tmp_path / "cache" / "r")
    store.gate.clear()  # every write now blocks: the store is stalled
    run = mlvc.init(repository=repo, max_pending=2, heartbeat_interval=0.2)
    weights = project / "w.bin"
    first = _payload(1, 4_000_000)
    weights.write_bytes(first)

    t0 = time.monotonic()
    run.checkpoint(path="w.bin", step=0, metrics={"loss": 3.0})
    assert time.monotonic() - t0 < 1.0
    assert store.blocked.wait(10), "the background thread should be stuck in the store"
    assert list(store.inner.list("refs/")) == []  # nothing committed yet: it happens later
    weights.write_bytes(b"overwritten right after the call")  # the checkpoint keeps the old bytes

    t0 = time.monotonic()
    run.checkpoint(path="w.bin", step=1, metrics={"loss": 2.0})  # fills the queue (2 pending)
    assert time.monotonic() - t0 < 1.0

    returned = threading.Event()

    def third() -> None:
        run.checkpoint(path="w.bin", step=2, metrics={"loss": 1.0})
        returned.set()

    t = threading.Thread(target=third)
    t.start()
    assert not returned.wait(0.7), "a full queue must make the loop wait"
    store.gate.set()
    assert returned.wait(30)
    t.join()
    run.close()

    exp = mlvc.experiments.get(run.id, repository=repo)
    assert [c.step for c in exp.checkpoints] == [0, 1, 2]
    with exp.checkpoints[0].open("w.bin") as f:
        assert f.read() == first
    assert not any(p.name == ".mlvc-staging" for p in project.iterdir())  # staging cleaned up


def test_checkpoint_without_copy_reads_in_place_and_refuses_changed_files(
    project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo, store = wrap_repo(GatedStore, tmp_path / "repo", tmp_path / "cache" / "r")
    weights = project / "w.bin"
    kept = _payload(7, 3_000_000)
    weights.write_bytes(kept)
    with caplog.at_level(logging.WARNING, logger="mlvc"):
        run = mlvc.init(repository=repo, heartbeat_interval=0.2)
        run.checkpoint(path="w.bin", step=0, copy=False)  # left alone until stored: recorded
        run.flush()
        store.gate.clear()  # stall the store so the next file is still unread...
        run.checkpoint(path="w.bin", step=1, copy=False)
        assert store.blocked.wait(10)
        weights.write_bytes(b"the loop overwrote it before it was stored")  # ...and change it
        store.gate.set()
        run.close()
    assert not list(project.glob(".mlvc-staging/*"))  # nothing was copied
    exp = mlvc.experiments.get(run.id, repository=repo)
    assert [c.step for c in exp.checkpoints] == [0]  # never a torn or mislabelled step 1
    with exp.checkpoints[0].open("w.bin") as f:
        assert f.read() == kept
    assert any("changed before mlvc had stored it" in r.getMessage() for r in caplog.records)


def test_repository_failing_mid_run_does_not_stop_training(
    project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo, store = wrap_repo(FailingStore, tmp_path / "repo", tmp_path / "cache" / "r")
    steps_done = []
    with caplog.at_level(logging.WARNING, logger="mlvc"):
        with mlvc.track(repository=repo, exit_timeout=1.0) as run:
            for step in range(4):
                (project / "w.bin").write_bytes(_payload(step))
                run.checkpoint(path="w.bin", step=step, metrics={"loss": 1.0 / (step + 1)})
                if step == 0:
                    run.flush()
                    store.broken.set()  # disk full / bucket gone from now on
                steps_done.append(step)
    assert steps_done == [0, 1, 2, 3]
    assert "could not record checkpoint at step 1" in caplog.text
    assert "injected failure" in caplog.text and "training continues" in caplog.text
    store.broken.clear()
    exp = mlvc.experiments.get(run.id, repository=repo)
    assert [c.step for c in exp.checkpoints] == [0]
    # What the storage refused was kept locally; once it answers, sync stores it.
    report = outbox.sync()
    assert report.sent == 4 and report.failed == []  # three checkpoints and the end
    exp = mlvc.experiments.get(run.id, repository=repo)
    assert [c.step for c in exp.checkpoints] == [0, 1, 2, 3] and exp.status == "stopped"
    with exp.checkpoints[2].open("w.bin") as f:
        assert f.read()[:-64] == _payload(2)[:-64]


def test_real_filesystem_failure_is_logged(
    project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo_dir = tmp_path / "repo"
    with caplog.at_level(logging.WARNING, logger="mlvc"):
        with mlvc.track(repository=str(repo_dir), exit_timeout=1.0) as run:
            (project / "w.bin").write_bytes(_payload(0))
            run.checkpoint(path="w.bin", step=0)
            run.flush()
            # Packs can no longer be written: their directory is now a file (root ignores chmod).
            (repo_dir / "packs").rename(repo_dir / "packs.moved")
            (repo_dir / "packs").write_text("not a directory")
            (project / "w.bin").write_bytes(_payload(1))
            run.checkpoint(path="w.bin", step=1)
    assert "could not record checkpoint at step 1" in caplog.text
    (repo_dir / "packs").unlink()
    (repo_dir / "packs.moved").rename(repo_dir / "packs")
    exp = mlvc.experiments.get(run.id, repository=str(repo_dir))
    assert [c.step for c in exp.checkpoints] == [0]
    assert outbox.sync().failed == []
    exp = mlvc.experiments.get(run.id, repository=str(repo_dir))
    assert [c.step for c in exp.checkpoints] == [0, 1]


def test_strict_raises(project: Path, tmp_path: Path) -> None:
    repo, store = wrap_repo(FailingStore, tmp_path / "repo", tmp_path / "cache" / "r")
    run = mlvc.init(repository=repo, strict=True)
    with pytest.raises(TrackingError, match="does not exist"):
        run.checkpoint(path="missing.bin", step=0)
    (project / "w.bin").write_bytes(_payload(0))
    run.checkpoint(path="w.bin", step=0)
    run.flush()
    store.broken.set()
    run.checkpoint(path="w.bin", step=1)  # fails in the background...
    with pytest.raises(TrackingError, match="checkpoint at step 1") as info:
        run.flush()  # ...and surfaces at the next call
    assert isinstance(info.value.__cause__, mlvc.errors.StorageError)
    with pytest.raises(TrackingError, match="experiment end"):
        run.close()


def test_resume_restores_and_appends(project: Path, tmp_path: Path) -> None:
    model = project / "model.bin"
    with mlvc.track(params={"lr": 0.1}) as run:
        for step in range(2):
            model.write_bytes(_payload(step))
            run.checkpoint(
                path=model,
                step=step,
                metrics={"acc": 0.5 + step / 10},
                primary_metric=("acc", "max"),
            )
    v0, v1 = (mlvc.experiments.get(run.id).checkpoints[i].open("model.bin").read() for i in (0, 1))
    exp_id = run.id

    model.write_bytes(b"local changes")
    with pytest.raises(FileExistsConflict, match="restore_force=True"):
        mlvc.track(resume=exp_id[:8], restore=True)
    assert model.read_bytes() == b"local changes"

    with mlvc.track(resume=exp_id[:8], restore=True, restore_force=True) as run2:
        assert model.read_bytes() == v1  # the latest checkpoint's files are back
        assert run2.id == exp_id
        assert mlvc.experiments.get(exp_id).status == "running"
        model.write_bytes(_payload(2))
        run2.checkpoint(path=model, metrics={"acc": 0.9})  # step follows on: 2
    exp = mlvc.experiments.get(exp_id)
    assert [c.step for c in exp.checkpoints] == [0, 1, 2]
    assert exp.status == "stopped" and exp.summary["resumed"] == 1
    assert exp.best().step == 2 and exp.primary_metric == ("acc", "maximize")

    # Resuming from a checkpoint id restores that checkpoint; identical local files are fine.
    first = exp.checkpoints[0]
    with mlvc.track(resume=first.id[:10], restore=True, restore_force=True) as run3:
        assert model.read_bytes() == v0
    with mlvc.track(resume=first.id[:10], restore=True) as run3:  # same content: no conflict
        pass
    assert run3.id == exp_id
    assert len(mlvc.experiments.get(exp_id).checkpoints) == 3


def _git(project: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=project, check=True, capture_output=True)


def test_records_code_params_and_environment(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _git(project, "init", "-q", "-b", "main")
    _git(project, "-c", "user.email=a@b", "-c", "user.name=t", "add", "train.py")
    _git(project, "-c", "user.email=a@b", "-c", "user.name=t", "commit", "-q", "-m", "init")
    (project / "train.py").write_text("print('changed')\n")
    (project / ".gitignore").write_text("data/\n*.log\n!keep.log\n")
    (project / ".mlvcignore").write_text("scratch.txt\n")
    for rel in (
        "data/big.csv",
        "run.log",
        "keep.log",
        "scratch.txt",
        "src/model.py",
        "src/__pycache__/model.pyc",
        "venv2/pyvenv.cfg",
        "venv2/lib/x.py",
    ):
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(rel)
    (project / "huge.bin").write_bytes(b"\0" * 2048)
    monkeypatch.setenv("MY_API_TOKEN", "hunter2-secret")

    with mlvc.track(
        params={"lr": 0.01, "layers": [2, 3]}, name="env-test", max_code_file_size=1024
    ) as run:
        run.checkpoint(step=0, metrics={"loss": 1.5})  # metrics only: the tree is the code
    exp = mlvc.experiments.get(run.id)
    assert exp.name == "env-test" and exp.params == {"lr": 0.01, "layers": [2, 3]}
    assert exp.command == "train.py --epochs 3"
    code = sorted(p for p, _ in exp.latest().files(all=True))
    assert code == [".gitignore", ".mlvcignore", "keep.log", "src/model.py", "train.py"]
    assert exp.latest().files() == []

    env = exp.env
    assert env["python"] and env["packages"]["pytest"]
    assert env["command"] == ["train.py", "--epochs", "3"]
    assert env["git"]["branch"] == "main" and env["git"]["dirty"] is True
    assert ".mlvc/" not in env["git"]["untracked"] and "src/" in env["git"]["untracked"]
    assert "+print('changed')" in env["git"]["diff"]

    # A clean work tree reads as clean although the run's own .mlvc directory is untracked.
    (project / "train.py").write_text("print('training')\n")
    _git(project, "add", "-A", "--", ".", ":!.mlvc")
    _git(project, "-c", "user.email=a@b", "-c", "user.name=t", "commit", "-q", "-m", "all")
    with mlvc.track() as run2:
        pass
    assert (project / ".mlvc").is_dir()
    assert mlvc.experiments.get(run2.id).env["git"]["dirty"] is False
    everything = json.dumps(exp.to_dict(full=True)) + json.dumps(env)
    assert "hunter2-secret" not in everything  # environment variables are never recorded


def test_directories_lists_and_paths_outside_the_project(project: Path, tmp_path: Path) -> None:
    ckpt_dir = project / "ckpt"
    (ckpt_dir / "shard").mkdir(parents=True)
    (ckpt_dir / "shard" / "a.bin").write_bytes(_payload(1))
    (ckpt_dir / "meta.json").write_text("{}")
    outside = tmp_path / "scratch" / "optim.bin"
    outside.parent.mkdir()
    outside.write_bytes(_payload(2))
    with mlvc.track() as run:
        run.checkpoint(path=[ckpt_dir, str(outside)], step=7)
    ckpt = mlvc.experiments.get(run.id).latest()
    assert ckpt.paths == ["ckpt", "optim.bin"]
    assert sorted(ckpt.files()) == [
        ("ckpt/meta.json", 2),
        ("ckpt/shard/a.bin", len(_payload(1))),
        ("optim.bin", len(_payload(2))),
    ]
    with ckpt.open("optim.bin") as f:
        assert f.read()[:4] == (2).to_bytes(4, "little")
    with ckpt.open("a.bin") as f:  # a bare name finds the checkpoint's file
        assert f.read(4) == (1).to_bytes(4, "little")
    out = tmp_path / "out"
    assert sorted(ckpt.checkout(out)) == ["ckpt/meta.json", "ckpt/shard/a.bin", "optim.bin"]
    assert ckpt.checkout(out) == []  # already there byte for byte: no conflict
    (out / "optim.bin").write_bytes(b"edited")
    with pytest.raises(FileExistsConflict):
        ckpt.checkout(out)
    assert ckpt.checkout(out, force=True) == ["optim.bin"]
    assert ckpt.checkout(tmp_path / "one", paths=["ckpt/meta.json"]) == ["ckpt/meta.json"]
    with pytest.raises(mlvc.errors.ObjectNotFound):
        ckpt.open("nope.bin")


def test_default_repository_and_project_config(project: Path, tmp_path: Path) -> None:
    sub = project / "sub"
    sub.mkdir()
    with mlvc.track(path=sub) as run:
        pass
    assert run.repository_url == str(project / ".mlvc")  # created on first use
    assert (project / ".mlvc" / "config").is_file()

    from mlvc.settings import write_project_config

    write_project_config(project, "../elsewhere")
    os.chdir(sub)  # the config is found by walking up
    with mlvc.track() as run2:
        run2.checkpoint(metrics={"x": 1})
    assert run2.repository_url == str(tmp_path / "elsewhere")
    assert [e.id for e in mlvc.experiments.list()] == [run2.id]
    repo = open_repo()
    assert repo.url == str(tmp_path / "elsewhere")
    repo.close()


def test_unusable_configuration_is_logged_not_raised(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (project / "mlvc.toml").write_text("[repository\nurl = ")
    with caplog.at_level(logging.WARNING, logger="mlvc"):
        with mlvc.track() as run:
            run.checkpoint(path="train.py", step=0)
    assert "not valid TOML" in caplog.text
    assert run.id is None
    with pytest.raises(TrackingError, match="not valid TOML"):
        mlvc.track(strict=True)


def test_staging_left_by_a_killed_process_is_swept(project: Path) -> None:
    import socket

    dead = project / ".mlvc-staging" / f"{socket.gethostname()}-999999999-0123456789ab"
    dead.mkdir(parents=True)
    (dead / "model.bin").write_bytes(b"half a copy")
    other_host = project / ".mlvc-staging" / "some-other-host-1-0123456789ab"
    other_host.mkdir()
    (project / "w.bin").write_bytes(b"weights")
    with mlvc.track() as run:
        run.checkpoint(path="w.bin")
    assert not dead.exists()
    assert other_host.exists()  # another machine's: it may be alive


def test_compare_and_swap_keeps_concurrent_changes(project: Path, tmp_path: Path) -> None:
    repo, store = wrap_repo(GatedStore, tmp_path / "repo", tmp_path / "cache" / "r")
    run = mlvc.init(repository=repo, primary_metric=("loss", "minimize"))
    run.checkpoint(step=0, metrics={"loss": 1.0})
    run.flush()
    (c0,) = run.experiment.checkpoints
    store.gate.clear()
    run.checkpoint(step=1, metrics={"loss": 2.0})
    assert store.blocked.wait(10)  # the run has read the ref and is storing the checkpoint
    other = Repository.open(str(tmp_path / "repo"))  # meanwhile, someone else hides step 0
    assert mlvc.experiments.remove([c0.id[:10]], repository=other) == [c0.id]
    store.gate.set()
    run.close()
    exp = mlvc.experiments.get(run.id, repository=other)
    assert exp.summary["removed"] == [c0.id]  # not overwritten by the run's update
    assert [c.step for c in exp.checkpoints] == [1] and exp.summary["checkpoints"] == 1
    assert exp.best().step == 1


def test_two_writers_resuming_one_experiment(project: Path, tmp_path: Path) -> None:
    repo_dir = str(tmp_path / "repo")
    with mlvc.track(repository=repo_dir, primary_metric="loss") as run:
        run.checkpoint(step=0, metrics={"loss": 5.0})
    a = mlvc.init(repository=repo_dir, resume=run.id)
    b = mlvc.init(repository=repo_dir, resume=run.id[:12])
    for i in range(5):
        a.checkpoint(step=10 + i, metrics={"loss": 1.0 + i})
        b.checkpoint(step=20 + i, metrics={"loss": 0.5 + i})
    a.close()
    b.close()
    exp = mlvc.experiments.get(run.id, repository=repo_dir)
    steps = [c.step for c in exp.checkpoints]
    assert sorted(steps) == [0, *range(10, 15), *range(20, 25)]  # nothing lost to a race
    assert exp.summary["checkpoints"] == 11 and exp.summary["resumed"] == 2
    assert exp.best().step == 20


def test_a_checkpoint_is_verified_against_the_previous_one_not_cut_again(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cut = count_cuts(monkeypatch)
    weights = project / "model.bin"
    frozen, head = os.urandom(6 << 20), os.urandom(1 << 20)
    with mlvc.track(repository=str(tmp_path / "repo")) as run:
        weights.write_bytes(frozen + head)
        run.checkpoint(path=weights, step=0)
        run.flush()
        first = sum(cut)
        weights.write_bytes(frozen + os.urandom(1 << 20))  # only the last tensor changes
        run.checkpoint(path=weights, step=1)
        run.flush()
        second = sum(cut) - first
    assert first >= 7 << 20
    # Cut again: the changed MiB, the stored chunk it begins in and a piece left at a buffer's
    # end (each at most the largest chunk); the rest of the frozen 6 MiB only hashed.
    largest = ChunkerParams().max
    assert second <= (1 << 20) + 2 * largest < first
    exp = mlvc.experiments.get(run.id or "", repository=str(tmp_path / "repo"))
    with exp.checkpoints[-1].open("model.bin") as f:
        assert f.read() == weights.read_bytes()
