"""checkpoint(copy=True): copies that never make the loop's writes wait, and are never torn.

Whatever the loop does to its files after ``checkpoint()`` returns (overwrite, truncate,
append, rename over them), the write goes ahead at once, and every recorded checkpoint holds
exactly the bytes the files had at the call; a checkpoint whose file was written to before its
background copy was complete is not recorded, with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import mlvc
from mlvc.tracking import changes, copies
from mlvc.tracking.changes import ChangeWatch
from mlvc.tracking.copies import Copier
from tests.porcelain.conftest import subprocess_env

torch = pytest.importorskip("torch")

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify, signals")

MIB = 1 << 20
QUEUE = 64
"""``max_pending``: checkpoints queued at once are never dropped as a backlog on a full disk."""


def _watchable(directory: Path) -> bool:
    """Whether writes to a file in ``directory`` can be watched (else copies are all whole)."""
    probe = directory / "watch-probe"
    probe.write_bytes(b"probe")
    fd = os.open(probe, os.O_RDONLY)
    watch = ChangeWatch()
    try:
        return watch.watch(fd) is not None
    finally:
        watch.close()
        os.close(fd)
        probe.unlink()


@pytest.fixture
def watchable(project: Path) -> None:
    """Skip the test where files cannot be copied in the background here."""
    if not _watchable(project):
        pytest.skip("writes to files cannot be watched here")


def _write(path: Path, step: int, writer: str, mib: int = 3) -> bytes:
    """Overwrite ``path`` in place (same inode, truncated) the way a training loop does."""
    if writer == "torch":
        g = torch.Generator().manual_seed(step)
        torch.save({"w": torch.randn(mib * MIB // 4 + step, generator=g)}, path)
    else:
        with open(path, "wb") as f:
            f.write(os.urandom(mib * MIB + step * 4096))
    return path.read_bytes()


def _recorded(run: mlvc.Run, name: str = "model.pth") -> dict[int, bytes]:
    exp = mlvc.experiments.get(run.id)
    out = {}
    for ckpt in exp.checkpoints:
        with ckpt.open(name) as f:
            out[ckpt.step] = f.read()
    return out


@pytest.fixture
def stalled_copier(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """The background copier waits for this event before its first chunk (a slow disk)."""
    go = threading.Event()
    original = Copier._advance

    def advance(self: Copier, copy: copies.FileCopy) -> None:
        assert go.wait(60)
        original(self, copy)

    monkeypatch.setattr(Copier, "_advance", advance)
    return go


# ----------------------------------------------------------------- within the budget: all kept


@pytest.mark.parametrize("writer", ["open", "torch"])
def test_overwriting_right_after_checkpoint_records_each_version(
    project: Path, writer: str
) -> None:
    weights = project / "model.pth"
    expected = {}
    with mlvc.track(max_pending=QUEUE) as run:
        for step in range(8):
            expected[step] = _write(weights, step, writer)  # overwrites the previous version
            run.checkpoint(path="model.pth", step=step, metrics={"loss": 1 / (step + 1)})
        assert run._files.copier is not None and run._files.copier.background_copies == 0
    assert _recorded(run) == expected
    assert not (project / ".mlvc-staging").exists()


def _replace(path: Path, step: int, writer: str = "torch") -> bytes:
    """Save elsewhere, then rename over ``path`` (an atomic save)."""
    tmp = path.with_name(path.name + ".tmp")
    data = _write(tmp, step, writer)
    os.replace(tmp, path)
    return data


def _append(path: Path, step: int) -> bytes:
    with open(path, "ab") as f:
        f.write(os.urandom(MIB + step))
    return path.read_bytes()


@pytest.mark.parametrize("how", ["overwrite", "rename", "append"])
def test_below_the_budget_every_change_right_after_the_call_keeps_the_checkpoint(
    project: Path, how: str
) -> None:
    weights = project / "model.pth"
    weights.write_bytes(os.urandom(4 * MIB))
    expected = {}
    with mlvc.track(max_pending=QUEUE) as run:
        for step in range(5):
            expected[step] = weights.read_bytes()
            run.checkpoint(path="model.pth", step=step)
            if how == "overwrite":
                _write(weights, step + 1, "open", mib=4)
            elif how == "rename":
                _replace(weights, step + 1, "open")
            else:
                _append(weights, step)
    assert _recorded(run) == expected


# ------------------------------------------------ past the budget: copied in the background


@linux_only
@pytest.mark.usefixtures("watchable")
@pytest.mark.parametrize("how", ["overwrite", "truncate", "append"])
def test_a_write_during_the_background_copy_goes_ahead_and_drops_only_that_checkpoint(
    project: Path,
    stalled_copier: threading.Event,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    weights = project / "model.pth"
    expected = {0: _write(weights, 0, "open", mib=8)}
    with caplog.at_level(logging.WARNING, logger="mlvc"), mlvc.track(copy_budget=0) as run:
        run.checkpoint(path="model.pth", step=0)  # its copy is left to the stalled copier
        t0 = time.monotonic()
        if how == "overwrite":
            _write(weights, 1, "torch", mib=8)
        elif how == "truncate":
            os.truncate(weights, MIB)
        else:
            _append(weights, 1)
        waited = time.monotonic() - t0
        stalled_copier.set()
        run.flush()
        expected[1] = weights.read_bytes()
        run.checkpoint(path="model.pth", step=1)  # left alone: copied in the background
    assert waited < 1.0, "a write waited for mlvc"
    assert _recorded(run) == {1: expected[1]}
    assert "model.pth was written to before mlvc had copied it" in caplog.text
    assert "checkpoint at step 0 was not recorded" in caplog.text
    assert "copy_budget" in caplog.text
    assert not (project / ".mlvc-staging").exists()


@linux_only
@pytest.mark.usefixtures("watchable")
def test_a_rename_over_a_file_in_its_background_copy_keeps_the_old_bytes(
    project: Path, stalled_copier: threading.Event
) -> None:
    weights = project / "model.pth"
    expected = {0: _write(weights, 0, "torch", mib=8)}
    with mlvc.track(copy_budget=0, max_pending=QUEUE) as run:
        run.checkpoint(path="model.pth", step=0)
        t0 = time.monotonic()
        expected[1] = _replace(weights, 1)  # the copy reads the file the call saw
        assert time.monotonic() - t0 < 1.0
        run.checkpoint(path="model.pth", step=1)
        stalled_copier.set()
        assert run._files.copier is not None and run._files.copier.background_copies == 2
    assert _recorded(run) == expected


@linux_only
@pytest.mark.usefixtures("watchable")
def test_files_left_alone_are_copied_in_the_background_after_a_short_call(
    project: Path,
) -> None:
    ckpt = project / "ckpt"
    ckpt.mkdir()
    expected = {}
    with mlvc.track(copy_budget=0.001) as run:
        for step in range(2):
            version = {f"{i}.bin": os.urandom(24 * MIB + step) for i in range(3)}
            for name, data in version.items():
                (ckpt / name).write_bytes(data)
            expected[step] = version
            t0 = time.monotonic()
            run.checkpoint(path=ckpt, step=step)
            assert time.monotonic() - t0 < 0.5  # 72 MiB: most of it after the call
            run.flush()  # the loop leaves the files alone until they are stored
        assert run._files.copier is not None and run._files.copier.background_copies >= 2
    for c in mlvc.experiments.get(run.id).checkpoints:
        for name, data in expected[c.step].items():
            with c.open(f"ckpt/{name}") as f:
                assert f.read() == data


@linux_only
def test_a_file_whose_writes_cannot_be_watched_is_copied_whole_before_returning(
    project: Path, stalled_copier: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(changes, "LOCAL_FILESYSTEMS", frozenset())  # as on NFS
    weights = project / "model.pth"
    expected = {}
    with mlvc.track(copy_budget=0, max_pending=QUEUE) as run:
        for step in range(3):
            expected[step] = _write(weights, step, "open", mib=4)
            run.checkpoint(path="model.pth", step=step)
        assert run._files.copier is not None and run._files.copier.background_copies == 0
    assert _recorded(run) == expected


def test_directory_of_small_and_large_files_and_a_symlink(project: Path, tmp_path: Path) -> None:
    ckpt_dir = project / "ckpt"
    (ckpt_dir / "shard").mkdir(parents=True)
    (ckpt_dir / "empty").mkdir()
    os.symlink("model.bin", ckpt_dir / "latest.bin")
    names = ["meta.json", "model.bin", "shard/0.bin", "shard/1.bin", "shard/tiny.bin"]
    sizes = [20, 3 * MIB, 2 * MIB, MIB, 100]
    versions = []
    with mlvc.track(max_pending=QUEUE) as run:
        for step in range(3):
            version = {n: os.urandom(s + step) for n, s in zip(names, sizes, strict=True)}
            for name, data in version.items():
                (ckpt_dir / name).write_bytes(data)
            (ckpt_dir / "shard" / "0.bin").chmod(0o755)
            versions.append(version)
            run.checkpoint(path=ckpt_dir, step=step)
    exp = mlvc.experiments.get(run.id)
    assert [c.step for c in exp.checkpoints] == [0, 1, 2]
    for ckpt, version in zip(exp.checkpoints, versions, strict=True):
        out = tmp_path / f"out{ckpt.step}"
        ckpt.checkout(out)
        for name, data in version.items():
            assert (out / "ckpt" / name).read_bytes() == data, (ckpt.step, name)
        assert os.readlink(out / "ckpt" / "latest.bin") == "model.bin"
        assert os.access(out / "ckpt" / "shard" / "0.bin", os.X_OK)


@linux_only
def test_close_leaves_no_copier_and_no_copy_directory(project: Path, tmp_path: Path) -> None:
    weights = project / "model.pth"
    with mlvc.track(copy_budget=0, max_pending=QUEUE) as run:
        for step in range(3):
            _write(weights, step, "open")
            run.checkpoint(path="model.pth", step=step)
            run.flush()
        assert run._files.copier is not None
    assert not [t for t in threading.enumerate() if t.name == "mlvc-copier"]
    assert not (project / ".mlvc-staging").exists()
    assert not list((tmp_path / "cache").glob("staging/*"))
    assert len(_recorded(run)) == 3


# ------------------------------------------------- the writer is never interrupted or held up

EINTR_OPEN = """
import ctypes, os, signal, sys, time
import mlvc

