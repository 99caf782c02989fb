"""The background recorder's jobs and their queue: start, checkpoint, barrier, stop.

A :class:`Job` carries what the caller's thread prepared (a checkpoint's protected files,
step and metrics); the :class:`JobQueue` hands jobs to the worker in order, and bounds how
long the training loop may wait for room. Touches no repository.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mlvc.errors import MlvcError
from mlvc.tracking.copies import CopyFailed, FileCopy
from mlvc.tracking.protect import ProtectedFiles, fingerprint_of, remove_copy_dirs

__all__ = ["CheckpointChanged", "Job", "JobQueue"]

_R = TypeVar("_R")


class CheckpointChanged(MlvcError):
    """A checkpoint file changed before mlvc had stored it (or copied it, in the background)."""


@dataclass
class Job:
    """One piece of the background recorder's work.

    Attributes:
        kind: ``start``, ``checkpoint``, ``barrier`` or ``stop``.
        step: A checkpoint's step.
        metrics: A checkpoint's metrics (clean numbers).
        primary: A checkpoint's primary metric.
        files: A checkpoint's files, as protected by the caller's thread.
        time: When the job was made (a checkpoint's time).
        reason: For a stop: why the run ended.
        size: Bytes of the checkpoint's files (for the progress shown while the run ends).
        abandoned: Given up at exit: its files were moved to the outbox, the worker must not
            touch them.
        error: For a stop: the exception that ended the run (type and message).
        done: Set once the job is finished (or given up).
    """

    kind: str
    step: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    primary: tuple[str, str] | None = None
    files: ProtectedFiles = field(default_factory=ProtectedFiles)
    time: float = field(default_factory=time.time)
    reason: str = ""
    size: int = 0
    abandoned: bool = False
    error: dict[str, str] | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def describe(self) -> str:
        """What the job records, for messages."""
        if self.kind == "checkpoint":
            return f"checkpoint at step {self.step}"
        if self.kind == "start":
            return "experiment start"
        return "experiment end" if self.kind == "stop" else self.kind

    def await_copies(self) -> None:
        """Wait until the copies of the job's files still going on in the background end.

        Raises:
            CheckpointChanged: A file was written to before its copy was complete.
            CopyFailed: A copy failed.
        """
        copies = self.files.copies
        if copies is not None:
            self._raise_missed(copies.wait())

    def read(self, copied: Path, ingest: Callable[[Path], _R]) -> _R:
        """Run ``ingest`` on a file as protected (its copy, once complete, or in place).

        Raises:
            CheckpointChanged: A file was written to before its copy was complete.
            CopyFailed: A copy failed.
        """
        self.await_copies()
        return ingest(copied)

    def changed_in_place(self) -> list[str]:
        """Files read in place (``copy=False``) that changed since the job was queued."""
        return [p for p, fp in self.files.fingerprints.items() if fingerprint_of(p) != fp]

    def _raise_missed(self, missed: list[FileCopy]) -> None:
        changed = [c for c in missed if c.status == "changed"]
        if changed:
            c = changed[0]
            when = (
                "while checkpoint() copied it"
                if not c.in_background
                else (
                    f"{c.copied / 2**20:.0f} of {c.size / 2**20:.0f} MiB into its copy, which went "
                    "on in the background after the call's copy budget"
                )
            )
            raise CheckpointChanged(
                f"{c.src} was written to before mlvc had copied it ({when}), so the checkpoint "
                f"at step {self.step} was not recorded; raise track(copy_budget=...) (None: "
                "copy whole before returning), or save to a new file name"
            )
        if missed:
            c = missed[0]
            raise CopyFailed(
                f"the copy of {c.src} for the checkpoint at step {self.step} "
                + (f"failed: {c.detail}" if c.status == "failed" else "was cancelled")
            )

    def cleanup(self) -> None:
        """Stop the job's copies still going on and remove its copy directories."""
        if self.files.copies is not None:
            self.files.copies.cancel()  # nothing may still write into the copy directories
            self.files.copies = None
        remove_copy_dirs(self.files.copy_dirs)
        self.files.copy_dirs = []


class JobQueue:
    """The worker's jobs, in order. Checkpoints wait a bounded time for room, then queue anyway.

    ``max_pending`` checkpoints may wait without the loop noticing; a checkpoint beyond that
    waits up to the caller's ``wait`` for the worker, then is queued all the same (its files
    are already protected on local disk): storage that is down or frozen never stalls the loop
    for longer.
    """

    def __init__(self, max_pending: int) -> None:
        self._jobs: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._max = max(1, max_pending)
        self.current: Job | None = None
        """The job the worker is doing."""

    def _waiting_checkpoints(self) -> int:
        return sum(1 for j in self._jobs if j.kind == "checkpoint")

    def put(self, job: Job, wait: float | None = None) -> bool:
        """Queue ``job``; with ``wait``, first wait up to that long while the queue is full.

        Returns:
            False if the job was queued beyond ``max_pending`` (the wait ran out).
        """
        with self._cond:
            room = True
            if wait is not None:
                room = self._cond.wait_for(lambda: self._waiting_checkpoints() < self._max, wait)
            self._jobs.append(job)
            self._cond.notify_all()
            return room

    def get(self) -> Job:
        """The next job (waits for one); it becomes :attr:`current`."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._jobs))
            job = self.current = self._jobs.popleft()
            self._cond.notify_all()
            return job

    def done(self) -> None:
        """The current job is finished."""
        with self._cond:
            self.current = None
            self._cond.notify_all()

    def pending(self) -> list[Job]:
        """The jobs not yet started, in order."""
        with self._cond:
            return list(self._jobs)

    def full(self) -> bool:
        """True while ``max_pending`` checkpoints wait (a new one would be a backlog)."""
        with self._cond:
            return self._waiting_checkpoints() >= self._max

    def take_pending(self) -> list[Job]:
        """Remove and return the jobs not yet started."""
        with self._cond:
            jobs = list(self._jobs)
            self._jobs.clear()
            return jobs

    def checkpoints_left(self) -> int:
        """Checkpoints waiting or being stored."""
        with self._cond:
            current = self.current
            waiting = self._waiting_checkpoints()
        return waiting + (current is not None and current.kind == "checkpoint")
