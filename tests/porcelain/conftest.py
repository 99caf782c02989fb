"""Fixtures for porcelain tests: an isolated project directory and cache per test."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project directory (cwd) with a script, an isolated cache, and no shared repos left over."""
    from mlvc.repo import forget_shared

    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "train.py").write_text("print('training')\n")
    monkeypatch.chdir(proj)
    monkeypatch.setenv("MLVC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "argv", ["train.py", "--epochs", "3"])
    yield proj
    forget_shared()


def subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment for child training scripts: mlvc importable, caches isolated."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLVC_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["MLVC_CACHE_DIR"] = str(tmp_path / "child-cache")
    env.update(extra)
    return env
