"""The background recorder: one worker thread that stores a run's jobs in order.

The training loop only queues jobs (:mod:`mlvc.tracking.jobs`); this thread stores them
through the :class:`~mlvc.tracking.commits.ExperimentWriter`. A job that finds gc holding the
repository waits for it (up to :data:`LOCK_WAIT`, one warning); a checkpoint the storage fails
to take is retried with backoff (one warning) until it is stored or given up at exit (then it
is kept in the outbox); with ``strict=True`` the failure is raised instead. The worker
survives anything: failures go to the run's :class:`~mlvc.tracking.failures.Failures`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from mlvc.tracking.commits import ExperimentWriter
from mlvc.tracking.failures import Failures
from mlvc.tracking.jobs import Job, JobQueue
from mlvc_core.errors import RepositoryLocked

log = logging.getLogger("mlvc")

__all__ = ["LOCK_WAIT", "RETRY_FIRST", "RETRY_MAX", "Recorder"]

RETRY_FIRST = 0.5
RETRY_MAX = 30.0
"""A checkpoint the storage failed to take is retried after 0.5 s, then doubling to 30 s."""
LOCK_WAIT = 900.0
"""Seconds a checkpoint (or the run's start) waits for a gc holding the repository."""


class Recorder:
    """Runs a run's jobs on a daemon thread, in order.

    Args:
        writer: Stores the experiment.
        queue: The jobs.
        failures: Where failures go.
        where: The repository's URL, for messages.
        start: Records the experiment's start (the ``start`` job; retried by a checkpoint if
            it failed).
        before_stop: Called by the ``stop`` job first (stops the heartbeat and the series).
    """

    def __init__(
        self,
        writer: ExperimentWriter,
        queue: JobQueue,
        failures: Failures,
        where: Callable[[], str | None],
        start: Callable[[], None],
        before_stop: Callable[[], None],
    ) -> None:
        self.writer = writer
        self.queue = queue
        self.failures = failures
        self._where = where
        self._start = start
        self._before_stop = before_stop
        self.started = threading.Event()
        """Set once the start was tried (recorded or failed)."""
        self.start_error: BaseException | None = None
        self._lock = threading.Lock()
        self.bytes_queued = 0
        """Bytes of the checkpoints queued and not yet stored."""
        self.done_bytes = 0
        """Bytes of the current checkpoint stored so far."""
        self.thread = threading.Thread(target=self._work, name="mlvc-worker", daemon=True)

    def begin(self) -> None:
        """Start the worker and queue the experiment's start."""
        self.thread.start()
        self.queue.put(Job("start"))

    def alive(self) -> bool:
        """True while the worker runs."""
        return self.thread.is_alive()

    def queued(self, job: Job) -> None:
        """Count a checkpoint's bytes as waiting (for the progress shown at the end)."""
        with self._lock:
            self.bytes_queued += job.size

    def bytes_left(self) -> int:
        """Bytes of checkpoints not yet stored."""
        return max(0, self.bytes_queued - self.done_bytes)

    def _stored(self, n: int) -> None:
        """Progress callback of the checkpoint's write session: ``n`` more bytes processed."""
        self.done_bytes += n

    def _work(self) -> None:
        while True:
            job = self.queue.get()
            if job.abandoned:
                continue  # given up at exit (kept in the outbox)
            try:
                if job.kind == "start":
                    self._start_safely(job)
                elif job.kind == "checkpoint":
                    job.await_copies()
                    self._until_stored(job, lambda: self._checkpoint(job))  # noqa: B023
                elif job.kind == "stop":
                    self._before_stop()
                    self.writer.stop(job.reason, job.error)
            except Exception as exc:  # noqa: BLE001 - the worker must survive anything
                self.failures.in_background(job.describe(), self._where(), exc)
            finally:
                if job.kind == "checkpoint":
                    with self._lock:
                        self.bytes_queued -= job.size
                    self.done_bytes = 0
                if not job.abandoned:
                    job.cleanup()
                job.done.set()
                self.queue.done()
            if job.kind == "stop":
                return

    def _checkpoint(self, job: Job) -> None:
        if self.writer.exp_id is None:
            log.info("mlvc: retrying to record the experiment start")
            self._start()
            self.start_error = None
        self.writer.checkpoint(job, self._stored)

    def _start_safely(self, job: Job) -> None:
        try:
            self._while_locked(job, self._start)
        except Exception as exc:
            self.start_error = exc
            raise
        finally:
            self.started.set()

    def _while_locked(self, job: Job, action: Callable[[], None]) -> None:
        """Run ``action``, again and again while gc holds the repository (up to ``LOCK_WAIT``).

        Raises:
            RepositoryLocked: gc still held the repository after ``LOCK_WAIT`` seconds.
        """
        deadline = time.monotonic() + LOCK_WAIT
        delay = 0.1
        warned = False
        while True:
            try:
                action()
                return
            except RepositoryLocked as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                if not warned:
                    warned = True
                    log.warning(
                        "mlvc: %s waits until gc has finished (%s); training continues",
                        job.describe(),
                        exc.holder,
                    )
                time.sleep(min(delay, left))
                delay = min(delay * 2, 2.0)

    def _until_stored(self, job: Job, action: Callable[[], None]) -> None:
        """Run ``action``, retrying storage failures, until it is stored or given up at exit.

        A job given up at exit is kept in the outbox. With ``strict=True`` a storage failure
        is raised at once.

        Raises:
            OSError: Only with ``strict``: the storage failed.
        """
        delay = RETRY_FIRST
        warned = False
        while True:
            try:
                self._while_locked(job, action)
            except OSError as exc:  # StorageError included: refused, full, gone...
                if self.failures.strict:
                    raise
                if job.abandoned:
                    return
                if not warned:
                    warned = True
                    self.failures.count += 1
                    log.warning(
                        "mlvc: could not record %s in %s yet: %s: %s (retrying in the "
                        "background; training continues)",
                        job.describe(),
                        self._where(),
                        type(exc).__name__,
                        exc,
                        exc_info=self.failures.traceback(),
                    )
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                if job.abandoned:
                    return
                continue
            if warned:
                self.failures.count -= 1
                log.warning("mlvc: recorded %s after all", job.describe())
            return
