"""The experiment model: :class:`Experiment`, one experiment as read from its ref summary.

Status, derived when read: what the summary recorded when the run ended (``stopped`` for a
clean end, ``failed`` with the exception's type and message for an exception that left
``with mlvc.track()``, ``interrupted`` for Ctrl-C or SIGTERM); else ``running`` if the heartbeat
is younger than ``stale_after`` seconds (default :data:`STALE_AFTER`); otherwise ``crashed``
(the process vanished without recording an end: ``kill -9``, pre-emption, power loss).

Commits (checkpoints, the environment) and metric series are read only when asked for. This
module does not list, look up or write experiments.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from mlvc.experiments.checkpoints import Checkpoint
from mlvc.experiments.summary import (
    ENDED,
    ExperimentSummary,
    as_datetime,
    as_float,
    iso,
    json_number,
)
from mlvc_core.errors import UsageError
from mlvc_core.ids import SHORT_LEN, ObjectId, from_hex, to_hex
from mlvc_core.objects import Commit
from mlvc_core.repository import Repository

STALE_AFTER = 60.0
"""Seconds without a heartbeat after which a run that did not stop cleanly reads as crashed."""
STATUSES = ("running", "stopped", "failed", "interrupted", "crashed", "removed")


class Experiment:
    """One experiment, as read from its ref summary (commits are read only on demand).

    Attributes:
        id: Full hex id (the id of the experiment's first commit).
    """

    def __init__(
        self,
        repo: Repository,
        exp_id: str,
        target: ObjectId,
        summary: ExperimentSummary,
        heartbeat: float | None = None,
        stale_after: float = STALE_AFTER,
        removed: bool = False,
        now: float | None = None,
    ) -> None:
        self._repo = repo
        self.id = exp_id
        self.target = target
        self.record = summary
        self._heartbeat = heartbeat
        self._removed = removed
        self._status = self._derive_status(time.time() if now is None else now, stale_after)
        self._first: Commit | None = None
        self._checkpoints: builtins.list[Checkpoint] | None = None

    def _derive_status(self, now: float, stale_after: float) -> str:
        if self._removed:
            return "removed"
        if self.record.status in ENDED:
            return self.record.status
        if self._heartbeat is not None and now - self._heartbeat <= stale_after:
            return "running"
        return "crashed"

    def __repr__(self) -> str:
        return f"<Experiment {self.short_id} {self.name!r} {self.status}>"

    @property
    def repository(self) -> Repository:
        """The repository the experiment lives in."""
        return self._repo

    @property
    def short_id(self) -> str:
        """The id shortened for display (12 hex digits)."""
        return self.id[:SHORT_LEN]

    @property
    def summary(self) -> dict[str, Any]:
        """The ref summary in its stored JSON form (see docs/experiments.md); a copy.

        :attr:`record` is the same, typed (:class:`ExperimentSummary`).
        """
        return self.record.to_dict()

    @property
    def name(self) -> str:
        """The experiment's name ("" if none)."""
        return self.record.name or ""

    @property
    def created(self) -> datetime | None:
        """When the run started (UTC)."""
        return as_datetime(self.record.created)

    @property
    def ended(self) -> datetime | None:
        """When the run stopped cleanly (UTC), or None."""
        return as_datetime(self.record.ended)

    @property
    def params(self) -> dict[str, Any]:
        """The hyperparameters given to ``track()``."""
        return dict(self.record.params)

    @property
    def status(self) -> str:
        """What became of the run (see :data:`STATUSES`).

        ``running`` (a live heartbeat), ``stopped`` (a clean end), ``failed`` (an exception
        ended it: :attr:`error`), ``interrupted`` (Ctrl-C or SIGTERM), ``crashed`` (the process
        vanished: no heartbeat for ``stale_after`` seconds and no recorded end), ``removed``.
        """
        return self._status

    @property
    def end_reason(self) -> str | None:
        """Why the run ended, or None while it runs or after a crash.

        ``ok`` (closed), ``exit`` (the interpreter exited), ``SIGTERM``,
        ``KeyboardInterrupt``, ``exception``.
        """
        return self.record.end_reason or None

    @property
    def error(self) -> str | None:
        """``"Type: message"`` of the exception that ended a ``failed`` run, else None."""
        err = self.record.error
        if not isinstance(err, dict):
            return None
        message = str(err.get("message") or "")
        return f"{err.get('type') or 'Exception'}" + (f": {message}" if message else "")

    @property
    def user(self) -> str:
        """Who ran it."""
        return self.record.user or ""

    @property
    def host(self) -> str:
        """Where it ran."""
        return self.record.host or ""

    @property
    def command(self) -> str:
        """The command line that ran it."""
        return self.record.command or ""

    @property
    def primary_metric(self) -> tuple[str, str] | None:
        """``(name, "minimize" | "maximize")`` or None."""
        return self.record.primary_metric

    @property
    def heartbeat(self) -> datetime | None:
        """When a live run last reported (UTC), or None."""
        return as_datetime(self._heartbeat)

    def _first_commit(self) -> Commit:
        if self._first is None:
            self._first = self._repo.read_commit(from_hex(self.id))
        return self._first

    @property
    def env(self) -> dict[str, Any]:
        """The recorded environment: python, packages, git, user, host, command, cwd..."""
        return dict(self._first_commit().metadata.get("env") or {})

    @property
    def removed_checkpoints(self) -> builtins.list[str]:
        """Ids of checkpoints hidden by ``remove``."""
        return builtins.list(self.record.removed)

    @property
    def checkpoints(self) -> builtins.list[Checkpoint]:
        """The checkpoints, oldest first (removed ones left out). Reads the commit chain."""
        if self._checkpoints is None:
            removed = set(self.record.removed)
            out = [
                Checkpoint(self._repo, oid, c)
                for oid, c in self._repo.log(self.target)
                if c.metadata.get("type") == "checkpoint" and to_hex(oid) not in removed
            ]
            out.reverse()
            self._checkpoints = out
        return builtins.list(self._checkpoints)

    def _checkpoint(self, hex_id: str | None) -> Checkpoint | None:
        if hex_id is None:
            return None
        oid = from_hex(hex_id)
        return Checkpoint(self._repo, oid, self._repo.read_commit(oid))

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint, or None if there is none."""
        return self._checkpoint(self.record.latest)

    def best(self) -> Checkpoint | None:
        """The checkpoint with the best primary metric, or None without a primary metric."""
        return self._checkpoint(self.record.best.checkpoint if self.record.best else None)

    def best_or_latest(self) -> Checkpoint | None:
        """:meth:`best` if the experiment has a primary metric, else :meth:`latest`."""
        return self.best() or self.latest()

    def metrics(self, name: str) -> builtins.list[tuple[int | None, float]]:
        """``(step, value)`` of one metric, ordered by step.

        What ``run.log`` recorded, and the checkpoints' values at steps ``run.log`` did not
        record. Reads the experiment's metric segments and its commit chain.
        """
        from mlvc.series import read_points

        out: builtins.list[tuple[int | None, float]] = [
            (step, values[name])
            for step, _time, values in read_points(self._repo, self.id)
            if name in values
        ]
        logged = {step for step, _ in out}
        for c in self.checkpoints:
            value = as_float(c.metrics.get(name))
            if value is not None and c.step not in logged:
                out.append((c.step, value))
        out.sort(key=lambda p: -1 if p[0] is None else p[0])
        return out

    def metric_names(self) -> builtins.list[str]:
        """Names of every metric logged or recorded at a checkpoint, sorted."""
        from mlvc.series import read_points

        names = {k for _s, _t, values in read_points(self._repo, self.id) for k in values}
        for c in self.checkpoints:
            names.update(c.metrics)
        return sorted(names)

    def metrics_frame(self, names: Sequence[str] | None = None) -> Any:
        """The metrics as a pandas DataFrame: one row per step, one column per metric.

        Args:
            names: The metrics (default: every one, see :meth:`metric_names`).

        Raises:
            UsageError: pandas is not installed.
        """
        try:
            import pandas as pd  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            raise UsageError("Experiment.metrics_frame needs pandas: pip install pandas") from None
        columns = {}
        for name in builtins.list(names) if names is not None else self.metric_names():
            points = self.metrics(name)
            columns[name] = (
                pd.Series([v for _, v in points], index=[s for s, _ in points], dtype="float64")
                .groupby(level=0)
                .last()
            )
        frame = pd.DataFrame(columns)
        frame.index.name = "step"
        return frame

    def plot(self, name: str, ax: Any = None) -> Any:
        """Plot one metric against the step with matplotlib; return the Axes.

        Raises:
            UsageError: matplotlib is not installed, or the metric was never recorded.
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            raise UsageError("Experiment.plot needs matplotlib: pip install matplotlib") from None
        points = self.metrics(name)
        if not points:
            raise UsageError(f"experiment {self.short_id} has no metric {name!r}")
        if ax is None:
            _fig, ax = plt.subplots()
        xs = [s if s is not None else i for i, (s, _) in enumerate(points)]
        ax.plot(xs, [v for _, v in points], marker="o", label=self.name or self.short_id)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.set_title(f"{name} - {self.name or self.short_id}")
        return ax

    def to_dict(self, full: bool = False) -> dict[str, Any]:
        """A JSON-safe description with stable keys.

        Args:
            full: Also include ``env`` and the list of checkpoints (reads commits).
        """
        s = self.record
        out: dict[str, Any] = {
            "id": self.id,
            "short_id": self.short_id,
            "name": self.name,
            "status": self.status,
            "created": iso(s.created),
            "ended": iso(s.ended),
            "user": self.user,
            "host": self.host,
            "command": self.command,
            "params": _json_safe(self.params),
            "primary_metric": (
                {"name": self.primary_metric[0], "goal": self.primary_metric[1]}
                if self.primary_metric
                else None
            ),
            "checkpoints": s.checkpoints,
            "latest": s.latest,
            "latest_step": s.latest_step,
            "latest_metrics": _json_safe(dict(s.latest_metrics)),
            "best": _json_safe(s.best.to_dict()) if s.best else None,
            "removed": self.removed_checkpoints,
            "end_reason": self.end_reason,
            "error": self.error,
            "heartbeat": self.heartbeat.isoformat() if self.heartbeat else None,
            "repository": self._repo.url,
        }
        if full:
            out["env"] = _json_safe(self.env)
            out["checkpoint_list"] = [c.to_dict() for c in self.checkpoints]
        return out

    def remove(self) -> None:
        """Hide this experiment (delete its ref and heartbeat; ``gc`` frees the space)."""
        from mlvc.experiments.removal import remove_experiment

        remove_experiment(self._repo, self.id)


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats (not JSON) by their string form, recursively."""
    if isinstance(value, float):
        return json_number(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (builtins.list, tuple)):
        return [_json_safe(v) for v in value]
    return value
