"""Every command through Typer's runner, on plain commits (experiments: test_experiments.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from mlvc.cli.main import COMMAND_TABLE
from tests.cli.conftest import Cli, Write

HEX12 = re.compile(r"^[0-9a-f]{12}$")
COMMANDS = [
    "init", "commit", "log", "ls", "ps", "show", "diff", "checkout", "tag", "rm", "gc", "fsck",
    "stats", "push", "pull", "clone",
]  # fmt: skip


def test_every_command_is_registered_and_has_an_example(project: Path) -> None:
    assert set(COMMANDS) <= set(COMMAND_TABLE)
    cli = Cli(project)
    top = cli("--help")
    for name in COMMANDS:
        assert name in top.stdout
        out = cli(name, "--help").stdout
        assert "Examples" in out, name
        assert f"mlvc {name}" in out or name in ("ps",) and "mlvc ps" in out, name


def test_help_names_arguments_as_click_does(project: Path) -> None:
    cli = Cli(project)
    usages = {
        "show": "Usage: mlvc show [OPTIONS] ID\n",
        "rm": "Usage: mlvc rm [OPTIONS] IDS...\n",
        "init": "Usage: mlvc init [OPTIONS] [URL]\n",
        "diff": "Usage: mlvc diff [OPTIONS] A B\n",
    }
    for name, usage in usages.items():
        assert cli(name, "--help").stdout.startswith(usage), name
    for name in COMMAND_TABLE:
        out = cli(name, "--help").stdout
        assert "{" not in out.splitlines()[0], name
        assert not re.search(r"<(str|int|float|list\[\w+\])>", out), name


def test_no_arguments_shows_help(project: Path) -> None:
    result = Cli(project)(code=None)
    assert result.exit_code in (0, 2)
    assert "Usage" in result.output


def test_init_writes_config_and_reuses_an_existing_repository(project: Path) -> None:
    cli = Cli(project)
    r = cli("init", "--json")
    doc = __import__("json").loads(r.stdout)
    assert doc["created"] is True and doc["url"] == ".mlvc"
    assert (project / ".mlvc" / "config").is_file()
    assert 'url = ".mlvc"' in (project / "mlvc.toml").read_text()
    again = cli("init")
    assert "existing repository" in again.stderr and "warning" not in again.stderr
    moved = cli("init", "elsewhere")
    assert "warning: the project used the repository at .mlvc until now" in moved.stderr


def test_init_compression_settings_are_fixed_in_the_repository(project: Path) -> None:
    import json

    cli = Cli(project)
    cli("init", "--compression-level", "3", "--no-byte-planes")
    compression = json.loads((project / ".mlvc" / "config").read_text())["compression"]
    assert compression == {"codec": "zstd", "level": 3, "byte_planes": False}
    bad = cli("init", "elsewhere", "-l", "42", code=2)
    assert "compression level must be 0 (none) to 19" in bad.stderr
    assert not (project / "elsewhere").exists()


def test_init_refuses_credentials_in_config(project: Path) -> None:
    r = Cli(project)("init", "-o", "secret=hunter2", code=2)
    assert "credential" in r.stderr
    assert not (project / "mlvc.toml").exists()


def test_commit_prints_id_and_counts_only_new_bytes(cli: Cli, write: Write) -> None:
    payload = os.urandom(2_000_000)
    write("data/weights.bin", payload)
    write("data/notes.txt", "v1\n")
    first = cli("commit", "data", "-m", "first")
    assert HEX12.match(first.stdout.strip())
    assert "new" in first.stderr
    doc = cli.json("commit", "data", "-m", "again")
    assert doc["total_bytes"] == len(payload) + 3
    assert doc["new_bytes"] < 4096  # only the new commit object: content is shared
    assert doc["parent"].startswith(first.stdout.strip())
    quiet = cli("-q", "commit", "data", "-m", "quiet")
    assert quiet.stderr == "" and HEX12.match(quiet.stdout.strip())


def test_commit_of_a_missing_path_is_a_usage_error(cli: Cli) -> None:
    r = cli("commit", "nope", "-m", "x", code=2)
    assert "no such file" in r.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_commit_of_a_special_file_is_refused_and_records_nothing(
    cli: Cli, write: Write, project: Path
) -> None:
    os.mkfifo(project / "pipe")
    write("data/a.txt", "a\n")
    for args in (["pipe"], ["/dev/zero"], ["data", "pipe"]):
        r = cli("commit", *args, "-m", "x", code=2)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, r.stderr
        assert args[-1] in lines[0] and ("FIFO" in lines[0] or "device" in lines[0])
    cli("log", code=4)  # the branch was never created: nothing was committed
    # Inside a directory a FIFO is skipped, as before.
    os.mkfifo(project / "data" / "pipe")
    doc = cli.json("commit", "data", "-m", "dir")
    assert doc["files"] == 1


def test_log_show_diff_checkout_on_commits(cli: Cli, write: Write, project: Path) -> None:
    big = os.urandom(300_000)
    write("data/model.bin", big)
    write("data/old.txt", "old")
    a = cli("commit", "data", "-m", "first").stdout.strip()
    (project / "data" / "old.txt").unlink()
    write("data/new.txt", "brand new")
    write("data/model.bin", big + b"more")
    b = cli("commit", "data", "-m", "second").stdout.strip()

    log = cli.json("log")
    assert log["kind"] == "branch" and log["ref"] == "heads/main"
    assert [e["message"] for e in log["entries"]] == ["second", "first"]
    assert log["entries"][0]["id"].startswith(b) and log["entries"][0]["short_id"] == b
    assert "second" in cli("log").stdout
    assert len(cli.json("log", "-n", "1")["entries"]) == 1

    shown = cli.json("show", b[:7])
    assert shown["kind"] == "commit"
    assert {f["path"]: f["size"] for f in shown["files"]} == {
        "data/model.bin": len(big) + 4,
        "data/new.txt": 9,
    }
    text = cli("show", b).stdout
    assert "model.bin" in text and "KiB" in text

    d = cli.json("diff", a, b)
    changes = {c["path"]: (c["status"], c["old_size"], c["new_size"]) for c in d["files"]}
    assert changes == {
        "data/model.bin": ("modified", len(big), len(big) + 4),
        "data/new.txt": ("added", None, 9),
        "data/old.txt": ("removed", 3, None),
    }
    text = cli("diff", a, b).stdout
    assert "1 added, 1 removed, 1 changed" in text
    assert "no differences" in cli("diff", a, a).stdout

    out = project / "restored"
    r = cli("checkout", a, "-o", out)
    assert "wrote 2 files" in r.stderr
    assert (out / "data" / "model.bin").read_bytes() == big
    assert (out / "data" / "old.txt").read_text() == "old"
    refused = cli("checkout", b, "-o", out, code=1)
    assert "would overwrite existing files: data/model.bin" in refused.stderr
    for bad_out in (out / "data" / "old.txt", out / "data" / "old.txt" / "sub"):
        r = cli("checkout", a, "-o", bad_out, code=2)  # a file where a directory must go
        assert r.stderr.startswith(f"error: {bad_out}"), r.stderr
    assert "--force" in refused.stderr
    assert (out / "data" / "model.bin").read_bytes() == big  # nothing written
    cli("checkout", b, "-o", out, "-f")
    assert (out / "data" / "model.bin").read_bytes() == big + b"more"
    only = cli.json("checkout", "main", "-o", project / "only", "--path", "data/new.txt")
    assert only["files"] == ["data/new.txt"] and only["bytes"] == 9
    bad = cli("checkout", b, "-o", project / "x", "--path", "missing.txt", code=2)
    assert "missing.txt" in bad.stderr


def test_tags_move_roll_back_and_keep_history(cli: Cli, write: Write) -> None:
    ids = []
    for i in range(3):
        write("m/model.bin", f"version {i}")
        ids.append(cli("commit", "m", "-m", f"v{i}").stdout.strip())
    assert "tagged" in cli("tag", "production", ids[0]).stderr
    assert "moved production" in cli("tag", "production", ids[1]).stderr
    assert "already points" in cli("tag", "production", ids[1]).stderr
    cli("tag", "production", ids[0])  # roll back
    history = cli.json("log", "production")
    assert history["kind"] == "tag"
    assert [e["short_id"] for e in history["entries"]] == [ids[0], ids[1], ids[0]]
    assert [e["current"] for e in history["entries"]] == [True, False, False]
    listing = cli.json("tag")
    assert listing[0]["name"] == "production" and listing[0]["versions"] == 3
    assert listing[0]["target"]["id"].startswith(ids[0])
    assert cli.json("show", "production")["target"]["via"] == "tags/production"
    cli("tag", "staging", "main")
    assert "staging" in cli("tag").stdout
    assert "deleted tag staging" in cli("tag", "-d", "staging").stderr
    r = cli("tag", "-d", "staging", code=4)
    assert "unknown tag" in r.stderr
    bad = cli("tag", "no/slash", ids[0], code=2)
    assert "invalid" in bad.stderr


def test_a_name_resolves_to_one_thing(cli: Cli, write: Write, project: Path) -> None:
    write("m/model.bin", "v0")
    first = cli("commit", "m", "-m", "v0").stdout.strip()
    write("m/model.bin", "v1")
    second = cli("commit", "m", "-m", "v1").stdout.strip()
    # A tag may not take a branch's name, nor read as an id prefix of 7+ hex digits.
    assert "already a branch's" in cli("tag", "main", first, code=2).stderr
    assert "reads as an id" in cli("tag", first, second, code=2).stderr
    assert "reads as an id" in cli("tag", "deadbeef", second, code=2).stderr
    cli("tag", "prod", first)
    # A new branch may not take a tag's name (nor read as an id); existing branches go on.
    assert "already a tag's" in cli("commit", "m", "-m", "x", "-b", "prod", code=2).stderr
    assert "reads as an id" in cli("commit", "m", "-m", "x", "-b", "abcdef0", code=2).stderr
    assert cli.json("show", "main")["target"]["via"] == "heads/main"
    assert cli.json("show", "prod")["commit"]["id"].startswith(first)
    # Both kinds under one name (a repository written before the check): ambiguous, and the
    # full forms pick one.
    refs = project / ".mlvc" / "refs"
    (refs / "heads" / "prod").write_bytes((refs / "heads" / "main").read_bytes())
    err = cli("show", "prod", code=4).stderr
    assert "ambiguous" in err and "tags/prod" in err and "heads/prod" in err
    assert cli.json("show", "tags/prod")["commit"]["id"].startswith(first)
    assert cli.json("show", "heads/prod")["commit"]["id"].startswith(second)


def test_stats_gc_fsck(cli: Cli, write: Write, project: Path) -> None:
    write("d/a.bin", os.urandom(200_000))
    cli("commit", "d", "-m", "one", "--branch", "scratch")
    write("d/a.bin", os.urandom(200_000))
    cli("commit", "d", "-m", "two")
    s = cli.json("stats")
    assert set(s) >= {
        "logical_bytes",
        "stored_bytes",
        "dedup_ratio",
        "objects",
        "packs",
        "commits",
        "refs",
    }
    assert s["commits"] == 2 and s["refs"] == 2
    assert "dedup ratio" in cli("stats").stdout

    # Drop the scratch branch: its packs become garbage.
    from mlvc.repo import open_repo

    with open_repo(str(project / ".mlvc")) as repo:
        repo.refs.delete("heads/scratch")
    dry = cli.json("gc", "--grace", "0")
    assert dry["dry_run"] is True and dry["bytes_freed"] > 200_000
    assert "would free" in cli("gc", "--grace", "0").stdout
    # No writer is active: the grace period protects nothing, the default frees it all too.
    assert cli.json("gc")["bytes_freed"] == dry["bytes_freed"]
    assert "younger than the grace period" not in cli("gc").stderr
    done = cli.json("gc", "--yes", "--grace", "0")
    assert done["dry_run"] is False and done["bytes_freed"] == dry["bytes_freed"]
    # Only pack overhead of the repacked metadata pack is left to count (see the report).
    assert cli.json("gc", "--grace", "0")["bytes_freed"] < 4096
    ok = cli("fsck")
    assert ok.stdout.startswith("ok:")
    assert cli.json("fsck")["ok"] is True
    bad = cli("gc", "--grace", "soon", code=2)
    assert "not a duration" in bad.stderr


def test_push_pull_clone_between_local_repositories(
    cli: Cli, write: Write, project: Path, tmp_path: Path
) -> None:
    write("d/w.bin", os.urandom(500_000))
    cid = cli("commit", "d", "-m", "one").stdout.strip()
    cli("tag", "production", cid)
    remote = tmp_path / "remote"
    pushed = cli.json("push", remote)
    assert pushed["created"] is True and pushed["bytes_sent"] > 0
    assert sorted(pushed["refs_updated"]) == ["heads/main", "tags/production"]
    again = cli.json("push", remote)
    assert again["objects_sent"] == 0 and again["refs_updated"] == []

    clone_dir = tmp_path / "clone"
    cloned = cli.json("clone", remote, clone_dir)
    assert cloned["config_path"].endswith("mlvc.toml")
    assert (clone_dir / ".mlvc" / "config").is_file()
    assert cli.json("log", cwd=clone_dir)["entries"][0]["short_id"] == cid

    # A commit made in the clone comes back by pull.
    (clone_dir / "d").mkdir()
    (clone_dir / "d" / "w.bin").write_bytes(b"changed in the clone")
    new = cli("commit", "d", "-m", "from clone", cwd=clone_dir).stdout.strip()
    cli("push", remote, cwd=clone_dir)
    pulled = cli.json("pull", remote)
    assert "heads/main" in pulled["refs_updated"]
    assert cli.json("log")["entries"][0]["short_id"] == new
    assert "received" in cli("pull", remote).stdout
    busy = cli("clone", remote, clone_dir, code=2)
    assert "not empty" in busy.stderr


def test_push_and_pull_that_leave_a_diverged_ref_do_not_exit_0(
    cli: Cli, write: Write, tmp_path: Path
) -> None:
    write("a.txt", "one")
    cli("commit", "a.txt", "-m", "one")
    remote = tmp_path / "remote"
    cli("push", remote)
    clone_dir = tmp_path / "clone"
    cli("clone", remote, clone_dir)
    (clone_dir / "a.txt").write_text("theirs")
    theirs = cli("commit", "a.txt", "-m", "theirs", cwd=clone_dir).stdout.strip()
    cli("push", remote, cwd=clone_dir)
    write("a.txt", "ours")
    ours = cli("commit", "a.txt", "-m", "ours").stdout.strip()

    for verb in ("push", "pull"):
        r = cli(verb, remote, code=12)
        assert "heads/main" in r.stderr and "--force" in r.stderr
    assert cli.json("log")["entries"][0]["short_id"] == ours
    assert cli.json("log", cwd=clone_dir)["entries"][0]["short_id"] == theirs
    cli("push", remote, "--force")
    assert cli.json("pull", remote, cwd=clone_dir, code=12)["refs_skipped"] == ["heads/main"]
    cli("pull", remote, "--force", cwd=clone_dir)
    assert cli.json("log", cwd=clone_dir)["entries"][0]["short_id"] == ours


def test_pull_from_nowhere_creates_nothing_there(cli: Cli, tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere"
    r = cli("pull", nowhere, code=10)
    assert "no mlvc repository at" in r.stderr
    assert not nowhere.exists()  # push creates the other side, pull never does


@pytest.mark.parametrize("args", [["ls"], ["ps"], ["tag"]])
def test_empty_listings(cli: Cli, args: list[str]) -> None:
    assert cli.json(*args) == []
    cli(*args)


def test_push_and_clone_through_gcs(
    cli: Cli, write: Write, tmp_path: Path, gcs_repo_url: tuple[str, dict[str, Any]]
) -> None:
    """gs:// works with nothing but the standard emulator variable in the environment."""
    url, options = gcs_repo_url
    env = {"STORAGE_EMULATOR_HOST": options["endpoint_url"]}
    payload = os.urandom(300_000)
    write("d/w.bin", payload)
    cid = cli("commit", "d", "-m", "to gcs").stdout.strip()
    assert cli.json("push", url, env=env)["created"] is True
    clone_dir = tmp_path / "from-gcs"
    cli("clone", url, clone_dir, env=env)
    cli("checkout", cid, "-o", tmp_path / "out", cwd=clone_dir)
    assert (tmp_path / "out" / "d" / "w.bin").read_bytes() == payload
    assert cli("-R", url, "fsck", env=env).stdout.startswith("ok:")


def test_init_on_s3_keeps_credentials_in_the_environment(
    project: Path, write: Write, s3_repo_url: tuple[str, dict[str, Any]]
) -> None:
    url, options = s3_repo_url
    env = {
        "AWS_ENDPOINT_URL": options["client_kwargs"]["endpoint_url"],
        "AWS_ACCESS_KEY_ID": options["key"],
        "AWS_SECRET_ACCESS_KEY": options["secret"],
    }
    cli = Cli(project)
    assert cli.json("init", url, env=env)["created"] is True
    config = (project / "mlvc.toml").read_text()
    assert url in config
    for secret in (options["key"], options["secret"], "endpoint"):
        assert secret not in config
    write("d/a.txt", "on s3")
    cid = cli("commit", "d", "-m", "remote commit", env=env).stdout.strip()
    assert cli.json("log", env=env)["entries"][0]["short_id"] == cid
