"""Opening repositories from settings: local cache placement, creation on first use, sharing.

:func:`open_repo` returns a fresh :class:`~mlvc_core.repository.Repository` whose local cache
(pack indexes, the stat cache, the experiment listing cache) lives in
``settings.cache_dir/<repository id>``; the caller owns and closes it. :func:`shared_repo` is for
the read-side helpers (``mlvc.experiments``, ``mlvc.load``...): one open repository per location
and process, reused by later calls.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from mlvc.settings import Settings, load_settings
from mlvc_core.config import MAX_CONFIG_SIZE, RepoConfig
from mlvc_core.errors import KeyNotFound, NotARepository, RepositoryExists
from mlvc_core.repository import CONFIG_KEY, Repository
from mlvc_core.statcache import StatCache
from mlvc_core.storage import open_store

__all__ = [
    "RepositoryLike",
    "cache_dir_of",
    "open_repo",
    "shared_repo",
    "stat_cache",
    "forget_shared",
]

RepositoryLike = Repository | Settings | str | os.PathLike[str] | None
"""What the read-side functions accept as ``repository``: an open repository, settings, a URL
or path, or None for the project's repository (see :mod:`mlvc.settings`)."""


def _settings(settings_or_url: Settings | str | os.PathLike[str] | None) -> Settings:
    if isinstance(settings_or_url, Settings):
        return settings_or_url
    return load_settings(settings_or_url)


def open_repo(
    settings_or_url: Settings | str | os.PathLike[str] | None = None,
    create: bool = False,
) -> Repository:
    """Open (or, with ``create``, create on first use) a repository.

    Args:
        settings_or_url: Settings, a URL or local path, or None for the project's repository.
        create: Create the repository if the location holds none (any location, local or
            remote; two processes racing to create it both end up with the same repository).

    Returns:
        An open repository; close it when done.

    Raises:
        NotARepository: Nothing there and ``create`` is false.
        UnsupportedFormatVersion: Written by a newer mlvc.
        StorageError: The location cannot be reached.
    """
    settings = _settings(settings_or_url)
    store = open_store(settings.repository_url, **settings.storage_options)
    try:
        config = RepoConfig.decode(store.read(CONFIG_KEY, MAX_CONFIG_SIZE))
    except KeyNotFound:
        if not create:
            store.close()
            raise NotARepository(settings.repository_url) from None
        fresh = RepoConfig()
        try:
            return Repository.init(store, fresh, cache_dir=cache_dir_of(settings, fresh.repo_id))
        except RepositoryExists:
            config = RepoConfig.decode(store.read(CONFIG_KEY, MAX_CONFIG_SIZE))
    return Repository(store, config, cache_dir_of(settings, config.repo_id))


def cache_dir_of(settings: Settings, repo_id: str) -> Path:
    """The local cache directory of one repository."""
    return settings.cache_dir / repo_id


def stat_cache(repo: Repository) -> StatCache | None:
    """The stat cache of ``repo`` (None if the repository has no local cache directory)."""
    if repo.cache_dir is None:
        return None
    cache = StatCache(repo.cache_dir / "statcache.sqlite")
    if cache.damaged is not None:
        logging.getLogger("mlvc").warning("mlvc: stat cache %s", cache.damaged)
    return cache


_shared: dict[tuple[int, str, str], Repository] = {}
_shared_lock = threading.Lock()


def shared_repo(repository: RepositoryLike = None) -> Repository:
    """An open repository for read-side helpers, reused across calls in this process.

    Args:
        repository: An open repository (returned as is), settings, a URL or path, or None.

    Raises:
        NotARepository: Nothing there.
    """
    if isinstance(repository, Repository):
        return repository
    settings = _settings(repository)
    key = (
        os.getpid(),
        settings.repository_url,
        json.dumps(settings.storage_options, sort_keys=True, default=str),
    )
    with _shared_lock:
        repo = _shared.get(key)
        if repo is None:
            repo = open_repo(settings)
            _shared[key] = repo
        return repo


def forget_shared() -> None:
    """Close and forget every shared repository (tests; after moving repositories around)."""
    with _shared_lock:
        repos = list(_shared.values())
        _shared.clear()
    for repo in repos:
        try:
            repo.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