libc = ctypes.CDLL(None, use_errno=True)
ticks = [0]
def tick(signum, frame):
    ticks[0] += 1
signal.signal(signal.SIGALRM, tick)
signal.siginterrupt(signal.SIGALRM, True)  # as CPython installs handlers: no SA_RESTART
size = int(sys.argv[1]) << 20
worst = 0.0
with mlvc.track(max_pending=64) as run:
    signal.setitimer(signal.ITIMER_REAL, 0.002, 0.002)
    for step in range(int(sys.argv[2])):
        data = os.urandom(size)
        with open("model.pt", "wb") as f:
            f.write(data)
        run.checkpoint(path="model.pt", step=step)
        t0 = time.monotonic()
        # An open that does not retry on EINTR, as torch.save's C++ writer does.
        fd = libc.open(b"model.pt", os.O_WRONLY | os.O_TRUNC)
        worst = max(worst, time.monotonic() - t0)
        if fd < 0:
            print("OPEN FAILED", os.strerror(ctypes.get_errno()), flush=True)
            sys.exit(3)
        os.write(fd, os.urandom(size))
        os.close(fd)
        print("SAVED", step, __import__("hashlib").sha256(data).hexdigest(), flush=True)
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
print("EXP", run.id, "WORST", worst, "TICKS", ticks[0], flush=True)
"""


@linux_only
def test_a_c_level_open_right_after_checkpoint_never_gets_eintr_nor_waits(
    tmp_path: Path,
) -> None:
    work = tmp_path / "job"
    work.mkdir()
    repo_url = str(tmp_path / "repo")
    out = subprocess.run(
        [sys.executable, "-c", EINTR_OPEN, "24", "6"],
        cwd=work,
        env=subprocess_env(tmp_path, MLVC_REPOSITORY=repo_url),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line.split() for line in out.stdout.splitlines()]
    saved = {int(f[1]): f[2] for f in lines if f[0] == "SAVED"}
    (end,) = [f for f in lines if f[0] == "EXP"]
    assert float(end[3]) < 0.5, "an open of a just-checkpointed file waited"
    assert int(end[5]) > 10, "the signal did not fire"
    exp = mlvc.experiments.get(end[1], repository=repo_url)
    stored = {}
    for c in exp.checkpoints:
        with c.open("model.pt") as f:
            stored[c.step] = hashlib.sha256(f.read()).hexdigest()
    assert stored == saved  # the old bytes: none lost, none torn


DATALOADER_SCRIPT = """
import hashlib, json, os, sys, time
import torch
from torch.utils.data import DataLoader, Dataset
import mlvc

