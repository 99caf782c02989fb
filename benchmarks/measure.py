"""Measurement helpers shared by the benchmarks: timed child processes, sizes, hashes, Markdown."""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

GB = 1e9
GiB = 1 << 30
MiB = 1 << 20


class CommandFailed(RuntimeError):
    """A command failed; the message holds its output, ``summary`` one line for tables."""

    def __init__(self, argv: Sequence[object], code: int, output: str) -> None:
        super().__init__(f"{' '.join(map(str, argv))} exited {code}:\n{output}")
        program = " ".join(os.path.basename(str(a)) for a in argv[:3])
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        self.summary = f"`{program} ...` exited {code}: {lines[-1] if lines else 'no output'}"


@dataclass
class Usage:
    """Wall time, CPU time and peak RSS of one or more child processes (run one after another)."""

    wall: float = 0.0
    user: float = 0.0
    sys: float = 0.0
    max_rss: int = 0  # bytes; the largest of the processes, not a sum
    stdout: str = ""

    @property
    def cpu(self) -> float:
        """User plus system CPU seconds."""
        return self.user + self.sys

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.wall + other.wall,
            self.user + other.user,
            self.sys + other.sys,
            max(self.max_rss, other.max_rss),
            self.stdout + other.stdout,
        )


GNU_TIME = "/usr/bin/time"

# Fallback when GNU time is missing: a small Python parent that waits for the command and
# writes what GNU time's "%e %U %S %M" format would.
_WAIT4_WRAPPER = """
import os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{time.perf_counter() - start} {ru.ru_utime} {ru.ru_stime} {ru.ru_maxrss}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _measured_command(cmd: list[str], report: str) -> list[str]:
    """``cmd`` wrapped so that its wall time, CPU time and peak RSS are written to ``report``."""
    if os.access(GNU_TIME, os.X_OK):
        return [GNU_TIME, "-f", "%e %U %S %M", "-o", report, *cmd]
    return [sys.executable, "-c", _WAIT4_WRAPPER, report, *cmd]


def run(
    cmd: Sequence[str | os.PathLike[str]],
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
) -> Usage:
    """Run ``cmd`` to completion and measure it.

    The command runs under a small parent (GNU time, or a Python fallback) that reaps it with
    ``wait4``: that reports exactly this command's peak RSS. Measuring from this (large) process
    would not: a forked child's peak RSS starts at its parent's RSS at fork time, and
    ``getrusage(RUSAGE_CHILDREN)`` is a maximum over all children ever. The command never
    sees ``PYTHONDONTWRITEBYTECODE``.

    Raises:
        CommandFailed: The command exited non-zero (its output is in the message).
    """
    argv = [str(c) for c in cmd]
    # Measured tools run as installed software does, with Python's bytecode cache: without it
    # every process would compile the modules it imports lazily, inside the timed call.
    env = dict(os.environ if env is None else env)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "usage")
        with (
            open(os.path.join(tmp, "out"), "w+b") as out,
            open(os.path.join(tmp, "err"), "w+b") as err,
        ):
            start = time.perf_counter()
            code = subprocess.call(
                _measured_command(argv, report),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
            wall = time.perf_counter() - start
            out.seek(0)
            err.seek(0)
            stdout = out.read().decode(errors="replace")
            if code != 0:
                stderr = err.read().decode(errors="replace")
                raise CommandFailed(argv, code, stdout[-2000:] + stderr[-4000:])
        with open(report) as f:
            _, user, system, max_rss_kib = f.read().split()[-4:]
    return Usage(wall, float(user), float(system), int(max_rss_kib) * 1024, stdout)


def sync() -> None:
    """Flush dirty pages, so that one measurement's writeback does not slow the next."""
    os.sync()


def files(root: Path) -> list[Path]:
    """Regular files under ``root``, sorted."""
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink())


def tree_bytes(root: Path) -> int:
    """Apparent size of the regular files under ``root`` (like ``du -sb``, without directories)."""
    return sum(p.stat().st_size for p in files(root)) if Path(root).exists() else 0


def warm(root: Path) -> None:
    """Read every file under ``root`` once, so every tool starts from the page cache."""
    for p in files(root):
        with open(p, "rb") as f:
            while f.read(16 * MiB):
                pass


def file_digest(path: Path) -> str:
    """SHA-256 of a file, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(16 * MiB):
            h.update(block)
    return h.hexdigest()


def content_digest(root: Path) -> list[tuple[int, str]]:
    """Sorted (size, sha256) of every file under ``root``: tools that restore into nested
    directories (restic, borg, git) still compare equal when the bytes are the same."""
    return sorted((p.stat().st_size, file_digest(p)) for p in files(root))


def fresh_dir(path: Path) -> Path:
    """``path`` as a new empty directory (removing what was there)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def median(values: Iterable[float]) -> float:
    """Median of the values."""
    return statistics.median(list(values))


def gbps(nbytes: float, seconds: float) -> float:
    """Throughput in GB/s (10^9 bytes per second)."""
    return nbytes / GB / seconds if seconds > 0 else float("inf")


def human_bytes(n: float) -> str:
    """Bytes in binary units, three significant digits."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(passed: bool | None) -> str:
    """PASS / FAIL / n/a for a target check."""
    return "n/a" if passed is None else ("PASS" if passed else "**FAIL**")
