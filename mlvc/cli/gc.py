"""``mlvc gc``: free what no experiment, tag or branch reaches (dry run by default)."""

from __future__ import annotations

from typing import Annotated

import typer

from mlvc import commands
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
            help="While a writer may still be active (a lock not refreshed for minutes), keep "
            "packs younger than this: 0, 30m, 1h, 2d. With no writer left it changes nothing.",
        ),
    ] = "1h",
    json_: JsonOpt = False,
) -> None:
    """Find (and with --yes, free) data nothing reaches any more.

    Without --yes nothing is deleted: it says what would be freed. gc waits for no one: it
    refuses to delete while a writer is active, and frees everything unreachable when none
    is. Only a writer that may still be alive without refreshing its lock (another host cut
    off) keeps its packs younger than the grace period.

    Examples:
        mlvc gc

        mlvc gc --yes

        mlvc gc --yes --grace 0
    """
    st = state(ctx)
    seconds = commands.parse_duration(grace)
    repo = st.repo()
    with _output.progress("scanning", quiet=st.quiet) as bar:
        r = commands.gc(repo, delete=yes, grace=seconds, progress=bar)
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
    if r.temp_files_deleted:
        verb_tmp = "would remove" if r.dry_run else "removed"
        _output.note(
            f"{verb_tmp} {r.temp_files_deleted} temporary files of interrupted writes", st.quiet
        )
    if r.packs_in_grace:
        who = r.writers[0] + (f" and {len(r.writers) - 1} more" if len(r.writers) > 1 else "")
        _output.note(
            f"{'would keep' if r.dry_run else 'kept'} {r.packs_in_grace} packs younger than "
            f"the grace period ({grace}): "
            f"a writer may still publish them: {who}",
            st.quiet,
        )
    if r.dry_run and r.bytes_freed:
        _output.note("run `mlvc gc --yes` to free it", st.quiet)


def register(app: typer.Typer) -> None:
    """Add ``gc`` to ``app``."""
    app.command()(gc)