class DS(Dataset):
    def __len__(self):
        return 16
    def __getitem__(self, i):
        return torch.full((4,), float(i))

torch.manual_seed(0)
model = torch.nn.Linear(1024, 2048)  # 8 MiB of weights
persistent = sys.argv[1] == "persistent"
saved = {}
with mlvc.track(max_pending=64) as run:
    loader = DataLoader(DS(), batch_size=4, num_workers=2, persistent_workers=persistent)
    for epoch in range(int(sys.argv[2])):
        for batch in loader:  # non-persistent workers exit (SIGCHLD) as the epoch ends
            pass
        with torch.no_grad():
            model.weight.add_(0.01)
        torch.save(model.state_dict(), "model.pt")
        saved[epoch] = hashlib.sha256(open("model.pt", "rb").read()).hexdigest()
        run.checkpoint(path="model.pt", step=epoch)
        # Processes of the job end meanwhile, as workers do (SIGCHLD to the loader's handler).
        ending = []
        for delay in (0.002, 0.006, 0.012):
            pid = os.fork()
            if pid == 0:
                time.sleep(delay)
                os._exit(0)
            ending.append(pid)
        with torch.no_grad():
            model.bias.add_(1.0)
        torch.save(model.state_dict(), "model.pt")  # saved again right away
        for pid in ending:
            os.waitpid(pid, 0)
