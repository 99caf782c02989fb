"""``mlvc push`` / ``mlvc pull`` / ``mlvc clone``: move what the other side lacks.

Between any two repositories (local, S3, GCS): only objects the destination does not hold
are sent, verified on the way, then refs move (forward only unless ``--force``). ``push`` and
``pull`` take a remote's name (``mlvc remote``) or a URL, ``origin`` when given none; ``clone``
records its source as the new project's ``origin``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mlvc import commands
from mlvc import project_config as _project
from mlvc.cli import _options, _output
from mlvc.cli._options import JsonOpt, state

if TYPE_CHECKING:
    from mlvc_core.transfer import TransferReport

UrlArg = Annotated[
    str,
    typer.Argument(
        help="The other repository: a path or URL (s3://bucket/prefix, gs://...).",
        show_default=False,
    ),
]
RemoteArg = Annotated[
    str | None,
    typer.Argument(
        help="A remote's name (`mlvc remote list`) or a path or URL; default: origin.",
        show_default=False,
        autocompletion=_options.complete_remotes,
    ),
]
RefOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--ref", "-r", help="Only this tag, branch or experiment (repeatable; default: all)."
    ),
]
ForceRefsOpt = Annotated[bool, typer.Option("--force", "-f", help="Move refs that diverged too.")]

EXIT_REFS_LEFT = 12
"""Some refs diverged and were left alone (the code of a ref conflict in mlvc.cli.main)."""


def _exit_code(rep: TransferReport) -> int:
    """Non-zero when a ref that diverged was left alone: a script must not take it as done.

    Refs the source could not read are named in a warning; the rest was copied (exit 0).
    """
    return EXIT_REFS_LEFT if rep.refs_skipped else 0


def _render(r: commands.TransferResult, verb: str, json_: bool, quiet: bool) -> None:
    if json_:
        _output.print_json(r.to_dict())
        return
    rep = r.report
    if r.created:
        _output.note(f"created a repository at {r.destination}", quiet)
    _output.out(
        f"{verb} {rep.objects_sent} objects ({_output.human_size(rep.bytes_sent)}); "
        f"{rep.objects_present} already there; {len(rep.refs_updated)} refs updated"
    )
    if rep.refs_skipped:
        _output.warn(
            f"{len(rep.refs_skipped)} refs diverged and were left alone: "
            f"{', '.join(rep.refs_skipped)} (pass --force to overwrite them)"
        )
    if rep.refs_unreadable:
        _output.warn(
            f"{len(rep.refs_unreadable)} refs could not be read and were not sent: "
            f"{', '.join(rep.refs_unreadable)} (`mlvc fsck` says why)"
        )


def push(
    ctx: typer.Context,
    remote: RemoteArg = None,
    ref: RefOpt = None,
    force: ForceRefsOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Send refs and what they reach to a remote (default: origin).

    All refs unless --ref names some. The other repository is created if there is none
    there. A ref that diverged is left alone (exit 12) unless --force. Endpoints and
    credentials come from the environment (AWS_ENDPOINT_URL, AWS_PROFILE,
    GOOGLE_APPLICATION_CREDENTIALS).

    Examples:
        mlvc push

        mlvc push s3://team-bucket/mlvc

        mlvc push backup --ref production
    """
    st = state(ctx)
    url = _project.remote_url(remote)
    with _output.progress("pushing", quiet=st.quiet) as bar:
        r = commands.push(st.repo(), url, refs=ref, force=force, progress=bar, total=bar.set_total)
    _render(r, "sent", json_, st.quiet)
    if code := _exit_code(r.report):
        raise typer.Exit(code)


def pull(
    ctx: typer.Context,
    remote: RemoteArg = None,
    ref: RefOpt = None,
    force: ForceRefsOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Fetch refs and what they reach from a remote (default: origin).

    All refs unless --ref names some. A ref that diverged is left alone (exit 12) unless
    --force.

    Examples:
        mlvc pull

        mlvc pull s3://team-bucket/mlvc --ref production
    """
    st = state(ctx)
    url = _project.remote_url(remote)
    with _output.progress("pulling", quiet=st.quiet) as bar:
        r = commands.pull(st.repo(), url, refs=ref, force=force, progress=bar, total=bar.set_total)
    _render(r, "received", json_, st.quiet)
    if code := _exit_code(r.report):
        raise typer.Exit(code)


def clone(
    ctx: typer.Context,
    url: UrlArg,
    directory: Annotated[
        Path,
        typer.Argument(
            help="New project directory (gets .mlvc/ and mlvc.toml).", show_default=False
        ),
    ],
    json_: JsonOpt = False,
) -> None:
    """Copy a repository into DIR/.mlvc; write DIR/mlvc.toml naming it.

    The source is recorded as the remote `origin`, so `mlvc pull` and `mlvc push` in DIR need
    no URL.

    Examples:
        mlvc clone s3://team-bucket/mlvc my-project

        cd my-project && mlvc ls
    """
    st = state(ctx)
    with _output.progress("cloning", quiet=st.quiet) as bar:
        r = commands.clone(url, directory, progress=bar, total=bar.set_total)
    source = url if "://" in url else os.path.abspath(url)
    _project.add_remote(_project.DEFAULT_REMOTE, source, cwd=directory, replace=True)
    if not json_:
        _output.note(f"cloned {r.source} into {directory}", st.quiet)
    _render(r, "received", json_, st.quiet)
    if code := _exit_code(r.report):
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``push``, ``pull`` and ``clone`` to ``app``."""
    app.command()(push)
    app.command()(pull)
    app.command()(clone)
