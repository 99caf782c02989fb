"""Plain-text tables: long ones (``mlvc ls`` of thousands) aligned without rich, pipe or tty."""

from __future__ import annotations

import io
import math

import pytest

from mlvc.cli import _output
from mlvc.cli.ls import cells


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _rows(n: int) -> list[list[object]]:
    return [[f"id{i}", i * 7, "x" * (i % 5), None if i % 3 else f"é{i}"] for i in range(n)]


def _expected(rows: list[list[object]], bold: bool) -> list[str]:
    head = ["id", "size", "name", "note"]
    table = [head, *([str(c) for c in r] for r in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    lines = [
        "  ".join(
            c.rjust(w) if i == 1 else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in table
    ]
    if bold:
        lines[0] = f"\x1b[1m{lines[0]}\x1b[0m"
    return ["files", *lines]


@pytest.mark.parametrize("tty", [False, True])
def test_a_long_table_is_padded_by_plain_text(tty: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _rows(_output.PLAIN_TABLE_ROWS + 50)  # non-ASCII cells: still plain text when long
    out = _Tty() if tty else io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr(_output, "_terminal_width", lambda: 60)
    _output.table(["id", "size", "name", "note"], rows, title="files", right=["size"])
    assert out.getvalue().splitlines() == _expected(rows, bold=tty)


def test_cells_show_sorted_shortened_values_and_how_many_are_left_out() -> None:
    values = {"b": 0.000123456789, "a": "y" * 50, "c": True, "d": math.nan, "e": [1, 2.5]}
    assert cells(values, limit=4, width=10) == "a=yyyyyyy... b=0.00012... c=true d=nan +1"
    assert cells({}, limit=4) == "-"
    assert cells({"n": 3, "m": None, "f": -math.inf}, limit=9) == "f=-inf m=- n=3"


FREEZE = """
import atexit, gc, sys
from mlvc.cli import main
atexit.register(lambda: print("frozen", gc.get_freeze_count() > 0))
if sys.argv[1] == "caller":
    try:
        main(["config", "--help"])
    except SystemExit:
        pass
    print("caller goes on", gc.get_freeze_count() > 0)
else:
    sys.argv = ["mlvc", "config", "--help"]
    main()
"""


@pytest.mark.parametrize("how", ["caller", "program"])
def test_only_the_program_entry_point_freezes_the_heap_before_exit(how: str) -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", FREEZE, how],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    ).stdout
    if how == "caller":
        assert "caller goes on False" in out and "frozen False" in out
    else:
        assert "Usage" in out and "frozen True" in out


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Africa/Monrovia", "Asia/Kolkata"])
def test_times_read_as_strftime_writes_them_in_every_zone(
    zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datetime as dt
    import random
    import time

    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        rng = random.Random(zone)
        stamps = [rng.uniform(-3e10, 3e11) for _ in range(3000)]
        stamps += [1_700_000_000.9999996, 1_700_000_000.4999995, 0, -1, 1e-7, 99.0]
        for t in stamps:
            try:
                want = dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")
            except (ValueError, OverflowError, OSError):
                want = str(t)
            assert _output.human_time(t) == want, t
    finally:
        monkeypatch.undo()
        time.tzset()
