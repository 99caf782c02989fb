"""``mlvc commit``: snapshot files or directories as a commit on a branch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlvc import commands
from mlvc.cli import _output
from mlvc.cli._options import JsonOpt, state


def commit(
    ctx: typer.Context,
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Files or directories (one directory becomes the snapshot's root).",
            show_default=False,
        ),
    ],
    message: Annotated[str, typer.Option("--message", "-m", help="What this snapshot is.")],
    branch: Annotated[
        str, typer.Option("--branch", "-b", help="Branch to advance.")
    ] = commands.DEFAULT_BRANCH,
    json_: JsonOpt = False,
) -> None:
    """Snapshot files or directories as a commit; print its id.

    Unchanged content costs nothing: only bytes the repository lacks are stored, and files
    unchanged since the last commit are not even read again.

    Examples:
        mlvc commit data/ -m "raw data, May export"

        mlvc commit model.safetensors config.yaml -m "fine-tuned" --branch prod
    """
    st = state(ctx)
    repo = st.repo()
    total = commands.input_size(paths) if _output.shows_progress(st.quiet) else None
    with _output.progress("committing", total=total, quiet=st.quiet) as bar:
        result = commands.commit(repo, paths, message, branch=branch, progress=bar)
    if json_:
        _output.print_json(result.to_dict())
        return
    _output.out(_output.short_id(result.id))
    _output.note(
        f"{result.branch}: {result.files} files, {_output.human_size(result.total_bytes)}; "
        f"{_output.human_size(result.new_bytes)} new "
        f"({_output.human_size(result.stored_bytes)} stored)",
        st.quiet,
    )


def register(app: typer.Typer) -> None:
    """Add ``commit`` to ``app``."""
    app.command()(commit)
