"""Repositories as a whole: ``init``, and ``push``/``pull``/``clone`` between any two of them.

Remote locations are opened through :mod:`mlvc.settings` (endpoints such as
``AWS_ENDPOINT_URL`` come from the environment; credentials never go into ``mlvc.toml``).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlvc.experiments.revisions import ref_of
from mlvc_core.config import RepoConfig
from mlvc_core.errors import NotARepository, UsageError
from mlvc_core.repository import Repository
from mlvc_core.session import ProgressFn

if TYPE_CHECKING:
    from mlvc_core.transfer import TransferReport

DEFAULT_REPO_DIR = ".mlvc"
_SECRET_OPTION = re.compile(r"(secret|password|token|credential|key$|^key|session)", re.I)
_ALLOWED_OPTIONS = {"endpoint_url", "client_kwargs", "anon", "project", "requester_pays"}


@dataclass(frozen=True)
class InitResult:
    """What ``init`` did."""

    url: str
    config_path: str
    created: bool
    """False when a repository already existed there (the project now uses it)."""
    previous_url: str | None = None
    """The repository the project's ``mlvc.toml`` named before, when it named another."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)


def check_storage_options(options: dict[str, Any]) -> None:
    """Refuse credentials in storage options that would be written to ``mlvc.toml``.

    Raises:
        UsageError: An option that looks like a secret.
    """
    for k in options:
        if k not in _ALLOWED_OPTIONS and _SECRET_OPTION.search(k):
            raise UsageError(
                f"storage option {k!r} looks like a credential: keep credentials out of mlvc.toml "
                "and use the environment (AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "GOOGLE_APPLICATION_CREDENTIALS)"
            )


def open_url(
    url: str, create: bool = False, storage_options: dict[str, Any] | None = None
) -> Repository:
    """Open (or create) the repository at ``url``; settings supply endpoints from the environment.

    Raises:
        NotARepository: Nothing there and ``create`` is false.
    """
    from mlvc.repo import open_repo
    from mlvc.settings import load_settings

    return open_repo(load_settings(repository=url, storage_options=storage_options), create=create)


def init(
    url: str | None = None,
    project_dir: str | os.PathLike[str] = ".",
    storage_options: dict[str, Any] | None = None,
    compression_level: int = 1,
    byte_planes: bool = True,
) -> InitResult:
    """Create a repository (default ``./.mlvc``) and write ``mlvc.toml`` naming it.

    If a repository already exists at ``url`` the project is connected to it instead (its own
    settings stay: they are fixed when a repository is created).

    Args:
        url: Where the repository lives.
        project_dir: Where ``mlvc.toml`` goes.
        storage_options: fsspec options written to ``mlvc.toml``.
        compression_level: zstd level for a new repository (0 stores everything raw).
        byte_planes: Let a new repository split numeric data into byte planes.

    Raises:
        UsageError: Storage options holding credentials, or a level outside 0-19.
    """
    if not 0 <= compression_level <= 19:
        raise UsageError(f"compression level must be 0 (none) to 19, not {compression_level}")
    from mlvc.settings import CONFIG_NAME, read_project_config, write_project_config

    options = dict(storage_options or {})
    check_storage_options(options)
    project = Path(project_dir)
    url = url or DEFAULT_REPO_DIR
    location = url if "://" in url or os.path.isabs(url) else str(project / url)
    try:
        repo = open_url(location, storage_options=options)
        created = False
    except NotARepository:
        config = RepoConfig(compression_level=compression_level, byte_planes=byte_planes)
        repo = _create(location, config, options)
        created = True
    repo.close()
    old_path = project / CONFIG_NAME
    before = read_project_config(old_path).get("repository", {}) if old_path.is_file() else {}
    previous = before.get("url") if before.get("url") not in (None, url) else None
    config_path = write_project_config(project, url, options or None)
    return InitResult(url=url, config_path=str(config_path), created=created, previous_url=previous)