print("RESULT", json.dumps({"id": run.id, "saved": saved}), flush=True)
"""


@linux_only
@pytest.mark.parametrize("workers", ["fresh", "persistent"])
def test_dataloader_training_saving_right_after_each_checkpoint(
    tmp_path: Path, workers: str
) -> None:
    work = tmp_path / "job"
    work.mkdir()
    repo_url = str(tmp_path / "repo")
    out = subprocess.run(
        [sys.executable, "-c", DATALOADER_SCRIPT, workers, "12"],
        cwd=work,
        env=subprocess_env(tmp_path, MLVC_REPOSITORY=repo_url),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    result = json.loads(line.split(" ", 1)[1])
    exp = mlvc.experiments.get(result["id"], repository=repo_url)
    stored = {}
    for c in exp.checkpoints:
        with c.open("model.pt") as f:
            data = f.read()
        stored[str(c.step)] = hashlib.sha256(data).hexdigest()
        torch.load(__import__("io").BytesIO(data))  # a whole state dict
    assert stored == result["saved"]
    assert exp.status == "stopped"


# ---------------------------------------------------------------------------- in a child process

CHILD = """
import sys, time
import mlvc

with mlvc.track(heartbeat_interval=0.2, max_pending=64) as run:
    for step in range(int(sys.argv[1])):
        with open("model.pth", "wb") as f:
            f.write(step.to_bytes(4, "little") * (1 << 20))
        run.checkpoint(path="model.pth", step=step)
        print(step, flush=True)
    time.sleep(120)
