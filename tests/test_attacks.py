"""Attacks on a repository from outside the format: files of any size or type where mlvc
expects its small metadata files, and where it expects packs.

A repository is untrusted (a tarball, a shared bucket): a ref, config, lock or index file may be
gigabytes long (a sparse file costs nothing to plant), a FIFO, or a link to ``/dev/zero``.
Every command answers within the format's own limits and never hangs.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import Cli

ROOT = Path(__file__).resolve().parents[1]
INTERNAL = 70
GIB = 1 << 30


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project whose repository holds one commit (two files) tagged ``v1``."""
    monkeypatch.setenv("MLVC_CACHE_DIR", str(tmp_path / "cache"))
    d = tmp_path / "project"
    (d / "data").mkdir(parents=True)
    (d / "data" / "a.txt").write_text("hello\n")
    (d / "data" / "b.bin").write_bytes(os.urandom(300_000))
    cli = Cli(d)
    cli("init")
    cli("commit", "data", "-m", "first")
    cli("tag", "v1", "main")
    yield d
    from mlvc.repo import forget_shared

    forget_shared()


def _limit_memory() -> None:
    # A regression must fail the test, not take the machine's memory with it.
    resource.setrlimit(resource.RLIMIT_AS, (3 * GIB, 3 * GIB))


