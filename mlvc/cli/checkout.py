"""``mlvc checkout``: restore the files of an experiment, checkpoint, commit, tag or branch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlvc.cli import _output
from mlvc.cli._options import ForceOpt, IdArg, JsonOpt, state
from mlvc.experiments import checkout as checkouts
from mlvc.experiments import revisions

_LIST_AT_MOST = 20


def checkout(
    ctx: typer.Context,
    id_: IdArg,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Directory to write into (created if needed).")
    ] = Path("."),
    path: Annotated[
        list[str] | None,
        typer.Option(
            "--path", "-p", help="Only this file or directory of the snapshot (repeatable)."
        ),
    ] = None,
    all_: Annotated[
        bool,
        typer.Option("--all", "-a", help="For a checkpoint: the whole snapshot, code included."),
    ] = False,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Restore files; never overwrites existing files unless -f.

    Every conflict (a file with other content, a file where a directory goes, a directory or
    link in the way) is listed before anything is written; -f replaces them all. Files
    already as the snapshot has them are left alone. Links that would lead outside the
    output directory (absolute ones included) are skipped with a warning.

    For an experiment id: its best checkpoint (latest if it has no primary metric). Also
    accepts exp@latest, exp@best, exp@step=N, tags and branches. A checkpoint restores its
    own files (the weights); --all adds the code snapshot. A commit restores everything.

    Examples:
        mlvc checkout 1a2b3c4d -o best-model/

        mlvc checkout production -o deploy/ --path model.safetensors

        mlvc checkout 1a2b3c4d@latest -o resume/ -f
    """
    st = state(ctx)
    repo = st.repo()
    target = revisions.resolve(repo, id_)
    path = path or None  # no --path: the target's own files
    total = (
        checkouts.checkout_size(repo, target, path, everything=all_)
        if _output.shows_progress(st.quiet)
        else None
    )
    with _output.progress("checking out", total=total, quiet=st.quiet) as bar:
        r = checkouts.checkout(
            repo, target, output, paths=path, force=force, everything=all_, progress=bar
        )
    for rel, why in r.skipped:
        _output.warn(f"skipped {rel}: {why}")
    if json_:
        _output.print_json(r.to_dict())
        return
    what = f"{r.target.kind} {_output.short_id(r.target.id)}"
    if r.target.kind == "experiment" and r.target.commit_id.hex() == r.target.id:
        what += " (no checkpoint yet: its code snapshot)"
    elif r.target.kind == "experiment":
        what += f" (checkpoint {_output.short_id(r.target.commit_id.hex())})"
    same = f"; {r.unchanged} already there, unchanged" if r.unchanged else ""
    _output.note(
        f"wrote {len(r.files)} files ({_output.human_size(r.bytes)}) of {what} to {r.dest}{same}",
        st.quiet,
    )
    if not st.quiet:
        for f in r.files[:_LIST_AT_MOST]:
            _output.note(f"  {f}")
        if len(r.files) > _LIST_AT_MOST:
            _output.note(f"  ... and {len(r.files) - _LIST_AT_MOST} more")


def register(app: typer.Typer) -> None:
    """Add ``checkout`` to ``app``."""
    app.command()(checkout)
