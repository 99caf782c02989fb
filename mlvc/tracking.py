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
  compare-and-swap. The queue is bounded (``max_pending``, default 2): the loop waits only
  when it is full.
* ``checkpoint(copy=False)`` takes no lease and copies nothing, for loops that leave their
  checkpoint files alone until the next checkpoint: the call only notes each file's identity
  (size, mtime, inode) and returns in microseconds; the background thread reads the files
  where they are.
  A file that changed before it was fully stored is never recorded torn or mislabelled: that
  checkpoint is dropped with a warning (raised with ``strict=True``).
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

Resuming (``resume=<experiment or checkpoint id prefix>``) appends to the experiment's chain
(after its newest commit, whatever checkpoint was named), first recording a ``resume`` commit
with the new environment and code. ``restore=True`` writes the named checkpoint's files (an
experiment: its latest checkpoint) back relative to the code directory before returning;
files already there with the same content are left alone, different ones raise
:class:`~mlvc.errors.FileExistsConflict` unless ``restore_force=True``. Resume problems always
raise (even without ``strict``): silently training from scratch would waste the run.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import queue
import random
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
from typing import Any, TypeVar, cast

from mlvc.environment import environment
from mlvc.errors import FileExistsConflict, MlvcError, TrackingError, UsageError
from mlvc.experiments import (
    Experiment,
    compact_catalog,
    heartbeat_key,
    json_number,
    primary_of,
    ref_name,
    resolve_any,
    summary_with_checkpoint,
)
from mlvc.ignore import IgnoreMatcher
from mlvc.repo import open_repo, stat_cache
from mlvc.settings import Settings, load_settings
from mlvc.staging import STAGING, BackgroundCopy, CopyFailed, Snapshot, Stager
from mlvc_core.errors import RefConflict
from mlvc_core.ids import ObjectId, to_hex
from mlvc_core.ingest import TreeBuilder, ingest_paths
from mlvc_core.objects import Commit, Tree, TreeEntry
from mlvc_core.refs import Ref
from mlvc_core.repository import Repository, WriteSession, default_author

log = logging.getLogger("mlvc")

__all__ = ["Run", "track", "init"]

DEFAULT_HEARTBEAT = 10.0
MAX_CODE_FILE_SIZE = 64 << 20
MAX_CODE_FILES = 20_000
_CAS_ATTEMPTS = 30

PathArg = str | os.PathLike[str]
Paths = PathArg | Iterable[PathArg] | None
PrimaryArg = tuple[str, str] | list[str] | Mapping[str, str] | str | None


# ------------------------------------------------------------------------------ small helpers


