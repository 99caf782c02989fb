"""``mlvc log``: history of a branch, an experiment's checkpoints, or a tag's versions."""

from __future__ import annotations

from typing import Annotated

import typer

from mlvc import commands
from mlvc.cli import _output
from mlvc.cli._options import JsonOpt, complete_ids, state


def log(
    ctx: typer.Context,
    ref: Annotated[
        str | None,
        typer.Argument(
            help="A branch, experiment id, tag or commit id.",
            show_default="main",
            autocompletion=complete_ids,
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", help="Show at most N entries.", min=1)
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Show history, newest first.

    A branch lists its commits; an experiment its checkpoints (step, metrics); a tag every
    version it has named, with when it was moved (the rollback trail).

    Examples:
        mlvc log

        mlvc log 1a2b3c4d

        mlvc log production
    """
    st = state(ctx)
    result = commands.log(st.repo(), ref, limit=limit)
    if json_:
        _output.print_json(result.to_dict())
        return
    entries = result.entries
    if result.kind == "tag":
        rows = [
            [
                "*" if e.current else "",
                _output.human_time(e.tagged_at),
                _output.short_id(e.commit.id),
                _describe(e.commit),
                e.tagged_by or "",
            ]
            for e in entries
        ]
        _output.table(
            ["", "tagged", "id", "what", "by"], rows, title=f"tag {result.ref.split('/', 1)[1]}"
        )
    elif result.kind == "experiment":
        rows = [
            [
                _output.short_id(e.commit.id),
                _output.human_time(e.commit.time),
                "start" if e.commit.type == "experiment" else _output.fmt_value(e.commit.step),
                _output.fmt_mapping(e.commit.metrics)
                if e.commit.type == "checkpoint"
                else e.commit.message or "-",
            ]
            for e in entries
        ]
        _output.table(["id", "time", "step", "metrics"], rows, right=["step"])
    else:
        rows = [
            [
                _output.short_id(e.commit.id),
                _output.human_time(e.commit.time),
                e.commit.author,
                _describe(e.commit),
            ]
            for e in entries
        ]
        _output.table(["id", "time", "author", "message"], rows)


def _describe(c: commands.CommitInfo) -> str:
    if c.type == "checkpoint":
        metrics = _output.fmt_mapping(c.metrics, limit=4)
        return f"experiment {_output.short_id(c.experiment)} step {c.step} {metrics}".rstrip()
    if c.type == "experiment":
        return f"experiment {_output.short_id(c.id)} start"
    return c.message.splitlines()[0] if c.message else "-"


def register(app: typer.Typer) -> None:
    """Add ``log`` to ``app``."""
    app.command()(log)
