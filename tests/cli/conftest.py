"""Fixtures for the command-line tests: a runner, a fresh project, and a helper to call mlvc."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from mlvc.cli import app

Write = Callable[[str, "bytes | str"], Path]
"""The ``write`` fixture: ``write("data/a.bin", b"...")`` -> the path written."""


class Cli:
    """Runs ``mlvc`` in-process through Typer's runner, in the project directory."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.runner = CliRunner()

    def __call__(
        self,
        *args: Any,
        env: dict[str, str] | None = None,
        code: int | None = 0,
        cwd: Path | None = None,
    ) -> Result:
        """Run ``mlvc ARGS``; check the exit code (None: any) and that no traceback leaked."""
        old = Path.cwd()
        os.chdir(cwd or self.cwd)
        try:
            result = self.runner.invoke(
                app, [str(a) for a in args], env=env, catch_exceptions=False
            )
        finally:
            os.chdir(old)
        if code is not None:
            assert result.exit_code == code, (
                f"mlvc {' '.join(map(str, args))} exited {result.exit_code}, expected {code}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        if not (env or {}).get("MLVC_DEBUG"):
            assert "Traceback" not in result.output, result.output
        return result

    def json(self, *args: Any, **kwargs: Any) -> Any:
        """Run ``mlvc ARGS --json`` and parse its stdout."""
        return json.loads(self(*args, "--json", **kwargs).stdout)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Caches go under the test's directory, never the developer's home."""
    monkeypatch.setenv("MLVC_CACHE_DIR", str(tmp_path / "cache"))
    yield
    from mlvc.repo import forget_shared

    forget_shared()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An empty project directory (no repository yet)."""
    d = tmp_path / "project"
    d.mkdir()
    return d


@pytest.fixture
def cli(project: Path) -> Cli:
    """``mlvc`` running in a project with a fresh repository (``mlvc init`` done)."""
    runner = Cli(project)
    runner("init")
    return runner


@pytest.fixture
def write(project: Path) -> Write:
    """Write a file under the project: ``write("data/a.bin", b"...")``."""

    def _write(rel: str, data: bytes | str) -> Path:
        p = project / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            p.write_text(data)
        else:
            p.write_bytes(data)
        return p

    return _write
