"""A file rewritten while it is committed is never recorded torn (real writer processes)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlvc_core import ingest
from mlvc_core.errors import FileChanged
from mlvc_core.history import commit_paths
from mlvc_core.repository import Repository
from mlvc_core.restore import checkout

BLOCK = 1 << 16
BLOCKS = 256  # a 16 MiB file

# Rewrites the file in place, from its end towards its start, block by block, each block
# tagged with the pass number: a reader going front to back meets old blocks, then new ones.
WRITER = r"""
import os, sys, time
path, passes, started = sys.argv[1], int(sys.argv[2]), sys.argv[3]
blk, n = int(sys.argv[4]), int(sys.argv[5])
open(started, "w").close()
with open(path, "r+b", buffering=0) as f:
    v = 1
    while passes == 0 or v <= passes:
        for i in range(n - 1, -1, -1):
            f.seek(i * blk)
            f.write(bytes([65 + v % 26]) * 8 + os.urandom(blk - 8))
            time.sleep(0.0005)
        v += 1
"""


def _write_initial(path: Path) -> None:
    with open(path, "wb") as f:
        for _ in range(BLOCKS):
            f.write(b"A" * 8 + bytes(BLOCK - 8))


def _start_writer(tmp_path: Path, path: Path, passes: int) -> subprocess.Popen[bytes]:
    started = tmp_path / "started"
    args = [str(path), str(passes), str(started), str(BLOCK), str(BLOCKS)]
    proc = subprocess.Popen([sys.executable, "-c", WRITER, *args])
    deadline = time.monotonic() + 20
    while not started.exists():
        assert time.monotonic() < deadline, "writer did not start"
        time.sleep(0.005)
    return proc


def _versions(data: bytes) -> set[bytes]:
    return {data[i : i + 8] for i in range(0, len(data), BLOCK)}


def test_a_file_that_keeps_changing_is_refused_not_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "PATIENCE_S", 2.0)  # waits this long for it to settle
    data = tmp_path / "data"
    data.mkdir()
    big = data / "big.bin"
    _write_initial(big)
    repo = Repository.init(tmp_path / "r")
    writer = _start_writer(tmp_path, big, passes=0)  # never stops on its own
    try:
        with pytest.raises(FileChanged, match="big.bin changed while it was being read"):
            commit_paths(repo, data, "while being written", branch="main")
    finally:
        writer.kill()
        writer.wait()
    assert repo.head("main") is None  # nothing recorded
    cid = commit_paths(repo, data, "once it is stable", branch="main")  # now it goes through
    out = tmp_path / "out"
    checkout(repo, cid, out)
    assert (out / "big.bin").read_bytes() == big.read_bytes()


def test_a_file_rewritten_during_a_commit_is_recorded_whole(tmp_path: Path) -> None:
    # The commit waits for the rewrite to end (it stops changing), then reads it again.
    data = tmp_path / "data"
    data.mkdir()
    big = data / "big.bin"
    _write_initial(big)
    repo = Repository.init(tmp_path / "r")
    writer = _start_writer(tmp_path, big, passes=1)  # one pass over it, as an export would
    try:
        cid = commit_paths(repo, data, "while being written")
    finally:
        writer.wait()
    out = tmp_path / "out"
    checkout(repo, cid, out)
    restored = (out / "big.bin").read_bytes()
    assert len(_versions(restored)) == 1  # one version, not a mix
    assert restored == big.read_bytes()  # the rewrite had ended: its result, whole


def test_files_removed_while_a_directory_is_committed_are_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    (src / "tmpdir").mkdir(parents=True)
    (src / "a.dir").mkdir()
    (src / "a.dir" / "a.txt").write_text("a")
    for name in ("swap.tmp", "z.txt"):
        (src / name).write_text(name)
    (src / "tmpdir" / "t").write_text("t")
    real_entry = ingest.TreeBuilder.entry

    def entry(self: ingest.TreeBuilder, path: Path, name: str, rel: str) -> object:
        if name == "a.dir":  # once the directory is listed, another process cleans up
            (src / "swap.tmp").unlink(missing_ok=True)
            for p in (src / "tmpdir").iterdir():
                p.unlink()
            (src / "tmpdir").rmdir()
        return real_entry(self, path, name, rel)

    monkeypatch.setattr(ingest.TreeBuilder, "entry", entry)
    repo = Repository.init(tmp_path / "r")
    cid = commit_paths(repo, src, "x")
    out = tmp_path / "out"
    checkout(repo, cid, out)
    assert sorted(p.name for p in out.iterdir()) == ["a.dir", "z.txt"]


def test_a_commit_counts_only_the_bytes_of_the_read_it_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from mlvc_core.history import record_paths
    from mlvc_core.manifests import FileIngester

    data = tmp_path / "data"
    data.mkdir()
    big = data / "big.bin"
    size = 4 << 20
    big.write_bytes(os.urandom(size))
    real_ingest = FileIngester.ingest
    reads = []

    def ingest_then_rewrite(self: FileIngester, *args: object, **kwargs: object) -> object:
        manifest = real_ingest(self, *args, **kwargs)  # type: ignore[arg-type]
        reads.append(manifest)
        if len(reads) == 1:  # the first read is overtaken by a rewrite with other bytes
            big.write_bytes(os.urandom(size))
        return manifest

    monkeypatch.setattr(FileIngester, "ingest", ingest_then_rewrite)
    repo = Repository.init(tmp_path / "r")
    done = record_paths(repo, data, "rewritten while read")
    assert len(reads) == 2
    # What the commit recorded: the file once (plus its few metadata objects), not the
    # abandoned first read as well.
    assert size <= done.new_bytes < size + (64 << 10), done.new_bytes
    assert done.stored_bytes < size + (64 << 10), done.stored_bytes
    out = tmp_path / "out"
    checkout(repo, done.commit, out)
    assert (out / "big.bin").read_bytes() == big.read_bytes()
