"""The ``mlvc`` command line (Typer). ``app`` is the root command; ``main()`` runs it.

Only this package imports ``typer``, ``click`` and ``rich``; importing :mod:`mlvc` stays light.
"""

from __future__ import annotations

from mlvc.cli.main import app, main

__all__ = ["app", "main"]
