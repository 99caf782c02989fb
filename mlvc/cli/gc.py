"""``mlvc gc``: free what no experiment, tag or branch reaches (dry run by default)."""

from __future__ import annotations

from typing import Annotated

import typer

from mlvc import porcelain
from mlvc.cli import _output
from mlvc.cli._options import JsonOpt, state


def gc(
    ctx: typer.Context,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Really delete (default: only report).")
    ] = False,
    grace: Annotated[
        str,
        typer.Option(
            "--grace",
            help="Keep data younger than this (a concurrent writer may still need it): "
            "0, 30m, 1h, 2d.",
        ),
    ] = "1h",
    json_: JsonOpt = False,
) -> None:
    """Find (and with --yes, free) data nothing reaches any more.

    Without --yes nothing is deleted: it says what would be freed. Data younger than the
    grace period is kept, so a concurrent training run's fresh uploads survive.

    Examples:
        mlvc gc

        mlvc gc --yes

        mlvc gc --yes --grace 0
    """
    st = state(ctx)
    seconds = porcelain.parse_duration(grace)
    repo = st.repo()
    with _output.progress("scanning", quiet=st.quiet) as bar:
        r = porcelain.gc(repo, delete=yes, grace=seconds, progress=bar)
    if json_:
        _output.print_json(r.to_dict())
        return
    verb = "would free" if r.dry_run else "freed"
    packs = r.packs_deleted + r.packs_repacked + r.orphans_deleted
    _output.out(
        f"{verb} {_output.human_size(r.bytes_freed)} ({packs} of {r.packs_total} packs); "
        f"keeping {_output.human_size(r.bytes_kept)}, {r.reachable_objects} reachable objects"
    )
    if r.packs_merged:
        merge = "would merge" if r.dry_run else "merged"
        _output.note(f"{merge} {r.packs_merged} small packs into fewer, larger ones", st.quiet)
    in_grace = r.packs_in_grace
    if in_grace:
        _output.note(
            f"{in_grace} packs are younger than the grace period ({grace}) and were left alone",
            st.quiet,
        )
    if r.dry_run and r.bytes_freed:
        _output.note("run `mlvc gc --yes` to free it", st.quiet)


def register(app: typer.Typer) -> None:
    """Add ``gc`` to ``app``."""
    app.command()(gc)
