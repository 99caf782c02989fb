"""The command line beside other tools: start-up cost, help, completion, remotes, config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlvc.cli.main import COMMAND_TABLE, MlvcGroup
from tests.cli.conftest import Cli, Write

ROOT = Path(__file__).parents[2]


def _modules_after(args: list[str], cwd: Path) -> set[str]:
    """The modules a fresh interpreter has imported once ``mlvc ARGS`` has run."""
    script = (
        "import sys\n"
        "from mlvc.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.stderr.write('\\nMODULES ' + ' '.join(sorted(sys.modules)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return set(r.stderr.rsplit("MODULES ", 1)[1].split())


HEAVY = {"rich", "mlvc.porcelain", "mlvc_core.repository", "numpy", "fsspec", "mlvc.cli.checkout"}


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["ls", "--help"]])
def test_help_and_version_import_nothing_heavy(args: list[str], project: Path) -> None:
    loaded = _modules_after(args, project)
    commands = {m for m in loaded if m.startswith("mlvc.cli.") and m not in ("mlvc.cli.main",)}
    assert commands <= {"mlvc.cli._options", "mlvc.cli._output", "mlvc.cli.ls"}, commands
    assert not (HEAVY & loaded), HEAVY & loaded
    if args == ["--version"]:
        assert "typer" not in loaded


def test_a_command_imports_only_its_own_module(cli: Cli, project: Path) -> None:
    loaded = _modules_after(["log"], project)
    assert "mlvc.cli.log" in loaded
    others = {f"mlvc.cli.{m}" for m, _ in COMMAND_TABLE.values()} - {"mlvc.cli.log"}
    assert not (others & loaded), others & loaded


def test_command_table_matches_the_commands() -> None:
    from mlvc.cli.main import _load_module

    for name, (module, short) in COMMAND_TABLE.items():
        command = _load_module(module)[name]
        assert command.get_short_help_str(limit=200) == short, name


def test_help_keeps_example_lines_and_shows_no_bool_metavar(project: Path) -> None:
    cli = Cli(project)
    out = cli("commit", "--help").stdout
    lines = [line.strip() for line in out.splitlines()]
    assert 'mlvc commit data/ -m "raw data, May export"' in lines
    assert "Examples: mlvc" not in out
    assert "<bool>" not in out
    assert "--json " in out
    top = cli("--help").stdout
    assert "mlvc init" in [line.strip() for line in top.splitlines()]
    assert "<bool>" not in top


def _complete(project: Path, words: str, env: dict[str, str] | None = None) -> list[str]:
    """What bash completion offers for the command line ``words`` (ending where the cursor is)."""
    parts = words.split(" ")
    e = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "_MLVC_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(parts) - 1),
        **(env or {}),
    }
    r = subprocess.run(
        [sys.executable, "-m", "mlvc"], cwd=project, env=e, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_completion_of_commands_tags_branches_and_experiments(
    cli: Cli, project: Path, write: Write
) -> None:
    import mlvc

    write("data/a.txt", "a")
    cli("commit", "data", "-m", "one")
    cli("commit", "data", "-m", "two", "--branch", "feature")
    cli("tag", "production", "main")
    code = project / "code"
    code.mkdir()
    (code / "train.py").write_text("pass\n")
    with mlvc.track(path=code, repository=str(project / ".mlvc"), strict=True) as run:
        pass
    assert run.id is not None
    env = {"MLVC_CACHE_DIR": str(project.parent / "cache")}
    assert _complete(project, "mlvc ch", env) == ["checkout"]
    offered = _complete(project, "mlvc show ", env)
    assert {"main", "feature", "production", run.id[:12]} <= set(offered)
    assert _complete(project, "mlvc checkout pro", env) == ["production"]
    assert _complete(project, f"mlvc log {run.id[:5]}", env) == [run.id[:12]]
    assert _complete(project, f"mlvc diff {run.id[:8]}@b", env) == [f"{run.id[:8]}@best"]
    assert _complete(project, "mlvc show ", {**env, "MLVC_REPOSITORY": "/nonexistent"}) != []
    assert "--install-completion" in cli("--help").stdout


def test_remotes_push_pull_default_to_origin(cli: Cli, project: Path, write: Write) -> None:
    write("data/a.txt", "first")
    first = cli("commit", "data", "-m", "one").stdout.strip()
    cli("pull", code=2)  # no origin yet: a usage error that says what to do
    cli("remote", "add", "origin", "../shared")
    cli("remote", "add", "backup", str(project.parent / "backup"))
    cli("remote", "add", "origin", "elsewhere", code=2)  # exists
    assert cli.json("remote", "list") == [
        {"name": "origin", "url": "../shared"},
        {"name": "backup", "url": str(project.parent / "backup")},
    ]
    cli("push")
    cli("push", "backup")
    assert (project.parent / "shared" / "config").is_file()
    assert (project.parent / "backup" / "config").is_file()
    assert "secret" not in (project / "mlvc.toml").read_text()

    clone_dir = project.parent / "clone"
    cli("clone", "../shared", str(clone_dir))
    clone = Cli(clone_dir)
    shared = str(project.parent / "shared")
    assert clone.json("remote", "list") == [{"name": "origin", "url": shared}]
    write("data/a.txt", "second")
    second = cli("commit", "data", "-m", "two").stdout.strip()
    cli("push")
    clone("pull")
    log = clone.json("log")
    assert [e["id"][:12] for e in log["entries"]] == [second, first]
    cli("remote", "remove", "backup")
    cli("remote", "remove", "backup", code=2)
    cli("remote", "add", "bad/name", "x", code=2)
    err = cli("remote", "add", "web", "https://user:pw@host/repo", code=2).stderr
    assert "credentials" in err and "pw" not in (project / "mlvc.toml").read_text()
    assert [r["name"] for r in cli.json("remote", "list")] == ["origin"]


def test_config_get_set_list_unset(cli: Cli, project: Path) -> None:
    assert cli("config", "get", "repository.url").stdout.strip() == ".mlvc"
    assert cli("config", "get", "snapshot.max_file_size").stdout.strip() == str(64 << 20)
    cli("config", "set", "snapshot.max_file_size", "50MiB")
    assert cli.json("config", "get", "snapshot.max_file_size")["value"] == 50 << 20
    cli("config", "set", "repository.storage_options.endpoint_url", "http://127.0.0.1:9000")
    listed = cli.json("config", "list")
    assert listed == {
        "repository.url": ".mlvc",
        "repository.storage_options.endpoint_url": "http://127.0.0.1:9000",
        "snapshot.max_file_size": 50 << 20,
    }
    every = cli.json("config", "list", "--all")["keys"]
    assert all(k["help"] for k in every)
    assert {"repository.url", "remotes.*.url", "snapshot.max_file_size"} <= {
        k["key"] for k in every
    }
    err = cli("config", "set", "snapshot.max_fle_size", "1", code=2).stderr
    assert "unknown setting" in err and "snapshot.max_file_size" in err
    cli("config", "set", "repository.storage_options.aws_secret_access_key", "x", code=2)
    cli("config", "set", "snapshot.max_file_size", "lots", code=2)
    offered = _complete(project, "mlvc config get ", {"MLVC_CACHE_DIR": str(project / "c")})
    assert {"repository.url", "snapshot.max_file_size"} <= set(offered)
    assert "repository.storage_options.endpoint_url" in offered
    cli("config", "unset", "repository.storage_options.endpoint_url")
    assert "storage_options" not in (project / "mlvc.toml").read_text()
    # The repository still opens from the rewritten file.
    assert cli.json("stats")


def test_config_outside_a_project_says_what_to_do(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    err = Cli(empty)("config", "unset", "repository.url", code=2).stderr
    assert "mlvc init" in err
    assert json.loads(Cli(empty)("config", "list", "--json").stdout) == {}


def test_group_lists_every_command_without_loading_them() -> None:
    group = MlvcGroup(name="mlvc")
    assert group.list_commands(None)[: len(COMMAND_TABLE)] == list(COMMAND_TABLE)
    assert group.commands == {}


def test_diff_code_shows_changed_lines_and_summarises_binaries(
    cli: Cli, project: Path, write: Write
) -> None:
    write("src/train.py", "import torch\n\nlr = 0.1\nepochs = 3\n")
    write("src/notes.md", "first\n")
    write("src/weights.bin", b"\x00\x01" * 100)
    a = cli("commit", "src", "-m", "a").stdout.strip()
    write("src/train.py", "import torch\n\nlr = 0.01\nepochs = 3\n")
    (project / "src" / "notes.md").unlink()
    write("src/util.py", "def f():\n    return 1\n")
    write("src/weights.bin", b"\x00\x02" * 120)
    b = cli("commit", "src", "-m", "b").stdout.strip()

    out = cli("diff", a, b, "--code").stdout
    assert "\x1b[" not in out  # piped: plain
    lines = out.splitlines()
    assert "--- a/src/train.py" in lines and "+++ b/src/train.py" in lines
    assert "-lr = 0.1" in lines and "+lr = 0.01" in lines
    assert " epochs = 3" in lines
    assert "--- a/src/notes.md" in lines and "+++ /dev/null" in lines and "-first" in lines
    assert "--- /dev/null" in lines and "+++ b/src/util.py" in lines and "+    return 1" in lines
    binary = "Binary files a/src/weights.bin and b/src/weights.bin differ"
    assert any(line.startswith(binary) for line in lines)
    doc = cli.json("diff", a, b, "--code")
    by_path = {f["path"]: f for f in doc["files"]}
    weights = by_path["src/weights.bin"]
    assert weights["kind"] == "binary" and weights["diff"] == ""
    assert "+lr = 0.01" in by_path["src/train.py"]["diff"]
    assert cli("diff", a, a, "--code").stdout == ""


def test_diff_code_colours_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    from mlvc.cli import _output

    _output.diff_lines(["--- a/x", "+++ b/x", "@@ -1 +1 @@", "-old", "+new", " same"], True)
    out = capsys.readouterr().out.splitlines()
    assert out[3] == "\x1b[31m-old\x1b[0m" and out[4] == "\x1b[32m+new\x1b[0m"
    assert out[5] == " same"


def test_diff_code_compares_recorded_git_diffs(cli: Cli, project: Path) -> None:
    import mlvc

    code = project / "code"
    code.mkdir()
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=code, check=True)
    (code / "train.py").write_text("lr = 0.1\n")
    subprocess.run([*git, "add", "train.py"], cwd=code, check=True)
    subprocess.run([*git, "commit", "-qm", "start"], cwd=code, check=True)
    ids = []
    for lr in ("0.2", "0.3"):
        (code / "train.py").write_text(f"lr = {lr}\n")
        with mlvc.track(path=code, repository=str(project / ".mlvc"), strict=True) as run:
            pass
        ids.append(run.id)
    plain = cli("diff", ids[0], ids[1]).stdout
    assert "characters>" in plain  # the table only hints at it
    out = cli("diff", ids[0], ids[1], "--code").stdout.splitlines()
    assert "--- a/(git diff)" in out and "+++ b/(git diff)" in out
    assert "-+lr = 0.2" in out and "++lr = 0.3" in out


def test_commit_records_paths_as_typed_and_checkout_restores_them(
    cli: Cli, project: Path, write: Write
) -> None:
    write("data/train/a.csv", "a")
    write("data/notes.txt", "n")
    write("other/x.txt", "x")
    files = lambda ref: sorted(f["path"] for f in cli.json("show", ref)["files"])  # noqa: E731
    cli("commit", "data/", "-m", "dir")
    assert files("main") == ["data/notes.txt", "data/train/a.csv"]
    cli("commit", "data/notes.txt", "-m", "file")
    assert files("main") == ["data/notes.txt"]
    cli("commit", "./data/train", "other/x.txt", "-m", "two")
    assert files("main") == ["data/train/a.csv", "other/x.txt"]
    cli("commit", "data/train/../notes.txt", "-m", "normalised")
    assert files("main") == ["data/notes.txt"]

    cli("commit", "data", "-m", "again")
    dest = project / "restored"
    cli("checkout", "main", "-o", dest)
    assert (dest / "data" / "train" / "a.csv").read_text() == "a"
    assert not (dest / "train").exists() and not (dest / "notes.txt").exists()

    sub = Cli(project / "data")
    sub("commit", "train", "-m", "from below")
    assert files("main") == ["train/a.csv"]  # relative to where the command ran
    sub("commit", ".", "-m", "all of it")
    assert files("main") == ["notes.txt", "train/a.csv"]


def test_commit_outside_the_directory_and_old_layout_still_read(
    cli: Cli, project: Path, tmp_path: Path, write: Write
) -> None:
    from mlvc_core.history import commit_paths
    from mlvc_core.repository import Repository

    outside = tmp_path / "elsewhere"
    (outside / "set").mkdir(parents=True)
    (outside / "set" / "f.bin").write_bytes(b"f")
    cli("commit", str(outside / "set"), "-m", "outside")
    assert [f["path"] for f in cli.json("show", "main")["files"]] == ["f.bin"]

    # A commit written before paths kept their prefix: the directory was the root.
    write("data/old.txt", "old layout")
    with Repository.open(str(project / ".mlvc")) as repo:
        old = commit_paths(repo, [project / "data"], "old layout").hex()
    assert [f["path"] for f in cli.json("show", old)["files"]] == ["old.txt"]
    cli("checkout", old, "-o", project / "back")
    assert (project / "back" / "old.txt").read_text() == "old layout"


def _git(cwd: Path, *args: str) -> str:
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    return subprocess.run([*git, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def test_init_in_a_git_project_keeps_mlvc_out_of_git(project: Path, tmp_path: Path) -> None:
    _git(project, "init", "-q")
    (project / ".gitignore").write_text("*.pyc")  # no final newline
    cli = Cli(project)
    err = cli("init").stderr
    assert "added .mlvc/, .mlvc-staging/ to .gitignore" in err
    assert (project / ".gitignore").read_text() == "*.pyc\n/.mlvc/\n/.mlvc-staging/\n"
    status = _git(project, "status", "--porcelain", "--untracked-files=all")
    assert ".mlvc/" not in status and "mlvc.toml" in status
    cli("init")
    assert (project / ".gitignore").read_text().count("/.mlvc/") == 1

    plain = tmp_path / "plain"
    plain.mkdir()
    Cli(plain)("init")
    assert not (plain / ".gitignore").exists()  # not a git project: nothing to keep out


def test_code_snapshot_leaves_out_repositories_checkouts_and_big_files(
    project: Path, write: Write, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlvc
    from mlvc_core.repository import Repository

    monkeypatch.chdir(project)
    cli = Cli(project)
    cli("init")
    write("data/set.csv", "a,b\n")
    cli("commit", "data", "-m", "data")
    code = project / "code"
    write("code/train.py", "print('train')\n")
    write("code/big.bin", b"x" * (2 << 20))
    write("code/small.bin", b"y" * 1000)
    Repository.init(str(code / "archive")).close()  # another repository, any name
    cli("checkout", "main", "-o", code / "restored")  # a checkout into the project
    assert (code / "restored" / "data" / "set.csv").is_file()
    cli("config", "set", "snapshot.max_file_size", "1MiB")
    with caplog.at_level("WARNING", logger="mlvc"):
        with mlvc.track(path=code, strict=True) as run:
            pass
    files = sorted(f["path"] for f in cli.json("show", str(run.id))["files"])
    assert files == ["small.bin", "train.py"]
    assert "big.bin" in caplog.text and "1 MiB" in caplog.text

    cli("config", "set", "snapshot.max_file_size", "0")  # no limit
    (code / "restored" / ".mlvc-checkout").unlink()  # the user adopts the checkout
    with mlvc.track(path=code, strict=True) as run:
        pass
    files = sorted(f["path"] for f in cli.json("show", str(run.id))["files"])
    assert files == ["big.bin", "restored/data/set.csv", "small.bin", "train.py"]


def test_tables_align_without_rich_and_fall_back_for_wide_text(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mlvc.cli import _output

    _output.table(["id", "size", "name"], [["abc", 5, "x"], ["d", 12345, "longer"]], right=["size"])
    assert capsys.readouterr().out.splitlines() == [
        "id    size  name",
        "abc      5  x",
        "d    12345  longer",
    ]
    _output.table(["name"], [["数据"]], title="files")
    out = capsys.readouterr().out
    assert "数据" in out and "files" in out


def test_help_is_the_same_on_every_invocation(project: Path) -> None:
    cli = Cli(project)
    first = cli("config", "set", "--help").stdout
    assert cli("config", "set", "--help").stdout == first
    assert "\n\n\n" not in first


def test_a_mistyped_command_gets_suggestions(project: Path) -> None:
    err = Cli(project)("chekout", code=2).output
    assert "No such command 'chekout'. Did you mean 'checkout'?" in err