@dataclass(frozen=True)
class TransferResult:
    """What ``push``, ``pull`` or ``clone`` moved."""

    source: str
    destination: str
    report: TransferReport
    created: bool = False
    """The destination repository was created by this transfer."""
    config_path: str | None = None
    """For ``clone``: the project config written."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        d = {"source": self.source, "destination": self.destination, "created": self.created}
        d.update(self.report.to_dict())
        if self.config_path is not None:
            d["config_path"] = self.config_path
        return d


def _transfer(
    src: Repository,
    dst: Repository,
    refs: list[str] | None,
    force: bool,
    progress: ProgressFn | None,
    total: ProgressFn | None,
) -> TransferReport:
    from mlvc.series import copy_series
    from mlvc_core.transfer import transfer

    full = [ref_of(src, r) for r in refs] if refs else None
    report = transfer(src, dst, refs=full, progress=progress, force=force, total=total)
    moved = report.refs_updated + report.refs_unchanged
    copy_series(src, dst, (r.split("/", 1)[1] for r in moved if r.startswith("experiments/")))
    return report


def _create(
    url: str, config: RepoConfig, storage_options: dict[str, Any] | None = None
) -> Repository:
    """Create a repository at ``url`` with ``config``; settings supply endpoints and options."""
    from mlvc.settings import load_settings

    settings = load_settings(repository=url, storage_options=storage_options)
    return Repository.init(url, config=config, **dict(settings.storage_options or {}))


def _exchange(
    repo: Repository,
    url: str,
    send: bool,
    refs: list[str] | None,
    force: bool,
    progress: ProgressFn | None,
    total: ProgressFn | None,
) -> TransferResult:
    """Copy refs between ``repo`` and the repository at ``url``: to it (``send``) or from it.

    A repository sent to is created if there is none yet, with ``repo``'s chunker and
    compression settings, so dedup carries over.
    """
    created = False
    try:
        other = open_url(url)
    except NotARepository:
        if not send:
            raise
        other = _create(url, repo.config.for_new_repository())
        created = True
    src, dst = (repo, other) if send else (other, repo)
    with other:
        report = _transfer(src, dst, refs, force, progress, total)
    return TransferResult(src.url, dst.url, report, created)


def push(
    repo: Repository,
    url: str,
    refs: list[str] | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
    total: ProgressFn | None = None,
) -> TransferResult:
    """Copy refs (default: all) and what they reach to the repository at ``url``.

    The remote repository is created (with this repository's chunker settings, so dedup
    carries over) if there is none yet.

    Raises:
        StorageError: The remote cannot be reached.
    """
    return _exchange(repo, url, True, refs, force, progress, total)


def pull(
    repo: Repository,
    url: str,
    refs: list[str] | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
    total: ProgressFn | None = None,
) -> TransferResult:
    """Copy refs (default: all) and what they reach from the repository at ``url``.

    Raises:
        NotARepository: Nothing at ``url``.
    """
    return _exchange(repo, url, False, refs, force, progress, total)


def clone(
    url: str,
    directory: str | os.PathLike[str],
    progress: ProgressFn | None = None,
    total: ProgressFn | None = None,
) -> TransferResult:
    """Copy the repository at ``url`` into ``DIR/.mlvc`` and write ``DIR/mlvc.toml`` naming it.

    Raises:
        NotARepository: Nothing at ``url``.
        UsageError: ``directory`` exists and is not empty.
    """
    from mlvc.settings import write_project_config

    project = Path(directory)
    if project.exists() and (not project.is_dir() or any(project.iterdir())):
        raise UsageError(f"{project} already exists and is not empty")
    with open_url(url) as src:
        project.mkdir(parents=True, exist_ok=True)
        dst = Repository.init(
            str(project / DEFAULT_REPO_DIR), config=src.config.for_new_repository()
        )
        with dst:
            report = _transfer(src, dst, None, False, progress, total)
        config_path = write_project_config(project, DEFAULT_REPO_DIR)
        return TransferResult(src.url, dst.url, report, True, str(config_path))
