"""``mlvc commit`` / ``mlvc checkout`` on what users really have: odd names, absolute links,
conflicts of every kind, files rewritten while they are committed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlvc_core import ingest
from tests.cli.conftest import Cli

# A log of 16 MiB (reading it takes a while) that grows every millisecond or so: every read
# of it overlaps a write.
APPENDER = r"""
import sys, time
path, started = sys.argv[1], sys.argv[2]
with open(path, "ab", buffering=0) as f:
    f.write(b"step loss=0.1\n" * (16 << 16))
    open(started, "w").close()
    while True:
        f.write(b"step loss=0.1\n" * 64)
        time.sleep(0.001)
"""


def _appending(path: Path, started: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", APPENDER, str(path), str(started)])
    deadline = time.monotonic() + 20
    while not started.exists():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return proc


def test_odd_names_and_an_absolute_link_commit_and_check_out(cli: Cli, project: Path) -> None:
    data = project / "data"
    data.mkdir()
    (data / "a\\b.txt").write_text("backslash")
    with open(os.path.join(os.fsencode(data), b"caf\xe9.csv"), "wb") as f:
        f.write(b"latin-1 name")
    (data / "imagenet").symlink_to("/datasets/imagenet")
    (data / "model.bin").write_bytes(b"weights")
    cid = cli("commit", "data", "-m", "odd").stdout.split()[0]
    assert len(cli.json("show", cid)["files"]) == 4  # all recorded, as they are
    out = project / "out"
    r = cli("checkout", cid, "-o", out)  # one link cannot be restored: the rest is
    assert "warning: skipped data/imagenet: it points to an absolute path" in r.stderr
    out = out / "data"  # recorded as typed
    assert (out / "a\\b.txt").read_text() == "backslash"
    assert os.path.exists(os.path.join(os.fsencode(out), b"caf\xe9.csv"))
    assert (out / "model.bin").read_bytes() == b"weights"
    assert not os.path.lexists(out / "imagenet")
    shown = cli.json("checkout", cid, "-o", project / "out2")
    assert shown["skipped"] == [
        {"path": "data/imagenet", "reason": "it points to an absolute path (/datasets/imagenet)"}
    ]


def test_conflicts_are_listed_with_exit_1_and_force_replaces_them(cli: Cli, project: Path) -> None:
    src = project / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "m.py").write_text("x = 1\n")
    (src / "weights.bin").write_bytes(b"w" * 1000)
    (src / "same.txt").write_text("same")
    cid = cli("commit", "src", "-m", "v1").stdout.split()[0]
    out = project / "out"
    (out / "src").mkdir(parents=True)  # the commit recorded src/... as typed
    (out / "src" / "pkg").write_text("a file where the snapshot has a directory")
    (out / "src" / "weights.bin").mkdir()  # a directory where it has a file
    (out / "src" / "same.txt").write_text("same")  # identical: no conflict
    r = cli("checkout", cid, "-o", out, code=1)
    assert "src/pkg (a file where the snapshot has a directory)" in r.stderr
    assert "src/weights.bin (a directory where the snapshot has a file)" in r.stderr
    assert "same.txt" not in r.stderr
    assert (out / "src" / "pkg").is_file() and (out / "src" / "weights.bin").is_dir()
    cli("checkout", cid, "-o", out, "-f")
    assert (out / "src" / "pkg" / "m.py").read_text() == "x = 1\n"
    assert (out / "src" / "weights.bin").read_bytes() == b"w" * 1000


def test_commit_of_a_file_that_keeps_changing_fails_clearly(
    cli: Cli, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "PATIENCE_S", 1.0)
    (project / "logs").mkdir()
    log = project / "logs" / "train.log"
    appender = _appending(log, project / "started")
    try:
        r = cli("commit", "logs", "-m", "live log", code=1)
    finally:
        appender.kill()
        appender.wait()
    assert "train.log changed while it was being read" in r.stderr
    cli("log", code=4)  # nothing was committed to the branch


def test_a_code_snapshot_leaves_out_a_log_being_written(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import mlvc

    monkeypatch.chdir(project)
    (project / "train.py").write_text("print('training')\n")
    appender = _appending(project / "train.log", tmp_path / "started")
    try:
        with caplog.at_level(logging.WARNING, logger="mlvc"):
            with mlvc.track(repository=str(tmp_path / "repo")) as run:
                run.checkpoint(step=0, metrics={"loss": 1.0})
    finally:
        appender.kill()
        appender.wait()
    assert "kept changing" in caplog.text and "train.log" in caplog.text
    exp = mlvc.experiments.get(run.id or "", repository=str(tmp_path / "repo"))
    assert sorted(p for p, _ in exp.latest().files(all=True)) == ["train.py"]
