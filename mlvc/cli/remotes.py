"""``mlvc remote add/remove/list``: names for other repositories, kept in ``mlvc.toml``.

``mlvc push`` and ``mlvc pull`` take a remote's name (default ``origin``) or a URL; ``mlvc
clone`` records where it cloned from as ``origin``. Only names and URLs are stored, never
credentials.
"""

from __future__ import annotations

from typing import Annotated

import typer

from mlvc.cli import _output
from mlvc.cli._options import JsonOpt, complete_remotes, state

NameArg = Annotated[
    str,
    typer.Argument(
        help="The remote's name (e.g. origin).",
        show_default=False,
        autocompletion=complete_remotes,
    ),
]

remote_app = typer.Typer(
    name="remote",
    no_args_is_help=True,
    help="Name other repositories: add, remove, list (stored in mlvc.toml).",
)


@remote_app.command("add")
def add(
    ctx: typer.Context,
    name: NameArg,
    url: Annotated[
        str,
        typer.Argument(help="A path or URL (s3://bucket/prefix, gs://...).", show_default=False),
    ],
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Replace an existing remote.")
    ] = False,
) -> None:
    """Name a remote repository.

    Examples:
        mlvc remote add origin s3://team-bucket/mlvc

        mlvc push
    """
    from mlvc.project_config import add_remote

    path = add_remote(name, url, replace=force)
    _output.note(f"remote {name} -> {url} (in {path})", state(ctx).quiet)


@remote_app.command("remove")
def remove(ctx: typer.Context, name: NameArg) -> None:
    """Forget a remote (the repository itself is not touched).

    Examples:
        mlvc remote remove origin
    """
    from mlvc.project_config import remove_remote

    remove_remote(name)
    _output.note(f"removed remote {name}", state(ctx).quiet)


@remote_app.command("list")
def list_(json_: JsonOpt = False) -> None:
    """List remotes: name and URL.

    Examples:
        mlvc remote list
    """
    from mlvc.project_config import remotes

    known = remotes()
    if json_:
        _output.print_json([{"name": n, "url": u} for n, u in known.items()])
        return
    for name, url in known.items():
        _output.out(f"{name}\t{url}")


def register(app: typer.Typer) -> None:
    """Add the ``remote`` group to ``app``."""
    app.add_typer(remote_app)
