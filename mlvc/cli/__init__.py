"""The ``mlvc`` command line (Typer). ``app`` is the root command; ``main()`` runs it.

Only this package imports ``typer``, ``click`` and ``rich``; importing :mod:`mlvc` stays light.
``mlvc --version`` answers before Typer is even imported.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``mlvc`` console script and ``python -m mlvc``."""
    if (sys.argv[1:] if argv is None else argv) == ["--version"]:
        from mlvc import __version__

        sys.stdout.write(f"mlvc {__version__}\n")
        return
    from mlvc.cli.main import main as run

    run(argv)


def __getattr__(name: str) -> Any:
    if name == "app":
        from mlvc.cli.main import app

        return app
    raise AttributeError(f"module 'mlvc.cli' has no attribute {name!r}")
