"""``mlvc init``: create a repository and write ``mlvc.toml`` naming it."""

from __future__ import annotations

from typing import Annotated

import typer

from mlvc import commands
from mlvc.cli import _output
from mlvc.cli._options import JsonOpt, state
from mlvc_core.errors import UsageError


def parse_options(pairs: list[str] | None) -> dict[str, object]:
    """``["endpoint_url=http://x", "anon=true"]`` -> a dict (``true``/``false``/numbers typed).

    Raises:
        UsageError: An item without ``=``.
    """
    options: dict[str, object] = {}
    for item in pairs or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"storage option {item!r} is not KEY=VALUE")
        typed: object = value
        if value.lower() in ("true", "false"):
            typed = value.lower() == "true"
        else:
            try:
                typed = int(value)
            except ValueError:
                pass
        options[key.strip()] = typed
    return options


def init(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Argument(
            help="Where the repository lives: a path or an fsspec URL.", show_default=".mlvc"
        ),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--storage-option",
            "-o",
            help="fsspec storage option KEY=VALUE written to mlvc.toml (never credentials).",
        ),
    ] = None,
    level: Annotated[
        int,
        typer.Option(
            "--compression-level",
            "-l",
            help="zstd level for a new repository: 1 is fast, higher is smaller and slower, "
            "0 stores raw. Fixed once the repository exists.",
        ),
    ] = 1,
    byte_planes: Annotated[
        bool,
        typer.Option(
            "--byte-planes/--no-byte-planes",
            help="Split numeric data (weights) into byte planes before compressing: "
            "10-15% smaller checkpoints.",
        ),
    ] = True,
    json_: JsonOpt = False,
) -> None:
    """Create a repository and write mlvc.toml naming it.

    If a repository already exists there, the project is connected to it. In a git project,
    the repository (when it lies inside) and mlvc's checkpoint copy directory are added to
    .gitignore. Credentials come from the environment (AWS_PROFILE, AWS_ENDPOINT_URL,
    GOOGLE_APPLICATION_CREDENTIALS).

    Examples:
        mlvc init

        mlvc init s3://my-bucket/mlvc

        AWS_ENDPOINT_URL=http://localhost:9000 mlvc init s3://bucket/repo
    """
    st = state(ctx)
    result = commands.init(
        url or st.repo_url,
        storage_options=parse_options(option),
        compression_level=level,
        byte_planes=byte_planes,
    )
    ignored = _git_ignore(result.url, result.config_path)
    if json_:
        _output.print_json(result.to_dict())
        return
    if ignored:
        _output.note(f"added {ignored} to .gitignore", st.quiet)
    verb = "created a repository" if result.created else "using the existing repository"
    _output.note(f"{verb} at {result.url}; wrote {result.config_path}", st.quiet)
    if result.previous_url is not None:
        _output.warn(
            f"the project used the repository at {result.previous_url} until now; "
            f"`mlvc init {result.previous_url}` goes back to it"
        )


def _git_ignore(url: str, config_path: str) -> str | None:
    """In a git project, keep the local repository and checkpoint copies out of git."""
    import os
    from pathlib import Path

    from mlvc.tracking.ignore import ensure_git_ignores

    project = Path(config_path).parent
    added = []
    if "://" not in url or url.startswith("file://"):
        repo = Path(url.removeprefix("file://"))
        repo = repo if repo.is_absolute() else project / repo
        if ensure_git_ignores(project, repo):
            added.append(os.path.relpath(repo, project) + "/")
    if ensure_git_ignores(project, project / ".mlvc-staging"):
        added.append(".mlvc-staging/")
    return ", ".join(added) or None


def register(app: typer.Typer) -> None:
    """Add ``init`` to ``app``."""
    app.command()(init)
