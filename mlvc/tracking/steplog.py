"""The cheap ``run.log()``: points kept in memory, written in segments by a daemon thread.

The segment format, keys and limits are :mod:`mlvc.series`'s (shared with the read side:
``Experiment.metrics``, ``push``/``pull``); this module is the writer a run owns. Touches the
repository only through the store writes of :meth:`StepLog.flush`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from mlvc import series
from mlvc.series import MAX_BUFFERED, Point, encode_segment, metric_value, segment_key
from mlvc_core.repository import Repository

log = logging.getLogger("mlvc")

__all__ = ["StepLog", "clean_values"]

_POLL = 0.25
"""Seconds between two looks of the writing thread at the points waiting."""
_now = time.time


class StepLog:
    """One run's logged points: kept by :meth:`log`, written in segments by a daemon thread.

    :meth:`log` does the least it can on the training loop's thread: it copies the mapping
    and appends ``(step, time, values)`` to a list (no lock: ``list.append`` is atomic). Plain
    ``float`` and ``int`` values are kept as they are and converted when a segment is encoded,
    in the background; any other value (a tensor, a numpy scalar, a ``Decimal``) is converted
    at the call, because it may change in place afterwards (an accumulator tensor) or keep
    memory alive (a tensor's autograd graph), and a value that is not a number is refused there
    with a warning naming it.

    Args:
        target: The repository and experiment id to write to, or None while the experiment
            is not recorded yet (the points wait).
        writer_id: This run's segment writer name (see :func:`segment_key`).
    """

    def __init__(
        self, target: Callable[[], tuple[Repository, str] | None], writer_id: str, step: int = 0
    ) -> None:
        self._target = target
        self._writer_id = writer_id
        self._seq = 0
        self._points: list[tuple[int, float, dict[Any, Any]]] = []
        self._dropped = 0
        self._lock = threading.Lock()  # one writer of segments at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._closed_warned = False
        self.step = step
        """The step of the next point logged without one."""
        self.closed = False

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Keep one point (see the class); never raises for a value, warns instead.

        Raises:
            TypeError: ``step`` is not an integer.
            ValueError: ``step`` is not an integer.
        """
        if self.closed:
            if not self._closed_warned:
                self._closed_warned = True
                log.warning("mlvc: log() called after the run was closed: not recorded")
            return
        if step is None:
            step = self.step
        elif type(step) is not int:
            step = int(step)
        self.step = step + 1
        values = dict(metrics)
        for value in values.values():
            if type(value) is not float and type(value) is not int:
                values = clean_values(values, f"step {step}")
                if not values:
                    return
                break
        self._points.append((step, _now(), values))
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="mlvc-series", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        waited = 0.0
        while not self._stop.wait(_POLL):
            waited += _POLL
            if waited >= series.SEGMENT_SECONDS or len(self._points) >= series.SEGMENT_POINTS:
                waited = 0.0
                self.flush()

    def _take(self) -> list[Point]:
        n = len(self._points)
        raw = self._points[:n]
        del self._points[:n]  # a point appended meanwhile stays for the next segment
        return [(s, t, {str(k): float(v) for k, v in m.items()}) for s, t, m in raw]

    def _put_back(self, points: list[Point]) -> None:
        self._points[:0] = points
        n = len(self._points)
        if n > MAX_BUFFERED:
            del self._points[: n - MAX_BUFFERED]
            self._dropped += n - MAX_BUFFERED

    def flush(self) -> None:
        """Write the points waiting as one segment (kept for later if that fails)."""
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
                repo.store.write(key, encode_segment(points))
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
        self.closed = True
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
        except TypeError as exc:
            log.warning("mlvc: metric %r of %s not recorded: %s", k, what, exc)
    return out
