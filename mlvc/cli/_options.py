"""Shared pieces of the commands: the global state and the ``Annotated`` option aliases.

:class:`CliState` carries the global options (``--repo``, ``--quiet``, ``--debug``) from the
root callback to the commands and opens the repository lazily, once per invocation, so
commands that need no repository (``init``, ``clone``, ``--help``) never touch storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

import typer

from mlvc_core.ids import SHORT_LEN

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


def complete_ids(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """Shell completion of an id: tags, branches and experiment ids (``EXP@best``...).

    Reads only ref names (a listing per kind, no object), so it answers at once; a repository
    that cannot be reached completes nothing rather than printing an error into the shell.
    """
    if "@" in incomplete:
        base, _, sel = incomplete.rpartition("@")
        return [(f"{base}@{s}", h) for s, h in _SELECTORS if s.startswith(sel)]
    try:
        from mlvc.settings import load_settings
        from mlvc_core.refs import RefStore
        from mlvc_core.storage import open_store

        root = ctx.find_root()
        settings = load_settings(repository=root.params.get("repo"))
        store = open_store(settings.repository_url, **settings.storage_options)
        try:
            names = [name for name, _info in RefStore(store).list_keys()]
        finally:
            store.close()
    except Exception:  # noqa: BLE001 - completion must never fail loudly
        return []
    out: list[tuple[str, str]] = []
    for name in sorted(names):
        kind, _, short = name.partition("/")
        if kind == "experiments":
            short = short[: max(SHORT_LEN, len(incomplete))]
        if short.startswith(incomplete):
            out.append((short, _KIND_HELP.get(kind, kind)))
    return out


_KIND_HELP = {"tags": "tag", "heads": "branch", "experiments": "experiment"}
_SELECTORS = (
    ("best", "best checkpoint by the primary metric"),
    ("latest", "newest checkpoint"),
    ("step=", "the checkpoint of one step"),
)


def complete_remotes(incomplete: str) -> list[tuple[str, str]]:
    """Shell completion of a remote: the names in ``mlvc.toml``, with their URLs."""
    try:
        from mlvc.project_config import remotes

        known = remotes()
    except Exception:  # noqa: BLE001 - completion must never fail loudly
        return []
    return [(n, u) for n, u in known.items() if n.startswith(incomplete)]


JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print JSON (stable keys, full ids) for scripts.")
]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Overwrite existing files.")]
IdArg = Annotated[
    str,
    typer.Argument(
        help="An experiment, checkpoint or commit id (7+ hex digits), exp@latest / exp@best / "
        "exp@step=N (exp@N), a tag, tag@{N} (its N-th earlier target) or a branch; NAME~N goes "
        "N commits back.",
        show_default=False,
        autocompletion=complete_ids,
    ),
]
