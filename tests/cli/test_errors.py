"""Every row of the error table: message, exit code, and no traceback (unless debugging).

Each case provokes the real error through the command line, except the internal error (a
bug cannot be provoked on purpose, so one is injected) and the ref conflict, where a second
writer moving the branch is simulated by running it inside the first writer's commit.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from mlvc.repo import open_repo
from mlvc_core.ids import MIN_PREFIX, to_hex
from mlvc_core.objects import Commit, Tree, object_id
from tests.cli.conftest import Cli, Write


def _commit(cli: Cli, write: Write, name: str = "w.bin", size: int = 100_000) -> str:
    write(f"d/{name}", os.urandom(size))
    return str(cli("commit", "d", "-m", name).stdout.strip())


def test_unknown_id(cli: Cli, write: Write) -> None:
    _commit(cli, write)
    for args in (
        ["show", "deadbeef99"],
        ["checkout", "deadbeef99", "-o", "x"],
        ["log", "nosuchthing"],
    ):
        r = cli(*args, code=4)
        assert "unknown" in r.stderr and r.stderr.startswith("error: "), r.stderr
    assert "deadbeef99" in cli("diff", "main", "deadbeef99", code=4).stderr


def test_too_short_prefix_is_a_usage_error(cli: Cli, write: Write) -> None:
    _commit(cli, write)
    r = cli("tag", "x", "abc", code=4)
    assert "abc" in r.stderr


def _colliding_messages(tree: bytes) -> tuple[Commit, Commit]:
    """Two commits whose ids share their first 7 hex digits (a birthday search over messages).

    28 bits collide after about 2^14 tries, so this takes well under a second; the search is
    deterministic (fixed author and time), so every run finds the same pair.
    """
    seen: dict[str, Commit] = {}
    i = 0
    while True:
        c = Commit(tree=tree, parents=(), author="test", time=0.0, message=f"collide {i}")  # type: ignore[arg-type]
        prefix = to_hex(object_id(c))[:MIN_PREFIX]
        if prefix in seen:
            return seen[prefix], c
        seen[prefix] = c
        i += 1


def test_ambiguous_prefix_lists_the_candidates(cli: Cli, project: Path) -> None:
    from mlvc.repo import open_repo
    from mlvc_core.session import WriteSession

    with open_repo(str(project / ".mlvc")) as repo:
        with WriteSession(repo) as s:
            tree = s.add_object(Tree(()))
            a, b = _colliding_messages(tree)
            ids = sorted(to_hex(s.add_object(c)) for c in (a, b))
    prefix = ids[0][:MIN_PREFIX]
    assert ids[1].startswith(prefix)
    r = cli("show", prefix, code=4)
    assert f"ambiguous id '{prefix}'" in r.stderr
    for full in ids:
        assert full[:12] in r.stderr
    assert "more hex digits" in r.stderr
    # One more digit is enough to tell them apart (or they differ later: use the full id).
    assert cli.json("show", ids[0])["commit"]["message"].startswith("collide")


def test_not_a_repository(project: Path, tmp_path: Path) -> None:
    cli = Cli(project)  # no `mlvc init`
    r = cli("log", code=10)
    assert "no mlvc repository" in r.stderr and "mlvc init" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("-R", empty, "ls", code=10)
    assert str(empty) in r.stderr


def test_a_location_no_filesystem_opens_is_a_usage_error(project: Path) -> None:
    cli = Cli(project)
    for args in (("-R", "nosuchproto://bucket/repo", "ls"), ("init", "nosuchproto://b/r")):
        r = cli(*args, code=2)
        assert r.stderr.startswith("error: cannot open nosuchproto://"), r.stderr
        assert "Protocol not known: nosuchproto" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert not (project / "mlvc.toml").exists()


def test_ref_conflict_when_the_branch_moves_during_a_commit(
    cli: Cli, write: Write, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlvc_core.ingest as ingest
    from mlvc.repo import open_repo
    from mlvc_core.history import commit_paths

    _commit(cli, write, "base.bin")
    real = ingest.ingest_paths
    other = project / "other"
    other.mkdir()
    (other / "x.txt").write_text("another writer")

    raced = []

    def ingest_while_another_writer_commits(*args, **kwargs):
        tree = real(*args, **kwargs)
        if not raced:  # the other writer's own commit goes through this function too
            raced.append(True)
            with open_repo(str(project / ".mlvc")) as repo2:
                commit_paths(repo2, [other], "concurrent", branch="main")
        return tree

    monkeypatch.setattr(ingest, "ingest_paths", ingest_while_another_writer_commits)
    write("d/new.bin", b"mine")
    r = cli("commit", "d", "-m", "mine", code=12)
    assert "ref 'heads/main' was changed concurrently" in r.stderr
    assert "hint: another writer moved it first" in r.stderr and "run the command again" in r.stderr
    monkeypatch.undo()
    assert cli.json("log")["entries"][0]["message"] == "concurrent"


def test_integrity_error_on_checkout_and_fsck(cli: Cli, write: Write, project: Path) -> None:
    cid = _commit(cli, write, size=300_000)
    packs = sorted(
        (project / ".mlvc" / "packs").rglob("*"),
        key=lambda p: p.stat().st_size if p.is_file() else 0,
    )
    data_pack = packs[-1]
    blob = bytearray(data_pack.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    data_pack.write_bytes(bytes(blob))

    r = cli("checkout", cid, "-o", project / "out", code=3)
    assert "integrity error" in r.stderr and "mlvc fsck" in r.stderr
    r = cli("fsck", code=3)
    assert "corrupt" in r.stdout and "problem" in r.stderr
    report = json.loads(cli("fsck", "--json", code=3).stdout)
    assert report["ok"] is False
    assert any(p["kind"] == "corrupt" for p in report["problems"])


def test_unsupported_format_version(cli: Cli, project: Path) -> None:
    config = project / ".mlvc" / "config"
    doc = json.loads(config.read_text())
    doc["version"] = 99
    config.write_text(json.dumps(doc))
    r = cli("log", code=3)
    assert "version 99 is not supported" in r.stderr


def test_gc_refuses_while_a_writer_is_active(cli: Cli, write: Write, project: Path) -> None:
    _commit(cli, write)
    writer = project / ".mlvc" / "locks" / "shared-0123456789abcdef"
    writer.parent.mkdir(parents=True, exist_ok=True)
    # Another host's writer, refreshed just now: alive as far as anyone here can tell.
    writer.write_text(
        json.dumps({"host": "trainer-7", "pid": 4242, "time": time.time(), "op": "write"})
    )
    r = cli("gc", "--yes", code=11)
    assert "locked" in r.stderr and "trainer-7" in r.stderr
    assert cli.json("gc")["dry_run"] is True  # a dry run needs no lock


def test_gc_says_why_it_keeps_young_packs_of_a_writer_that_may_be_alive(
    cli: Cli, write: Write, project: Path
) -> None:
    _commit(cli, write)
    with open_repo(str(project / ".mlvc")) as repo:
        repo.refs.delete("heads/main")
    writer = project / ".mlvc" / "locks" / "shared-0123456789abcdef"
    # Another host's writer that stopped refreshing its lock ten minutes ago.
    writer.write_text(
        json.dumps({"host": "trainer-7", "pid": 4242, "time": time.time() - 600, "op": "write"})
    )
    r = cli("gc", "--yes")
    assert "freed 0 B" in r.stdout
    assert "younger than the grace period (1h): a writer may still publish them" in r.stderr
    assert "trainer-7" in r.stderr
    assert not writer.exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_network_failure_is_a_storage_error_with_a_hint(project: Path) -> None:
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_closed_port()}",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_MAX_ATTEMPTS": "1",
    }
    r = Cli(project)("-R", "s3://bucket/repo", "ls", env=env, code=5)
    assert r.stderr.startswith("error: storage error")
    assert "AWS_ENDPOINT_URL" in r.stderr  # the hint


def test_internal_error_is_one_line_unless_debugging(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlvc.commands

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(mlvc.commands, "stats", broken)
    r = cli("stats", code=70)
    assert "internal error: RuntimeError: boom" in r.stderr
    assert "MLVC_DEBUG=1" in r.stderr
    r = cli("stats", env={"MLVC_DEBUG": "1"}, code=70)
    assert "Traceback" in r.stderr and "boom" in r.stderr
    r = cli("--debug", "stats", env={"MLVC_DEBUG": "1"}, code=70)
    assert "Traceback" in r.stderr


def test_click_usage_errors_keep_exit_code_2(cli: Cli) -> None:
    r = cli("commit", "x", code=2)  # -m missing
    assert "message" in r.output.lower()
    assert cli("nosuchcommand", code=2).exit_code == 2


def test_checkout_into_a_path_under_a_file_names_that_file(
    cli: Cli, write: Write, project: Path
) -> None:
    c = _commit(cli, write)
    (project / "afile").write_bytes(b"not a directory")
    for target, message in (
        ("afile/out", "error: afile/out: afile exists and is not a directory"),
        ("afile", "error: afile exists and is not a directory"),
    ):
        assert cli("checkout", c, "-o", target, code=2).stderr.strip() == message
    assert (project / "afile").read_bytes() == b"not a directory"


@pytest.mark.skipif(not Path("/proc/1").is_dir(), reason="needs Linux procfs")
def test_checkout_where_no_directory_can_be_made_names_the_target(
    cli: Cli, write: Write, project: Path
) -> None:
    c = _commit(cli, write)
    r = cli("checkout", c, "-o", "/proc/1/out", code=None)  # procfs refuses every mkdir
    assert r.exit_code not in (0, 70)  # an I/O error, not a crash
    assert "/proc/1/out" in r.stderr and ".mlvc-" not in r.stderr
