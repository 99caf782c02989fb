"""``mlvc ls`` (experiments) and ``mlvc ps`` (running experiments)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mlvc.cli import _output
from mlvc.cli._options import JsonOpt, state
from mlvc_core.ids import SHORT_LEN

FilterOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--filter",
        "-f",
        help='Keep experiments matching a condition, e.g. "loss < 0.2", "lr = 0.01", '
        '"model.depth = 4", "status = failed" (repeat to combine). A bare name is a param, '
        "else a metric's latest value (the latest column); best.NAME or best is the primary "
        "metric's best value (the best column); latest.NAME and params.NAME say which.",
    ),
]
SortOpt = Annotated[
    str | None,
    typer.Option(
        "--sort",
        "-s",
        help='Sort by a column, param or metric ("created", "loss", "-best": descending), '
        "named as for --filter; NaN and infinite values come last.",
    ),
]

MAX_CELL = 40
"""Characters of one param or metric value shown in a table (``--json`` shows all)."""


def shorten(text: str, limit: int = MAX_CELL) -> str:
    """``text`` cut to ``limit`` characters, ``...`` marking the cut."""
    return text if len(text) <= limit else text[: max(1, limit - 3)] + "..."


def cells(values: dict[str, Any] | None, limit: int, width: int = MAX_CELL) -> str:
    """``k=v`` pairs sorted by key, each value shortened, ``+N`` for those left out."""
    if not values:
        return "-"
    fmt, keys = _output.fmt_value, sorted(values)
    items = []
    for k in keys[:limit]:
        text = fmt(values[k])
        items.append(f"{k}={text if len(text) <= width else shorten(text, width)}")
    if len(keys) > limit:
        items.append(f"+{len(keys) - limit}")
    return " ".join(items)


def _best(e: Any) -> str:
    rec = e.record
    best = rec.best
    if best is None or best.value is None:
        return "-"
    name = (rec.primary_metric[0] if rec.primary_metric else "") or "best"
    return f"{name}={_output.fmt_value(best.value)} @{best.step}"


def _rows(items: list[Any]) -> list[list[str]]:
    """One row of cells per experiment, read from its typed summary (no dict round trip)."""
    rows = []
    for e in items:
        rec = e.record
        rows.append(
            [
                e.id[:SHORT_LEN],
                _output.human_time(rec.created),
                e.status or "-",
                rec.user or "-",
                rec.host or "-",
                cells(rec.params, limit=6),
                _output.fmt_value(rec.latest_step),
                cells(rec.latest_metrics, limit=4, width=16),
                _best(e),
            ]
        )
    return rows


COLUMNS = ["id", "created", "status", "user", "host", "params", "step", "latest", "best"]
"""``step`` and ``latest``: the latest checkpoint's step and metrics; ``best``: the primary
metric's best value and its step."""


def _render(items: list[Any], json_: bool, ids_only: bool, quiet: bool) -> None:
    if json_:
        _output.print_json([e.to_dict() for e in items])
    elif ids_only:
        for e in items:
            _output.out(_output.short_id(e.id))
    elif not items:
        _output.note("no experiments", quiet)
    else:
        _output.table(COLUMNS, _rows(items), right=["step"])


def ls(
    ctx: typer.Context,
    filter_: FilterOpt = None,
    sort: SortOpt = None,
    ids_only: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only experiment ids.")
    ] = False,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Include removed experiments.")] = False,
    json_: JsonOpt = False,
) -> None:
    """List experiments: id, created, status, user, host, params, latest step and metrics, best.

    The latest column shows each metric's value at the latest checkpoint, the best column the
    primary metric's best value and its step. Filters and sorting use what the columns show:
    a bare metric name its latest value, best (or best.NAME) the best one. An unknown name is
    an error.

    Examples:
        mlvc ls

        mlvc ls --filter "loss < 0.2" --filter "lr = 0.01" --sort loss

        mlvc ls --filter "best.val_acc > 0.9" --sort -best

        mlvc rm $(mlvc ls -q --filter "status = crashed")
    """
    from mlvc import experiments
    from mlvc.experiments.rows import paused_gc

    st = state(ctx)
    items = experiments.list(st.repo(), filter=filter_ or None, sort=sort, include_removed=all_)
    with paused_gc():  # no collection walks the listing's objects for each batch of cells
        _render(list(items), json_, ids_only, st.quiet)


def ps(
    ctx: typer.Context,
    ids_only: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only experiment ids.")
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """List running experiments (a live heartbeat in the last minute).

    Examples:
        mlvc ps

        mlvc ps --json
    """
    from mlvc import experiments

    st = state(ctx)
    items = [e for e in experiments.list(st.repo()) if e.status == "running"]
    _render(items, json_, ids_only, st.quiet)


def register(app: typer.Typer) -> None:
    """Add ``ls`` and ``ps`` to ``app``."""
    app.command()(ls)
    app.command()(ps)
