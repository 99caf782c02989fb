"""``mlvc stats``: logical vs stored bytes, dedup ratio, counts."""

from __future__ import annotations

import typer

from mlvc import commands
from mlvc.cli import _output
from mlvc.cli._options import JsonOpt, state


def stats(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Show how much the repository holds and how much it stores.

    Logical bytes count every version of every file as if stored separately; stored bytes
    are what the packs take; their ratio is what deduplication and compression save.

    Examples:
        mlvc stats

        mlvc stats --json
    """
    st = state(ctx)
    r = commands.stats(st.repo())
    if json_:
        _output.print_json(r.to_dict())
        return
    _output.kv(
        [
            ("logical", _output.human_size(r.logical_bytes)),
            ("stored", _output.human_size(r.stored_bytes)),
            ("dedup ratio", f"{r.dedup_ratio:.2f}x"),
            ("chunks", str(r.chunks)),
            ("objects", str(r.objects)),
            ("packs", str(r.packs)),
            ("commits", str(r.commits)),
            ("refs", str(r.refs)),
        ]
    )


def register(app: typer.Typer) -> None:
    """Add ``stats`` to ``app``."""
    app.command()(stats)
