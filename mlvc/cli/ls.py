"""``mlvc ls`` (experiments) and ``mlvc ps`` (running experiments)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mlvc.cli import _output
from mlvc.cli._options import JsonOpt, state

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
    items = [f"{k}={shorten(_output.fmt_value(values[k]), width)}" for k in sorted(values)]
    if len(items) > limit:
        items = items[:limit] + [f"+{len(items) - limit}"]
    return " ".join(items)


def _best(d: dict[str, Any]) -> str:
    best = d.get("best") or {}
    primary = d.get("primary_metric") or {}
    if not best or best.get("value") is None:
        return "-"
    name = primary.get("name") or "best"
    return f"{name}={_output.fmt_value(best.get('value'))} @{best.get('step')}"


def _rows(items: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            _output.short_id(d.get("id")),
            _output.human_time(d.get("created")),
            str(d.get("status") or "-"),
            str(d.get("user") or "-"),
            str(d.get("host") or "-"),
            cells(d.get("params"), limit=6),
            _output.fmt_value(d.get("latest_step")),
            cells(d.get("latest_metrics"), limit=4, width=16),
            _best(d),
        ]
        for d in items
    ]


COLUMNS = ["id", "created", "status", "user", "host", "params", "step", "latest", "best"]
"""``step`` and ``latest``: the latest checkpoint's step and metrics; ``best``: the primary
metric's best value and its step."""


def _table_fields(e: Any) -> dict[str, Any]:
    """What a table row shows, straight from the summary (``to_dict`` does much more)."""
    s = e.summary
    return {
        "id": e.id,
        "created": s.get("created"),
        "status": e.status,
        "user": s.get("user"),
        "host": s.get("host"),
        "params": s.get("params"),
        "latest_step": s.get("latest_step"),
        "latest_metrics": s.get("latest_metrics"),
        "best": s.get("best"),
        "primary_metric": s.get("primary_metric"),
    }


def _render(items: list[Any], json_: bool, ids_only: bool, quiet: bool) -> None:
    if json_:
        _output.print_json([e.to_dict() for e in items])
    elif ids_only:
        for e in items:
            _output.out(_output.short_id(e.id))
    elif not items:
        _output.note("no experiments", quiet)
    else:
        _output.table(COLUMNS, _rows([_table_fields(e) for e in items]), right=["step"])


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

    st = state(ctx)
    items = experiments.list(st.repo(), filter=filter_ or None, sort=sort, include_removed=all_)
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
