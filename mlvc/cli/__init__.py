"""The ``mlvc`` command line (Typer). ``app`` is the root command; ``main()`` runs it.

Only this package imports ``typer``, ``click`` and ``rich``; importing :mod:`mlvc` stays light.
``mlvc --version`` and ``mlvc --help`` answer before Typer is even imported
(:mod:`mlvc.cli._help`).
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``mlvc`` console script and ``python -m mlvc``."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        from mlvc import __version__

        sys.stdout.write(f"mlvc {__version__}\n")
        return
    if args in (["--help"], ["-h"]):
        from mlvc.cli._help import ROOT_HELP, fits_terminal

        if fits_terminal():
            sys.stdout.write(ROOT_HELP)
            return
    from mlvc.cli.main import main as run

    try:
        run(argv)
    finally:
        if argv is None:  # the program's entry point: the process ends next
            _spare_teardown()


def _spare_teardown() -> None:
    """Keep the interpreter's shutdown from walking every object the command left alive.

    Python runs the cyclic garbage collector several times while it shuts down; after an
    ``ls`` of 10,000 experiments each pass walks a heap of about a million objects, 0.2-0.3 s
    of CPU in all. Frozen objects are skipped by those passes (``gc.freeze``); nothing is
    lost, the process is about to end. Only done when ``main`` runs as the program (no
    ``argv`` given), never for a caller that goes on after it.
    """
    import gc

    gc.freeze()


def __getattr__(name: str) -> Any:
    if name == "app":
        from mlvc.cli.main import app

        return app
    raise AttributeError(f"module 'mlvc.cli' has no attribute {name!r}")
