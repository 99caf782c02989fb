"""How a run ends when the script does: at exit, on an uncaught exception, on SIGTERM.

* At interpreter exit the run is finished (flushed) before ``concurrent.futures`` stops its
  threads (which storing needs), with the end reason of an uncaught exception if one ended
  the script (an ``excepthook`` notes it), else ``exit``.
* On SIGTERM the handler finishes the run, then hands the signal to the previous handler or
  the default action.

Only the process that started the run acts (a forked child does not). Owns no repository.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import types
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from mlvc.tracking.redaction import redact_text

log = logging.getLogger("mlvc")

__all__ = ["MAX_ERROR_MESSAGE", "ExitHooks", "end_of"]

MAX_ERROR_MESSAGE = 2000
"""Characters of an exception's message recorded for a failed run."""

Uncaught = tuple[type[BaseException], BaseException | None]


def end_of(
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


class _Ending(Protocol):
    """What the hooks need of a run."""

    @property
    def closed(self) -> bool: ...

    def _finish(self, reason: str, error: dict[str, str] | None = None) -> None: ...


class ExitHooks:
    """The exit, exception and SIGTERM hooks of one run.

    Args:
        run: The run (held weakly by the exit hook).
        stopping: The ``stop`` job's ``done`` event once ``close()`` began, else None.
    """

    _live: weakref.WeakSet[ExitHooks] = weakref.WeakSet()
    _hook_installed = False

    def __init__(self, run: _Ending, stopping: Callable[[], Any]) -> None:
        self._run = weakref.ref(run)
        self._stopping = stopping
        self._pid = os.getpid()
        self._prev_sigterm: Any = None
        self._sigterm_installed = False
        self.uncaught: Uncaught | None = None
        """The exception that ended the script outside a ``with`` block, if any."""

    def install(self) -> None:
        """Register the exit hook, the excepthook and (in the main thread) the SIGTERM handler."""
        run_ref, pid, hooks = self._run, self._pid, weakref.ref(self)

        def at_exit() -> None:
            run, me = run_ref(), hooks()
            if run is not None and me is not None and os.getpid() == pid and not run.closed:
                try:
                    uncaught = me.uncaught
                    run._finish(*(end_of(*uncaught) if uncaught else ("exit", None)))
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
        ExitHooks._live.add(self)
        if ExitHooks._hook_installed:
            return
        ExitHooks._hook_installed = True
        previous = sys.excepthook

        def hook(
            exc_type: type[BaseException],
            exc: BaseException,
            tb: types.TracebackType | None,
        ) -> None:
            for hooks in list(ExitHooks._live):
                run = hooks._run()
                if run is not None and not run.closed and hooks._pid == os.getpid():
                    hooks.uncaught = (exc_type, exc)
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

    def uninstall(self) -> None:
        """Put the previous SIGTERM handler back (if ours is still the one installed)."""
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
        stopping = self._stopping()
        run = self._run()
        if os.getpid() == self._pid and stopping is not None:
            stopping.wait()  # close() was already flushing when the signal came
        elif os.getpid() == self._pid and run is not None and not run.closed:
            log.warning("mlvc: SIGTERM received, saving pending checkpoints before exiting")
            try:
                run._finish("SIGTERM")
            except Exception as exc:  # noqa: BLE001 - exiting anyway
                log.warning("mlvc: flushing on SIGTERM failed: %s", exc)
        with contextlib.suppress(ValueError, OSError, TypeError):
            signal.signal(signal.SIGTERM, prev if prev is not None else signal.SIG_DFL)
        if callable(prev):
            prev(signum, frame)
        elif prev != signal.SIG_IGN:
            os.kill(os.getpid(), signum)