"""


@linux_only
def test_sigterm_to_the_job_flushes_copies_in_flight(tmp_path: Path) -> None:
    repo_url = str(tmp_path / "repo")
    work = tmp_path / "job"
    work.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, "5"],
        cwd=work,
        env=subprocess_env(tmp_path, MLVC_REPOSITORY=repo_url),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as under a job manager
    )
    try:
        assert proc.stdout is not None
        for _ in range(5):
            proc.stdout.readline()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    (exp,) = mlvc.experiments.list(repository=repo_url)
    assert exp.summary["end_reason"] == "SIGTERM" and exp.status == "interrupted"
    assert [c.step for c in exp.checkpoints] == [0, 1, 2, 3, 4]
    for c in exp.checkpoints:
        with c.open("model.pth") as f:
            assert f.read() == c.step.to_bytes(4, "little") * MIB


# ---------------------------------------------------------------------------- the watch itself


@linux_only
@pytest.mark.usefixtures("watchable")
@pytest.mark.parametrize("how", ["trunc-open", "append", "truncate", "rename"])
def test_the_watch_sees_writes_to_the_open_file_and_not_renames(project: Path, how: str) -> None:
    path = project / "w.bin"
    path.write_bytes(os.urandom(MIB))
    fd = os.open(path, os.O_RDONLY)
    watch = ChangeWatch()
    try:
        wd = watch.watch(fd)
        assert wd is not None and not watch.changed(wd)
        if how == "trunc-open":
            os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))
        elif how == "append":
            with open(path, "ab") as f:
                f.write(b"x")
        elif how == "truncate":
            os.truncate(path, 10)
        else:
            (project / "new.bin").write_bytes(b"new")
            os.replace(project / "new.bin", path)  # the open file itself is untouched
        assert watch.changed(wd) == (how != "rename")
        watch.forget(wd)
    finally:
        watch.close()
        os.close(fd)


# ---------------------------------------------------------------------------- the copier itself


@pytest.mark.parametrize("fails", [(), ("copy_file_range",), ("copy_file_range", "sendfile")])
def test_copies_fall_back_to_sendfile_then_read_and_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: tuple[str, ...]
) -> None:
    def refuse(*_args: object) -> int:
        raise OSError(18, "Invalid cross-device link")  # EXDEV

    for name in fails:
        monkeypatch.setattr(os, name, refuse)
    src, data = tmp_path / "w.bin", os.urandom(3 * copies.CHUNK // 2 + 7)
    src.write_bytes(data)
    src.chmod(0o750)
    copier = Copier()
    try:
        copy = copier.start(str(src), str(tmp_path / "copy"), deadline=None)
    finally:
        copier.close()
    assert copy.status == "copied" and not copy.in_background
    assert (tmp_path / "copy").read_bytes() == data
    assert (tmp_path / "copy").stat().st_mode & 0o777 == 0o750


@linux_only
@pytest.mark.usefixtures("watchable")
def test_one_file_watched_twice_each_sees_only_the_writes_after_its_own_watch(
    project: Path,
) -> None:
    path = project / "w.bin"
    path.write_bytes(os.urandom(MIB))
    fds = [os.open(path, os.O_RDONLY) for _ in range(3)]
    watch = ChangeWatch()
    try:
        first = watch.watch(fds[0])
        with open(path, "ab") as f:
            f.write(b"x")
        second, third = watch.watch(fds[1]), watch.watch(fds[2])
        assert first is not None and second is not None and third is not None
        assert watch.changed(first) and not watch.changed(second)
        watch.forget(first)  # the others still watch the file
        watch.forget(third)
        os.truncate(path, 10)
        assert watch.changed(second)
        watch.forget(second)
    finally:
        watch.close()
        for fd in fds:
            os.close(fd)


@linux_only
@pytest.mark.usefixtures("watchable")
def test_two_checkpoints_of_one_file_copied_at_once_are_both_kept(
    project: Path, stalled_copier: threading.Event
) -> None:
    weights = project / "model.pth"
    data = _write(weights, 0, "open", mib=8)
    with mlvc.track(copy_budget=0, max_pending=QUEUE) as run:
        run.checkpoint(path="model.pth", step=0)
        run.checkpoint(path="model.pth", step=1)  # the same file, its first copy not begun
        stalled_copier.set()
    assert _recorded(run) == {0: data, 1: data}


def _call_returns(call: Callable[[], None], fifos: list[Path], seconds: float = 20.0) -> bool:
    """Run ``call`` in a thread; whether it returned within ``seconds``.

    A call still blocked on opening one of ``fifos`` is released by opening it for writing.
    """
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    returned = not thread.is_alive()
    if not returned:
        for fifo in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(seconds)
    return returned


@linux_only
def test_a_fifo_in_a_checkpoint_directory_is_left_out_without_blocking(
    project: Path, tmp_path: Path
) -> None:
    ckpt_dir = project / "ckpt"
    ckpt_dir.mkdir()
    (ckpt_dir / "model.bin").write_bytes(b"weights")
    fifo = ckpt_dir / "events.pipe"
    os.mkfifo(fifo)
    with mlvc.track(max_pending=QUEUE) as run:
        assert _call_returns(lambda: run.checkpoint(path=ckpt_dir, step=0), [fifo])
    (ckpt,) = mlvc.experiments.get(run.id).checkpoints
    ckpt.checkout(tmp_path / "out")
    assert (tmp_path / "out" / "ckpt" / "model.bin").read_bytes() == b"weights"
    assert not os.path.lexists(tmp_path / "out" / "ckpt" / "events.pipe")


@linux_only
def test_a_fifo_given_as_the_checkpoint_path_is_refused_without_blocking(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fifo = project / "model.pipe"
    os.mkfifo(fifo)
    with caplog.at_level(logging.WARNING, logger="mlvc"), mlvc.track(max_pending=QUEUE) as run:
        assert _call_returns(lambda: run.checkpoint(path=fifo, step=0), [fifo])
    assert mlvc.experiments.get(run.id).checkpoints == []
    assert "not a regular file" in caplog.text


def _recorded_files(run_id: str | None, out: Path) -> set[str]:
    """The files of a run's only checkpoint, checked out into ``out``, by path."""
    (ckpt,) = mlvc.experiments.get(run_id).checkpoints  # type: ignore[arg-type]
    ckpt.checkout(out)
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}


