"""Tracking training runs: :func:`track` / :func:`init` and :class:`Run`.

::

    with mlvc.track(params={"lr": 0.01}) as run:
        for epoch in range(10):
            ...
            torch.save(model.state_dict(), "model.pth")
            run.checkpoint(path="model.pth", step=epoch, metrics={"loss": loss},
                           primary_metric=("loss", "minimize"))

Never break the training loop (docs/experiments.md, design invariant 5):

* ``checkpoint()`` only protects the files and enqueues a job; the caller may overwrite them
  as soon as the call returns. Large files are leased by a helper process (:mod:`mlvc.staging`):
  the call returns once they are leased, the background thread reads them in place, and a
  write to a file before its checkpoint is stored waits (in the kernel) while the helper
  copies it, then goes ahead; that checkpoint is stored from the copy. Small files, and files
  that cannot be leased, are copied into a private staging directory before the call returns.
  A background thread chunks, stores and commits, then advances the experiment's ref by
  compare-and-swap. Up to ``max_pending`` (default 2) checkpoints wait for it unnoticed; a
  further one waits at most :data:`CHECKPOINT_WAIT` (1 s) for room, then is queued anyway with
  its files on local disk (one warning): storage that is down, frozen or slow never blocks the
  loop for longer.
* A checkpoint the storage fails to take (refused, full...) is retried in the background
  (one warning) until it is stored or the run ends; with ``strict=True`` the failure is raised.
* ``close()`` (and the interpreter's exit) waits up to ``exit_timeout`` seconds (default
  :data:`EXIT_TIMEOUT`) for the storage to take what is pending; what it has not taken by then
  is kept in the local outbox (:mod:`mlvc.outbox`, under the cache directory), and the last
  line says so and names ``mlvc sync``, which sends it later.
* ``checkpoint(copy=False)`` takes no lease and copies nothing, for loops that leave their
  checkpoint files alone until the next checkpoint: the call only notes each file's identity
  (size, mtime, inode) and returns in microseconds; the background thread reads the files
  where they are.
  A file that changed before it was fully stored is never recorded torn or mislabelled: that
  checkpoint is dropped with a warning (raised with ``strict=True``).
* A checkpoint (or the run's start) that finds gc holding the repository waits for it in the
  background, retrying for up to :data:`LOCK_WAIT` seconds (one warning), instead of being
  dropped; the loop waits only if the queue fills meanwhile.
* In a distributed job (``torchrun``: ``RANK``/``WORLD_SIZE`` set) only rank 0 records one
  experiment for the job; the other ranks get a run whose calls do nothing (with
  ``resume=..., restore=True`` each node's local rank 0 restores the files: have the ranks
  wait on a barrier before loading them).
* Errors are logged to ``logging.getLogger("mlvc")`` and training goes on; with
  ``strict=True`` they raise :class:`~mlvc.errors.TrackingError` instead (a background failure
  at the next call or at ``close()``).
* Everything queued is flushed on ``close()``, at interpreter exit, and on SIGTERM (the handler
  flushes, then hands the signal to the previous handler or the default action); one line says
  what was saved. A daemon thread rewrites ``heartbeats/<experiment id>`` every
  ``heartbeat_interval`` seconds; it dies with the process, so a killed run reads as crashed.

What a run records by itself: the code snapshot (``path``, default the project directory,
honouring ``.gitignore``/``.mlvcignore``; files over ``max_code_file_size`` and files past
``max_code_files`` are left out with a warning), params, Python version and platform, installed
package versions, git commit/branch/dirty flag and diff (capped at 1 MiB), user, host, command
line, working directory, start and end time. Environment variables are never recorded.

Checkpoint files are stored at their path relative to the code directory (else the current
directory, else under their base name at the root of the tree).

Resuming (``resume=`` any id ``mlvc`` accepts: an experiment id prefix, ``EXP@best``,
``EXP@latest``, ``EXP@step=N``, a checkpoint id, a tag naming a checkpoint) appends to the
experiment's chain (after its newest commit, whatever checkpoint was named), first recording a
``resume`` commit with the new environment and code. The params recorded before are carried
over (those passed now win), ``run.resumed_from`` is the checkpoint continued from (a plain
experiment id: its latest), and step numbering goes on after that checkpoint's step.
``restore=True`` writes that checkpoint's files back relative to the code directory before
returning; files already there with the same content are left alone, different ones raise
:class:`~mlvc.errors.FileExistsConflict` unless ``restore_force=True``. Resume problems always
raise (even without ``strict``): silently training from scratch would waste the run.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import io
import json
import logging
import os
import shutil
import signal
import socket
import stat as stat_mod
import sys
import threading
import time
import types
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from mlvc import series as _series
from mlvc.environment import environment
from mlvc.errors import FileExistsConflict, MlvcError, TrackingError, UsageError
from mlvc.experiments import (
    Experiment,
    compact_catalog,
    heartbeat_key,
    json_number,
    primary_of,
    ref_name,
    summary_with_checkpoint,
)
from mlvc.ignore import IgnoreMatcher
from mlvc.outbox import outbox_dir
from mlvc.outbox import save as outbox_save
from mlvc.params import canonical_params
from mlvc.redaction import redact_text
from mlvc.repo import open_repo, stat_cache
from mlvc.series import (
    SeriesBuffer,
    clean_values,
    encode_segment,
    last_step,
    segment_key,
)
from mlvc.settings import (
    Settings,
    distributed_rank,
    launch_directory,
    load_settings,
    project_start,
)
from mlvc.staging import STAGING, BackgroundCopy, CopyFailed, Snapshot, Stager
from mlvc_core.errors import RefConflict, RepositoryLocked
from mlvc_core.history import advance, default_author
from mlvc_core.ids import ObjectId, to_hex
from mlvc_core.ingest import TreeBuilder, ingest_paths
from mlvc_core.objects import Commit, Tree, TreeEntry
from mlvc_core.refs import Ref
from mlvc_core.repository import Repository
from mlvc_core.session import WriteSession

if TYPE_CHECKING:
    from mlvc.checkpoints import Checkpoint

log = logging.getLogger("mlvc")

__all__ = ["Run", "track", "init"]

DEFAULT_HEARTBEAT = 10.0
MAX_CODE_FILE_SIZE = 64 << 20
MAX_CODE_FILES = 20_000
_CAS_ATTEMPTS = 30
RETRY_FIRST = 0.5
RETRY_MAX = 30.0
"""A checkpoint the storage failed to take is retried after 0.5 s, then doubling to 30 s."""
CHECKPOINT_WAIT = 1.0
"""Seconds ``checkpoint()`` waits for room in a full queue before queueing anyway."""
EXIT_TIMEOUT = 300.0
"""Default seconds ``close()`` (and the exit) waits for storage to take what is pending."""
LOCK_WAIT = 900.0
"""Seconds a checkpoint (or the run's start) waits for a gc holding the repository."""
_CODE_PATIENCE_S = 5.0
"""How long the code snapshot waits for a file that changes while it is read (a log the
run itself writes) before leaving it out with a warning."""

PathArg = str | os.PathLike[str]
Paths = PathArg | Iterable[PathArg] | None
PrimaryArg = tuple[str, str] | list[str] | Mapping[str, str] | str | None


# ------------------------------------------------------------------------------ small helpers


def _clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float | str]:
    return {k: json_number(v) for k, v in clean_values(metrics or {}, "a checkpoint").items()}


def parse_primary(value: PrimaryArg) -> tuple[str, str] | None:
    """Normalise a primary metric: ``("loss", "minimize")``, ``"loss"`` (minimize) or a dict.

    Raises:
        UsageError: Not a metric name with goal ``minimize``/``maximize`` (or ``min``/``max``).
    """
    if value is None:
        return None
    if isinstance(value, str):
        name, goal = value, "minimize"
    elif isinstance(value, Mapping):
        name, goal = str(value.get("name", "")), str(value.get("goal", "minimize"))
    else:
        items = list(value)
        if len(items) != 2:
            raise UsageError(f"primary_metric must be (name, 'minimize'|'maximize'), not {value!r}")
        name, goal = str(items[0]), str(items[1])
    goal = {"min": "minimize", "max": "maximize"}.get(goal.lower(), goal.lower())
    if not name or goal not in ("minimize", "maximize"):
        raise UsageError(f"primary_metric must be (name, 'minimize'|'maximize'), not {value!r}")
    return name, goal


