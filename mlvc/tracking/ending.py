"""The end of a run: waiting for the storage, keeping what it did not take, the last line.

``close()`` (and the exit) waits up to ``exit_timeout`` seconds for the background recorder;
after :data:`QUIET_WAIT` seconds it shows what is left and how fast it goes. What the storage
has not taken by then goes to the local outbox (:mod:`mlvc.tracking.outbox`) for ``mlvc sync``.
The run's last line says what was saved, or that the experiment was not.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlvc.experiments.summary import primary_of
from mlvc.tracking.commits import ExperimentWriter, status_of
from mlvc.tracking.jobs import CheckpointChanged, Job
from mlvc.tracking.outbox import save as outbox_save
from mlvc.tracking.recorder import Recorder
from mlvc_core.ids import to_hex

log = logging.getLogger("mlvc")

__all__ = ["QUIET_WAIT", "LeftBehind", "final_line", "give_up", "progress_line", "wait_for"]

QUIET_WAIT = 2.0
"""Seconds the end of a run waits silently before it shows what is left to store."""


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def human(n: float) -> str:
    """A byte count for people: ``12 B``, ``3.4 MB``."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def progress_line(checkpoints: int, left: int, speed: float, time_left: float) -> str:
    """The line shown while a run's end waits for the storage."""
    what = f"{checkpoints} checkpoint{'' if checkpoints == 1 else 's'}"
    rate = f", {human(speed)}/s" if speed > 0 else ""
    return (
        f"mlvc: storing {what} ({human(left)} left{rate}), "
        f"waiting up to {max(0, int(time_left))} s more"
    )


def _show(line: str, end: str = "\n") -> None:
    with contextlib.suppress(Exception):
        print(line, end=end, file=sys.stderr, flush=True)


def wait_for(job: Job, recorder: Recorder, timeout: float) -> bool:
    """Wait for ``job``; after ``QUIET_WAIT`` seconds say what is left and how fast.

    On a terminal the line is rewritten every second; otherwise one line is printed.

    Returns:
        True if the job was done in time.
    """
    deadline = time.monotonic() + timeout
    if job.done.wait(min(QUIET_WAIT, timeout)):
        return True
    tty = _is_tty(sys.stderr)
    shown = False
    last_left, last_time, speed = None, time.monotonic(), 0.0
    while True:
        left = recorder.bytes_left()
        pending = recorder.queue.checkpoints_left()
        now = time.monotonic()
        if last_left is not None and now > last_time:
            speed = 0.7 * speed + 0.3 * max(0.0, (last_left - left) / (now - last_time))
        last_left, last_time = left, now
        line = progress_line(pending, left, speed, deadline - now)
        if tty:
            _show("\r" + line.ljust(79), end="")
        elif not shown:
            _show(line)
        shown = True
        remaining = deadline - time.monotonic()
        if job.done.wait(max(0.0, min(1.0, remaining))) or time.monotonic() >= deadline:
            break
    if tty:
        _show("\r" + " " * 79 + "\r", end="")
    return job.done.is_set()


@dataclass(frozen=True)
class LeftBehind:
    """What the end of a run kept in the outbox (or lost) because the storage did not answer."""

    kept: int
    lost: int
    where: str


def give_up(stop: Job, recorder: Recorder, outbox: Path) -> LeftBehind:
    """The storage did not take what is pending in time: keep it in the outbox.

    Checkpoints not yet stored (the one the worker is stuck on included: ``mlvc sync`` skips
    it if it was stored after all) and the run's end go to the local outbox; the worker is
    left to die with the process.
    """
    queue, writer = recorder.queue, recorder.writer
    current = queue.current
    jobs = queue.take_pending()
    if current is not None and current.kind == "checkpoint":
        jobs.insert(0, current)
    kept, lost = 0, 0
    for job in jobs:
        try:
            if writer.exp_id is None or writer.repo is None:
                lost += job.kind == "checkpoint"
            elif job.kind == "checkpoint":
                _keep(outbox, job, writer)
                kept += 1
            elif job.kind == "stop":
                _keep_end(outbox, job, writer)
        except Exception as exc:  # noqa: BLE001 - exiting anyway
            lost += job.kind == "checkpoint"
            log.warning("mlvc: could not keep %s in %s: %s", job.describe(), outbox, exc)
        finally:
            job.abandoned = True
            if job is not current:
                with contextlib.suppress(Exception):
                    job.cleanup()
            job.done.set()
    stop.done.set()
    return LeftBehind(kept, lost, str(outbox))


def _keep(root: Path, job: Job, writer: ExperimentWriter) -> None:
    """Copy one pending checkpoint's files (as they were at the call) into the outbox."""
    assert writer.exp_id is not None and writer.repo is not None
    job.await_copies()  # the copies still going on in the background
    files = list(job.files.items)
    entry = {
        "kind": "checkpoint",
        "repository": writer.repo.url,
        "experiment": writer.exp_id,
        "code_tree": to_hex(writer.code_tree) if writer.code_tree is not None else None,
        "step": job.step,
        "metrics": job.metrics,
        "primary": list(job.primary) if job.primary else None,
        "time": job.time,
    }
    saved = outbox_save(root, entry, files)
    changed = job.changed_in_place()
    if changed:
        shutil.rmtree(saved, ignore_errors=True)
        raise CheckpointChanged(f"{changed[0]} changed before it was kept")


def _keep_end(root: Path, job: Job, writer: ExperimentWriter) -> None:
    assert writer.exp_id is not None and writer.repo is not None
    entry = {
        "kind": "end",
        "repository": writer.repo.url,
        "experiment": writer.exp_id,
        "status": status_of(job.reason, job.error),
        "ended": time.time(),
        "end_reason": job.reason,
        "error": job.error,
    }
    outbox_save(root, entry)


def final_line(
    writer: ExperimentWriter,
    where: str | None,
    failures: int,
    start_error: BaseException | None,
    left_behind: LeftBehind | None,
    exit_timeout: float,
) -> str:
    """The run's last line: what was saved where, or why nothing was."""
    exp_id = writer.exp_id
    if exp_id is None:
        return (
            "mlvc: experiment NOT saved"
            + (f" to {where}" if where else "")
            + (f" ({type(start_error).__name__}: {start_error})" if start_error else "")
            + "; see the log"
        )
    s = writer.summary
    n = int(s.get("checkpoints") or 0)
    if writer.removed:
        lost = writer.unrecorded
        return (
            f"mlvc: experiment {exp_id[:12]} was removed (mlvc rm) while the run went on"
            + (f" in {where}" if where else "")
            + (f"; {lost} later checkpoint{'' if lost == 1 else 's'} NOT recorded" if lost else "")
        )
    if left_behind is not None:
        kept, lost = left_behind.kept, left_behind.lost
        return (
            f"mlvc: the repository {where} did not answer within {exit_timeout:g} s: "
            f"experiment {exp_id[:12]} has {n} checkpoint{'' if n == 1 else 's'} stored"
            + (f", {kept} kept in {left_behind.where}" if kept else "")
            + (f", {lost} lost (see the log)" if lost else "")
            + "; run `mlvc sync` to send what is kept"
        )
    parts = [f"{n} checkpoint{'' if n == 1 else 's'}"]
    best, pm = s.get("best"), primary_of(s)
    if best and pm:
        value = best.get("value")
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        parts.append(f"best {pm[0]}={shown} at step {best.get('step')}")
    if failures:
        parts.append(f"{failures} failure{'' if failures == 1 else 's'}: see the log")
    return f"mlvc: saved experiment {exp_id[:12]} ({', '.join(parts)}) to {where}"
