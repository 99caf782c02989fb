"""Adapters that store and restore workload versions with each compared tool.

Every tool follows the same protocol, driven by ``compare.py``:

* ``setup(ctx)``: create an empty repository (untimed);
* ``prepare(ctx, version)``: untimed work a user would do anyway before storing, such as
  placing the new checkpoint in a workspace;
* ``store(ctx, version) -> Usage``: the timed commands that store the version;
* ``prepare_restore(ctx, dest)`` (untimed) and ``restore(ctx, dest) -> (Usage, root)``: bring
  back the latest version; ``root`` is where its files ended up;
* ``stored_bytes(ctx)``: what a user keeps (the repository or remote, not a local cache).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import measure
from measure import Usage

HERE = Path(__file__).resolve().parent
HEX_ID = re.compile(r"\b[0-9a-f]{7,64}\b")


@dataclass
class Context:
    """Scratch space and environment of one tool on one workload in one repetition."""

    work: Path
    env: dict[str, str] = field(default_factory=dict)
    last_id: str = ""  # id of the latest stored version, for tools that restore by id

    @property
    def repo(self) -> Path:
        """Where the tool's repository (or remote) lives."""
        return self.work / "repo"

    @property
    def workspace(self) -> Path:
        """A working directory for tools that store from one (DVC, git-lfs)."""
        return self.work / "workspace"

    def timed(self, *cmd: object, cwd: Path | None = None) -> Usage:
        """Run a measured command."""
        return measure.run([str(c) for c in cmd], cwd=cwd, env=self.env)

    def untimed(self, *cmd: object, cwd: Path | None = None) -> str:
        """Run a preparation command; returns its stdout."""
        proc = subprocess.run(
            [str(c) for c in cmd],
            cwd=cwd,
            env=self.env,
            check=False,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            output = proc.stdout[-2000:] + proc.stderr[-4000:]
            raise measure.CommandFailed(cmd, proc.returncode, output)
        return proc.stdout


def replace_dir(src: Path, dest: Path) -> None:
    """Make ``dest`` a fresh copy of ``src`` with new modification times, as a training run
    writing a new checkpoint would (copying the old times could make git and DVC, which skip
    files whose size, inode and mtime look unchanged, miss the new version)."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest, copy_function=shutil.copy)


class Tool:
    """Base class: a tool is available when its executables are on PATH."""

    name = ""
    executables: tuple[str, ...] = ()

    def missing(self) -> str | None:
        """Why the tool cannot run here, or None."""
        absent = [e for e in self.executables if shutil.which(e) is None]
        return f"not found on PATH: {', '.join(absent)}" if absent else None

    def environment(self, ctx: Context) -> dict[str, str]:
        """Extra environment variables for every command."""
        return {}

    def setup(self, ctx: Context) -> None:
        """Create an empty repository."""

    def prepare(self, ctx: Context, version: Path) -> None:
        """Untimed preparation before storing ``version``."""

    def store(self, ctx: Context, version: Path) -> Usage:
        """Store ``version``; returns the measured usage."""
        raise NotImplementedError

    def prepare_restore(self, ctx: Context, dest: Path) -> None:
        """Untimed preparation before restoring into ``dest``."""

    def restore(self, ctx: Context, dest: Path) -> tuple[Usage, Path]:
        """Restore the latest version into ``dest``."""
        raise NotImplementedError

    def stored_bytes(self, ctx: Context) -> int:
        """Bytes the tool keeps for all stored versions."""
        return measure.tree_bytes(ctx.repo)


class Mlvc(Tool):
    """mlvc through its CLI, or through ``mlvc_driver.py`` (the Python API).

    ``frontend``: "cli", "driver", or "auto" (the CLI when ``mlvc`` is on PATH).
    """

    name = "mlvc"

    def __init__(self, frontend: str = "auto") -> None:
        self.cli = shutil.which("mlvc") if frontend in ("auto", "cli") else None
        self.frontend = frontend

    def describe(self) -> str:
        """Which front end is used."""
        return f"mlvc CLI ({self.cli})" if self.cli else "mlvc_driver.py (no `mlvc` on PATH)"

    def missing(self) -> str | None:
        if self.cli:
            return None
        if self.frontend == "cli":
            return "`mlvc` not on PATH"
        try:
            import mlvc_core.repository  # noqa: F401
        except ImportError as exc:
            return f"neither `mlvc` on PATH nor mlvc_core importable ({exc})"
        return None

    def environment(self, ctx: Context) -> dict[str, str]:
        path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(HERE.parent)) if p)
        return {"PYTHONPATH": path}

    def _cli(self, ctx: Context, *args: object) -> list[object]:
        # Run from the scratch directory: `mlvc init` writes an mlvc.toml into the current one.
        return [self.cli, "--repo", ctx.repo, *args]

    def _driver(self, ctx: Context, *args: object) -> list[object]:
        return [sys.executable, HERE / "mlvc_driver.py", args[0], ctx.repo, *args[1:]]

    def setup(self, ctx: Context) -> None:
        cmd = self._cli(ctx, "init") if self.cli else self._driver(ctx, "init")
        ctx.untimed(*cmd, cwd=ctx.work)

    def store(self, ctx: Context, version: Path) -> Usage:
        if self.cli:
            usage = ctx.timed(*self._cli(ctx, "commit", version, "-m", version.name), cwd=ctx.work)
            ids = HEX_ID.findall(usage.stdout)
            if not ids:
                raise measure.CommandFailed(["mlvc", "commit"], 0, f"no id in {usage.stdout!r}")
            ctx.last_id = ids[-1]
        else:
            usage = ctx.timed(*self._driver(ctx, "commit", version, version.name), cwd=ctx.work)
            ctx.last_id = json.loads(usage.stdout.strip().splitlines()[-1])["commit"]
        return usage

    def restore(self, ctx: Context, dest: Path) -> tuple[Usage, Path]:
        if self.cli:
            cmd = self._cli(ctx, "checkout", ctx.last_id, "-o", dest)
        else:
            cmd = self._driver(ctx, "checkout", ctx.last_id, dest)
        return ctx.timed(*cmd, cwd=ctx.work), dest

    def push(self, ctx: Context, url: str) -> Usage:
        """Push the repository to ``url`` (CLI only)."""
        return ctx.timed(*self._cli(ctx, "push", url), cwd=ctx.work)


class Copy(Tool):
    """``cp -r`` of every version: the baseline."""

    name = "cp"
    executables = ("cp",)

    def setup(self, ctx: Context) -> None:
        ctx.repo.mkdir(parents=True)

    def store(self, ctx: Context, version: Path) -> Usage:
        ctx.last_id = version.name
        return ctx.timed("cp", "-r", version, ctx.repo / version.name)

    def restore(self, ctx: Context, dest: Path) -> tuple[Usage, Path]:
        return ctx.timed("cp", "-r", ctx.repo / ctx.last_id, dest), dest


class TarZstd(Tool):
    """One ``tar --zstd`` archive per version (zstd's default level 3)."""

    name = "tar-zstd"
    executables = ("tar", "zstd")

    def setup(self, ctx: Context) -> None:
        ctx.repo.mkdir(parents=True)

    def store(self, ctx: Context, version: Path) -> Usage:
        ctx.last_id = f"{version.name}.tar.zst"
        return ctx.timed(
            "tar", "--zstd", "-cf", ctx.repo / ctx.last_id, "-C", version.parent, version.name
        )

    def prepare_restore(self, ctx: Context, dest: Path) -> None:
        dest.mkdir(parents=True)

    def restore(self, ctx: Context, dest: Path) -> tuple[Usage, Path]:
        return ctx.timed("tar", "--zstd", "-xf", ctx.repo / ctx.last_id, "-C", dest), dest


def git_environment(ctx: Context) -> dict[str, str]:
    """An isolated git identity and global config (the user's own is left alone)."""
    return {
        "GIT_CONFIG_GLOBAL": str(ctx.work / "gitconfig"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@localhost",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@localhost",
    }


class Dvc(Tool):
    """DVC in a git workspace: ``dvc add``, git commit of the .dvc file, ``dvc push`` to a
    local remote. Stored bytes = the remote (the workspace cache is a local copy)."""

    name = "dvc"
    executables = ("dvc", "git")

    def environment(self, ctx: Context) -> dict[str, str]:
        return {
            **git_environment(ctx),
            "DVC_NO_ANALYTICS": "1",
            "DVC_SITE_CACHE_DIR": str(ctx.work / "dvc-site-cache"),
        }

    def setup(self, ctx: Context) -> None:
        w = ctx.workspace
        ctx.untimed("git", "init", "-q", "-b", "main", w)
        for cmd in (
            ["dvc", "init", "-q"],
            ["dvc", "config", "core.analytics", "false"],
            ["dvc", "config", "core.check_update", "false"],
            ["dvc", "remote", "add", "-d", "store", ctx.repo],
            ["git", "add", "-A"],
            ["git", "commit", "-q", "-m", "dvc init"],
        ):
            ctx.untimed(*cmd, cwd=w)

    def prepare(self, ctx: Context, version: Path) -> None:
        replace_dir(version, ctx.workspace / "data")

    def store(self, ctx: Context, version: Path) -> Usage:
        w = ctx.workspace
        return (
            ctx.timed("dvc", "add", "-q", "data", cwd=w)
            + ctx.timed("git", "add", "data.dvc", ".gitignore", cwd=w)
            + ctx.timed("git", "commit", "-q", "-m", version.name, cwd=w)
            + ctx.timed("dvc", "push", "-q", cwd=w)
        )

    def prepare_restore(self, ctx: Context, dest: Path) -> None:
        ctx.untimed("git", "clone", "-q", ctx.workspace, dest)

    def restore(self, ctx: Context, dest: Path) -> tuple[Usage, Path]:
        return ctx.timed("dvc", "pull", "-q", cwd=dest), dest / "data"


class GitLfs(Tool):
    """git-lfs with a local bare repository as the remote. Stored bytes = the bare remote
    (git objects plus its LFS objects)."""

    name = "git-lfs"
    executables = ("git", "git-lfs")

    def environment(self, ctx: Context) -> dict[str, str]:
        return git_environment(ctx)

    def setup(self, ctx: Context) -> None:
        w = ctx.workspace
        ctx.untimed("git", "lfs", "install", "--skip-repo")
        ctx.untimed("git", "init", "-q", "--bare", "-b", "main", ctx.repo)
        ctx.untimed("git", "init", "-q", "-b", "main", w)
        for cmd in (
            ["git", "lfs", "track", "data/**"],
            ["git", "add", ".gitattributes"],
            ["git", "commit", "-q", "-m", "track data with LFS"],
            ["git", "remote", "add", "origin", ctx.repo],
            ["git", "push", "-q", "origin", "main"],
        ):
            ctx.untimed(*cmd, cwd=w)

    def prepare(self, ctx: Context, version: Path) -> None:
        replace_dir(version, ctx.workspace / "data")

    def store(self, ctx: Context, version: Path) -> Usage:
        w = ctx.workspace
        return (
            ctx.timed("git", "add", "-A", "data", cwd=w)
            + ctx.timed("git", "commit", "-q", "-m", version.name, cwd=w)
            + ctx.timed("git", "push", "-q", "origin", "main", cwd=w)
        )

    def restore(self, ctx: Context, dest: Path) -> tuple[Usage, Path]:
        return ctx.timed("git", "clone", "-q", ctx.repo, dest), dest / "data"


class Restic(Tool):
    """restic, repository format 2 with its default ``--compression auto``."""

    name = "restic"
    executables = ("restic",)

    def environment(self, ctx: Context) -> dict[str, str]:
        return {
            "RESTIC_PASSWORD": "benchmark",
            "RESTIC_REPOSITORY": str(ctx.repo),
            "RESTIC_CACHE_DIR": str(ctx.work / "restic-cache"),
        }

    def setup(self, ctx: Context) -> None:
        ctx.untimed("restic", "init", "-q", "--repository-version", "2")

    def store(self, ctx: Context, version: Path) -> Usage:
        return ctx.timed(
            "restic", "backup", "-q", "--host", "bench", version.name, cwd=version.parent
        )

    def restore(self, ctx: Context, dest: Path) -> tuple[Usage, Path]:
        return ctx.timed("restic", "restore", "-q", "latest", "--target", dest), dest


class Borg(Tool):
    """borg, unencrypted, with the given ``--compression`` (``zstd,3`` or ``none``)."""

    executables = ("borg",)

    def __init__(self, name: str, compression: str) -> None:
        self.name = name
        self.compression = compression

    def environment(self, ctx: Context) -> dict[str, str]:
        return {
            "BORG_REPO": str(ctx.repo),
            "BORG_PASSPHRASE": "",
            "BORG_BASE_DIR": str(ctx.work / "borg-base"),
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }

    def setup(self, ctx: Context) -> None:
        ctx.untimed("borg", "init", "-e", "none")

    def store(self, ctx: Context, version: Path) -> Usage:
        ctx.last_id = version.name
        return ctx.timed(
            "borg",
            "create",
            "--compression",
            self.compression,
            f"::{version.name}",
            version.name,
            cwd=version.parent,
        )

    def prepare_restore(self, ctx: Context, dest: Path) -> None:
        dest.mkdir(parents=True)

    def restore(self, ctx: Context, dest: Path) -> tuple[Usage, Path]:
        return ctx.timed("borg", "extract", f"::{ctx.last_id}", cwd=dest), dest


def all_tools(mlvc_frontend: str = "auto") -> list[Tool]:
    """Every compared tool, mlvc first."""
    return [
        Mlvc(mlvc_frontend),
        Copy(),
        TarZstd(),
        Dvc(),
        GitLfs(),
        Restic(),
        Borg("borg-zstd", "zstd,3"),
        Borg("borg-none", "none"),
    ]
