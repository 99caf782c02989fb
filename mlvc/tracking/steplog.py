"""The points ``run.log()`` keeps, and the daemon thread writing them out in segments.

The call itself is :meth:`Run.log <mlvc.tracking.run.Run.log>` (the training loop's fast path:
it hands each point to :attr:`StepLog.keep`). The segment format, keys and limits are
:mod:`mlvc.series`'s (shared with the read side: ``Experiment.metrics``, ``push``/``pull``);
this module is the writer a run owns. Touches the repository only through the store writes of
:meth:`StepLog.flush`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from mlvc import series
from mlvc.series import MAX_BUFFERED, RawPoint, encode_segment, metric_value, segment_key
from mlvc_core.repository import Repository

log = logging.getLogger("mlvc")

__all__ = ["StepLog", "clean_values"]

_POLL = 0.25
"""Seconds between two looks of the writing thread at the points waiting."""
_PAUSE = 1e-4
"""Seconds the writing thread sleeps between two slices of a segment it encodes, so that the
training loop's thread, which wants the interpreter back after each GIL-free step (a tensor
operation), gets it at once instead of after the interpreter's switch interval (5 ms)."""


class StepLog:
    """One run's logged points: kept in a list, written in segments by a daemon thread.

    A point is ``(step, time, values)`` where ``values`` is a dict of ``float`` and ``int``
    values the caller made (see :meth:`Run.log <mlvc.tracking.run.Run.log>`); names and values
    are made ``str`` and ``float`` when a segment is encoded, in the background. The thread
    starts with the first point.

    Args:
        target: The repository and experiment id to write to, or None while the experiment
            is not recorded yet (the points wait).
        writer_id: This run's segment writer name (see :func:`~mlvc.series.segment_key`).
    """

    def __init__(self, target: Callable[[], tuple[Repository, str] | None], writer_id: str) -> None:
        self._target = target
        self._writer_id = writer_id
        self._seq = 0
        self._points: list[RawPoint] = []
        self._dropped = 0
        self._lock = threading.Lock()  # one writer of segments at a time
        self._state = threading.Lock()  # starting the thread, ending
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._closed_warned = False
        self._ended = False
        self.keep: Callable[[RawPoint], None] = self._keep_first
        """Keeps one point: the list's ``append`` once the thread runs (atomic under the GIL,
        no lock), a warning once the run ended."""

    def _keep_first(self, point: RawPoint) -> None:
        with self._state:
            if self._ended:
                self._keep_ended(point)
                return
            self.keep = self._points.append
            self._points.append(point)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mlvc-series", daemon=True)
                self._thread.start()

    def _keep_ended(self, point: RawPoint) -> None:
        if not self._closed_warned:
            self._closed_warned = True
            log.warning("mlvc: log() called after the run was closed: not recorded")

    def end(self) -> None:
        """Keep no more points (each later one is dropped, the first with a warning)."""
        with self._state:
            self._ended = True
            self.keep = self._keep_ended

    def _run(self) -> None:
        waited = 0.0
        while not self._stop.wait(_POLL):
            waited += _POLL
            if waited >= series.SEGMENT_SECONDS or len(self._points) >= series.SEGMENT_POINTS:
                waited = 0.0
                self._write(self._pause)

    def _pause(self) -> None:
        """Let the training loop's thread in, unless points pile up faster than written."""
        if len(self._points) < series.SEGMENT_POINTS:
            time.sleep(_PAUSE)

    def _take(self) -> list[RawPoint]:
        n = len(self._points)
        points = self._points[:n]
        del self._points[:n]  # a point appended meanwhile stays for the next segment
        return points

    def _put_back(self, points: list[RawPoint]) -> None:
        self._points[:0] = points
        n = len(self._points)
        if n > MAX_BUFFERED:
            del self._points[: n - MAX_BUFFERED]
            self._dropped += n - MAX_BUFFERED

    def flush(self) -> None:
        """Write the points waiting as one segment (kept for later if that fails)."""
        self._write(None)

    def _write(self, pause: Callable[[], object] | None) -> None:
        with self._lock:
            target = self._target()
            if target is None:
                n = len(self._points)
                if n > MAX_BUFFERED:  # not recorded yet, and never may be: bound the memory
                    del self._points[: n - MAX_BUFFERED]
                    self._dropped += n - MAX_BUFFERED
                return
            repo, exp_id = target
            points = self._take()
            if not points:
                return
            key = segment_key(exp_id, self._writer_id, self._seq)
            try:
                repo.store.write(key, encode_segment(points, pause))
            except Exception as exc:  # noqa: BLE001 - kept and retried, never raised
                self._put_back(points)
                if not self._failing:
                    self._failing = True
                    log.warning(
                        "mlvc: could not write logged metrics (kept in memory, retried): %s: %s",
                        type(exc).__name__,
                        exc,
                    )
                return
            self._seq += 1
            self._failing = False

    def close(self, wait: bool = True) -> None:
        """Stop the thread and write what waits (``wait=False``: only stop it; it may hang)."""
        self.end()
        self._stop.set()
        if not wait:
            return
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        self.flush()
        lost = len(self._points) + self._dropped
        if lost:
            log.warning("mlvc: %d logged metric point(s) could not be written", lost)


def clean_values(metrics: Mapping[str, Any], what: str) -> dict[str, float]:
    """``metrics`` as floats; a value that is not a number is left out with a warning."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        try:
            out[str(k)] = metric_value(v)
        except (TypeError, ValueError, OverflowError) as exc:
            log.warning("mlvc: metric %r of %s not recorded: %s", k, what, exc)
    return out
