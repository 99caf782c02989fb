"""``python -m mlvc``: the command line."""

from __future__ import annotations

from mlvc.cli import main

if __name__ == "__main__":
    main()
