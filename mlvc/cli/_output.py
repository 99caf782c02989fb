"""Rendering for the command line: tables, ``--json``, short ids, sizes, times, progress.

The only module of mlvc that imports ``rich``. Commands hand it plain data (dicts, lists,
dataclasses turned into dicts by :mod:`mlvc.commands`) and never format by hand, so every command
prints sizes, ids and times the same way and ``--json`` output stays stable for scripts.

Conventions:

* results go to stdout, messages (notes, warnings, errors, progress) to stderr;
* ``--json`` prints one JSON document (indented, sorted keys, full ids) and nothing else on
  stdout;
* progress bars appear only when stderr is a terminal and ``--quiet`` is off.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain
from typing import TYPE_CHECKING, Any

from mlvc_core.ids import SHORT_LEN  # hex digits of an id shown to people

if TYPE_CHECKING:  # rich costs ~50 ms to import: only commands that draw tables pay for it
    from rich.console import Console

_NON_TTY_WIDTH = 200
"""Table width when stdout is not a terminal (pipes should not wrap or truncate)."""
_IS_STR = str.__instancecheck__


def _console(stderr: bool = False) -> Console:
    """A console over the *current* ``sys.stdout``/``sys.stderr`` (test runners swap them)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    return Console(
        file=stream,
        width=None if tty else _NON_TTY_WIDTH,
        no_color=not tty,
        highlight=False,
        soft_wrap=not tty,
    )


# --------------------------------------------------------------------------------- formatting


def short_id(hex_id: str | None) -> str:
    """The 12-digit display form of a hex id ('' for None)."""
    return (hex_id or "")[:SHORT_LEN]


def human_size(n: int | float | None) -> str:
    """``1536`` -> ``'1.5 KiB'`` (binary units; ``-`` for None)."""
    if n is None:
        return "-"
    n = float(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{sign}{int(n)} {unit}" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_time(value: float | str | None) -> str:
    """A timestamp (epoch seconds or ISO 8601) as local ``YYYY-MM-DD HH:MM:SS``."""
    if value is None or value == "":
        return "-"
    try:
        if isinstance(value, (int, float)):
            t = _dt.datetime.fromtimestamp(float(value))
            if t.year >= 1000:  # isoformat pads years to 4 digits, strftime's %Y may not
                return t.isoformat(" ", "seconds")  # the same text, 3x faster
        else:
            t = _dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
            if t.tzinfo is not None:
                t = t.astimezone()
        return t.strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, OverflowError, OSError):
        return str(value)


def fmt_value(v: Any) -> str:
    """A param or metric value, compactly (floats with 6 significant digits)."""
    kind = type(v)
    if kind is float:
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    if kind is str:
        return v  # type: ignore[no-any-return]
    if kind is int:
        return str(v)
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {fmt_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def fmt_mapping(d: dict[str, Any] | None, limit: int | None = None) -> str:
    """``{'lr': 0.01, 'bs': 32}`` -> ``'bs=32 lr=0.01'`` (sorted; '-' if empty)."""
    if not d:
        return "-"
    items = [f"{k}={fmt_value(d[k])}" for k in sorted(d)]
    if limit is not None and len(items) > limit:
        items = items[:limit] + [f"+{len(items) - limit}"]
    return " ".join(items)


# ----------------------------------------------------------------------------------- printing


def _json_default(o: Any) -> Any:
    if isinstance(o, bytes):
        return o.hex()
    to_dict = getattr(o, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    return str(o)


def _finite(o: Any) -> Any:
    """Replace NaN/inf (not JSON) by their string names, recursively."""
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, dict):
        return {str(k): _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def print_json(data: Any) -> None:
    """Print one JSON document on stdout (sorted keys, 2-space indent, NaN as strings)."""
    sys.stdout.write(json.dumps(_finite(data), indent=2, sort_keys=True, default=_json_default))
    sys.stdout.write("\n")
    sys.stdout.flush()


def out(text: str = "") -> None:
    """Print a plain line (no markup) on stdout."""
    sys.stdout.write(text + "\n")


def note(text: str, quiet: bool = False) -> None:
    """A message for people on stderr (suppressed by ``--quiet``)."""
    if not quiet:
        sys.stderr.write(text + "\n")


def warn(text: str) -> None:
    """A warning on stderr (never suppressed)."""
    sys.stderr.write(f"warning: {text}\n")


def error(text: str) -> None:
    """An error message on stderr: ``error: <first line>`` then any further lines as is."""
    first, _, rest = text.partition("\n")
    sys.stderr.write(f"error: {first}\n")
    if rest:
        sys.stderr.write(rest + "\n")
    sys.stderr.flush()


def table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    title: str | None = None,
    right: Sequence[str] = (),
) -> None:
    """Print a table on stdout: columns aligned, two spaces apart, header bold on a terminal.

    Plain text is written directly; rich (slower to import) draws the table only when it must
    fold cells to fit a terminal, or for text whose display width is not its length.

    Args:
        columns: Header names.
        rows: Cells (converted with ``str``).
        title: Optional caption above the table.
        right: Columns to right-align (numbers, sizes).
    """
    head = [str(c) for c in columns]
    cells = [head, *(r if all(map(_IS_STR, r)) else [str(x) for x in r] for r in rows)]
    widths = [max(map(len, column)) for column in zip(*cells, strict=True)]
    tty = sys.stdout.isatty()
    fits = sum(widths) + 2 * (len(widths) - 1) <= (_terminal_width() if tty else _NON_TTY_WIDTH)
    text = "".join(chain.from_iterable(cells))  # printable as a whole iff every cell is
    plain = text.isascii() and text.isprintable()
    if (not fits or not plain) and len(rows) <= PLAIN_TABLE_ROWS:
        _rich_table(columns, rows, title, right)
        return
    line = "  ".join(
        f"{{:{'>' if name in right else '<'}{width}}}"
        for name, width in zip(head, widths, strict=True)
    ).format
    lines = [title] if title else []
    lines.extend(line(*row).rstrip() for row in cells)
    if tty:
        lines[len(lines) - len(cells)] = f"\x1b[1m{lines[len(lines) - len(cells)]}\x1b[0m"
    sys.stdout.write("\n".join(lines) + "\n")


def _terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size().columns


def _rich_table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None, right: Sequence[str]
) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=title, box=None, show_edge=False, pad_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c, justify="right" if c in right else "left", overflow="fold")
    for r in rows:
        t.add_row(*(escape(str(x)) for x in r))
    _console().print(t)