def _jsonable(value: Any) -> Any:
    """A JSON/msgpack-safe copy of user data (params, metrics).

    Scalars of numpy/torch go through ``.item()``, paths become strings, non-finite floats
    strings, anything else its ``repr``.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return json_number(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    for attr in ("item", "tolist"):
        fn = getattr(value, attr, None)
        if callable(fn):
            try:
                return _jsonable(fn())
            except (TypeError, ValueError, RuntimeError):
                continue
    return repr(value)


def _params_dict(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        params = vars(params)  # argparse.Namespace and friends
    out = _jsonable(params)
    assert isinstance(out, dict)
    return out


def _clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float | str]:
    out: dict[str, float | str] = {}
    for k, v in (metrics or {}).items():
        try:
            out[str(k)] = json_number(float(v))
        except (TypeError, ValueError, RuntimeError) as exc:
            log.warning("mlvc: metric %r ignored: %r is not a number (%s)", k, v, exc)
    return out


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
        params: The recorded params (JSON-safe copy).
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
        max_code_file_size: int = MAX_CODE_FILE_SIZE,
        max_code_files: int = MAX_CODE_FILES,
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
        self._stager: Stager | None = None
        self._max_code_files = max_code_files
        self.name = name or _default_name(self._argv)
        self.params: dict[str, Any] = {}
        self._primary: tuple[str, str] | None = None
        try:
            self.params = _params_dict(params)
            self._primary = parse_primary(primary_metric)
            if isinstance(repository, Repository):
                self._repo, self._own_repo = repository, False
                self._settings = load_settings()
            elif isinstance(repository, Settings):
                self._settings = repository
            else:
                self._settings = load_settings(repository, storage_options=storage_options)
            self._code_dir = (
                Path(path).absolute() if path is not None else self._settings.project_dir
            )
            if not self._code_dir.exists():
                raise UsageError(f"code path does not exist: {self._code_dir}")
        except Exception as exc:  # noqa: BLE001 - never break training unless strict
            self._code_dir = self._cwd
            self._disabled = True
            self._main_error("run configuration", exc)
        if resume is not None and not self._disabled:
            self._prepare_resume(resume, restore, restore_force)
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=max(1, max_pending))
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
        self._next_step = job_step + 1
        self._queue.put(job)

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
        reason = (
            "interrupted"
            if issubclass(exc_type, KeyboardInterrupt)
            else f"exception {exc_type.__name__}"
        )
        self._finish(reason)  # the user's exception wins over ours

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
        from mlvc.checkpoints import Checkpoint

        assert self._settings is not None
        if self._repo is None:
            self._repo = open_repo(self._settings)
        found = resolve_any(self._repo, resume)
        ckpt: Checkpoint | None
        if isinstance(found, Experiment):
            exp, ckpt = found, found.latest()
        elif isinstance(found, Checkpoint):
            from mlvc.experiments import _load_experiment

            exp, ckpt = _load_experiment(self._repo, found.experiment_id), found
        else:
            raise UsageError(
                f"cannot resume {resume!r}: it is neither an experiment nor a checkpoint"
            )
        self._resume_id = exp.id
        self.name = exp.name or self.name
        self._primary = self._primary or exp.primary_metric
        latest_step = exp.summary.get("latest_step")
        self._next_step = int(latest_step) + 1 if isinstance(latest_step, (int, float)) else 0
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
            try:
                if job.kind == "start":
                    self._start_safely(job)
                elif job.kind == "checkpoint":
                    job.await_copies()
                    self._do_checkpoint(job)
                elif job.kind == "stop":
                    self._do_stop(job)
            except Exception as exc:  # noqa: BLE001 - the worker must survive anything
                self._background_error(job, exc)
            finally:
                job.cleanup()
                job.done.set()
            if job.kind == "stop":
                return

    def _start_safely(self, job: _Job) -> None:
        try:
            self._do_start()
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

    def _code_snapshot(self, session: WriteSession) -> ObjectId:
        assert self._settings is not None and self._repo is not None
        skip: list[PathArg] = [self._settings.cache_dir]
        if self._repo.store.is_local:
            skip.append(self._repo.url)
        matcher = IgnoreMatcher(self._code_dir, skip_paths=skip)
        too_big: list[str] = []
        counted = [0]
        root = self._code_dir

        def exclude(rel: str) -> bool:
            if matcher(rel):
                return True
            try:
                st = os.lstat(root / rel)
            except OSError:
                return True
            if not stat_mod.S_ISREG(st.st_mode):
                return False
            if st.st_size > self._max_code_file_size:
                too_big.append(rel)
                return True
            counted[0] += 1
            return counted[0] > self._max_code_files

        cache = stat_cache(self._repo)
        try:
            tree = ingest_paths(session, [root], exclude=exclude, stat_cache=cache)
        finally:
            if cache is not None:
                cache.close()
        if too_big:
            log.warning(
                "mlvc: code snapshot left out %d file(s) over %d MiB (add them to .mlvcignore, or "
                "checkpoint them explicitly): %s",
                len(too_big),
                self._max_code_file_size >> 20,
                ", ".join(too_big[:10]),
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
        with repo.session() as s:
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
        commit = make(ref.target)
        cid = session.add_object(commit)
        session.flush()
        for attempt in range(_CAS_ATTEMPTS):
            try:
                new_summary = summarize(ref.summary, to_hex(cid))
                self._summary = self._repo.refs.move(ref, cid, new_summary).summary
                return cid
            except RefConflict:
                time.sleep(min(1.0, 0.02 * 2**attempt) * (0.5 + random.random()))
                ref = self._repo.refs.require(ref.name)
                if commit.parents != (ref.target,):
                    commit = make(ref.target)
                    cid = session.add_object(commit)
                    session.flush()
        raise RefConflict(ref.name, None)

    def _do_checkpoint(self, job: _Job) -> None:
        self._ensure_started()
        assert self._repo is not None and self._exp_id is not None
        repo, exp_id = self._repo, self._exp_id
        ref = repo.refs.require(ref_name(exp_id))
        pm = {"name": job.primary[0], "goal": job.primary[1]} if job.primary else None
        metrics_text = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in job.metrics.items()
        )
        with repo.session() as s:
            # The previous checkpoint's files guide this one's: unchanged tensors are verified
            # by hash instead of being cut and compressed again.
            guide = None
            with contextlib.suppress(MlvcError):
                guide = repo.read_commit(ref.target).tree
            builder = TreeBuilder(s, guide=guide)
            entries: dict[str, TreeEntry] = {}
            for rel, staged in job.items:
                name = rel.rsplit("/", 1)[-1]
                entry = job.read(staged, lambda path: builder.entry(path, name, rel))  # noqa: B023
                if entry is not None:
                    entries[rel] = entry
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
                return Commit(
                    tree=tree_id,
                    parents=(parent,),
                    author=default_author(),
                    time=job.time,
                    message=f"checkpoint step {job.step}"
                    + (f": {metrics_text}" if metrics_text else ""),
                    metadata={
                        "type": "checkpoint",
                        "experiment": exp_id,
                        "step": job.step,
                        "metrics": job.metrics,
                        "primary_metric": pm,
                        "paths": [rel for rel, _ in job.items],
                    },
                )

            def summarize(old: dict[str, Any], cid: str) -> dict[str, Any]:
                new = summary_with_checkpoint(old, cid, job.step, job.metrics, job.primary)
                new["status"] = "running"
                return new

            self._advance(s, ref, make, summarize)
        self._saved += 1

    def _do_stop(self, job: _Job) -> None:
        self._stop_heartbeat()
        if self._exp_id is None or self._repo is None:
            return
        repo, name = self._repo, ref_name(self._exp_id)
        for attempt in range(_CAS_ATTEMPTS):
            ref = repo.refs.get(name)
            if ref is None:
                break  # removed meanwhile
            summary = dict(ref.summary, status="stopped", ended=time.time(), end_reason=job.reason)
            try:
                self._summary = repo.refs.update_summary(ref, summary).summary
                break
            except RefConflict:
                time.sleep(min(1.0, 0.02 * 2**attempt))
        repo.store.delete(heartbeat_key(self._exp_id))
        with contextlib.suppress(MlvcError, OSError):
            compact_catalog(repo)  # a writer keeps the experiment catalog compact

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

    def _finish(self, reason: str) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._worker is not None and self._worker.is_alive():
            job = self._stop_job = _Job("stop", reason=reason)
            self._queue.put(job)
            job.done.wait()
            self._worker.join(timeout=30)
        if self._stager is not None:
            self._stager.close()  # after the worker: every copy it waited for is made
        self._uninstall_sigterm()
        if self._own_repo and self._repo is not None:
            with contextlib.suppress(Exception):
                self._repo.close()
        if not self._disabled:
            self._report()

    def _report(self) -> None:
        if self._exp_id is None:
            err = self._start_error
            msg = (
                f"mlvc: experiment NOT saved to {self.repository_url}"
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
                    run._finish("exit")
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
    max_code_file_size: int = MAX_CODE_FILE_SIZE,
    max_code_files: int = MAX_CODE_FILES,
) -> Run:
    """Start tracking a training run; use as a context manager (or call ``close()``).

    Args:
        path: Code to snapshot (default: the project directory, see :mod:`mlvc.settings`).
        params: Hyperparameters (a mapping or an ``argparse.Namespace``).
        repository: A repository URL/path, settings or open repository (default: see
            :mod:`mlvc.settings`; a missing repository is created on first use).
        name: A name for the experiment (default: the script's name).
        strict: Raise :class:`~mlvc.errors.TrackingError` on failures instead of logging them.
        resume: Id prefix of an experiment or checkpoint to continue.
        restore: With ``resume``: write the checkpoint's files back first.
        restore_force: With ``restore``: overwrite local files that differ.
        primary_metric: Default ``(name, "minimize" | "maximize")`` for checkpoints.
        storage_options: Extra fsspec options for a remote repository.
        max_pending: Checkpoints that may wait for the background thread before
            ``checkpoint()`` blocks.
        heartbeat_interval: Seconds between heartbeats.
        max_code_file_size: Larger files are left out of the code snapshot.
        max_code_files: The code snapshot stops after this many files.

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
    max_code_file_size: int = MAX_CODE_FILE_SIZE,
    max_code_files: int = MAX_CODE_FILES,
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
    )
