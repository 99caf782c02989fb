"""``mlvc rm``: hide experiments or checkpoints (``mlvc gc`` frees their space)."""

from __future__ import annotations

from typing import Annotated

import typer

from mlvc.cli import _output
from mlvc.cli._options import JsonOpt, complete_ids, state


def rm(
    ctx: typer.Context,
    ids: Annotated[
        list[str],
        typer.Argument(
            help="Experiment or checkpoint ids (7+ hex digits), or exp@best / exp@latest / exp@N.",
            show_default=False,
            autocompletion=complete_ids,
        ),
    ],
    json_: JsonOpt = False,
) -> None:
    """Remove experiments or checkpoints from view; `mlvc gc --yes` frees their space.

    Examples:
        mlvc rm 1a2b3c4d

        mlvc rm $(mlvc ls -q --filter "status = crashed")
    """
    from mlvc import experiments

    st = state(ctx)
    removed = experiments.remove(ids, repository=st.repo())
    if json_:
        _output.print_json(removed)
        return
    _output.note(f"removed {len(ids)} item(s); run `mlvc gc --yes` to free their space", st.quiet)


def register(app: typer.Typer) -> None:
    """Add ``rm`` to ``app``."""
    app.command()(rm)
