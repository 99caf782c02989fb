"""What a run does with its failures: log them and go on, or raise them with ``strict=True``.

Design invariant 5: tracking never raises into the training loop unless asked to. A failure in
the caller's thread is logged (or raised at once when strict); one in the background is logged
(and, when strict, raised at the caller's next call or at ``close()``). Owns the count of
failures the run's last line reports; touches no repository.
"""

from __future__ import annotations

import logging
import threading

from mlvc.errors import TrackingError

log = logging.getLogger("mlvc")

__all__ = ["Failures"]


class Failures:
    """A run's failure policy and count. Thread-safe.

    Attributes:
        strict: Raise :class:`~mlvc.errors.TrackingError` instead of logging.
        count: Failures so far (what the run's last line reports).
        debug: Log tracebacks too (``MLVC_DEBUG`` or the ``mlvc`` logger at DEBUG).
    """

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.count = 0
        self.debug = False
        self._lock = threading.Lock()
        self._pending: tuple[str, BaseException] | None = None

    def traceback(self) -> bool:
        """True when messages should carry the traceback."""
        return self.debug or log.isEnabledFor(logging.DEBUG)

    def in_caller(self, what: str, exc: BaseException) -> None:
        """A failure in the caller's thread: raise if strict, else log and go on.

        Raises:
            TrackingError: With ``strict=True``.
        """
        if self.strict:
            raise TrackingError(what, exc) from exc
        self.count += 1
        log.warning(
            "mlvc: could not record %s: %s: %s (training continues)",
            what,
            type(exc).__name__,
            exc,
            exc_info=self.traceback(),
        )

    def in_background(self, what: str, where: str | None, exc: BaseException) -> None:
        """A failure of the background thread: log it; when strict, keep it for the caller."""
        with self._lock:
            self.count += 1
            if self.strict and self._pending is None:
                self._pending = (what, exc)
        log.warning(
            "mlvc: could not record %s in %s: %s: %s%s",
            what,
            where,
            type(exc).__name__,
            exc,
            "" if self.strict else " (training continues)",
            exc_info=self.traceback(),
        )

    def raise_pending(self) -> None:
        """Raise the background failure kept for the caller, if any (strict only).

        Raises:
            TrackingError: A background failure happened since the last call.
        """
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            raise TrackingError(pending[0], pending[1]) from pending[1]