def _default_name(argv: list[str]) -> str:
    """The script's name (``train`` for ``python train.py``), else ``run``."""
    stem = Path(argv[0]).stem if argv and argv[0] not in ("", "-", "-c", "-m") else ""
    if "ipykernel" in stem:
        return "notebook"
    return stem or "run"


def overlay(session: WriteSession, base: ObjectId | None, entries: Mapping[str, TreeEntry]) -> Tree:
    """A tree: ``base`` with ``entries`` (relative path -> entry) put in place, subtrees stored."""
    repo = session.repo
    tree = repo.read_tree(base) if base is not None else Tree()
    by_name = {e.name: e for e in tree.entries}
    groups: dict[str, dict[str, TreeEntry]] = {}
    for rel, e in entries.items():
        head, _, rest = rel.partition("/")
        if rest:
            groups.setdefault(head, {})[rest] = e
        else:
            by_name[head] = replace(e, name=head)
    for head, sub in groups.items():
        current = by_name.get(head)
        sub_base = current.oid if current is not None and current.kind == "dir" else None
        subtree = overlay(session, sub_base, sub)
        by_name[head] = TreeEntry(head, "dir", session.add_object(subtree), subtree.size, 0o755)
    return Tree(tuple(by_name.values()))


def _same_content(local: Path, remote: io.BufferedReader) -> bool:
    with open(local, "rb") as f, remote:
        while True:
            a = f.read(1 << 20)
            b = remote.read(1 << 20)
            if a != b:
                return False
            if not a:
                return True


# ------------------------------------------------------------------------------ jobs

_R = TypeVar("_R")


@dataclass
class _Job:
    kind: str  # "start" | "checkpoint" | "barrier" | "stop"
    step: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    primary: tuple[str, str] | None = None
    items: list[tuple[str, Path]] = field(default_factory=list)
    staging: list[Path] = field(default_factory=list)
    fingerprints: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Identity of each file read in place (``copy=False``), noted when the job was queued."""
    snapshot: Snapshot | None = None
    """The files leased or copied in the background (``copy=True``)."""
    time: float = field(default_factory=time.time)
    reason: str = ""
    size: int = 0
    """Bytes of the checkpoint's files (for the progress shown while the run ends)."""
    abandoned: bool = False
    """Given up at exit: its files were moved to the outbox, the worker must not touch them."""
    error: dict[str, str] | None = None
    """For a stop: the exception that ended the run (type and message)."""
    done: threading.Event = field(default_factory=threading.Event)

    def describe(self) -> str:
        if self.kind == "checkpoint":
            return f"checkpoint at step {self.step}"
        if self.kind == "start":
            return "experiment start"
        return "experiment end" if self.kind == "stop" else self.kind

    def await_copies(self) -> None:
        """Wait until the background copies of the files in the job's directories are made.

        Files checkpointed on their own are read in place (:meth:`read`).

        Raises:
            CheckpointChanged: A file changed while it was being copied.
            CopyFailed: A copy failed, or was lost with the helper process.
        """
        if self.snapshot is None:
            return
        self.snapshot.copy_nested()
        self._raise_missed(self.snapshot.wait_nested())

    def read(self, staged: Path, ingest: Callable[[Path], _R]) -> _R:
        """Run ``ingest`` on a staged file, or on the original while the helper leases it.

        Raises:
            CheckpointChanged: The file changed before it was read or copied.
            CopyFailed: Its copy failed, or was lost with the helper process.
        """
        if self.snapshot is None:
            return ingest(staged)
        result, status = self.snapshot.read(staged, ingest)
        if status:
            copy = self.snapshot.copy_of(staged)
            assert copy is not None
            self._raise_missed([copy])
        return cast(_R, result)

    def _raise_missed(self, missed: list[BackgroundCopy]) -> None:
        changed = [c for c in missed if c.status == "changed"]
        if changed:
            raise CheckpointChanged(
                f"{changed[0].src} changed while mlvc was copying it (a write to it waited longer "
                "than the kernel's lease-break time, /proc/sys/fs/lease-break-time), so the "
                f"checkpoint at step {self.step} was not recorded"
            )
        if missed:
            what = "failed" if missed[0].status == "failed" else "was lost"
            raise CopyFailed(
                f"the background copy of {missed[0].src} for the checkpoint at step {self.step} "
                f"{what}: {missed[0].detail}"
            )

    def cleanup(self) -> None:
        if self.snapshot is not None:
            self.snapshot.wait()  # nothing may still write into the staging directories
            self.snapshot = None
        _remove_staging(self.staging)
        self.staging = []


class _JobQueue:
    """The worker's jobs, in order. Checkpoints wait a bounded time for room, then queue anyway.

    ``max_pending`` checkpoints may wait without the loop noticing; a checkpoint beyond that
    waits up to :data:`CHECKPOINT_WAIT` seconds for the worker, then is queued all the same
    (its files already sit in local staging): storage that is down or frozen never stalls the
    loop for longer.
    """

    def __init__(self, max_pending: int) -> None:
        self._jobs: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._max = max(1, max_pending)
        self.current: _Job | None = None
        """The job the worker is doing."""

    def _waiting_checkpoints(self) -> int:
        return sum(1 for j in self._jobs if j.kind == "checkpoint")

    def put(self, job: _Job, wait: float | None = None) -> bool:
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

    def get(self) -> _Job:
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

    def pending(self) -> list[_Job]:
        """The jobs not yet started, in order."""
        with self._cond:
            return list(self._jobs)

    def full(self) -> bool:
        """True while ``max_pending`` checkpoints wait (a new one would be a backlog)."""
        with self._cond:
            return self._waiting_checkpoints() >= self._max

    def take_pending(self) -> list[_Job]:
        """Remove and return the jobs not yet started."""
        with self._cond:
            jobs = list(self._jobs)
            self._jobs.clear()
            return jobs


class CheckpointChanged(MlvcError):
    """A checkpoint file changed before mlvc had stored it (or copied it, in the background)."""


def _fingerprint_of(path: str) -> tuple[int, ...] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def fingerprint(src: Path) -> dict[str, tuple[int, ...]]:
    """Identity (size, mtime, inode, ctime) of a file or of every file under a directory."""
    if not src.is_dir() or src.is_symlink():
        fp = _fingerprint_of(str(src))
        return {str(src): fp} if fp is not None else {}
    out: dict[str, tuple[int, ...]] = {}
    for dirpath, _dirs, files in os.walk(src):
        for name in files:
            full = os.path.join(dirpath, name)
            fp = _fingerprint_of(full)
            if fp is not None:
                out[full] = fp
    return out


_LIVE_RUNS: weakref.WeakSet[Run] = weakref.WeakSet()
"""Runs that an uncaught exception should mark ``failed`` (see ``_install_excepthook``)."""
_hook_installed = False

MAX_ERROR_MESSAGE = 2000
"""Characters of an exception's message recorded for a failed run."""
_INTERRUPTS = ("SIGTERM", "SIGINT", "KeyboardInterrupt")


def _end_of(
    exc_type: type[BaseException], exc: BaseException | None
) -> tuple[str, dict[str, str] | None]:
    """The end reason and error recorded for an exception that ended a run."""
    if issubclass(exc_type, KeyboardInterrupt):
        return "KeyboardInterrupt", None
    if issubclass(exc_type, SystemExit) and getattr(exc, "code", None) in (None, 0):
        return "exit", None
    try:
        message = str(exc) if exc is not None else ""
    except Exception:  # noqa: BLE001 - a __str__ that fails
        message = ""
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[:MAX_ERROR_MESSAGE] + "..."
    return "exception", {"type": exc_type.__name__, "message": redact_text(message)}


def _status_of(reason: str, error: dict[str, str] | None) -> str:
    """The status recorded for an end: ``failed``, ``interrupted`` or ``stopped``."""
    if error is not None:
        return "failed"
    return "interrupted" if reason in _INTERRUPTS else "stopped"


