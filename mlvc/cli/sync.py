"""``mlvc sync``: send what runs kept in the local outbox when the storage did not answer."""

from __future__ import annotations

import typer

from mlvc.cli import _output
from mlvc.cli._options import JsonOpt, state


def sync(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Send the checkpoints and run ends kept in the local outbox to their repositories.

    A run whose storage did not answer before it ended keeps what was pending on local disk
    (under the cache directory); this sends it, in order, and removes what was sent. Entries
    that still fail are kept for the next sync (exit status 1).

    Examples:
        mlvc sync

        mlvc sync --json
    """
    from mlvc.tracking import outbox

    st = state(ctx)
    report = outbox.sync()
    if json_:
        _output.print_json(report.to_dict())
    else:
        _output.note(
            f"sent {report.sent}, already stored {report.already}, kept {len(report.failed)}",
            st.quiet,
        )
        for where, why in report.failed:
            _output.error(f"kept {where}: {why}")
    if report.failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``sync`` to ``app``."""
    app.command()(sync)
