"""The frozen version-1 and version-2 repositories stay readable and upgrade to version 3."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from mlvc_core.check import check
from mlvc_core.history import commit_paths
from mlvc_core.repository import Repository
from mlvc_core.restore import checkout

DATA = Path(__file__).parent.parent / "data" / "repos"


@pytest.fixture
def v1_repo(tmp_path: Path) -> Path:
    dest = tmp_path / "v1"
    shutil.copytree(DATA / "v1-small", dest)
    return dest


def _expected() -> dict[str, object]:
    doc: dict[str, object] = json.loads((DATA / "v1-small.json").read_text())
    return doc


def _check_out_all(repo: Repository, tmp_path: Path, revs: list[str]) -> None:
    files = _expected()["files"]
    assert isinstance(files, dict)
    for i, rev in enumerate(revs):
        cid = repo.resolve(rev)
        out = tmp_path / f"out{i}"
        checkout(repo, cid, out)
        got = {
            str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*"))
            if p.is_file() and not p.is_symlink()
        }
        assert got == files[cid.hex()]
        assert (out / "link").is_symlink() and str((out / "link").readlink()) == "a.txt"


def test_version_1_repository_reads_and_checks_out(v1_repo: Path, tmp_path: Path) -> None:
    with Repository.open(v1_repo) as repo:
        assert check(repo).ok
        assert repo.resolve("heads/main").hex() == _expected()["main"]
        _check_out_all(repo, tmp_path, ["heads/main", "tags/v1"])


def test_version_1_repository_is_upgraded_by_its_first_write(
    v1_repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mlvc_core.config import FORMAT_VERSION, RepoConfig
    from mlvc_core.gc import collect

    repo = Repository.open(v1_repo)
    assert repo.config.version == 1
    (tmp_path / "new.txt").write_text("written by version 2\n")
    with caplog.at_level("WARNING"):
        cid = commit_paths(repo, tmp_path / "new.txt", "new", branch="v2")
    assert "upgraded the repository" in caplog.text
    assert RepoConfig.decode((v1_repo / "config").read_bytes()).version == FORMAT_VERSION
    fresh = Repository.open(v1_repo)
    # Old (version-1) index files and the new one are read side by side.
    assert check(fresh).ok
    _check_out_all(fresh, tmp_path / "before-gc", ["heads/main", "tags/v1"])
    report = collect(fresh, dry_run=False)
    assert report.packs_deleted + report.packs_repacked >= 1  # the unreachable commit
    assert len(fresh.index_files()) == 1  # and the index consolidated into one file
    after = Repository.open(v1_repo)
    assert check(after).ok
    _check_out_all(after, tmp_path / "after-gc", ["heads/main", "tags/v1"])
    checkout(after, cid, tmp_path / "new-out")
    assert (tmp_path / "new-out" / "new.txt").read_text() == "written by version 2\n"
    unreachable = _expected()["unreachable"]
    assert isinstance(unreachable, str)
    assert not after.has(bytes.fromhex(unreachable))  # type: ignore[arg-type]


def test_upgrade_command_and_refusal_of_an_unknown_version(v1_repo: Path) -> None:
    from typer.testing import CliRunner

    from mlvc.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["-R", str(v1_repo), "upgrade"])
    assert r.exit_code == 0 and "from format version 1 to 3" in r.output
    r = runner.invoke(app, ["-R", str(v1_repo), "upgrade"])
    assert r.exit_code == 0 and "already at format version 3" in r.output
    doc = json.loads((v1_repo / "config").read_text())
    assert doc["tensors"] == {"block": 1 << 20}
    doc["version"] = 4
    (v1_repo / "config").write_text(json.dumps(doc))
    r = runner.invoke(app, ["-R", str(v1_repo), "ls"])
    assert r.exit_code != 0
    assert "format version 4 is not supported" in r.output and "upgrade mlvc" in r.output


@pytest.fixture
def v2_repo(tmp_path: Path) -> Path:
    dest = tmp_path / "v2"
    shutil.copytree(DATA / "v2-tensors", dest)
    return dest


def _files_of(out: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir() if p.is_file()
    }


def test_version_2_repository_reads_then_upgrades_and_stores_deltas(
    v2_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlvc_core.config import RepoConfig

    expected = json.loads((DATA / "v2-tensors.json").read_text())
    with Repository.open(v2_repo) as repo:
        assert repo.config.version == 2 and repo.config.tensor_block == 0
        assert check(repo).ok
        for i, (cid, files) in enumerate(expected["commits"].items()):
            checkout(repo, bytes.fromhex(cid), tmp_path / f"out{i}")  # type: ignore[arg-type]
            assert _files_of(tmp_path / f"out{i}") == files
    # The first write upgrades to version 3 (fixed tensor blocks from then on) ...
    work = tmp_path / "work"
    shutil.copytree(tmp_path / "out1", work)
    model = work / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[-300_000] ^= 1
    model.write_bytes(bytes(data))
    repo = Repository.open(v2_repo)
    first = commit_paths(repo, [model], "v3 a", branch="main")
    assert RepoConfig.decode((v2_repo / "config").read_bytes()).tensor_block == 1 << 20
    data[-200_000] ^= 1
    model.write_bytes(bytes(data))
    second = commit_paths(repo, [model], "v3 b", branch="main")
    from tests.core.test_deltas import model as big_model

    model.write_bytes(big_model(0))  # checkpoints large enough for the delta path
    commit_paths(repo, [model], "v3 c", branch="main")
    model.write_bytes(big_model(1))
    third = commit_paths(repo, [model], "v3 d", branch="main")
    fresh = Repository.open(v2_repo)
    assert check(fresh).ok
    assert any(loc.codec == 3 for _, loc in fresh.iter_index())
    for cid in (first, second, third):
        checkout(fresh, cid, tmp_path / cid.hex())
    assert (tmp_path / second.hex() / "model.safetensors").read_bytes() == bytes(data)
    assert (tmp_path / third.hex() / "model.safetensors").read_bytes() == big_model(1)
    # ... and an mlvc that knows only version 2 refuses the upgraded repository clearly.
    from mlvc_core import config
    from mlvc_core.errors import UnsupportedFormatVersion

    monkeypatch.setattr(config, "SUPPORTED_VERSIONS", (1, 2))
    with pytest.raises(UnsupportedFormatVersion, match="format version 3 is not supported"):
        Repository.open(v2_repo)


def test_upgrade_command_says_it_once(v1_repo: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "MLVC_CACHE_DIR": str(tmp_path / "cache")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2]), env.get("PYTHONPATH", "")])
    r = subprocess.run(
        [sys.executable, "-m", "mlvc", "-R", str(v1_repo), "upgrade"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    said = (r.stdout + r.stderr).strip().splitlines()
    assert len(said) == 1 and "from format version 1 to 3" in said[0], said