def test_a_checkpoint_of_the_project_directory_copies_neither_repository_nor_cache(
    project: Path, tmp_path: Path
) -> None:
    (project / "model.bin").write_bytes(b"weights")
    with mlvc.track(max_pending=QUEUE) as run:  # the repository holds packs, refs, locks...
        run.checkpoint(path="model.bin", step=0)
    with mlvc.track(max_pending=QUEUE) as run:
        run.checkpoint(path=".", step=0)
    recorded = _recorded_files(run.id, tmp_path / "out")
    assert "proj/model.bin" in recorded
    assert not [p for p in recorded if p.startswith("proj/.mlvc/")], sorted(recorded)


def test_copies_never_go_above_the_project_root(
    project: Path, tmp_path: Path, stalled_copier: threading.Event
) -> None:
    (project / "model.bin").write_bytes(os.urandom(3 * MIB))
    elsewhere = tmp_path / "scratch"
    elsewhere.mkdir()
    (elsewhere / "other.bin").write_bytes(b"weights")
    with mlvc.track(copy_budget=0, max_pending=QUEUE) as run:
        run.checkpoint(path=".", step=0)
        run.checkpoint(path=elsewhere / "other.bin", step=1)
        try:  # the copies are held in flight: where they are is where they would be left
            assert not (tmp_path / ".mlvc-staging").exists()
            assert not (elsewhere / ".mlvc-staging").exists()
            assert list((tmp_path / "cache" / "staging").iterdir())
        finally:
            stalled_copier.set()
    assert not (tmp_path / ".mlvc-staging").exists()
    assert [c.step for c in mlvc.experiments.get(run.id).checkpoints] == [0, 1]


def test_a_checkpoint_of_a_directory_holding_the_cache_leaves_the_cache_out(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs = project / "outputs"
    (outputs / "cache").mkdir(parents=True)
    monkeypatch.setenv("MLVC_CACHE_DIR", str(outputs / "cache"))
    (outputs / "model.bin").write_bytes(b"weights")
    with mlvc.track(max_pending=QUEUE) as run:  # the cache holds the stat cache...
        run.checkpoint(path=outputs / "model.bin", step=0)
    assert any(p.is_file() for p in (outputs / "cache").rglob("*"))
    with mlvc.track(max_pending=QUEUE) as run:
        run.checkpoint(path=outputs, step=0)
    recorded = _recorded_files(run.id, tmp_path / "out")
    assert "outputs/model.bin" in recorded
    assert not [p for p in recorded if p.startswith("outputs/cache/")], sorted(recorded)


def test_a_checkpoint_read_in_place_of_the_project_directory_is_recorded(
    project: Path, tmp_path: Path
) -> None:
    (project / "model.bin").write_bytes(b"weights")
    with mlvc.track(max_pending=QUEUE) as run:  # the repository and cache change as it writes
        run.checkpoint(path="model.bin", step=0)
    with mlvc.track(max_pending=QUEUE, strict=True) as run:
        run.checkpoint(path=".", step=0, copy=False)
        run.checkpoint(path=".", step=1, copy=False)
    assert [c.step for c in mlvc.experiments.get(run.id).checkpoints] == [0, 1]