def _run(project: Path, *args: str, timeout: float = 60) -> tuple[int, str, int]:
    """Run ``mlvc ARGS`` in a fresh process with bounded memory: (exit code, output, peak MiB).

    A command still running after ``timeout`` seconds counts as a hang (exit code -1).
    """
    code = (
        "import sys\n"
        "from mlvc.cli import main\n"
        f"sys.argv = ['mlvc', *{list(args)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    rc = e.code or 0\nelse:\n    rc = 0\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "sys.stderr.write('RSS %s\\n' % hwm.split()[1])\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        p = subprocess.run(
            [sys.executable, "-c", code],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=_limit_memory,
        )
    except subprocess.TimeoutExpired:
        return -1, f"mlvc {' '.join(args)} still ran after {timeout} s", 0
    out = p.stdout + p.stderr
    rss = int(out.rsplit("RSS ", 1)[1].split()[0]) // 1024 if "RSS " in out else 0
    return p.returncode, out, rss


def _one(directory: Path) -> Path:
    return next(p for p in sorted(directory.rglob("*")) if p.is_file())


def _grow(path: Path, size: int) -> None:
    """Make ``path`` ``size`` bytes long (sparse: it costs no disk)."""
    with open(path, "r+b") as f:
        f.truncate(size)


# Each case: how to damage the repository, and commands that must answer within bounds.
OVERSIZED = {
    "ref": lambda repo: _grow(repo / "refs" / "tags" / "v1", 3 * GIB),
    "config": lambda repo: _grow(repo / "config", 3 * GIB),
    "index file": lambda repo: _grow(_one(repo / "index"), 3 * GIB),
    "pack": lambda repo: _grow(_one(repo / "packs"), 3 * GIB),
}


@pytest.mark.parametrize("what", sorted(OVERSIZED))
def test_a_file_of_gigabytes_in_the_repository_costs_no_memory(project: Path, what: str) -> None:
    OVERSIZED[what](project / ".mlvc")
    for args in (["fsck"], ["log", "main"], ["gc", "--yes"], ["tag"]):
        rc, out, rss = _run(project, *args)
        assert rc not in (INTERNAL, -1), out
        assert 0 < rss < 300, f"mlvc {args[0]} used {rss} MiB with a {what} of 3 GiB: {out}"
    if what == "pack":  # the padding is not data: the commit still reads back whole
        rc, out, _ = _run(project, "fsck")
        assert rc == 0, out
    else:
        rc, out, _ = _run(project, "fsck")
        assert rc == 3 and "more than the format allows" in out, out


def _fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def _dev_zero(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.symlink_to("/dev/zero")


NOT_FILES = {
    "fifo ref": lambda repo: _fifo(repo / "refs" / "tags" / "ff"),
    "fifo tag v1": lambda repo: _fifo(repo / "refs" / "tags" / "v1"),
    "ref linked to /dev/zero": lambda repo: _dev_zero(repo / "refs" / "tags" / "zz"),
    "fifo config": lambda repo: _fifo(repo / "config"),
    "fifo pack": lambda repo: _fifo(_one(repo / "packs")),
    "index linked to /dev/zero": lambda repo: _dev_zero(_one(repo / "index")),
    "fifo gc lock": lambda repo: _fifo(repo / "locks" / "exclusive"),
}


@pytest.mark.parametrize("what", sorted(NOT_FILES))
def test_fifos_and_devices_in_the_repository_never_hang(project: Path, what: str) -> None:
    (project / ".mlvc" / "locks").mkdir(exist_ok=True)
    NOT_FILES[what](project / ".mlvc")
    for args in (["fsck"], ["log", "main"], ["gc", "--yes"], ["tag", "v2", "main"]):
        rc, out, rss = _run(project, *args, timeout=30)
        assert rc not in (INTERNAL, -1), out
        assert rss < 300, f"mlvc {args[0]} used {rss} MiB: {out}"
    rc, out, _ = _run(project, "fsck", timeout=30)
    assert rc == 3 or what == "fifo gc lock", out


# ------------------------------------------------------------- a snapshot of the project itself


def test_committing_the_project_directory_leaves_out_its_repository_and_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "project"
    d.mkdir()
    monkeypatch.setenv("MLVC_CACHE_DIR", str(d / "cache"))  # a cache inside the project, too
    (d / "train.py").write_text("print('hi')\n")
    cli = Cli(d)
    cli("init")
    cli("commit", "train.py", "-m", "first")  # fills the cache
    cid = cli("commit", ".", "-m", "everything").stdout.split()[0]
    paths = sorted(f["path"] for f in cli.json("show", cid)["files"])
    assert paths == ["mlvc.toml", "train.py"]
    for inside in (".mlvc", ".mlvc/refs"):
        assert "never committed" in cli("commit", inside, "-m", "x", code=2).stderr
    parent = tmp_path / "elsewhere"
    parent.mkdir()
    out = Cli(parent)("-R", d / ".mlvc", "commit", d, "-m", "from outside").stdout.split()[0]
    assert not [f for f in cli.json("show", out)["files"] if ".mlvc" in f["path"]]
    cli("fsck")
    from mlvc.repo import forget_shared

    forget_shared()


# ------------------------------------------------------------------------ metrics segments


def test_a_metrics_segment_that_inflates_a_thousandfold_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zlib

    d = tmp_path / "project"
    (d / "code").mkdir(parents=True)
    (d / "code" / "train.py").write_text("pass\n")
    monkeypatch.setenv("MLVC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(d)
    Cli(d)("init")
    import mlvc
    from mlvc.series import segment_key

    with mlvc.track(path="code", name="bombed") as run:
        run.log({"loss": 1.0}, step=0)
        exp_id = run.id
    from mlvc.repo import forget_shared

    forget_shared()
    # 1 GiB of JSON whitespace inside a valid segment: about 1 MiB stored.
    bomb = zlib.compressobj(9)
    parts = [bomb.compress(b'{"v":1,"points":[')]
    parts += [bomb.compress(b" " * (64 << 20)) for _ in range(16)]
    parts += [bomb.compress(b"]}"), bomb.flush()]
    key = segment_key(exp_id, "zz", 999999)
    path = d / ".mlvc" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(parts))
    code = (
        "import mlvc, sys\n"
        f"e = mlvc.experiments.get({exp_id!r})\n"
        "print(e.metrics('loss'), e.metric_names())\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print('RSS', int(hwm.split()[1]) // 1024)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code],
        cwd=d,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limit_memory,
    )
    assert p.returncode == 0, p.stderr
    assert "[(0, 1.0)] ['loss']" in p.stdout
    # Inflating stops at 256x the segment's 1 MiB (it would reach 1 GiB, then its JSON more).
    assert int(p.stdout.rsplit("RSS ", 1)[1]) < 800, p.stdout
    assert "segment" in p.stderr and "unreadable" in p.stderr


# ------------------------------------------------------------ damage is not an unknown id


def test_data_a_ref_reaches_but_the_repository_lacks_is_damage_not_an_unknown_id(
    project: Path,
) -> None:
    cli = Cli(project)
    for f in (project / ".mlvc" / "index").iterdir():
        f.write_bytes(b"MLVCIDX2 damaged")  # every pack is unreadable now
    shutil.rmtree(project.parent / "cache")  # and no local copy of an index file is left
    from mlvc.repo import forget_shared

    forget_shared()
    for args in (["log"], ["show", "main"], ["checkout", "main", "-o", "out"]):
        r = cli(*args, code=3)
        assert "is referenced but not stored" in r.stderr and "mlvc fsck" in r.stderr
    # An id the user typed that names nothing is still an unknown id.
    r = cli("show", "ab" * 32, code=4)
    assert "unknown" in r.stderr


# ------------------------------------------------------------------- local caches are hints


def test_a_cache_directory_that_cannot_be_made_does_not_stop_a_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "project"
    (d / "data").mkdir(parents=True)
    (d / "data" / "a.bin").write_bytes(os.urandom(100_000))
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache would go")
    monkeypatch.setenv("MLVC_CACHE_DIR", str(blocker))
    cli = Cli(d)
    cli("init")
    cid = cli("commit", "data", "-m", "no cache").stdout.split()[0]  # every file read
    cli("checkout", cid, "-o", "out")
    assert (d / "out" / "data" / "a.bin").read_bytes() == (d / "data" / "a.bin").read_bytes()
    from mlvc.repo import forget_shared

    forget_shared()


@pytest.mark.parametrize("kind", ["refs inside it", "a file in its place"])
def test_checkout_into_the_project_never_writes_the_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    d = tmp_path / "project"
    d.mkdir()
    monkeypatch.setenv("MLVC_CACHE_DIR", str(tmp_path / "cache"))
    (d / "a.txt").write_text("mine\n")
    cli = Cli(d)
    cli("init")
    first = cli("commit", "a.txt", "-m", "first").stdout.split()[0]
    # A snapshot holding a `.mlvc` of its own (an older `mlvc commit .`, or a hostile one).
    src = tmp_path / "src"
    if kind == "refs inside it":
        (src / ".mlvc" / "refs" / "heads").mkdir(parents=True)
        (src / ".mlvc" / "refs" / "heads" / "main").write_text('{"target": "00"}')
        (src / ".mlvc" / "config").write_text("{}")
    else:
        src.mkdir()
        (src / ".mlvc").write_text("not a repository")
    (src / "x.txt").write_text("x\n")
    evil = cli("commit", src, "-m", "evil").stdout.split()[0]
    r = cli("checkout", evil, "-o", ".", "-f")
    assert "skipped .mlvc" in r.stderr
    assert (d / "x.txt").read_text() == "x\n"
    log = cli.json("log")["entries"]
    assert [e["id"][:12] for e in log] == [evil[:12], first[:12]]
    cli("fsck")
    from mlvc.repo import forget_shared

    forget_shared()


def test_a_checkout_killed_mid_file_leaves_no_temporary_file_after_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal
    import time

    d = tmp_path / "project"
    (d / "data").mkdir(parents=True)
    monkeypatch.setenv("MLVC_CACHE_DIR", str(tmp_path / "cache"))
    big = os.urandom(96 << 20)
    (d / "data" / "big.bin").write_bytes(big)
    cli = Cli(d)
    cli("init")
    cid = cli("commit", "data", "-m", "big").stdout.split()[0]
    out = d / "out" / "data"
    p = subprocess.Popen(
        [sys.executable, "-m", "mlvc", "checkout", cid, "-o", "out"],
        cwd=d,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def temporary() -> list[Path]:  # a file, or a new directory built aside, in the project
        return [q for q in d.rglob(".mlvc-*.tmp") if not q.is_relative_to(d / ".mlvc")]

    def mid_file() -> bool:  # a file begun under a temporary name or in such a directory
        return any(f.is_file() for t in temporary() for f in [t, *t.rglob("*")])

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and p.poll() is None:
        if mid_file():
            break
        time.sleep(0.002)
    p.send_signal(signal.SIGKILL)
    p.wait()
    if not mid_file():
        pytest.skip("the checkout finished before it could be killed mid-file")
    cli("checkout", cid, "-o", "out")
    assert temporary() == []
    assert sorted(os.listdir(out)) == ["big.bin"]
    assert (out / "big.bin").read_bytes() == big
    from mlvc.repo import forget_shared

    forget_shared()
