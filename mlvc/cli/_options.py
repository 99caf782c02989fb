"""Shared pieces of the commands: the global state and the ``Annotated`` option aliases.

:class:`CliState` carries the global options (``--repo``, ``--quiet``, ``--debug``) from the
root callback to the commands and opens the repository lazily, once per invocation, so
commands that need no repository (``init``, ``clone``, ``--help``) never touch storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from mlvc.settings import Settings
    from mlvc_core.repository import Repository


@dataclass
class CliState:
    """Global options of one invocation, and the repository they name (opened on demand)."""

    repo_url: str | None = None
    quiet: bool = False
    debug: bool = False
    _settings: Settings | None = field(default=None, repr=False)
    _repo: Repository | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        """The settings (``--repo`` first, then ``MLVC_REPO``, then ``mlvc.toml``)."""
        if self._settings is None:
            from mlvc.settings import load_settings

            self._settings = load_settings(repository=self.repo_url)
        return self._settings

    def repo(self) -> Repository:
        """The repository, opened once.

        Raises:
            NotARepository: Nothing at the configured location.
        """
        if self._repo is None:
            from mlvc.repo import open_repo

            self._repo = open_repo(self.settings())
        return self._repo

    def close(self) -> None:
        """Release the repository's threads and connections."""
        if self._repo is not None:
            repo, self._repo = self._repo, None
            repo.close()


def state(ctx: typer.Context) -> CliState:
    """The :class:`CliState` of this invocation (a default one if the root callback did not run)."""
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
        root.call_on_close(root.obj.close)
    obj: CliState = root.obj
    return obj


JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print JSON (stable keys, full ids) for scripts.")
]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Overwrite existing files.")]
IdArg = Annotated[
    str,
    typer.Argument(
        help="An experiment, checkpoint or commit id (7+ hex digits), exp@latest / exp@best / "
        "exp@STEP, a tag or a branch.",
        show_default=False,
    ),
]
