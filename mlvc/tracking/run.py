"""The public run API: :func:`track`, :func:`init` and :class:`Run`.

``Run`` keeps the public methods and delegates each concern to its own object: the options
(:mod:`~mlvc.tracking.options`), failures (:mod:`~mlvc.tracking.failures`), protecting
checkpoint files (:mod:`~mlvc.tracking.protect`, :mod:`~mlvc.tracking.copies`), the background
recorder (:mod:`~mlvc.tracking.recorder`) and what it stores (:mod:`~mlvc.tracking.commits`),
step metrics (:mod:`~mlvc.tracking.steplog`), the heartbeat, the end of the run
(:mod:`~mlvc.tracking.ending`) and the exit hooks (:mod:`~mlvc.tracking.exits`). The package's
docstring (:mod:`mlvc.tracking`) says what a run promises.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import types
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlvc.errors import UsageError
from mlvc.experiments.model import Experiment
from mlvc.experiments.summary import json_number
from mlvc.repo import open_repo
from mlvc.settings import Settings, distributed_rank, launch_directory, load_settings, project_start
from mlvc.tracking.code import copy_code
from mlvc.tracking.commits import ExperimentWriter
from mlvc.tracking.ending import LeftBehind, final_line, give_up, human, wait_for
from mlvc.tracking.exits import ExitHooks, end_of
from mlvc.tracking.failures import Failures
from mlvc.tracking.heartbeat import Heartbeat
from mlvc.tracking.jobs import Job, JobQueue
from mlvc.tracking.options import (
    MAX_STEP,
    Paths,
    PrimaryArg,
    RunOptions,
    check_numbers,
    check_step,
    default_name,
    parse_primary,
    takes_run_options,
)
from mlvc.tracking.outbox import outbox_dir
from mlvc.tracking.params import canonical_params
from mlvc.tracking.protect import FileProtector, disk_room, size_of
from mlvc.tracking.recorder import Recorder
from mlvc.tracking.resume import find_resumption, restore
from mlvc.tracking.steplog import StepLog, clean_values
from mlvc_core.repository import Repository

if TYPE_CHECKING:
    from mlvc.experiments.checkpoints import Checkpoint

log = logging.getLogger("mlvc")

__all__ = ["Run", "init", "track"]

_now = time.time

CHECKPOINT_WAIT = 1.0
"""Seconds ``checkpoint()`` waits for room in a full queue before queueing anyway."""


def _own_dirs(settings: Settings | None) -> list[Path]:
    """The repository (when local) and the cache: never copied from a checkpoint directory."""
    if settings is None:
        return []
    dirs = [settings.cache_dir]
    if settings.is_local:
        url = settings.repository_url
        dirs.append(Path(url[len("file://") :] if url.startswith("file://") else url))
    return dirs


def _clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float | str]:
    return {k: json_number(v) for k, v in clean_values(metrics or {}, "a checkpoint").items()}


class Run:
    """A tracked training run. Create it with :func:`track` or :func:`init`.

    Attributes:
        name: The experiment's name.
        rank: This process's rank in a distributed job (None outside one); only rank 0
            records unless ``rank_zero_only=False``.
        params: The recorded params (flat, see :mod:`mlvc.tracking.params`); a resumed run's
            include those recorded before (the ones passed now win).
        resumed_from: The checkpoint a resumed run continues from (None otherwise, or if the
            experiment had no checkpoint yet).
    """

    def __init__(self, options: RunOptions | None = None, /, **kwargs: Any) -> None:
        """Start a run; see :class:`~mlvc.tracking.options.RunOptions` for the arguments."""
        o = self._options = options if options is not None else RunOptions(**kwargs)
        self._failures = Failures(o.strict)
        self._lock = threading.Lock()
        self._closed = False
        self._disabled = False
        self._started_at = time.time()
        self._argv = list(sys.argv)
        self._cwd = Path.cwd()
        self._settings: Settings | None = None
        self._own_repo = True
        self._config_error: BaseException | None = None
        self._resume_id: str | None = None
        self._next_step = 0
        self._log_step = 0  # of the next point logged without a step
        self._stop_job: Job | None = None
        self._left_behind: LeftBehind | None = None
        self._backlog_warned = False
        self._backlog_full_warned = False
        self.name = o.name or default_name(self._argv)
        self.params: dict[str, Any] = {}
        self.resumed_from: Checkpoint | None = None
        self._primary: tuple[str, str] | None = None
        repo: Repository | None = None
        try:
            check_numbers(o)
            self.params = canonical_params(o.params)
            self._primary = parse_primary(o.primary_metric)
            repo, self._settings = self._locate(o)
            self._failures.debug = self._settings.debug
            self._code_dir = (
                Path(o.path).absolute() if o.path is not None else self._settings.project_dir
            )
            if not self._code_dir.exists():
                raise UsageError(f"code path does not exist: {self._code_dir}")
        except Exception as exc:  # noqa: BLE001 - never break training unless strict
            self._code_dir = self._cwd
            self._disabled = True
            self._config_error = exc
            self._failures.in_caller("run configuration", exc)
        self._heartbeat = Heartbeat(o.heartbeat_interval)
        self._writer = ExperimentWriter(
            self._settings,
            repo,
            self._heartbeat,
            self._code_dir,
        )
        self._series = StepLog(
            self._series_target, f"{int(time.time() * 1000):013d}-{uuid.uuid4().hex[:12]}"
        )
        self._files = FileProtector(
            self._code_dir,
            self._cwd,
            self._settings.cache_dir if self._settings else None,
            o.copy_budget,
            _own_dirs(self._settings),
        )
        self._queue = JobQueue(o.max_pending)
        self._recorder = Recorder(
            self._writer,
            self._queue,
            self._failures,
            lambda: self.repository_url,
            self._start_experiment,
            self._before_stop,
        )
        self._exits = ExitHooks(self, lambda: self._stop_job.done if self._stop_job else None)
        place = distributed_rank() if o.rank_zero_only else None
        self.rank = place[0] if place is not None else None
        self._inactive = place is not None and place[0] != 0
        if self._inactive:  # another rank of a distributed job: it records for all of us
            self._disabled = True
            if o.resume is not None and o.restore and place is not None and place[1] == 0:
                self._prepare_resume(o.resume, o.restore, o.restore_force)  # one per node
        elif o.resume is not None and not self._disabled:
            self._prepare_resume(o.resume, o.restore, o.restore_force)
        if not self._disabled:
            self._copy_code()
        if self._disabled:
            self._recorder.started.set()
            return
        self._recorder.begin()
        self._exits.install()

    def _locate(self, o: RunOptions) -> tuple[Repository | None, Settings]:
        """The repository given (if open) and the settings."""
        start = project_start(self._argv[0] if self._argv else None)
        repository = o.repository
        if isinstance(repository, Repository):
            self._own_repo = False
            return repository, load_settings(cwd=start)
        if isinstance(repository, Settings):
            return None, repository
        if repository is not None and "://" not in os.fspath(repository):
            # relative to where the run was launched, whatever the script's chdir
            repository = launch_directory() / Path(os.fspath(repository)).expanduser()
        return None, load_settings(repository, cwd=start, storage_options=o.storage_options)

    # -------------------------------------------------------------- public API

    @property
    def strict(self) -> bool:
        """Raise :class:`~mlvc.errors.TrackingError` instead of logging failures."""
        return self._failures.strict

    @strict.setter
    def strict(self, value: bool) -> None:
        self._failures.strict = value

    @property
    def id(self) -> str | None:
        """The experiment id (waits until the experiment is recorded; None if that failed)."""
        self._recorder.started.wait()
        return self._writer.exp_id

    @property
    def short_id(self) -> str | None:
        """The id shortened for display."""
        exp_id = self.id
        return exp_id[:12] if exp_id else None

    @property
    def repository_url(self) -> str | None:
        """Where the run is recorded."""
        if self._writer.repo is not None:
            return self._writer.repo.url
        return self._settings.repository_url if self._settings else None

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    def checkpoint(
        self,
        path: Paths = None,
        step: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        primary_metric: PrimaryArg = None,
        copy: bool = True,
    ) -> None:
        """Record a checkpoint: files (optional), step and metrics, committed in the background.

        Returns as soon as the files are protected and the job is queued; waits only when
        ``max_pending`` checkpoints are already waiting. With ``copy=True`` (the default) the
        loop may open, overwrite, truncate, append to or rename over the files at once, and
        nothing mlvc does ever makes that wait or fail (mlvc holds no lock or lease on them;
        it only reads them). Each file is cloned (copy-on-write, where the filesystem can:
        instant) or copied by the kernel into a private copy directory before the call
        returns, up to the run's ``copy_budget`` (default 1 s of copying, about 3 GB from the
        page cache); what is left is copied at once in the background, watched for writes. A
        write that reaches a file before its background copy is complete costs that
        checkpoint (a warning, or an error with ``strict=True``), never a torn record. Files on
        filesystems another host may write to (NFS...), and where writes cannot be watched
        (other systems), are copied whole before the call returns. See
        :mod:`mlvc.tracking.copies`.

        Args:
            path: A file, a directory, or a list of them (weights, optimizer state, ...).
            step: The training step: a non-negative integer below 2**64 (Python or numpy;
                not a ``bool`` or a float) (default: one more than the previous checkpoint's).
                Any other value skips the checkpoint with a warning (``strict=True``:
                raises).
            metrics: Metric values (numbers; tensors and numpy scalars are converted).
            primary_metric: ``(name, "minimize" | "maximize")`` ranking checkpoints for
                ``best()``; once given, later checkpoints default to it.
            copy: Copy the files (default), so they may be overwritten at once. False:
                return at once and read them in place in the background; a file changed before
                it was stored drops the checkpoint with a warning.

        Raises:
            TrackingError: Only with ``strict=True``: this or an earlier checkpoint failed.
        """
        self._failures.raise_pending()
        if self._disabled:
            return
        if self._closed:
            self._failures.in_caller(
                "checkpoint", UsageError("checkpoint() called after the run was closed")
            )
            return
        job_step = self._next_step if step is None else step
        try:
            job_step = check_step(job_step)
            clean = _clean_metrics(metrics)
            primary = parse_primary(primary_metric)
            if primary is not None and self._primary is None:
                self._primary = primary
            size = size_of(path)
            if self._queue.full() and not disk_room(self._cwd, size):
                if not self._backlog_full_warned:
                    self._backlog_full_warned = True
                    log.warning(
                        "mlvc: %s of checkpoints wait for the repository and the local disk is "
                        "nearly full: checkpoints are dropped until the repository answers",
                        human(self._recorder.bytes_queued),
                    )
                self._failures.count += 1
                return
            files = self._files.protect(path, copy)
        except Exception as exc:  # noqa: BLE001 - never break training unless strict
            self._failures.in_caller(f"checkpoint at step {job_step}", exc)
            return
        job = Job("checkpoint", job_step, clean, primary or self._primary, files, size=size)
        self._recorder.queued(job)
        self._next_step = job_step + 1
        if not self._queue.put(job, wait=CHECKPOINT_WAIT) and not self._backlog_warned:
            self._backlog_warned = True
            log.warning(
                "mlvc: the repository is slow to answer (%s): checkpoints now wait on local "
                "disk and are stored in order when it answers; training continues",
                self.repository_url,
            )

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Record metric values at a step, cheaply: no file, no commit (see :mod:`mlvc.series`).

        The training loop's fast path: a copy of ``metrics`` and one list append of ``(step,
        time.time(), values)``, no lock and no I/O (the run's :class:`StepLog` writes what
        waits in batched segments from a background thread, every few seconds and when the
        run ends). Plain ``float`` and ``int`` values are kept as they are and converted when
        encoded; any other value is converted at the call, since it may change in place
        afterwards (an accumulator tensor) or keep memory alive (a tensor's autograd graph).
        Read the points back with :meth:`Experiment.metrics
        <mlvc.experiments.Experiment.metrics>`. After :meth:`close`, a call records nothing
        (the first one warns).

        Args:
            metrics: Metric name -> value (Python or numpy numbers, 0-d arrays, one-element
                tensors, bools, ``Decimal``; NaN and infinities are kept). Other values are
                left out with a warning.
            step: The step: a non-negative integer below 2**64 (Python or numpy; not a
                ``bool`` or a float) (default: one more than the previous ``log``'s, from 0).
                Any other value records nothing, with a warning.

        Raises:
            TrackingError: Only with ``strict=True``: ``step`` is not such an integer.
        """
        if self._disabled:
            return
        try:
            if step is None:
                step = self._log_step
            elif type(step) is not int or not 0 <= step <= MAX_STEP:
                step = check_step(step)
            self._log_step = step + 1
            values = dict(metrics)  # the caller may reuse its dict
            for value in values.values():
                if type(value) is not float and type(value) is not int:
                    # a tensor may change in place or hold its graph: converted now
                    values = clean_values(values, f"step {step}")
                    if not values:
                        return
                    break
            self._series.keep((step, _now(), values))
        except (TypeError, ValueError, UsageError) as exc:
            self._failures.in_caller("log", exc)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued checkpoint is committed. Returns False on timeout.

        Raises:
            TrackingError: Only with ``strict=True``: a checkpoint failed.
        """
        if not self._recorder.alive():
            self._failures.raise_pending()
            return True
        job = Job("barrier")
        self._queue.put(job)
        ok = job.done.wait(timeout)
        self._failures.raise_pending()
        return ok

    def close(self, reason: str = "ok") -> None:
        """Flush, mark the experiment stopped, stop the heartbeat, print what was saved.

        Raises:
            TrackingError: Only with ``strict=True``: something failed to record.
        """
        self._finish(reason)
        self._failures.raise_pending()

    @property
    def experiment(self) -> Experiment | None:
        """The experiment as now recorded (flushes first); None if it could not be recorded."""
        self.flush()
        repo, exp_id = self._writer.repo, self._writer.exp_id
        if exp_id is None or repo is None:
            return None
        from mlvc.experiments.catalog import load_experiment

        return load_experiment(repo, exp_id)

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        self._finish(*end_of(exc_type, exc))  # the user's exception wins over ours

    def __repr__(self) -> str:
        exp_id = self._writer.exp_id
        return f"<Run {exp_id[:12] if exp_id else '?'} {self.name!r} -> {self.repository_url}>"

    # -------------------------------------------------------------- delegated work

    def _prepare_resume(self, resume: str, restore_files: bool, force: bool) -> None:
        """Continue what ``resume`` names (see :mod:`mlvc.tracking.resume`)."""
        assert self._settings is not None
        if self._writer.repo is None:
            self._writer.repo = open_repo(self._settings)
        found = find_resumption(self._writer.repo, resume)
        self._resume_id = found.exp_id
        self.resumed_from = found.checkpoint
        self.name = found.name or self.name
        self._primary = self._primary or found.primary
        self.params = {**found.params, **self.params}
        self._next_step = found.next_step
        self._log_step = found.next_log_step
        if restore_files and found.checkpoint is not None:
            restore(found.checkpoint, self._code_dir, force)

    def _copy_code(self) -> None:
        """Take the code snapshot's bytes now (see :func:`~mlvc.tracking.code.copy_code`)."""
        assert self._settings is not None
        o = self._options
        try:
            self._writer.code_copy = copy_code(
                self._files, self._code_dir, self._settings, o.max_code_file_size, o.max_code_files
            )
        except Exception as exc:  # noqa: BLE001 - never break training unless strict
            self._disabled = True
            self._config_error = exc
            self._failures.in_caller("code snapshot", exc)

    def _start_experiment(self) -> None:
        self._writer.start(
            self.name, self.params, self._primary, self._started_at, self._argv, self._resume_id
        )

    def _series_target(self) -> tuple[Repository, str] | None:
        repo, exp_id = self._writer.repo, self._writer.exp_id
        return (repo, exp_id) if repo is not None and exp_id is not None else None

    def _before_stop(self) -> None:
        self._heartbeat.stop()
        self._series.close()

    def _finish(self, reason: str, error: dict[str, str] | None = None) -> None:
        """End the run once: flush (up to ``exit_timeout``), record the end, say what was saved."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._series.end()
        if self._recorder.alive():
            job = self._stop_job = Job("stop", reason=reason, error=error)
            self._queue.put(job)
            if wait_for(job, self._recorder, self._options.exit_timeout):
                self._recorder.thread.join(timeout=30)
            else:
                root = outbox_dir(self._settings.cache_dir if self._settings else None)
                self._left_behind = give_up(job, self._recorder, root)
                self._heartbeat.stop(wait=False)  # it may be stuck in the storage too
                self._series.close(wait=False)
        if self._left_behind is None:
            self._writer.drop_code_copy()
        self._files.close()  # after the worker: every copy it waited for is made
        self._exits.uninstall()
        repo = self._writer.repo
        if self._own_repo and repo is not None and self._left_behind is None:
            with contextlib.suppress(Exception):
                repo.close()
        if not self._inactive:  # rank 0 reports
            msg = final_line(
                self._writer,
                self.repository_url,
                self._failures.count,
                self._recorder.start_error or self._config_error,
                self._left_behind,
                self._options.exit_timeout,
            )
            log.info(msg)
            with contextlib.suppress(Exception):
                print(msg, file=sys.stderr, flush=True)


@takes_run_options
def track(options: RunOptions) -> Run:
    """Start tracking a training run; use as a context manager (or call ``close()``).

    Takes the fields of :class:`~mlvc.tracking.options.RunOptions` as keyword arguments
    (``path``, ``params``, ``repository``, ``name``, ``strict``, ``resume``, ``restore``...).

    The code snapshot is what was on disk when ``track()`` returns: the code directory's
    files are copied privately before it returns (about 75 ms for 300 source files; bounded
    by the snapshot's file count and size limits, see :func:`~mlvc.tracking.code.copy_code`),
    and the start commit stores that copy in the background.

    Args:
        options: The run's options.

    Returns:
        The :class:`Run`.

    Raises:
        TrackingError: Only with ``strict=True``: the configuration is unusable.
        ObjectNotFound: ``resume`` names nothing.
        FileExistsConflict: ``restore`` would overwrite different local files.
    """
    return Run(options)


@takes_run_options
def init(options: RunOptions) -> Run:
    """Start tracking without a ``with`` block; arguments as for :func:`track`.

    Call ``run.close()`` at the end, or let the process exit: pending checkpoints are flushed
    then.

    Args:
        options: The run's options.

    Returns:
        The :class:`Run`.
    """
    return Run(options)
