"""checkpoint(copy=True) in the background: leased files, the helper process, and fallbacks.

Whatever the loop does to its files after ``checkpoint()`` returns, every recorded checkpoint
holds exactly the bytes the files had when it was called.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import mlvc
from mlvc.tracking import _lease_helper, commits
from mlvc.tracking import leases as lease_module
from mlvc.tracking.leases import Lease, LeaseHelper
from mlvc_core.ingest import TreeBuilder
from mlvc_core.objects import TreeEntry
from tests.porcelain.conftest import subprocess_env

torch = pytest.importorskip("torch")

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="file leases")

MIB = 1 << 20


def _leases_work(directory: Path) -> bool:
    """Whether this process may take a read lease on a new file in ``directory``."""
    if not sys.platform.startswith("linux"):
        return False
    probe = directory / "lease-probe"
    probe.write_bytes(b"probe")
    fd = os.open(probe, os.O_RDONLY)
    try:
        fcntl.fcntl(fd, _lease_helper.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, _lease_helper.F_SETLEASE, fcntl.F_RDLCK)
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.unlink()
    return True


@pytest.fixture
def leases(tmp_path: Path) -> None:
    """Skip the test where this process cannot take file leases (other systems, filesystems)."""
    if not _leases_work(tmp_path):
        pytest.skip("no file leases here")


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[Lease]:
    """Every file handed to the helper process."""
    copies: list[Lease] = []
    original = LeaseHelper.submit

    def submit(self: LeaseHelper, src: str, dst: str) -> Lease | None:
        copy = original(self, src, dst)
        if copy is not None:
            copies.append(copy)
        return copy

    monkeypatch.setattr(LeaseHelper, "submit", submit)
    return copies


def _write(path: Path, step: int, writer: str, mib: int = 3) -> bytes:
    """Overwrite ``path`` in place (same inode, truncated) the way a training loop does."""
    if writer == "torch":
        g = torch.Generator().manual_seed(step)
        torch.save({"w": torch.randn(mib * MIB // 4 + step, generator=g)}, path)
    else:
        with open(path, "wb") as f:
            f.write(os.urandom(mib * MIB + step * 4096))
    return path.read_bytes()


def _recorded(run: mlvc.Run) -> dict[int, bytes]:
    exp = mlvc.experiments.get(run.id)
    out = {}
    for ckpt in exp.checkpoints:
        with ckpt.open("model.pth") as f:
            out[ckpt.step] = f.read()
    return out


def _lease_holders(path: Path) -> set[int]:
    """Process ids holding a lease on ``path`` (from /proc/locks)."""
    ino = os.stat(path).st_ino
    holders = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "LEASE" and fields[5].endswith(f":{ino}"):
            holders.add(int(fields[4]))
    return holders


def _read_into(path: Path, out: list[bytes]) -> None:
    out.append(path.read_bytes())


@pytest.mark.parametrize("writer", ["open", "torch"])
def test_overwriting_right_after_checkpoint_records_each_version(
    project: Path, sent: list[Lease], writer: str
) -> None:
    weights = project / "model.pth"
    expected = {}
    with mlvc.track() as run:
        for step in range(10):
            expected[step] = _write(weights, step, writer)  # overwrites the previous version
            run.checkpoint(path="model.pth", step=step, metrics={"loss": 1 / (step + 1)})
    assert _recorded(run) == expected
    if _leases_work(project):
        assert len(sent) == 10 and {c.status for c in sent} <= {"copied", "released"}
    assert not (project / ".mlvc-staging").exists()


@linux_only
@pytest.mark.usefixtures("leases")
def test_a_file_left_alone_is_read_in_place_and_never_copied(
    project: Path, sent: list[Lease]
) -> None:
    weights = project / "model.pth"
    expected = {}
    with mlvc.track() as run:
        for step in range(3):
            expected[step] = _write(weights, step, "torch")
            run.checkpoint(path="model.pth", step=step)
            run.flush()  # stored before the next write
        assert run._files.helper is not None
        assert run._files.helper.copies_made == 0
    assert _recorded(run) == expected
    assert len(sent) == 3 and {c.status for c in sent} == {"released"}
    assert all(not Path(c.dst).exists() for c in sent)


def _replace(path: Path, step: int) -> bytes:
    """Save elsewhere, then rename over ``path`` (an atomic save: no wait for the lease)."""
    tmp = path.with_name(path.name + ".tmp")
    data = _write(tmp, step, "torch")
    os.replace(tmp, path)
    return data


@linux_only
@pytest.mark.parametrize("how", ["overwrite", "rename"])
@pytest.mark.usefixtures("leases")
def test_a_write_during_the_in_place_read_stores_the_copy(
    project: Path, sent: list[Lease], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    reading, gate = threading.Event(), threading.Event()
    read_from: list[Path] = []

    class GatedBuilder(TreeBuilder):
        def entry(self, path: Path, name: str, rel: str) -> TreeEntry | None:
            read_from.append(Path(path))
            result = super().entry(path, name, rel)
            if len(read_from) == 1:
                reading.set()
                assert gate.wait(30)
            return result

    monkeypatch.setattr(commits, "TreeBuilder", GatedBuilder)
    weights = project / "model.pth"
    with mlvc.track() as run:
        original = _write(weights, 0, "torch")
        run.checkpoint(path="model.pth", step=0)
        assert reading.wait(30)  # read in place, the lease still held
        assert read_from == [weights.resolve()]
        overwritten: list[bytes] = []
        save = _replace if how == "rename" else functools.partial(_write, writer="torch")
        writer = threading.Thread(target=lambda: overwritten.append(save(weights, 1)))
        writer.start()
        writer.join(30)  # the helper copies the file, then lets the writer in
        assert overwritten and overwritten[0] != original
        gate.set()
        run.flush()
        assert run._files.helper is not None and run._files.helper.copies_made == 1
    assert _recorded(run) == {0: original}
    assert [c.status for c in sent] == ["copied"]
    assert read_from[1:] == [Path(sent[0].dst)]  # stored again, from the copy


@linux_only
@pytest.mark.usefixtures("leases")
def test_overwriting_a_file_still_being_copied_waits_for_the_copy(project: Path) -> None:
    weights = project / "model.pth"
    expected = {}
    with mlvc.track() as run:
        for step in range(0, 40, 2):
            expected[step] = _write(weights, step, "torch", mib=32)
            run.checkpoint(path="model.pth", step=step)
            assert run._files.helper is not None
            pid = run._files.helper.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)  # hold the helper with its lease
            if pid not in _lease_holders(weights):
                os.kill(pid, signal.SIGCONT)
                continue  # the copy was already made: try again
            # Resumed from another process: torch.save keeps the GIL while its open() waits.
            resume = subprocess.Popen(["/bin/sh", "-c", f"sleep 0.5; kill -CONT {pid}"])
            expected[step + 1] = _write(weights, step + 1, "torch", mib=32)  # waits for the copy
            run.checkpoint(path="model.pth", step=step + 1)
            resume.wait()
            break
        else:
            pytest.fail("never saw the file leased by the helper")
    assert _recorded(run) == expected


@linux_only
def test_a_file_open_for_writing_cannot_be_leased_and_is_copied_before_returning(
    project: Path, sent: list[Lease]
) -> None:
    weights = project / "model.pth"
    weights.write_bytes(b"")
    expected = {}
    with open(weights, "r+b") as held, mlvc.track() as run:  # a writer keeps it open throughout
        for step in range(5):
            held.seek(0)
            held.truncate()
            held.write(os.urandom(2 * MIB + step))
            held.flush()
            expected[step] = weights.read_bytes()
            run.checkpoint(path="model.pth", step=step)
    assert _recorded(run) == expected
    assert len(sent) == 5 and {c.status for c in sent} == {"refused"}


def test_without_the_helper_checkpoints_are_copied_before_returning(
    project: Path,
    sent: list[Lease],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(sys, "executable", str(project / "no-such-python"))
    weights = project / "model.pth"
    expected = {}
    with caplog.at_level(logging.INFO, logger="mlvc"), mlvc.track() as run:
        for step in range(5):
            expected[step] = _write(weights, step, "open")
            run.checkpoint(path="model.pth", step=step)
    assert _recorded(run) == expected
    assert sent == []
    if sys.platform.startswith("linux"):
        assert "copied before checkpoint() returns" in caplog.text


@linux_only
@pytest.mark.usefixtures("leases")
def test_helper_killed_mid_run(project: Path, caplog: pytest.LogCaptureFixture) -> None:
    weights = project / "model.pth"
    expected = {}
    with caplog.at_level(logging.INFO, logger="mlvc"), mlvc.track() as run:
        for step in range(6):
            expected[step] = os.urandom((32 if step == 2 else 2) * MIB)
            weights.write_bytes(expected[step])
            run.checkpoint(path="model.pth", step=step)
            if step == 2:
                assert run._files.helper is not None
                pid = run._files.helper.pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)  # most likely in the middle of step 2's copy
    recorded = _recorded(run)
    assert {0, 1, 3, 4, 5} <= set(recorded)  # after the kill: copied before returning
    assert all(recorded[s] == expected[s] for s in recorded)
    if 2 not in recorded:
        assert "could not record checkpoint at step 2" in caplog.text
        assert "CopyFailed" in caplog.text and "lost" in caplog.text
    assert "copied before checkpoint() returns: the helper process exited" in caplog.text
    assert not Path(f"/proc/{pid}").exists()


@linux_only
def test_unresponsive_helper_is_given_up(
    project: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    weights = project / "model.pth"
    expected = {}
    with caplog.at_level(logging.INFO, logger="mlvc"), mlvc.track() as run:
        expected[0] = _write(weights, 0, "open")
        run.checkpoint(path="model.pth", step=0)
        run.flush()
        assert run._files.helper is not None
        pid = run._files.helper.pid
        assert pid is not None
        monkeypatch.setattr(lease_module, "REPLY_TIMEOUT", 1.0)
        os.kill(pid, signal.SIGSTOP)
        try:
            for step in (1, 2):
                expected[step] = _write(weights, step, "open")
                run.checkpoint(path="model.pth", step=step)  # no answer: copied here instead
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    assert _recorded(run) == expected
    assert "no answer in 1 s" in caplog.text
    assert not Path(f"/proc/{pid}").exists()


def test_directory_of_small_and_large_files_and_a_symlink(
    project: Path, tmp_path: Path, sent: list[Lease]
) -> None:
    ckpt_dir = project / "ckpt"
    (ckpt_dir / "shard").mkdir(parents=True)
    (ckpt_dir / "empty").mkdir()
    os.symlink("model.bin", ckpt_dir / "latest.bin")
    names = ["meta.json", "model.bin", "shard/0.bin", "shard/1.bin", "shard/tiny.bin"]
    sizes = [20, 3 * MIB, 2 * MIB, MIB, 100]
    versions = []
    with mlvc.track() as run:
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
    if _leases_work(project):
        assert len(sent) == 9 and {c.status for c in sent} == {"copied"}


@linux_only
def test_close_leaves_no_helper_and_no_staging(project: Path, tmp_path: Path) -> None:
    weights = project / "model.pth"
    with mlvc.track() as run:
        for step in range(3):
            _write(weights, step, "open")
            run.checkpoint(path="model.pth", step=step)
        assert run._files.helper is not None
        pid = run._files.helper.pid
        assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # exited and reaped: not even a zombie
    assert run._files.helper.pid is None
    assert not (project / ".mlvc-staging").exists()
    assert not list((tmp_path / "cache").glob("staging/*"))
    assert len(_recorded(run)) == 3


@linux_only
@pytest.mark.usefixtures("leases")
def test_a_leased_file_stays_readable(project: Path) -> None:
    ckpt_dir = project / "ckpt"
    ckpt_dir.mkdir()
    files = [ckpt_dir / f"{i}.bin" for i in range(8)]
    with mlvc.track() as run:
        for step in range(20):
            written = {f: os.urandom(4 * MIB) for f in files}
            for f, data in written.items():
                f.write_bytes(data)
            run.checkpoint(path=ckpt_dir, step=step)
            assert run._files.helper is not None
            pid = run._files.helper.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)  # hold the helper with its leases
            try:
                leased = [f for f in files if pid in _lease_holders(f)]
                if not leased:
                    continue  # every copy was already made: try again
                target, got = leased[-1], []
                reader = threading.Thread(target=_read_into, args=(target, got))
                reader.start()
                reader.join(10)
                assert not reader.is_alive(), "reading a leased file must not wait"
                assert got == [written[target]]
                break
            finally:
                os.kill(pid, signal.SIGCONT)
        else:
            pytest.fail("never saw a file leased by the helper")


# ---------------------------------------------------------------------------- in a child process

CHILD = """
import sys, time
import mlvc