def advance_ref(
    repo: Repository,
    session: WriteSession,
    ref: Ref,
    make: Callable[[ObjectId], Commit],
    summarize: Callable[[dict[str, Any], str], dict[str, Any]],
) -> tuple[ObjectId, Ref]:
    """Store ``make(ref.target)`` and move the ref to it by CAS, retrying on conflicts.

    A conflict that only changed the summary keeps the commit; one that moved the ref
    re-parents it.

    Returns:
        The commit stored and the ref as moved.

    Raises:
        RefConflict: Still losing the race after many attempts.
    """

    def build(parent: ObjectId | None) -> Commit:
        assert parent is not None  # the ref exists: every commit has a parent
        return make(parent)

    done = advance(session, ref.name, ref, build, summarize, attempts=_CAS_ATTEMPTS)
    return done.commit, done.ref


QUIET_WAIT = 2.0
"""Seconds the end of a run waits silently before it shows what is left to store."""


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


MIN_FREE_DISK = 0.05
"""A backlog of checkpoints (storage not answering) never leaves less than this fraction of
the local disk free (and never less than 1 GB): further checkpoints are dropped instead."""


def _disk_room(where: Path, size: int) -> bool:
    """True if ``size`` more bytes of backlog leave enough of the local disk free."""
    try:
        usage = shutil.disk_usage(where)
    except OSError:
        return True
    return usage.free - 2 * size > max(MIN_FREE_DISK * usage.total, 1e9)


def _size_of(paths: Paths) -> int:
    """Bytes of the files named (directories walked); 0 for what cannot be read."""
    if paths is None:
        return 0
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    total = 0
    for p in items:
        for fp in fingerprint(Path(p)).values():
            total += fp[0]
    return total


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def progress_line(checkpoints: int, left: int, speed: float, time_left: float) -> str:
    """The line shown while a run's end waits for the storage."""
    what = f"{checkpoints} checkpoint{'' if checkpoints == 1 else 's'}"
    rate = f", {_human(speed)}/s" if speed > 0 else ""
    return (
        f"mlvc: storing {what} ({_human(left)} left{rate}), "
        f"waiting up to {max(0, int(time_left))} s more"
    )


def checkpoint_commit(
    tree: ObjectId,
    parent: ObjectId,
    exp_id: str,
    step: int | None,
    metrics: dict[str, Any],
    primary: tuple[str, str] | None,
    when: float,
    paths: list[str],
) -> Commit:
    """The commit recording one checkpoint (format: docs/experiments.md)."""
    metrics_text = " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
    )
    return Commit(
        tree=tree,
        parents=(parent,),
        author=default_author(),
        time=when,
        message=f"checkpoint step {step}" + (f": {metrics_text}" if metrics_text else ""),
        metadata={
            "type": "checkpoint",
            "experiment": exp_id,
            "step": step,
            "metrics": metrics,
            "primary_metric": {"name": primary[0], "goal": primary[1]} if primary else None,
            "paths": paths,
        },
    )


def _untakable(root: Path, rel: str) -> bool:
    """True for a path a snapshot cannot store: a name that is not UTF-8, or unreadable."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return True
    path = root / rel
    try:
        st = os.lstat(path)
    except OSError:
        return False  # gone: the walk skips it
    if stat_mod.S_ISREG(st.st_mode):
        return not os.access(path, os.R_OK)
    if stat_mod.S_ISDIR(st.st_mode):
        return not os.access(path, os.R_OK | os.X_OK)
    return False


def _shown_name(rel: str) -> str:
    r"""A path for a message: bytes that are not UTF-8 as ``\xNN`` escapes."""
    return os.fsencode(rel).decode("utf-8", errors="backslashreplace")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def sweep_staging(root: Path) -> None:
    """Remove staging directories left by dead processes of this host (killed mid-copy)."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    host = socket.gethostname()
    for name in names:
        owner, _, rest = name.rpartition("-")
        owner_host, _, pid = owner.rpartition("-")
        if owner_host == host and pid.isdigit() and rest and not _pid_alive(int(pid)):
            shutil.rmtree(root / name, ignore_errors=True)


def _remove_staging(dirs: list[Path]) -> None:
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
        with contextlib.suppress(OSError):
            d.parent.rmdir()  # the shared .mlvc-staging directory, once empty


# ------------------------------------------------------------------------------ Run


