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
  as soon as the call returns, and no write of theirs ever waits for mlvc (:mod:`.copies`):
  the files are cloned or copied into a private copy directory before the call returns, up to
  ``copy_budget`` seconds (default 1 s); the rest is copied in the background at once, watched
  for writes, and a file written to before its copy is complete costs that checkpoint (a
  warning), never a torn record.
  A background thread chunks, stores and commits, then advances the experiment's ref by
  compare-and-swap. Up to ``max_pending`` (default 2) checkpoints wait for it unnoticed; a
  further one waits at most :data:`CHECKPOINT_WAIT` (1 s) for room, then is queued anyway with
  its files on local disk (one warning): storage that is down, frozen or slow never blocks the
  loop for longer.
* A checkpoint the storage fails to take (refused, full...) is retried in the background
  (one warning) until it is stored or the run ends; with ``strict=True`` the failure is raised.
* ``close()`` (and the interpreter's exit) waits up to ``exit_timeout`` seconds (default
  :data:`EXIT_TIMEOUT`) for the storage to take what is pending; what it has not taken by then
  is kept in the local outbox (:mod:`.outbox`, under the cache directory), and the last
  line says so and names ``mlvc sync``, which sends it later.
* ``checkpoint(copy=False)`` copies nothing, for loops that leave their
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
``max_code_files`` are left out with a warning; as on disk when ``track()`` returned: it is
copied privately before it returns), params, Python version and platform, installed
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

The package, one concern per module (none imports the CLI):

=====================  ===========================================================================
``run``                the public API: :class:`Run` (delegates), :func:`track`, :func:`init`
``options``            :class:`RunOptions`, the one list of ``track()``'s keyword arguments
``failures``           log-and-go-on or raise (``strict``), and the failure count
``protect``            the caller's thread: copy or fingerprint a checkpoint's files
``copies``             one checkpoint's copies (clone, kernel copy, within a time budget) and
                       the run's background copier; ``changes`` sees writes to files in copy
``jobs``               the background jobs and their bounded queue
``recorder``           the worker thread: retries, waits for gc, survives anything
``commits``            what the worker stores: start, resume and checkpoint commits, each
                       through the core's one commit path (``mlvc_core.history.advance``),
                       and the end in the experiment's summary
``code``               the code snapshot; ``ignore`` its ignore rules
``environment``        what a run records about where it runs (``_children``: fork-safe ``git``)
``params``             params made flat and JSON-safe; ``redaction`` keeps secrets out
``steplog``            the points ``run.log()`` keeps (the call is ``Run.log``) and the thread
                       writing them in segments
                       (their format is :mod:`mlvc.series`'s, shared with the read side)
``heartbeat``          the live run's heartbeat object
``resume``             what ``resume=`` continues from, and restoring its files
``ending``             the end of a run: waiting for storage, the outbox, the last line
``exits``              exit, uncaught exception and SIGTERM hooks
``outbox``             what the storage did not take in time, sent later by ``mlvc sync``
=====================  ===========================================================================

Importing this package is cheap: :class:`Run`, :func:`track` and :func:`init` load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Run", "RunOptions", "init", "track"]

_LAZY = {
    "Run": "mlvc.tracking.run",
    "track": "mlvc.tracking.run",
    "init": "mlvc.tracking.run",
    "RunOptions": "mlvc.tracking.options",
}

if TYPE_CHECKING:
    from mlvc.tracking.options import RunOptions
    from mlvc.tracking.run import Run, init, track


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'mlvc.tracking' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