with mlvc.track(heartbeat_interval=0.2) as run:
    for step in range(int(sys.argv[1])):
        with open("model.pth", "wb") as f:
            f.write(step.to_bytes(4, "little") * (1 << 20))
        run.checkpoint(path="model.pth", step=step)
        print(step, run._files.helper.pid if run._files.helper else None, flush=True)
    time.sleep(120)
"""


def _child(tmp_path: Path, steps: int) -> tuple[subprocess.Popen[str], str]:
    repo_url = str(tmp_path / "repo")
    work = tmp_path / "job"
    work.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(steps)],
        cwd=work,
        env=subprocess_env(tmp_path, MLVC_REPOSITORY=repo_url),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as under a job manager
    )
    return proc, repo_url


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@linux_only
def test_sigterm_to_the_job_flushes_copies_in_flight(tmp_path: Path) -> None:
    proc, repo_url = _child(tmp_path, 5)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().split() for _ in range(5)]
        helper = int(lines[-1][1]) if lines[-1][1] != "None" else None
        os.killpg(proc.pid, signal.SIGTERM)  # the whole job, helper included
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
    assert helper is None or _gone(helper)


@linux_only
def test_helper_exits_when_the_training_process_is_killed(tmp_path: Path) -> None:
    proc, _ = _child(tmp_path, 1)
    try:
        assert proc.stdout is not None
        _step, helper = proc.stdout.readline().split()
        if helper == "None":
            pytest.skip("no helper process here")
        proc.kill()
        proc.wait(60)
        deadline = time.monotonic() + 30
        while not _gone(int(helper)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(int(helper))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


# ---------------------------------------------------------------------------- the helper itself


def _request(src: Path, dst: Path) -> bytes:
    return b"\0".join((b"7", bytes(src), bytes(dst)))


@linux_only
def test_helper_refuses_a_file_open_for_writing(tmp_path: Path) -> None:
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(MIB))
    with open(src, "r+b"):
        copy, reply = _lease_helper.lease(_request(src, tmp_path / "copy"))
    assert copy is None
    assert reply.startswith(b"7\0refused\0EAGAIN") or not _leases_work(tmp_path)


@linux_only
@pytest.mark.usefixtures("leases")
def test_helper_reports_a_file_changed_after_its_lease_was_lost(tmp_path: Path) -> None:
    src, dst = tmp_path / "w.bin", tmp_path / "copy"
    src.write_bytes(os.urandom(3 * MIB))
    copy, reply = _lease_helper.lease(_request(src, dst))
    assert copy is not None and reply.startswith(b"7\0leased\0")
    fcntl.fcntl(copy.src, _lease_helper.F_SETLEASE, fcntl.F_UNLCK)  # as after the lease-break time
    src.write_bytes(os.urandom(3 * MIB))  # a writer was let in
    while not copy.step():
        pass
    assert copy.finish(None) == b"7\0changed\0"


@linux_only
@pytest.mark.usefixtures("leases")
def test_helper_copies_the_old_file_when_a_rename_replaces_it(tmp_path: Path) -> None:
    src, dst = tmp_path / "w.bin", tmp_path / "copy"
    old = os.urandom(3 * MIB)
    src.write_bytes(old)
    copy, reply = _lease_helper.lease(_request(src, dst))
    assert copy is not None and reply.startswith(b"7\0leased\0")
    new = tmp_path / "w.bin.tmp"
    new.write_bytes(os.urandom(2 * MIB))
    os.replace(new, src)  # an atomic save does not wait: the copy reads the old file
    while not copy.step():
        pass
    assert copy.finish(None) == b"7\0copied\0"
    assert dst.read_bytes() == old