class Run:
    """A tracked training run. Create it with :func:`track` or :func:`init`.

    Attributes:
        strict: Raise :class:`~mlvc.errors.TrackingError` instead of logging failures.
        name: The experiment's name.
        rank: This process's rank in a distributed job (None outside one); only rank 0
            records unless ``rank_zero_only=False``.
        params: The recorded params (flat, see :mod:`mlvc.params`); a resumed run's include
            those recorded before (the ones passed now win).
        resumed_from: The checkpoint a resumed run continues from (None otherwise, or if the
            experiment had no checkpoint yet).
    """

    def __init__(
        self,
        path: PathArg | None = None,
        params: Any = None,
        repository: Repository | Settings | PathArg | None = None,
        name: str | None = None,
        strict: bool = False,
        resume: str | None = None,
        restore: bool = False,
        restore_force: bool = False,
        primary_metric: PrimaryArg = None,
        storage_options: dict[str, Any] | None = None,
        max_pending: int = 2,
        heartbeat_interval: float = DEFAULT_HEARTBEAT,
        max_code_file_size: int | None = None,
        max_code_files: int = MAX_CODE_FILES,
        exit_timeout: float = EXIT_TIMEOUT,
        rank_zero_only: bool = True,
    ) -> None:
        """Start a run; see :func:`track` for the arguments."""
        self.strict = strict
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._closed = False
        self._disabled = False
        self._started_at = time.time()
        self._argv = list(sys.argv)
        self._cwd = Path.cwd()
        self._repo: Repository | None = None
        self._own_repo = True
        self._settings: Settings | None = None
        self._exp_id: str | None = None
        self._code_tree: ObjectId | None = None
        self._summary: dict[str, Any] = {}
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._pending_error: tuple[str, BaseException] | None = None
        self._failures = 0
        self._saved = 0
        self._resume_id: str | None = None
        self._next_step = 0
        self._hb_interval = heartbeat_interval
        self._hb_stop = threading.Event()
        self._hb_thread: threading.Thread | None = None
        self._worker: threading.Thread | None = None
        self._prev_sigterm: Any = None
        self._sigterm_installed = False
        self._max_code_file_size = max_code_file_size
        self._swept: set[Path] = set()
        self._stop_job: _Job | None = None
        self._uncaught: tuple[type[BaseException], BaseException | None] | None = None
        self._stager: Stager | None = None
        self._max_code_files = max_code_files
        self._series = SeriesBuffer()
        self._series_lock = threading.Lock()
        self._series_stop = threading.Event()
        self._series_thread: threading.Thread | None = None
        self._series_writer = f"{int(time.time() * 1000):013d}-{uuid.uuid4().hex[:12]}"
        self._series_seq = 0
        self._series_failing = False
        self._log_step = 0
        self._log_closed_warned = False
        self._backlog_warned = False
        self._backlog_full_warned = False
        self._bytes_queued = 0
        """Bytes of the checkpoints queued and not yet stored."""
        self._done_bytes = 0
        """Bytes of the current checkpoint stored so far."""
        self._left_behind: tuple[int, int, str] | None = None
        self.name = name or _default_name(self._argv)
        self.params: dict[str, Any] = {}
        self.resumed_from: Checkpoint | None = None
        self._primary: tuple[str, str] | None = None
        try:
            self.params = canonical_params(params)
            self._primary = parse_primary(primary_metric)
            start = project_start(self._argv[0] if self._argv else None)
            if isinstance(repository, Repository):
                self._repo, self._own_repo = repository, False
                self._settings = load_settings(cwd=start)
            elif isinstance(repository, Settings):
                self._settings = repository
            else:
                if repository is not None and "://" not in os.fspath(repository):
                    # relative to where the run was launched, whatever the script's chdir
                    repository = launch_directory() / Path(os.fspath(repository)).expanduser()
                self._settings = load_settings(
                    repository, cwd=start, storage_options=storage_options
                )
            self._code_dir = (
                Path(path).absolute() if path is not None else self._settings.project_dir
            )
            if not self._code_dir.exists():
                raise UsageError(f"code path does not exist: {self._code_dir}")
        except Exception as exc:  # noqa: BLE001 - never break training unless strict
            self._code_dir = self._cwd
            self._disabled = True
            self._start_error = exc
            self._main_error("run configuration", exc)
        place = distributed_rank() if rank_zero_only else None
        self.rank = place[0] if place is not None else None
        self._inactive = place is not None and place[0] != 0
        if self._inactive:  # another rank of a distributed job: it records for all of us
            self._disabled = True
            if resume is not None and restore and place is not None and place[1] == 0:
                self._prepare_resume(resume, restore, restore_force)  # one restore per node
        elif resume is not None and not self._disabled:
            self._prepare_resume(resume, restore, restore_force)
        self._queue = _JobQueue(max_pending)
        self._exit_timeout = exit_timeout
        if self._disabled:
            self._started.set()
            return
        self._worker = threading.Thread(target=self._work, name="mlvc-worker", daemon=True)
        self._worker.start()
        self._queue.put(_Job("start"))
        self._install_exit_hooks()

    # -------------------------------------------------------------- public API

    @property
    def id(self) -> str | None:
        """The experiment id (waits until the experiment is recorded; None if that failed)."""
        self._started.wait()
        return self._exp_id

    @property
    def short_id(self) -> str | None:
        """The id shortened for display."""
        exp_id = self.id
        return exp_id[:12] if exp_id else None

    @property
    def repository_url(self) -> str | None:
        """Where the run is recorded."""
        if self._repo is not None:
            return self._repo.url
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
        ``max_pending`` checkpoints are already waiting. With ``copy=True`` (the default), files
        of 1 MiB and more are leased by a helper process (a Linux file lease) and read in place
        in the background while the lease is held: the loop may overwrite them at once. A write
        that comes before a file is stored (``torch.save``, ``open(path, "wb")``) waits in the
        kernel while the helper copies the file to staging, then goes ahead, and that checkpoint
        is stored from the copy (reading the files never waits). Smaller files, and
        where leases are unavailable (other systems, network filesystems, files of another user,
        a file held open for writing), are copied before the call returns, as is everything if
        the helper cannot run. A write that waits longer than ``/proc/sys/fs/lease-break-time``
        (45 s by default) is let in by the kernel; that checkpoint is then dropped with a
        warning, never recorded torn.

        Args:
            path: A file, a directory, or a list of them (weights, optimizer state, ...).
            step: The training step (default: one more than the previous checkpoint's).
            metrics: Metric values (numbers; tensors and numpy scalars are converted).
            primary_metric: ``(name, "minimize" | "maximize")`` ranking checkpoints for
                ``best()``; once given, later checkpoints default to it.
            copy: Snapshot the files (default), so they may be overwritten at once. False:
                return at once and read them in place in the background; a file changed before
                it was stored drops the checkpoint with a warning.

        Raises:
            TrackingError: Only with ``strict=True``: this or an earlier checkpoint failed.
        """
        self._raise_pending()
        if self._disabled:
            return
        if self._closed:
            self._main_error(
                "checkpoint", UsageError("checkpoint() called after the run was closed")
            )
            return
        job_step = self._next_step if step is None else step
        try:
            job_step = int(job_step)
            clean = _clean_metrics(metrics)
            primary = parse_primary(primary_metric)
            if primary is not None and self._primary is None:
                self._primary = primary
            size = _size_of(path)
            if self._queue.full() and not _disk_room(self._cwd, size):
                if not self._backlog_full_warned:
                    self._backlog_full_warned = True
                    log.warning(
                        "mlvc: %s of checkpoints wait for the repository and the local disk is "
                        "nearly full: checkpoints are dropped until the repository answers",
                        _human(self._bytes_queued),
                    )
                self._failures += 1
                return
            items, staging, fingerprints, snapshot = self._stage(path, copy)
        except Exception as exc:  # noqa: BLE001 - never break training unless strict
            self._main_error(f"checkpoint at step {job_step}", exc)
            return
        job = _Job(
            "checkpoint",
            job_step,
            clean,
            primary or self._primary,
            items,
            staging,
            fingerprints,
            snapshot,
        )
        job.size = size
        with self._lock:
            self._bytes_queued += size
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

        Points wait in memory and are written in batched segments by a background thread
        (every few seconds, and when the run ends); read them back with
        :meth:`Experiment.metrics <mlvc.experiments.Experiment.metrics>`.

        Args:
            metrics: Metric name -> value (Python or numpy numbers, 0-d arrays, one-element
                tensors, bools, ``Decimal``; NaN and infinities are kept). Other values are
                left out with a warning.
            step: The step (default: one more than the previous ``log``'s, from 0).
        """
        if self._disabled:
            return
        if self._closed:
            if not self._log_closed_warned:
                self._log_closed_warned = True
                log.warning("mlvc: log() called after the run was closed: not recorded")
            return
        if step is None:
            step = self._log_step
        elif type(step) is not int:
            try:
                step = int(step)
            except (TypeError, ValueError) as exc:
                self._main_error("log", exc)
                return
        self._log_step = step + 1
        values: dict[str, float] = {}
        for k, v in metrics.items():
            if type(v) is float and type(k) is str:
                values[k] = v
            else:
                values.update(clean_values({k: v}, f"step {step}"))
        if values:
            self._series.add(step, time.time(), values)
            if self._series_thread is None:
                self._start_series()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued checkpoint is committed. Returns False on timeout.

        Raises:
            TrackingError: Only with ``strict=True``: a checkpoint failed.
        """
        if self._worker is None or not self._worker.is_alive():
            self._raise_pending()
            return True
        job = _Job("barrier")
        self._queue.put(job)
        ok = job.done.wait(timeout)
        self._raise_pending()
        return ok

    def close(self, reason: str = "ok") -> None:
        """Flush, mark the experiment stopped, stop the heartbeat, print what was saved.

        Raises:
            TrackingError: Only with ``strict=True``: something failed to record.
        """
        self._finish(reason)
        self._raise_pending()

    @property
    def experiment(self) -> Experiment | None:
        """The experiment as now recorded (flushes first); None if it could not be recorded."""
        self.flush()
        if self._exp_id is None or self._repo is None:
            return None
        from mlvc.experiments import _load_experiment

        return _load_experiment(self._repo, self._exp_id)

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
        self._finish(*_end_of(exc_type, exc))  # the user's exception wins over ours

    def __repr__(self) -> str:
        exp = self._exp_id[:12] if self._exp_id else "?"
        return f"<Run {exp} {self.name!r} -> {self.repository_url}>"

    # -------------------------------------------------------------- errors

    def _main_error(self, what: str, exc: BaseException) -> None:
        """A failure in the caller's thread: raise if strict, else log and go on."""
        if self.strict:
            raise TrackingError(what, exc) from exc
        self._failures += 1
        log.warning(
            "mlvc: could not record %s: %s: %s (training continues)",
            what,
            type(exc).__name__,
            exc,
            exc_info=self._debug(),
        )

    def _background_error(self, job: _Job, exc: BaseException) -> None:
        self._failures += 1
        with self._lock:
            if self.strict and self._pending_error is None:
                self._pending_error = (job.describe(), exc)
        log.warning(
            "mlvc: could not record %s in %s: %s: %s%s",
            job.describe(),
            self.repository_url,
            type(exc).__name__,
            exc,
            "" if self.strict else " (training continues)",
            exc_info=self._debug(),
        )

    def _raise_pending(self) -> None:
        with self._lock:
            pending, self._pending_error = self._pending_error, None
        if pending is not None:
            raise TrackingError(pending[0], pending[1]) from pending[1]

    def _debug(self) -> bool:
        return bool(self._settings and self._settings.debug) or log.isEnabledFor(logging.DEBUG)

    # -------------------------------------------------------------- resume

    def _prepare_resume(self, resume: str, restore: bool, force: bool) -> None:
        """Find what ``resume`` names (any id form ``mlvc`` accepts) and continue from it.

        ``EXP`` continues from the experiment's latest checkpoint; ``EXP@best``,
        ``EXP@latest``, ``EXP@step=N``, a checkpoint id, or a tag naming a checkpoint from that
        checkpoint. Params recorded so far are carried over (those passed now win); the step
        numbering goes on after the checkpoint resumed from.
        """
        from mlvc.checkpoints import Checkpoint
        from mlvc.commands._resolve import resolve
        from mlvc.experiments import _load_experiment

        assert self._settings is not None
        if self._repo is None:
            self._repo = open_repo(self._settings)
        target = resolve(self._repo, resume)
        if target.kind == "commit" or target.experiment_id is None:
            raise UsageError(
                f"cannot resume {resume!r}: it is neither an experiment nor a checkpoint"
            )
        exp = target.experiment or _load_experiment(self._repo, target.experiment_id)
        ckpt: Checkpoint | None
        if target.kind == "experiment":
            ckpt = exp.latest()  # a plain experiment id continues from where it stopped
        else:
            ckpt = Checkpoint(
                self._repo, target.commit_id, self._repo.read_commit(target.commit_id)
            )
        self._resume_id = exp.id
        self.resumed_from = ckpt
        self.name = exp.name or self.name
        self._primary = self._primary or exp.primary_metric
        self.params = {**exp.params, **self.params}
        step = ckpt.step if ckpt is not None else None
        if step is None:
            step = exp.summary.get("latest_step")
        self._next_step = int(step) + 1 if isinstance(step, (int, float)) else 0
        logged = last_step(self._repo, exp.id)
        self._log_step = logged + 1 if logged is not None else self._next_step
        if restore and ckpt is not None:
            self._restore(ckpt, force)

    def _restore(self, ckpt: Any, force: bool) -> None:
        conflicts, wanted = [], []
        for rel, _size in ckpt.files():
            local = self._code_dir / rel
            if local.is_file() and _same_content(local, ckpt.open(rel)):
                continue
            if os.path.lexists(local) and not force:
                conflicts.append(rel)
            wanted.append(rel)
        if conflicts:
            err = FileExistsConflict(conflicts)
            err.args = (
                f"restoring checkpoint {ckpt.short_id} would overwrite local files that differ: "
                f"{', '.join(conflicts[:5])}; pass restore_force=True or move them away",
            )
            raise err
        if wanted:
            ckpt.checkout(self._code_dir, paths=wanted, force=True)
        log.info(
            "mlvc: restored %d file(s) of checkpoint %s into %s",
            len(wanted),
            ckpt.short_id,
            self._code_dir,
        )

    # -------------------------------------------------------------- staging (caller's thread)

    def _tree_path(self, src: Path) -> str:
        absolute = Path(os.path.abspath(src))
        for base in (self._code_dir, self._cwd):
            try:
                rel = absolute.relative_to(base).as_posix()
            except ValueError:
                continue
            if rel not in ("", "."):
                return rel
        return absolute.name

    def _staging_dir(self, src: Path) -> Path:
        unique = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        candidates = [Path(os.path.abspath(src)).parent / STAGING]
        if self._settings is not None:
            candidates.append(self._settings.cache_dir / "staging")
        last: OSError | None = None
        for root in candidates:
            if root not in self._swept:
                self._swept.add(root)
                sweep_staging(root)
            try:
                (root / unique).mkdir(parents=True)
                return root / unique
            except OSError as exc:
                last = exc
        assert last is not None
        raise last

    def _stage(
        self, paths: Paths, copy: bool
    ) -> tuple[list[tuple[str, Path]], list[Path], dict[str, tuple[int, ...]], Snapshot | None]:
        if paths is None:
            return [], [], {}, None
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        items: list[tuple[str, Path]] = []
        staging: list[Path] = []
        fingerprints: dict[str, tuple[int, ...]] = {}
        if copy and self._stager is None:
            self._stager = Stager()
        snapshot = Snapshot(self._stager) if copy else None
        try:
            for p in paths:
                src = Path(p)
                if not src.exists():
                    raise FileNotFoundError(
                        errno.ENOENT, "checkpoint path does not exist", str(src)
                    )
                rel = self._tree_path(src)
                if any(r == rel for r, _ in items):
                    raise UsageError(f"checkpoint path given twice: {rel}")
                if not copy:
                    src = src.absolute()
                    fingerprints.update(fingerprint(src))
                    items.append((rel, src))
                    continue
                assert snapshot is not None
                d = self._staging_dir(src)
                staging.append(d)
                dst = d / Path(os.path.abspath(src)).name
                snapshot.copy(src, dst)
                items.append((rel, dst))
            if snapshot is not None:
                snapshot.protect()
        except BaseException:
            if snapshot is not None:
                snapshot.cancel()
            _remove_staging(staging)
            raise
        return items, staging, fingerprints, snapshot

    # -------------------------------------------------------------- background worker

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job.abandoned:
                continue  # given up at exit (kept in the outbox)
            try:
                if job.kind == "start":
                    self._start_safely(job)
                elif job.kind == "checkpoint":
                    job.await_copies()
                    self._until_stored(job, lambda: self._do_checkpoint(job))  # noqa: B023
                elif job.kind == "stop":
                    self._do_stop(job)
            except Exception as exc:  # noqa: BLE001 - the worker must survive anything
                self._background_error(job, exc)
            finally:
                if job.kind == "checkpoint":
                    with self._lock:
                        self._bytes_queued -= job.size
                    self._done_bytes = 0
                if not job.abandoned:
                    job.cleanup()
                job.done.set()
                self._queue.done()
            if job.kind == "stop":
                return

    def _while_locked(self, job: _Job, action: Callable[[], None]) -> None:
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

    def _until_stored(self, job: _Job, action: Callable[[], None]) -> None:
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
                if self.strict:
                    raise
                if job.abandoned:
                    return
                if not warned:
                    warned = True
                    self._failures += 1
                    log.warning(
                        "mlvc: could not record %s in %s yet: %s: %s (retrying in the "
                        "background; training continues)",
                        job.describe(),
                        self.repository_url,
                        type(exc).__name__,
                        exc,
                        exc_info=self._debug(),
                    )
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                if job.abandoned:
                    return
                continue
            if warned:
                self._failures -= 1
                log.warning("mlvc: recorded %s after all", job.describe())
            return

    def _start_safely(self, job: _Job) -> None:
        try:
            self._while_locked(job, self._do_start)
        except Exception as exc:
            self._start_error = exc
            raise
        finally:
            self._started.set()

    def _ensure_started(self) -> None:
        if self._exp_id is None:
            log.info("mlvc: retrying to record the experiment start")
            self._do_start()
            self._start_error = None

    def _code_size_limit(self) -> int:
        """Bytes above which a file stays out of the code snapshot (0: no limit)."""
        if self._max_code_file_size is not None:
            return self._max_code_file_size
        from mlvc.project_config import get_value

        assert self._settings is not None
        try:
            return int(get_value("snapshot.max_file_size", self._settings.project_dir))
        except (MlvcError, TypeError, ValueError) as exc:
            log.warning("mlvc: snapshot.max_file_size unreadable (%s); using 64 MiB", exc)
            return MAX_CODE_FILE_SIZE

    def _code_snapshot(self, session: WriteSession) -> ObjectId:
        assert self._settings is not None and self._repo is not None
        skip: list[PathArg] = [self._settings.cache_dir]
        if self._repo.store.is_local:
            skip.append(self._repo.url)
        matcher = IgnoreMatcher(self._code_dir, skip_paths=skip)
        limit = self._code_size_limit()
        too_big: list[str] = []
        changing: list[str] = []
        counted = [0]
        root = self._code_dir

        untakable: list[str] = []

        def exclude(rel: str) -> bool:
            if _untakable(root, rel):
                untakable.append(rel)
                return True
            if matcher(rel):
                return True
            try:
                st = os.lstat(root / rel)
            except OSError:
                return True
            if not stat_mod.S_ISREG(st.st_mode):
                return False
            if limit and st.st_size > limit:
                too_big.append(rel)
                return True
            counted[0] += 1
            return counted[0] > self._max_code_files

        cache = stat_cache(self._repo)
        try:
            tree = ingest_paths(
                session,
                [root],
                exclude=exclude,
                stat_cache=cache,
                on_changed=lambda rel, exc: changing.append(rel),
                patience_s=_CODE_PATIENCE_S,
            )
        finally:
            if cache is not None:
                cache.close()
        if untakable:
            log.warning(
                "mlvc: code snapshot left out %d file(s) it cannot store (a name that is not "
                "UTF-8, or unreadable): %s",
                len(untakable),
                ", ".join(_shown_name(r) for r in untakable[:10]),
            )
        if too_big:
            log.warning(
                "mlvc: code snapshot left out %d file(s) over %s (snapshot.max_file_size; add "
                "them to .mlvcignore, or checkpoint them explicitly): %s%s",
                len(too_big),
                f"{limit / (1 << 20):g} MiB",
                ", ".join(too_big[:10]),
                f" and {len(too_big) - 10} more" if len(too_big) > 10 else "",
            )
        if changing:
            log.warning(
                "mlvc: code snapshot left out %d file(s) that kept changing while they were "
                "read (logs? add them to .mlvcignore): %s",
                len(changing),
                ", ".join(changing[:10]),
            )
        if counted[0] > self._max_code_files:
            log.warning(
                "mlvc: code snapshot of %s stopped at %d files; pass track(path=...) or add an "
                ".mlvcignore to snapshot only the code",
                root,
                self._max_code_files,
            )
        return tree

    def _do_start(self) -> None:
        if self._repo is None:
            assert self._settings is not None
            self._repo = open_repo(self._settings, create=True)
        repo = self._repo
        env = environment(self._code_dir, self._argv)
        meta: dict[str, Any] = {
            "name": self.name,
            "params": self.params,
            "env": env,
            "started": self._started_at,
            "code_path": str(self._code_dir),
        }
        # Refs move while the session is still open (after flush): the session's shared lock
        # keeps gc away from what it stored until a ref reaches it (docs/format.md).
        with WriteSession(repo) as s:
            code_tree = self._code_tree = self._code_snapshot(s)
            if self._resume_id is None:
                first = Commit(
                    tree=code_tree,
                    author=default_author(),
                    time=self._started_at,
                    message=f"experiment {self.name}",
                    metadata={"type": "experiment", **meta},
                )
                cid = s.add_object(first)
                s.flush()
                exp_id = to_hex(cid)
                self._write_heartbeat(exp_id)  # before the ref: a listed run always has one
                pm = self._primary
                summary = {
                    "type": "experiment",
                    "name": self.name,
                    "created": self._started_at,
                    "user": env["user"],
                    "host": env["host"],
                    "command": env["command_line"],
                    "params": self.params,
                    "status": "running",
                    "ended": None,
                    "checkpoints": 0,
                    "latest": None,
                    "latest_step": None,
                    "latest_metrics": {},
                    "primary_metric": {"name": pm[0], "goal": pm[1]} if pm else None,
                    "best": None,
                    "removed": [],
                }
                self._summary = repo.refs.set(ref_name(exp_id), cid, None, summary).summary
            else:
                exp_id = self._resume_id
                self._write_heartbeat(exp_id)
                resumed_id = exp_id

                def make(parent: ObjectId) -> Commit:
                    return Commit(
                        tree=code_tree,
                        parents=(parent,),
                        author=default_author(),
                        time=self._started_at,
                        message=f"resume {self.name}",
                        metadata={"type": "resume", "experiment": resumed_id, **meta},
                    )

                def summarize(old: dict[str, Any], _cid: str) -> dict[str, Any]:
                    return dict(
                        old,
                        status="running",
                        ended=None,
                        end_reason=None,
                        error=None,
                        resumed=int(old.get("resumed") or 0) + 1,
                        params={**(old.get("params") or {}), **self.params},
                    )

                self._advance(s, repo.refs.require(ref_name(exp_id)), make, summarize)
        self._exp_id = exp_id
        self._start_heartbeat()

    def _advance(
        self,
        session: WriteSession,
        ref: Ref,
        make: Callable[[ObjectId], Commit],
        summarize: Callable[[dict[str, Any], str], dict[str, Any]],
    ) -> ObjectId:
        """Store ``make(ref.target)`` and move the ref to it by CAS, retrying on conflicts.

        A conflict that only changed the summary (a checkpoint hidden by ``rm``) keeps the
        commit; one that moved the ref (another process resumed the experiment) re-parents it.
        """
        assert self._repo is not None
        cid, moved = advance_ref(self._repo, session, ref, make, summarize)
        self._summary = moved.summary
        return cid

    def _do_checkpoint(self, job: _Job) -> None:
        self._ensure_started()
        assert self._repo is not None and self._exp_id is not None
        repo, exp_id = self._repo, self._exp_id
        ref = repo.refs.require(ref_name(exp_id))
        with WriteSession(repo, progress=self._stored) as s:
            # The previous checkpoint's files guide this one's: unchanged tensors are verified
            # by hash instead of being cut and compressed again.
            guide = None
            with contextlib.suppress(MlvcError):
                guide = repo.read_commit(ref.target).tree
            unnamable: list[str] = []

            def exclude(rel: str) -> bool:
                try:
                    rel.encode("utf-8")
                except UnicodeEncodeError:
                    unnamable.append(rel)
                    return True
                return False

            builder = TreeBuilder(s, exclude=exclude, guide=guide)
            entries: dict[str, TreeEntry] = {}
            for rel, staged in job.items:
                name = rel.rsplit("/", 1)[-1]
                entry = job.read(staged, lambda path: builder.entry(path, name, rel))  # noqa: B023
                if entry is not None:
                    entries[rel] = entry
            if unnamable:
                log.warning(
                    "mlvc: checkpoint at step %s left out %d file(s) whose name is not UTF-8: %s",
                    job.step,
                    len(unnamable),
                    ", ".join(_shown_name(r) for r in unnamable[:10]),
                )
            changed = [p for p, fp in job.fingerprints.items() if _fingerprint_of(p) != fp]
            if changed:
                raise CheckpointChanged(
                    f"{changed[0]} changed before mlvc had stored it, so the checkpoint at step "
                    f"{job.step} was not recorded; with checkpoint(copy=False) leave the files "
                    "alone until the next checkpoint (or call run.flush() first)"
                )
            tree = overlay(s, self._code_tree, entries)
            tree_id = s.add_object(tree)

            def make(parent: ObjectId) -> Commit:
                return checkpoint_commit(
                    tree_id,
                    parent,
                    exp_id,
                    job.step,
                    job.metrics,
                    job.primary,
                    job.time,
                    [rel for rel, _ in job.items],
                )

            def summarize(old: dict[str, Any], cid: str) -> dict[str, Any]:
                new = summary_with_checkpoint(old, cid, job.step, job.metrics, job.primary)
                new["status"] = "running"
                return new

            self._advance(s, ref, make, summarize)
        self._saved += 1

    def _do_stop(self, job: _Job) -> None:
        self._stop_heartbeat()
        self._stop_series()
        if self._exp_id is None or self._repo is None:
            return
        repo, name = self._repo, ref_name(self._exp_id)
        for attempt in range(_CAS_ATTEMPTS):
            ref = repo.refs.get(name)
            if ref is None:
                break  # removed meanwhile
            summary = dict(
                ref.summary,
                status=_status_of(job.reason, job.error),
                ended=time.time(),
                end_reason=job.reason,
                error=job.error,
            )
            try:
                self._summary = repo.refs.update_summary(ref, summary).summary
                break
            except RefConflict:
                time.sleep(min(1.0, 0.02 * 2**attempt))
        repo.store.delete(heartbeat_key(self._exp_id))
        with contextlib.suppress(MlvcError, OSError):
            compact_catalog(repo)  # a writer keeps the experiment catalog compact

    # -------------------------------------------------------------- step metrics

    def _start_series(self) -> None:
        with self._series_lock:
            if self._series_thread is not None:
                return
            self._series_thread = threading.Thread(
                target=self._write_series, name="mlvc-series", daemon=True
            )
            self._series_thread.start()

    def _write_series(self) -> None:
        while not self._series_stop.is_set():
            self._series.wake.wait(_series.SEGMENT_SECONDS)
            self._series.wake.clear()
            if self._series_stop.is_set():
                return
            self._flush_series()

    def _flush_series(self) -> None:
        """Write the points waiting as one segment (kept for later if that fails)."""
        with self._series_lock:
            if self._exp_id is None or self._repo is None:
                return  # not recorded yet: the points wait
            points = self._series.take()
            if not points:
                return
            key = segment_key(self._exp_id, self._series_writer, self._series_seq)
            try:
                self._repo.store.write(key, encode_segment(points))
            except Exception as exc:  # noqa: BLE001 - kept and retried, never raised
                self._series.put_back(points)
                if not self._series_failing:
                    self._series_failing = True
                    log.warning(
                        "mlvc: could not write logged metrics (kept in memory, retried): %s: %s",
                        type(exc).__name__,
                        exc,
                    )
                return
            self._series_seq += 1
            self._series_failing = False

    def _stop_series(self) -> None:
        self._series_stop.set()
        self._series.wake.set()
        thread = self._series_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        self._flush_series()
        if len(self._series) or self._series.dropped():
            log.warning(
                "mlvc: %d logged metric point(s) could not be written",
                len(self._series) + self._series.dropped(),
            )

    # -------------------------------------------------------------- heartbeat

    def _write_heartbeat(self, exp_id: str) -> None:
        assert self._repo is not None
        doc = {
            "experiment": exp_id,
            "time": time.time(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        self._repo.store.write(heartbeat_key(exp_id), json.dumps(doc).encode())

    def _start_heartbeat(self) -> None:
        if self._hb_thread is not None:
            return
        self._hb_stop.clear()
        self._hb_thread = threading.Thread(target=self._beat, name="mlvc-heartbeat", daemon=True)
        self._hb_thread.start()

    def _beat(self) -> None:
        failing = False
        while not self._hb_stop.wait(self._hb_interval):
            exp_id = self._exp_id
            if exp_id is None:
                continue
            try:
                self._write_heartbeat(exp_id)
                failing = False
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat must not kill the thread
                if not failing:
                    log.warning("mlvc: heartbeat for %s failed: %s", exp_id[:12], exc)
                failing = True

    def _stop_heartbeat(self) -> None:
        self._hb_stop.set()
        if self._hb_thread is not None:
            self._hb_thread.join(timeout=30)
            self._hb_thread = None

    # -------------------------------------------------------------- closing

    def _finish(self, reason: str, error: dict[str, str] | None = None) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._worker is not None and self._worker.is_alive():
            job = self._stop_job = _Job("stop", reason=reason, error=error)
            self._queue.put(job)
            if not self._wait_showing_progress(job, self._exit_timeout):
                self._give_up(job)
            else:
                self._worker.join(timeout=30)
        if self._stager is not None:
            self._stager.close()  # after the worker: every copy it waited for is made
        self._uninstall_sigterm()
        if self._own_repo and self._repo is not None and self._left_behind is None:
            with contextlib.suppress(Exception):
                self._repo.close()
        self._report()

    def _stored(self, n: int) -> None:
        """Progress callback of the checkpoint's write session: ``n`` more bytes processed."""
        self._done_bytes += n

    def _wait_showing_progress(self, job: _Job, timeout: float) -> bool:
        """Wait for ``job``; after ``QUIET_WAIT`` seconds say what is left and how fast.

        On a terminal the line is rewritten every second; otherwise one line is printed.
        """
        deadline = time.monotonic() + timeout
        if job.done.wait(min(QUIET_WAIT, timeout)):
            return True
        tty = _is_tty(sys.stderr)
        shown = False
        last_left, last_time, speed = None, time.monotonic(), 0.0
        while True:
            left = max(0, self._bytes_queued - self._done_bytes)
            pending = sum(1 for j in self._queue.pending() if j.kind == "checkpoint")
            pending += self._queue.current is not None and self._queue.current.kind == "checkpoint"
            now = time.monotonic()
            if last_left is not None and now > last_time:
                speed = 0.7 * speed + 0.3 * max(0.0, (last_left - left) / (now - last_time))
            last_left, last_time = left, now
            line = progress_line(pending, left, speed, deadline - now)
            if tty:
                with contextlib.suppress(Exception):
                    print("\r" + line.ljust(79), end="", file=sys.stderr, flush=True)
            elif not shown:
                with contextlib.suppress(Exception):
                    print(line, file=sys.stderr, flush=True)
            shown = True
            remaining = deadline - time.monotonic()
            if job.done.wait(max(0.0, min(1.0, remaining))):
                break
            if time.monotonic() >= deadline:
                break
        if tty:
            with contextlib.suppress(Exception):
                print("\r" + " " * 79 + "\r", end="", file=sys.stderr, flush=True)
        return job.done.is_set()

    def _give_up(self, stop: _Job) -> None:
        """The storage did not take what is pending in time: keep it in the outbox.

        Checkpoints not yet stored (the one the worker is stuck on included: ``mlvc sync``
        skips it if it was stored after all) and the run's end go to the local outbox
        (:mod:`mlvc.outbox`); the worker is left to die with the process.
        """
        current = self._queue.current
        jobs = self._queue.take_pending()
        if current is not None and current.kind == "checkpoint":
            jobs.insert(0, current)
        kept, lost = 0, 0
        root = outbox_dir(self._settings.cache_dir if self._settings else None)
        for job in jobs:
            try:
                if self._exp_id is None or self._repo is None:
                    lost += job.kind == "checkpoint"
                elif job.kind == "checkpoint":
                    self._keep(root, job)
                    kept += 1
                elif job.kind == "stop":
                    self._keep_end(root, job)
            except Exception as exc:  # noqa: BLE001 - exiting anyway
                lost += job.kind == "checkpoint"
                log.warning("mlvc: could not keep %s in %s: %s", job.describe(), root, exc)
            finally:
                job.abandoned = True
                if job is not current:
                    with contextlib.suppress(Exception):
                        job.cleanup()
                job.done.set()
        stop.done.set()
        self._hb_stop.set()  # not joined: it may be stuck in the storage too
        self._series_stop.set()
        self._left_behind = (kept, lost, str(root))

    def _keep(self, root: Path, job: _Job) -> None:
        """Copy one pending checkpoint's files (as they were at the call) into the outbox."""
        assert self._exp_id is not None and self._repo is not None
        job.await_copies()  # files inside checkpointed directories: the helper's copies
        files: list[tuple[str, Path]] = []
        for rel, staged in job.items:
            src = staged
            if job.snapshot is not None:
                copy = job.snapshot.copy_of(staged)
                if copy is not None and copy.status != "copied":
                    src = Path(copy.src)  # still leased: unchanged since the call
            files.append((rel, src))
        entry = {
            "kind": "checkpoint",
            "repository": self._repo.url,
            "experiment": self._exp_id,
            "code_tree": to_hex(self._code_tree) if self._code_tree is not None else None,
            "step": job.step,
            "metrics": job.metrics,
            "primary": list(job.primary) if job.primary else None,
            "time": job.time,
        }
        saved = outbox_save(root, entry, files)
        changed = [p for p, fp in job.fingerprints.items() if _fingerprint_of(p) != fp]
        if changed:
            shutil.rmtree(saved, ignore_errors=True)
            raise CheckpointChanged(f"{changed[0]} changed before it was kept")

    def _keep_end(self, root: Path, job: _Job) -> None:
        assert self._exp_id is not None and self._repo is not None
        entry = {
            "kind": "end",
            "repository": self._repo.url,
            "experiment": self._exp_id,
            "status": _status_of(job.reason, job.error),
            "ended": time.time(),
            "end_reason": job.reason,
            "error": job.error,
        }
        outbox_save(root, entry)

    def _report(self) -> None:
        if self._inactive:
            return  # rank 0 reports
        if self._exp_id is None:
            err = self._start_error
            where = self.repository_url
            msg = (
                "mlvc: experiment NOT saved"
                + (f" to {where}" if where else "")
                + (f" ({type(err).__name__}: {err})" if err else "")
                + "; see the log"
            )
        else:
            s = self._summary
            n = int(s.get("checkpoints") or 0)
            parts = [f"{n} checkpoint{'' if n == 1 else 's'}"]
            best, pm = s.get("best"), primary_of(s)
            if best and pm:
                value = best.get("value")
                shown = f"{value:.4g}" if isinstance(value, float) else str(value)
                parts.append(f"best {pm[0]}={shown} at step {best.get('step')}")
            if self._failures:
                parts.append(
                    f"{self._failures} failure{'' if self._failures == 1 else 's'}: see the log"
                )
            msg = (
                f"mlvc: saved experiment {self._exp_id[:12]} ({', '.join(parts)}) "
                f"to {self.repository_url}"
            )
            if self._left_behind is not None:
                kept, lost, where = self._left_behind
                msg = (
                    f"mlvc: the repository {self.repository_url} did not answer within "
                    f"{self._exit_timeout:g} s: experiment {self._exp_id[:12]} has "
                    f"{n} checkpoint{'' if n == 1 else 's'} stored"
                    + (f", {kept} kept in {where}" if kept else "")
                    + (f", {lost} lost (see the log)" if lost else "")
                    + "; run `mlvc sync` to send what is kept"
                )
        log.info(msg)
        with contextlib.suppress(Exception):
            print(msg, file=sys.stderr, flush=True)

    def _install_exit_hooks(self) -> None:
        ref = weakref.ref(self)
        pid = self._pid

        def at_exit() -> None:
            run = ref()
            if run is not None and os.getpid() == pid and not run._closed:
                try:
                    uncaught = run._uncaught
                    run._finish(*(_end_of(*uncaught) if uncaught else ("exit", None)))
                except Exception as exc:  # noqa: BLE001 - exiting anyway
                    log.warning("mlvc: flushing at exit failed: %s", exc)

        # Runs before concurrent.futures stops its worker threads (which ingest needs);
        # atexit.register would run too late.
        import concurrent.futures.thread  # noqa: F401 - registered first, so it runs after us

        register = getattr(threading, "_register_atexit", None)
        try:
            if register is not None:
                register(at_exit)
            else:  # pragma: no cover - other Pythons
                import atexit

                atexit.register(at_exit)
        except RuntimeError:
            pass  # already shutting down
        self._install_sigterm()
        self._install_excepthook()

    def _install_excepthook(self) -> None:
        """Note an exception that ends the script outside a ``with`` block (for the status)."""
        global _hook_installed
        _LIVE_RUNS.add(self)
        if _hook_installed:
            return
        _hook_installed = True
        previous = sys.excepthook

        def hook(
            exc_type: type[BaseException],
            exc: BaseException,
            tb: types.TracebackType | None,
        ) -> None:
            for run in list(_LIVE_RUNS):
                if not run._closed and run._pid == os.getpid():
                    run._uncaught = (exc_type, exc)
            previous(exc_type, exc, tb)

        sys.excepthook = hook

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            self._prev_sigterm = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._on_sigterm)
        except (ValueError, OSError):
            return
        self._sigterm_installed = True

    def _uninstall_sigterm(self) -> None:
        if not self._sigterm_installed or threading.current_thread() is not threading.main_thread():
            return
        self._sigterm_installed = False
        with contextlib.suppress(ValueError, OSError, TypeError):
            if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                signal.signal(
                    signal.SIGTERM,
                    self._prev_sigterm if self._prev_sigterm is not None else signal.SIG_DFL,
                )

    def _on_sigterm(self, signum: int, frame: types.FrameType | None) -> None:
        prev = self._prev_sigterm
        stopping = self._stop_job
        if os.getpid() == self._pid and stopping is not None:
            stopping.done.wait()  # close() was already flushing when the signal came
        elif os.getpid() == self._pid and not self._closed:
            log.warning("mlvc: SIGTERM received, saving pending checkpoints before exiting")
            try:
                self._finish("SIGTERM")
            except Exception as exc:  # noqa: BLE001 - exiting anyway
                log.warning("mlvc: flushing on SIGTERM failed: %s", exc)
        with contextlib.suppress(ValueError, OSError, TypeError):
            signal.signal(signal.SIGTERM, prev if prev is not None else signal.SIG_DFL)
        if callable(prev):
            prev(signum, frame)
        elif prev != signal.SIG_IGN:
            os.kill(os.getpid(), signum)


def track(
    path: PathArg | None = None,
    params: Any = None,
    repository: Repository | Settings | PathArg | None = None,
    name: str | None = None,
    strict: bool = False,
    resume: str | None = None,
    restore: bool = False,
    restore_force: bool = False,
    primary_metric: PrimaryArg = None,
    storage_options: dict[str, Any] | None = None,
    max_pending: int = 2,
    heartbeat_interval: float = DEFAULT_HEARTBEAT,
    max_code_file_size: int | None = None,
    max_code_files: int = MAX_CODE_FILES,
    exit_timeout: float = EXIT_TIMEOUT,
    rank_zero_only: bool = True,
) -> Run:
    """Start tracking a training run; use as a context manager (or call ``close()``).

    Args:
        path: Code to snapshot (default: the project directory, see :mod:`mlvc.settings`).
        params: Hyperparameters (a mapping or an ``argparse.Namespace``).
        repository: A repository URL/path, settings or open repository (default: see
            :mod:`mlvc.settings`; a missing repository is created on first use).
        name: A name for the experiment (default: the script's name).
        strict: Raise :class:`~mlvc.errors.TrackingError` on failures instead of logging them.
        resume: What to continue: an experiment or checkpoint id, ``EXP@best``,
            ``EXP@step=N``, ``EXP@latest`` or a tag.
        restore: With ``resume``: write the checkpoint's files back first.
        restore_force: With ``restore``: overwrite local files that differ.
        primary_metric: Default ``(name, "minimize" | "maximize")`` for checkpoints.
        storage_options: Extra fsspec options for a remote repository.
        max_pending: Checkpoints that may wait for the background thread before
            ``checkpoint()`` blocks.
        heartbeat_interval: Seconds between heartbeats.
        max_code_file_size: Larger files are left out of the code snapshot (bytes; 0 for no
            limit). Default: the project's ``snapshot.max_file_size`` (``mlvc config``), else
            64 MiB.
        max_code_files: The code snapshot stops after this many files.
        exit_timeout: Seconds ``close()`` (and the interpreter's exit) waits for the storage
            to take what is still pending; what it has not taken by then is kept in the local
            outbox, and ``mlvc sync`` sends it later.
        rank_zero_only: In a distributed job (``RANK`` and ``WORLD_SIZE`` set, as by
            ``torchrun``), only rank 0 records; the other ranks get a run whose calls do
            nothing (``run.id`` is None there). False: every rank records its own experiment.

    Returns:
        The :class:`Run`.

    Raises:
        TrackingError: Only with ``strict=True``: the configuration is unusable.
        ObjectNotFound: ``resume`` names nothing.
        FileExistsConflict: ``restore`` would overwrite different local files.
    """
    return Run(
        path=path,
        params=params,
        repository=repository,
        name=name,
        strict=strict,
        resume=resume,
        restore=restore,
        restore_force=restore_force,
        primary_metric=primary_metric,
        storage_options=storage_options,
        max_pending=max_pending,
        heartbeat_interval=heartbeat_interval,
        max_code_file_size=max_code_file_size,
        max_code_files=max_code_files,
        exit_timeout=exit_timeout,
        rank_zero_only=rank_zero_only,
    )


def init(
    path: PathArg | None = None,
    params: Any = None,
    repository: Repository | Settings | PathArg | None = None,
    name: str | None = None,
    strict: bool = False,
    resume: str | None = None,
    restore: bool = False,
    restore_force: bool = False,
    primary_metric: PrimaryArg = None,
    storage_options: dict[str, Any] | None = None,
    max_pending: int = 2,
    heartbeat_interval: float = DEFAULT_HEARTBEAT,
    max_code_file_size: int | None = None,
    max_code_files: int = MAX_CODE_FILES,
    exit_timeout: float = EXIT_TIMEOUT,
    rank_zero_only: bool = True,
) -> Run:
    """Start tracking without a ``with`` block; arguments as for :func:`track`.

    Call ``run.close()`` at the end, or let the process exit: pending checkpoints are flushed
    then.
    """
    return track(
        path=path,
        params=params,
        repository=repository,
        name=name,
        strict=strict,
        resume=resume,
        restore=restore,
        restore_force=restore_force,
        primary_metric=primary_metric,
        storage_options=storage_options,
        max_pending=max_pending,
        heartbeat_interval=heartbeat_interval,
        max_code_file_size=max_code_file_size,
        max_code_files=max_code_files,
        exit_timeout=exit_timeout,
        rank_zero_only=rank_zero_only,
    )