PLAIN_TABLE_ROWS = 200
"""Tables longer than this are aligned by plain string padding: rich measures and wraps every
cell (about 1 ms a row), which alone would make ``ls`` of 10,000 experiments take seconds."""


_DIFF_COLOURS = (("+++", "1"), ("---", "1"), ("@@", "36"), ("+", "32"), ("-", "31"))
"""Line prefix -> ANSI SGR code, first match wins (as ``git diff`` colours them)."""


def colour_wanted(stream: Any = None) -> bool:
    """True if ``stream`` (default stdout) is a terminal and ``NO_COLOR`` is not set."""
    import os

    stream = stream if stream is not None else sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)()) and not os.environ.get("NO_COLOR")


def diff_lines(lines: Sequence[str], colour: bool | None = None) -> None:
    """Print unified-diff lines on stdout, coloured like ``git diff`` on a terminal.

    Args:
        lines: Lines without line ends.
        colour: Force colour on or off (default: only when stdout is a terminal).
    """
    colour = colour_wanted() if colour is None else colour
    write = sys.stdout.write
    for line in lines:
        code = next((c for prefix, c in _DIFF_COLOURS if line.startswith(prefix)), None)
        if colour and code is not None:
            write(f"\x1b[{code}m{line}\x1b[0m\n")
        else:
            write(line + "\n")


def kv(pairs: Sequence[tuple[str, Any]], title: str | None = None) -> None:
    """Print ``key: value`` lines, keys aligned."""
    if title:
        out(title)
    if not pairs:
        return
    width = max(len(k) for k, _ in pairs)
    for k, v in pairs:
        out(f"  {k.ljust(width)}  {v}")


# ----------------------------------------------------------------------------------- progress


class Bar:
    """A progress callback: call it with bytes done; :meth:`set_total` when the total is known.

    Does nothing when no bar is drawn (stderr not a terminal, or ``--quiet``).
    """

    def __init__(
        self,
        advance: Callable[[int], None] | None = None,
        total: Callable[[int], None] | None = None,
    ) -> None:
        self._advance = advance
        self._total = total

    def __call__(self, n: int) -> None:
        """Count ``n`` more bytes."""
        if self._advance is not None:
            self._advance(n)

    def set_total(self, n: int) -> None:
        """Set the number of bytes expected in all."""
        if self._total is not None:
            self._total(n)


def shows_progress(quiet: bool = False) -> bool:
    """True if :func:`progress` would draw a bar (stderr is a terminal, not ``--quiet``)."""
    return not quiet and sys.stderr.isatty()


@contextmanager
def progress(description: str, total: int | None = None, quiet: bool = False) -> Iterator[Bar]:
    """A byte-counting progress bar on stderr; yields the :class:`Bar` to feed it.

    The bar is drawn only when stderr is a terminal and ``quiet`` is off; otherwise feeding
    it does nothing, so scripts and logs stay clean.

    Args:
        description: Shown before the bar ("pushing", "checking"...).
        total: Expected bytes, or None for a bar without an end (until ``set_total``).
        quiet: ``--quiet`` was given.
    """
    if not shows_progress(quiet):
        yield Bar()
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    columns = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=_console(stderr=True), transient=True) as rich_bar:
        task = rich_bar.add_task(description, total=total)
        yield Bar(
            lambda n: rich_bar.advance(task, n),
            lambda n: rich_bar.update(task, total=n),
        )
