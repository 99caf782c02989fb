"""``mlvc init`` in a project that has an ``mlvc.toml`` keeps the rest of the file."""

from __future__ import annotations

from pathlib import Path

from mlvc import commands
from mlvc.project_config import add_remote, get_value, remote_url, set_value
from mlvc.settings import read_project_config


def test_init_again_keeps_remotes_and_settings(tmp_path: Path) -> None:
    commands.init(project_dir=tmp_path)
    add_remote("origin", str(tmp_path / "remote"), cwd=tmp_path)
    set_value("snapshot.max_file_size", "10MiB", cwd=tmp_path)

    commands.init(project_dir=tmp_path)

    assert remote_url("origin", cwd=tmp_path) == str(tmp_path / "remote")
    assert get_value("snapshot.max_file_size", cwd=tmp_path) == 10 << 20


def test_init_elsewhere_repoints_only_the_repository(tmp_path: Path) -> None:
    commands.init(project_dir=tmp_path, storage_options={"anon": False})
    add_remote("origin", "../remote", cwd=tmp_path)

    commands.init(str(tmp_path / "other"), project_dir=tmp_path)

    doc = read_project_config(tmp_path / "mlvc.toml")
    assert doc["repository"] == {"url": str(tmp_path / "other")}
    assert doc["remotes"] == {"origin": {"url": "../remote"}}


def test_init_again_keeps_storage_options_of_the_same_repository(tmp_path: Path) -> None:
    commands.init(project_dir=tmp_path, storage_options={"anon": False})

    commands.init(project_dir=tmp_path)

    doc = read_project_config(tmp_path / "mlvc.toml")
    assert doc["repository"] == {"url": ".mlvc", "storage_options": {"anon": False}}


def test_init_elsewhere_says_which_repository_the_project_used(tmp_path: Path) -> None:
    assert commands.init(project_dir=tmp_path).previous_url is None
    assert commands.init(project_dir=tmp_path).previous_url is None  # the same one again
    moved = commands.init(str(tmp_path / "other"), project_dir=tmp_path)
    assert moved.previous_url == ".mlvc"
