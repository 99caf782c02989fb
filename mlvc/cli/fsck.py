"""``mlvc fsck``: verify every object; exit non-zero and list what is damaged."""

from __future__ import annotations

import typer

from mlvc import commands
from mlvc.cli import _output
from mlvc.cli._options import JsonOpt, state

EXIT_DAMAGED = 3
"""Same code as an integrity error anywhere else (see the table in :mod:`mlvc.cli.main`)."""


def fsck(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Verify every pack, index and object, and that every ref reaches only stored data.

    Exits 0 if the repository is intact, 3 if anything is damaged or missing (all of it is
    listed).

    Examples:
        mlvc fsck

        mlvc -R s3://bucket/repo fsck --json
    """
    st = state(ctx)
    repo = st.repo()
    total = commands.stored_size(repo) if _output.shows_progress(st.quiet) else None
    with _output.progress("checking", total=total, quiet=st.quiet) as bar:
        r = commands.fsck(repo, progress=bar)
    if json_:
        _output.print_json(r.to_dict())
    else:
        for w in r.warnings:
            _output.warn(f"{w.kind} {w.key}: {w.message}")
        if r.ok:
            _output.out(
                f"ok: {r.objects_checked} objects, {_output.human_size(r.bytes_checked)} verified"
            )
        else:
            _output.table(
                ["problem", "key", "detail"], [[p.kind, p.key, p.message] for p in r.problems]
            )
            _output.error(
                f"{len(r.problems)} problem(s) in {r.objects_checked} objects checked; "
                "the damaged data must be restored from another copy (mlvc pull)"
            )
    if not r.ok:
        raise typer.Exit(EXIT_DAMAGED)


def register(app: typer.Typer) -> None:
    """Add ``fsck`` to ``app``."""
    app.command()(fsck)
