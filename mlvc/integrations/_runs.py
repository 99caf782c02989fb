"""The run an integration records into: started on first use, closed at the end of training.

Shared by the framework integrations; imports no framework.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

import mlvc
from mlvc.tracking.run import Run

log = logging.getLogger("mlvc")


class RunHolder:
    """Starts a run lazily with the params known by then; ends it like ``with mlvc.track()``.

    A run passed in is used as is and never closed here. After :meth:`end`, the next use
    resumes the same experiment (a ``fit`` followed by a ``test``), or starts a new one if
    resuming fails.
    """

    def __init__(self, run: Run | None, options: Mapping[str, Any]) -> None:
        self._given = run
        self._run = run
        self._options = dict(options)
        self._params: dict[str, Any] = {}
        self._ended_id: str | None = None

    @property
    def started(self) -> bool:
        """True while a run is open."""
        return self._run is not None

    @property
    def experiment_id(self) -> str | None:
        """The experiment of the open run, else of the last one ended (None before any)."""
        return self._run.id if self._run is not None else self._ended_id

    def add_params(self, params: Mapping[str, Any]) -> None:
        """Params for the run; after it started, new values can no longer be recorded."""
        if self._run is not None:
            if any(self._run.params.get(k, object()) != v for k, v in params.items()):
                log.warning("mlvc: hyperparameters logged after the run started are not recorded")
            return
        self._params.update(params)

    def get(self) -> Run:
        """The open run, started now if needed."""
        if self._run is None:
            options = dict(self._options)
            params = {**(options.pop("params", None) or {}), **self._params}
            if self._ended_id is not None:
                try:
                    self._run = mlvc.track(params=params, resume=self._ended_id, **options)
                except Exception as exc:  # noqa: BLE001 - never break training
                    log.warning("mlvc: could not resume %s (%s): new run", self._ended_id, exc)
            if self._run is None:
                self._run = mlvc.track(params=params, **options)
        return self._run

    def end(self, failed: bool = False) -> None:
        """Close the run we started (``failed``: with the exception being handled, if any)."""
        run, self._run = self._run, None
        if run is None or run is self._given:
            self._run = run
            return
        exc_type, exc, tb = sys.exc_info() if failed else (None, None, None)
        if exc_type is None:
            run.close()
        else:
            run.__exit__(exc_type, exc, tb)
        self._ended_id = run.id


class LazyRun:
    """Stands for the run until an attribute is used, when the run starts.

    Lightning touches ``logger.experiment`` before it logs hyperparameters: the run starts
    later, with them.
    """

    def __init__(self, holder: RunHolder) -> None:
        self._holder = holder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._holder.get(), name)

    def __repr__(self) -> str:
        return f"<mlvc run, starts on first use: {self._holder.experiment_id or 'not yet'}>"
