"""``mlvc tag``: name a version (``production``); moving a tag is the rollback."""

from __future__ import annotations

from typing import Annotated

import typer

from mlvc import commands
from mlvc.cli import _output
from mlvc.cli._options import JsonOpt, complete_ids, state
from mlvc_core.errors import UsageError


def tag(
    ctx: typer.Context,
    name: Annotated[
        str | None,
        typer.Argument(
            help="Tag name (letters, digits, . _ -).",
            show_default=False,
            autocompletion=complete_ids,
        ),
    ] = None,
    id_: Annotated[
        str | None,
        typer.Argument(
            help="What to tag: experiment (its best checkpoint), checkpoint, commit, exp@best...",
            show_default=False,
            autocompletion=complete_ids,
        ),
    ] = None,
    delete: Annotated[bool, typer.Option("--delete", "-d", help="Delete the tag NAME.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Set, move, delete or list tags.

    Moving a tag remembers where it pointed, so rolling back is tagging the old id again;
    `mlvc log NAME` shows every version the tag has named.

    Examples:
        mlvc tag production 1a2b3c4d@best

        mlvc log production

        mlvc tag production 9f8e7d6c      (roll back)

        mlvc tag -d staging

        mlvc tag
    """
    st = state(ctx)
    repo = st.repo()
    if delete:
        if name is None or id_ is not None:
            raise UsageError("usage: mlvc tag -d NAME")
        info = commands.tag_delete(repo, name)
        if info is None:  # unreadable: removed all the same
            if json_:
                _output.print_json({"name": name, "target": None})
            else:
                _output.note(f"deleted tag {name} (it could not be read)", st.quiet)
            return
        if json_:
            _output.print_json(info.to_dict())
        else:
            _output.note(
                f"deleted tag {info.name} (was {_output.short_id(info.target.id)})", st.quiet
            )
        return
    if name is None:
        tags = commands.tag_list(repo)
        if json_:
            _output.print_json([t.to_dict() for t in tags])
        elif not tags:
            _output.note("no tags", st.quiet)
        else:
            rows = [
                [
                    t.name,
                    _output.short_id(t.target.id),
                    _output.human_time(t.set_at),
                    t.set_by or "-",
                    str(t.versions),
                ]
                for t in tags
            ]
            _output.table(["tag", "id", "set", "by", "versions"], rows, right=["versions"])
        return
    if id_ is None:
        raise UsageError(
            "usage: mlvc tag NAME ID (or mlvc tag to list, mlvc tag -d NAME to delete)"
        )
    info = commands.tag_set(repo, name, id_)
    if json_:
        _output.print_json(info.to_dict())
        return
    new = _output.short_id(info.target.id)
    if info.previous is None:
        _output.note(f"tagged {new} as {info.name}", st.quiet)
    elif info.previous == info.target.id:
        _output.note(f"{info.name} already points at {new}", st.quiet)
    else:
        _output.note(f"moved {info.name}: {_output.short_id(info.previous)} -> {new}", st.quiet)


def register(app: typer.Typer) -> None:
    """Add ``tag`` to ``app``."""
    app.command()(tag)
