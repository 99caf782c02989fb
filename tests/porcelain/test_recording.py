"""What a run records, under the conditions users meet: gc running, odd files, odd params."""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

import pytest

import mlvc
from mlvc.repo import open_repo
from mlvc.settings import load_settings
from mlvc_core.ids import from_hex
from mlvc_core.lock import ExclusiveLock


def test_checkpoint_taken_while_gc_holds_the_lock_waits_for_it(
    project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo_dir = tmp_path / "repo"
    weights = project / "w.bin"
    with caplog.at_level(logging.WARNING, logger="mlvc"):
        with mlvc.track(repository=repo_dir) as run:
            weights.write_bytes(b"step 0" * 1000)
            run.checkpoint(path="w.bin", step=0)
            run.flush()
            repo = open_repo(load_settings(repo_dir))
            gc_lock = ExclusiveLock.acquire(repo.store)  # a gc starts
            threading.Timer(1.0, gc_lock.release).start()  # and finishes a second later
            for step in (1, 2):
                weights.write_bytes(f"step {step}".encode() * 1000)
                run.checkpoint(path="w.bin", step=step)
    assert "could not record" not in caplog.text  # waited (in the write session or here)
    exp = mlvc.experiments.get(run.id, repository=repo_dir)
    assert [c.step for c in exp.checkpoints] == [0, 1, 2]
    with exp.checkpoints[1].open("w.bin") as f:
        assert f.read() == b"step 1" * 1000


def test_a_file_name_that_is_not_utf8_costs_that_file_not_the_run(
    project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = os.fsdecode(b"notes-\xff.txt")
    (project / bad).write_text("latin-1 named file")
    ckpt_dir = project / "ckpt"
    ckpt_dir.mkdir()
    (ckpt_dir / "weights.bin").write_bytes(b"w" * 100)
    (ckpt_dir / os.fsdecode(b"opt-\xe9.bin")).write_bytes(b"o" * 100)
    with caplog.at_level(logging.WARNING, logger="mlvc"):
        with mlvc.track(repository=tmp_path / "repo") as run:
            run.checkpoint(path="ckpt", step=0)
    assert run.id is not None
    assert "notes-\\xff.txt" in caplog.text and "opt-\\xe9.bin" in caplog.text
    exp = mlvc.experiments.get(run.id, repository=tmp_path / "repo")
    files = {path for path, _ in exp.latest().files(all=True)}  # type: ignore[union-attr]
    assert {"train.py", "ckpt/weights.bin"} <= files
    assert not any("\\udc" in f or "notes-" in f or "opt-" in f for f in files)


def _every_decompressed_object(repo_dir: Path) -> list[bytes]:
    """Every object and chunk of a local repository, decompressed, plus every other file."""
    repo = open_repo(load_settings(repo_dir))
    repo.load_index()
    blobs = [repo.read_raw(oid) for oid, _ in repo.iter_index()]
    for path in repo_dir.rglob("*"):
        if path.is_file() and "packs" not in path.relative_to(repo_dir).parts:
            blobs.append(path.read_bytes())
    assert any(b"--lr" in blob for blob in blobs)  # the recorded command line was scanned
    return blobs


def test_no_secret_reaches_the_repository(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = [f"S3CRET{i}x" for i in range(10)]
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "train.py",
            "--token",
            secrets[0],
            f"--api-key={secrets[1]}",
            f"WANDB_API_KEY={secrets[2]}",
            "--data",
            f"https://alice:{secrets[3]}@data.example.com/set?x=1",
            f"db.password={secrets[4]}",
            "--lr",
            "0.1",
        ],
    )
    (project / ".env").write_text(f"HF_TOKEN={secrets[5]}\n")
    (project / "deploy.pem").write_text(f"-----BEGIN PRIVATE KEY-----\n{secrets[6]}\n")
    params = {
        "hf_token": secrets[7],
        "db": {"password": secrets[8], "host": "db.local"},
        "data_url": f"s3://key:{secrets[9]}@bucket/prefix",
        "max_tokens": 512,
        "pad_token": "<pad>",
    }
    with mlvc.track(repository=tmp_path / "repo", params=params) as run:
        run.checkpoint(path="train.py", metrics={"loss": 0.5})
    exp = mlvc.experiments.get(run.id, repository=tmp_path / "repo")
    assert exp.params["max_tokens"] == 512 and exp.params["pad_token"] == "<pad>"
    assert exp.params["db.host"] == "db.local" and exp.params["db.password"] == "<redacted>"
    assert exp.params["data_url"] == "s3://key:<redacted>@bucket/prefix"
    assert exp.command.split()[1:4] == ["--token", "'<redacted>'", "'--api-key=<redacted>'"]
    assert "0.1" in exp.env["command"] and "https://alice:<redacted>@data" in exp.command
    files = {path for path, _ in exp.latest().files(all=True)}  # type: ignore[union-attr]
    assert "train.py" in files and ".env" not in files and "deploy.pem" not in files
    found = [
        (s, blob[:80])
        for blob in _every_decompressed_object(tmp_path / "repo")
        for s in secrets
        if s.encode() in blob
    ]
    assert found == []
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file():
            assert not any(s.encode() in path.read_bytes() for s in secrets), path


def test_params_are_canonical_flat_and_never_cost_the_run(
    project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import numpy as np

    config: dict[object, object] = {
        "tags": {"b", "c", "a"},
        1: "int key",
        "1": "str key",
        "model": {"depth": 4, "act": {"name": "relu"}},
        "lr": np.float32(0.25),
        "long": "x" * 20_000,
    }
    config["self"] = config
    twin = {"tags": {"c", "a", "b"}, "model": {"depth": 4, "act": {"name": "relu"}}}
    with caplog.at_level(logging.WARNING, logger="mlvc"):
        with mlvc.track(repository=tmp_path / "repo", params=config) as run:
            pass
        with mlvc.track(repository=tmp_path / "repo", params=twin) as other:
            pass
    assert "param self not recorded: it contains itself" in caplog.text
    assert "recorded as '1#int'" in caplog.text
    exp = mlvc.experiments.get(run.id, repository=tmp_path / "repo")
    assert exp.params == {
        "tags": ["a", "b", "c"],
        "1": "str key",
        "1#int": "int key",
        "model.depth": 4,
        "model.act.name": "relu",
        "lr": 0.25,
        "long": "x" * 20_000,
    }
    assert run.params == exp.params
    twin_exp = mlvc.experiments.get(other.id, repository=tmp_path / "repo")
    assert twin_exp.params["tags"] == exp.params["tags"]
    names = {e.id for e in mlvc.experiments.list(tmp_path / "repo", filter="model.depth = 4")}
    assert names == {run.id, other.id}
    both = mlvc.experiments.list(tmp_path / "repo", filter="params.model.act.name = relu")
    assert len(both) == 2


def test_resume_with_every_id_form(project: Path, tmp_path: Path) -> None:
    model = project / "model.bin"
    with mlvc.track(params={"lr": 0.1, "layers": 2}) as run:
        for step, acc in enumerate([0.5, 0.9, 0.7]):
            model.write_bytes(f"weights at step {step}".encode())
            run.checkpoint(
                path=model,
                step=step,
                metrics={"acc": acc},
                primary_metric=("acc", "max"),
            )
    exp_id = run.id
    assert exp_id is not None
    exp = mlvc.experiments.get(exp_id)
    by_step = {c.step: c for c in exp.checkpoints}
    exp.repository.refs.set("tags/candidate", by_step[0].oid, None)

    forms = {
        f"{exp_id[:8]}@best": 1,
        f"{exp_id[:8]}@step=0": 0,
        f"{exp_id[:8]}@latest": 2,
        exp_id[:10]: 2,
        by_step[1].id[:12]: 1,
        "candidate": 0,
    }
    for form, step in forms.items():
        with mlvc.track(
            resume=form, restore=True, restore_force=True, params={"lr": 0.01}
        ) as resumed:
            assert resumed.id == exp_id, form
            assert model.read_bytes() == f"weights at step {step}".encode(), form
            assert resumed.resumed_from is not None and resumed.resumed_from.step == step
            assert resumed.params == {"lr": 0.01, "layers": 2}, form  # carried over, updated
    final = mlvc.experiments.get(exp_id)
    assert final.params == {"lr": 0.01, "layers": 2}
    assert final.summary["resumed"] == len(forms)

    # Step numbering goes on after the checkpoint resumed from.
    with mlvc.track(resume=f"{exp_id[:8]}@best", params={"lr": 0.001}) as resumed:
        resumed.checkpoint(metrics={"acc": 0.95})
    with mlvc.track(resume=exp_id[:8]) as resumed:
        resumed.checkpoint(metrics={"acc": 0.2})
        assert resumed.params["lr"] == 0.001
    assert [c.step for c in mlvc.experiments.get(exp_id).checkpoints] == [0, 1, 2, 2, 3]
    with pytest.raises(mlvc.errors.UsageError, match="bad selector"):
        mlvc.track(resume=f"{exp_id[:8]}@worst")


def test_unreadable_project_config_is_a_clear_warning_not_a_silent_loss(
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from mlvc.settings import write_project_config

    write_project_config(project, "runs")
    monkeypatch.setitem(sys.modules, "tomllib", None)  # Python 3.10 without tomli
    monkeypatch.setitem(sys.modules, "tomli", None)
    with caplog.at_level(logging.WARNING, logger="mlvc"):
        with mlvc.track(params={"lr": 0.1}) as run:
            run.checkpoint(metrics={"loss": 1.0})
    assert run.id is None
    assert "could not record run configuration" in caplog.text
    assert "pip install tomli" in caplog.text
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("mlvc: experiment NOT saved (UsageError: ")


def test_pyproject_declares_tomli_for_python_310() -> None:
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    root = Path(__file__).resolve().parents[2]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.replace(" ", "").startswith('tomli>=1.1;python_version<"3.11"') for d in deps)


def test_environment_records_machine_and_accelerators_without_initialising_cuda(
    project: Path, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    with mlvc.track(repository=tmp_path / "repo") as run:
        pass
    env = mlvc.experiments.get(run.id, repository=tmp_path / "repo").env
    assert env["machine"]["cpu_count"] == os.cpu_count()
    assert env["machine"]["memory_bytes"] > 1 << 20
    acc = env["accelerators"]
    assert acc["torch"] == torch.__version__
    assert acc["cuda_available"] == torch.cuda.is_available()
    assert acc["mps_available"] == torch.backends.mps.is_available()
    assert acc["cuda_build"] == torch.version.cuda
    assert not torch.cuda.is_initialized()  # recording never set CUDA up
    if torch.cuda.is_available():  # pragma: no cover - machines with a GPU
        assert [d["name"] for d in acc["cuda_devices"]] == [
            torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
        ]
        assert acc["driver"]


def test_the_code_snapshot_is_the_code_when_track_returned_even_if_gc_delays_the_start(
    project: Path, tmp_path: Path
) -> None:
    repo_dir = tmp_path / "repo"
    mlvc.track(repository=repo_dir).close()  # the repository exists
    repo = open_repo(load_settings(repo_dir))
    gc_lock = ExclusiveLock.acquire(repo.store)  # a gc holds the repository as the run starts
    try:
        run = mlvc.track(repository=repo_dir)
        # The user edits the script for the next run while this one is starting.
        (project / "train.py").write_text("print('the next experiment')\n")
    finally:
        gc_lock.release()
    (project / "w.bin").write_bytes(b"weights")
    run.checkpoint(path="w.bin", step=0)
    run.close()
    (ckpt,) = mlvc.experiments.get(run.id, repository=repo_dir).checkpoints
    with ckpt.open("train.py") as f:
        assert f.read() == b"print('training')\n"


def _start_commit_files(repo_dir: Path, exp_id: str) -> dict[str, bytes]:
    """The files of an experiment's first commit (the code snapshot), by name."""
    repo = open_repo(load_settings(repo_dir))
    tree = repo.read_tree(repo.read_commit(from_hex(exp_id)).tree)
    out = {}
    for e in tree.entries:
        assert e.kind == "file", e
        assert e.oid is not None
        manifest = repo.read_manifest(e.oid)
        out[e.name] = b"".join(repo.read_chunks([oid for oid, _n in manifest.chunks]))
    return out


def test_the_code_snapshot_is_the_code_when_track_returned_even_if_the_start_is_retried(
    project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo_dir = tmp_path / "repo"
    repo_dir.write_text("not yet a repository")  # the start fails: it cannot create it
    with caplog.at_level(logging.INFO, logger="mlvc"):
        run = mlvc.track(repository=repo_dir)
        assert run.id is None  # the start failed
        # Edits after track() returned, then a file checkpointed later.
        (project / "train.py").write_text("print('the next experiment')\n")
        (project / "late.txt").write_text("written after track()")
        repo_dir.unlink()  # the repository becomes reachable: the checkpoint retries the start
        run.checkpoint(path="late.txt", step=0)
        run.close()
    assert "retrying to record the experiment start" in caplog.text
    exp_id = run._writer.exp_id
    assert exp_id is not None
    assert _start_commit_files(repo_dir, exp_id) == {"train.py": b"print('training')\n"}
    (ckpt,) = mlvc.experiments.get(exp_id, repository=repo_dir).checkpoints
    assert sorted(p for p, _ in ckpt.files(all=True)) == ["late.txt", "train.py"]
    with ckpt.open("train.py") as f:
        assert f.read() == b"print('training')\n"


def test_a_file_created_after_track_returned_is_never_in_the_start_commit(
    project: Path, tmp_path: Path
) -> None:
    repo_dir = tmp_path / "repo"
    mlvc.track(repository=repo_dir).close()  # the repository exists
    repo = open_repo(load_settings(repo_dir))
    gc_lock = ExclusiveLock.acquire(repo.store)  # the start waits for a gc
    try:
        run = mlvc.track(repository=repo_dir)
        (project / "late.txt").write_text("x")
        (project / "train.py").unlink()  # removed meanwhile: still recorded as it was
    finally:
        gc_lock.release()
    run.checkpoint(path="late.txt", step=0)
    run.close()
    assert run.id is not None
    assert _start_commit_files(repo_dir, run.id) == {"train.py": b"print('training')\n"}
    cache = tmp_path / "cache" / "staging"
    assert not cache.exists() or not any(cache.iterdir())  # the private copy is removed


def test_the_last_line_says_when_the_experiment_was_removed_while_it_ran(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo_dir = tmp_path / "repo"
    with mlvc.track(repository=repo_dir) as run:
        run.checkpoint(step=0, metrics={"loss": 1.0})
        run.flush()
        assert run.id is not None
        assert mlvc.experiments.remove(run.id, repository=repo_dir) == [run.id]
        run.checkpoint(step=1, metrics={"loss": 0.5})
        run.checkpoint(step=2, metrics={"loss": 0.25})
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "saved experiment" not in last
    assert f"experiment {run.id[:12]} was removed (mlvc rm) while the run went on" in last
    assert "2 later checkpoints NOT recorded" in last
    assert mlvc.experiments.list(repository=repo_dir) == []


def test_copying_the_code_at_start_is_bounded_in_time(
    project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A code directory too large to copy in time costs files of the snapshot, not the start."""
    from mlvc.tracking import code

    for i in range(50):
        (project / f"mod{i}.py").write_text(f"x = {i}\n")
    monkeypatch.setattr(code, "CODE_COPY_SECONDS", 0.0)  # already past when the copy starts
    with caplog.at_level(logging.WARNING, logger="mlvc"):
        with mlvc.track(repository=tmp_path / "repo") as run:
            pass
    assert "code snapshot of" in caplog.text and "stopped after 0 s of copying" in caplog.text
    assert run.id is not None
    files = _start_commit_files(tmp_path / "repo", run.id)  # the run is recorded
    assert not any(f.startswith("mod") for f in files)  # the files past the bound left out
