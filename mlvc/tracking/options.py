"""A run's options: the keyword arguments of :func:`~mlvc.tracking.track`, written once.

:class:`RunOptions` lists every argument ``track()``, ``init()`` and ``Run()`` accept, with its
default; :func:`takes_run_options` gives a function that signature (for type checkers, IDEs and
``help()``), so the list is never written out again. Owns no I/O: reading the environment and
``mlvc.toml`` is :mod:`mlvc.settings`'s job.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import operator
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from mlvc.errors import UsageError
from mlvc.settings import Settings

if TYPE_CHECKING:
    from mlvc_core.repository import Repository

__all__ = [
    "COPY_BUDGET",
    "DEFAULT_HEARTBEAT",
    "EXIT_TIMEOUT",
    "MAX_CODE_FILES",
    "MAX_STEP",
    "PathArg",
    "Paths",
    "PrimaryArg",
    "RunOptions",
    "check_numbers",
    "check_step",
    "default_name",
    "parse_primary",
    "takes_run_options",
]

DEFAULT_HEARTBEAT = 10.0
"""Seconds between two heartbeats of a live run."""
MAX_CODE_FILES = 20_000
"""The code snapshot stops after this many files (a warning)."""
EXIT_TIMEOUT = 300.0
"""Default seconds ``close()`` (and the exit) waits for storage to take what is pending."""
COPY_BUDGET = 1.0
"""Default seconds a ``checkpoint()`` call may spend copying its files (see ``copy_budget``)."""

PathArg = str | os.PathLike[str]
Paths = PathArg | Iterable[PathArg] | None
PrimaryArg = tuple[str, str] | list[str] | Mapping[str, str] | str | None


@dataclass(frozen=True)
class RunOptions:
    """How to track a run: the keyword arguments of :func:`~mlvc.tracking.track`.

    Attributes:
        path: Code to snapshot (default: the project directory, see :mod:`mlvc.settings`).
        params: Hyperparameters (a mapping, an ``argparse.Namespace``, a dataclass, a config;
            recorded flat, see :mod:`mlvc.tracking.params`).
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
        copy_budget: Seconds a ``checkpoint()`` call may spend copying its files before the
            rest is copied in the background (about 3 GB at the page-cache copy speed
            measured on a development machine; a clone where the filesystem can is instant).
            A file written to before its background copy ends costs that checkpoint (a
            warning), never the write. None: copy every file whole before returning.
        rank_zero_only: In a distributed job (``RANK`` and ``WORLD_SIZE`` set, as by
            ``torchrun``), only rank 0 records; the other ranks get a run whose calls do
            nothing (``run.id`` is None there). False: every rank records its own experiment.
    """

    path: PathArg | None = None
    params: Any = None
    repository: Repository | Settings | PathArg | None = None
    name: str | None = None
    strict: bool = False
    resume: str | None = None
    restore: bool = False
    restore_force: bool = False
    primary_metric: PrimaryArg = None
    storage_options: dict[str, Any] | None = None
    max_pending: int = 2
    heartbeat_interval: float = DEFAULT_HEARTBEAT
    max_code_file_size: int | None = None
    max_code_files: int = MAX_CODE_FILES
    exit_timeout: float = EXIT_TIMEOUT
    copy_budget: float | None = COPY_BUDGET
    rank_zero_only: bool = True


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _signature_of(
    options: Callable[_P, RunOptions],
) -> Callable[[Callable[[RunOptions], _R]], Callable[_P, _R]]:
    def wrap(fn: Callable[[RunOptions], _R]) -> Callable[_P, _R]:
        @functools.wraps(fn)
        def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            return fn(options(*args, **kwargs))

        fields = inspect.signature(options).parameters.values()
        call.__signature__ = inspect.signature(fn).replace(  # type: ignore[attr-defined]
            parameters=list(fields)
        )
        return call

    return wrap


takes_run_options = _signature_of(RunOptions)
"""Decorator: ``fn(options: RunOptions)`` becomes a function of the options' fields.

The fields of :class:`RunOptions` are the one place the arguments of ``track()`` and
``init()`` are written; type checkers and ``help()`` see them on the decorated function.
"""


_NUMBERS: dict[str, tuple[float, bool, bool, bool]] = {
    # option: (least allowed, least excluded, None allowed, whole numbers only)
    "heartbeat_interval": (0, True, False, False),
    "exit_timeout": (0, False, False, False),
    "copy_budget": (0, False, True, False),
    "max_pending": (1, False, False, True),
    "max_code_files": (0, False, False, True),
    "max_code_file_size": (0, False, True, True),
}


def check_numbers(options: RunOptions) -> None:
    """Check the numeric options: a bad one would kill or spin a background thread.

    Raises:
        UsageError: An option is not a number (``bool`` is not one), is NaN, or is out of
            its range (``heartbeat_interval`` finite and > 0; ``max_pending`` >= 1; the
            others >= 0).
    """
    for name, (least, excluded, none_ok, whole) in _NUMBERS.items():
        value = getattr(options, name)
        if value is None and none_ok:
            continue
        kind = numbers.Integral if whole else numbers.Real  # numpy's numbers too
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if ok and excluded:  # an interval: finite and positive
            ok = math.isfinite(value) and value > least
        elif ok:  # a limit: infinity means none, NaN means nothing
            ok = not math.isnan(value) and value >= least
        if not ok:
            what = "a whole number" if whole else "a number of seconds"
            bound = f"{'above' if excluded else 'at least'} {least}"
            also = " or None" if none_ok else ""
            raise UsageError(f"{name} must be {what} {bound}{also}, not {value!r}")


MAX_STEP = (1 << 64) - 1
"""The largest step (steps are stored as unsigned 64-bit integers)."""


def check_step(step: object) -> int:
    """A step as given to ``checkpoint()`` or ``log()``: a whole number in [0, 2**64).

    Python and numpy integers (anything with ``__index__``: a one-element integer tensor
    too) are accepted; ``bool``, floats (even integral ones: ``1.0``), strings and the rest
    are not, since turning them into a step would record another step than meant.

    Raises:
        UsageError: Not an integer, negative, or 2**64 or more.
    """
    if type(step) is int:
        value = step
    else:
        # numpy booleans (named bool_ in 1.x, bool in 2.x) and torch ones are no steps
        dtype = str(getattr(step, "dtype", ""))
        boolean = type(step).__name__ in ("bool", "bool_") or dtype in ("bool", "torch.bool")
        if boolean or isinstance(step, (bool, float)):
            raise UsageError(f"step must be a non-negative integer, not {step!r}")
        try:
            value = operator.index(step)  # type: ignore[arg-type]
        except TypeError:
            raise UsageError(f"step must be a non-negative integer, not {step!r}") from None
    if not 0 <= value <= MAX_STEP:
        raise UsageError(f"step must be a non-negative integer below 2**64, not {value}")
    return value


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


def default_name(argv: list[str]) -> str:
    """The script's name (``train`` for ``python train.py``), else ``run``."""
    stem = Path(argv[0]).stem if argv and argv[0] not in ("", "-", "-c", "-m") else ""
    if "ipykernel" in stem:
        return "notebook"
    return stem or "run"
