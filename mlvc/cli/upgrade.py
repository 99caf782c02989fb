"""``mlvc upgrade``: bring a repository to this mlvc's format version."""

from __future__ import annotations

import typer

from mlvc import commands
from mlvc.cli import _output
from mlvc.cli._options import state


def upgrade(ctx: typer.Context) -> None:
    """Upgrade the repository's format to this mlvc's version (also done on first write).

    Older mlvc versions refuse an upgraded repository with a message saying so.

    Examples:
        mlvc upgrade
    """
    st = state(ctx)
    before, after = commands.upgrade(st.repo())
    if before == after:
        _output.out(f"already at format version {after}")
    else:
        _output.out(f"upgraded from format version {before} to {after}")


def register(app: typer.Typer) -> None:
    """Add ``upgrade`` to ``app``."""
    app.command()(upgrade)
