"""Settings resolution (config file, environment, defaults) and the ignore-rule matcher."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlvc.errors import UsageError
from mlvc.settings import find_project_config, load_settings, write_project_config
from mlvc.tracking.ignore import IgnoreMatcher


def test_settings_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proj = tmp_path / "proj"
    (proj / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(proj / "a" / "b")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)

    s = load_settings()
    assert s.repository_url == str(proj / "a" / "b" / ".mlvc") and s.default_repository
    assert s.project_dir == proj / "a" / "b" and s.config_path is None
    assert s.cache_dir == Path.home() / ".cache" / "mlvc"

    monkeypatch.setenv("MLVC_REPOSITORY", "s3://bucket/team")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("MLVC_DEBUG", "1")
    s = load_settings()
    assert s.repository_url == "s3://bucket/team" and not s.default_repository
    assert s.storage_options == {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}
    assert s.cache_dir == tmp_path / "xdg" / "mlvc" and s.debug

    path = write_project_config(
        proj, "gs://bkt/ml", {"project": "p1", "client_kwargs": {"region_name": "x"}}
    )
    assert find_project_config(proj / "a" / "b") == path
    s = load_settings()  # the config file beats the environment
    assert s.repository_url == "gs://bkt/ml" and s.project_dir == proj
    assert s.storage_options == {"project": "p1", "client_kwargs": {"region_name": "x"}}
    s = load_settings("rel/repo")  # an explicit argument beats everything; relative to cwd
    assert s.repository_url == str(proj / "a" / "b" / "rel" / "repo")

    monkeypatch.setenv("MLVC_CACHE_DIR", str(tmp_path / "c"))
    assert load_settings().cache_dir == tmp_path / "c"


def test_write_project_config_refuses_credentials(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="credential"):
        write_project_config(tmp_path, "s3://b/p", {"key": "AKIA...", "secret": "x"})
    with pytest.raises(UsageError, match="credential"):
        write_project_config(
            tmp_path, "s3://b/p", {"client_kwargs": {"aws_secret_access_key": "x"}}
        )
    assert not (tmp_path / "mlvc.toml").exists()
    write_project_config(tmp_path, "store", {"anon": False})
    s = load_settings(cwd=tmp_path)
    assert s.repository_url == str(tmp_path / "store") and s.storage_options == {"anon": False}


@pytest.mark.parametrize(
    ("rules", "path", "excluded"),
    [
        (["*.log"], "a/b/x.log", True),
        (["*.log", "!keep.log"], "keep.log", False),
        (["/build"], "build", True),
        (["/build"], "src/build", False),
        (["build/"], "src/build", True),  # a directory
        (["build/"], "src/build.txt", False),
        (["docs/*.md"], "docs/a.md", True),
        (["docs/*.md"], "docs/sub/a.md", False),
        (["docs/**/*.md"], "docs/sub/deep/a.md", True),
        (["**/tmp"], "x/y/tmp", True),
        (["data/**"], "data/a/b.csv", True),
        (["fig[0-9].png"], "fig7.png", True),
        (["fig[!0-9].png"], "fig7.png", False),
        (["\\#notes"], "#notes", True),
        (["# comment", ""], "# comment", False),
        (["a?c"], "abc", True),
        (["a?c"], "a/c", False),
    ],
)
def test_gitignore_semantics(tmp_path: Path, rules: list[str], path: str, excluded: bool) -> None:
    (tmp_path / ".gitignore").write_text("\n".join(rules) + "\n")
    target = tmp_path / path
    target.parent.mkdir(parents=True, exist_ok=True)
    if path.endswith("build"):
        target.mkdir()
    else:
        target.write_text("x")
    assert IgnoreMatcher(tmp_path)(path) is excluded


def test_nested_rule_files_and_fixed_skips(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("*.bin\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".mlvcignore").write_text("!weights.bin\nlocal.txt\n")
    (tmp_path / "env" / "lib").mkdir(parents=True)
    (tmp_path / "env" / "pyvenv.cfg").write_text("home = /usr\n")
    m = IgnoreMatcher(tmp_path, skip_paths=[tmp_path / "repo-store", "/elsewhere"])
    assert m("a.bin") and m("sub/other.bin")
    assert not m("sub/weights.bin")  # a deeper rule file overrides
    assert m("sub/local.txt") and not m("local.txt")
    assert m("env") and m("env/lib")  # a virtualenv, found by its pyvenv.cfg
    assert m(".git") and m("x/__pycache__") and m(".mlvc") and m(".mlvc-staging")
    assert m("repo-store") and m("repo-store/config")
    assert not m("train.py")


def test_import_is_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, mlvc; mlvc.track; mlvc.experiments; mlvc.load; "
        "heavy = [m for m in ('fsspec', 's3fs', 'torch', 'typer', 'rich', 'numpy') "
        "if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
