"""Settings: where the repository is, how to reach it, where the local cache lives.

The ONLY module of ``mlvc`` that reads environment variables and the project config file
(``mlvc.toml``). Everything else receives a :class:`Settings`.

Resolution of the repository, first match wins:

1. the ``repository`` argument (a URL or local path);
2. the project config file ``mlvc.toml`` (``[repository] url = "..."`` with an optional
   ``[repository.storage_options]`` table), found by walking up from the current directory;
   a relative local path in it is relative to the file's directory;
3. the environment variable ``MLVC_REPOSITORY``;
4. ``<project dir>/.mlvc`` (created by the first tracked run).

The project directory is the directory holding ``mlvc.toml``, or the current directory. A
tracked run starts the search elsewhere when its script changed directory first (Hydra): see
:func:`project_start`.
Credentials never go into ``mlvc.toml``: s3fs and gcsfs read ``AWS_*`` / ``GOOGLE_*`` themselves.
One addition: older s3fs releases ignore ``AWS_ENDPOINT_URL``, so for an ``s3://`` repository
its value is passed as ``client_kwargs={"endpoint_url": ...}`` unless the options set one.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlvc_core.errors import UsageError
from mlvc_core.storage import is_local_url

CONFIG_NAME = "mlvc.toml"
DEFAULT_REPO_DIR = ".mlvc"
ENV_REPOSITORY = "MLVC_REPOSITORY"
ENV_CACHE_DIR = "MLVC_CACHE_DIR"
ENV_DEBUG = "MLVC_DEBUG"

__all__ = [
    "CONFIG_NAME",
    "Settings",
    "distributed_rank",
    "find_project_config",
    "launch_directory",
    "load_settings",
    "project_start",
    "read_project_config",
    "write_project_config",
]


@dataclass(frozen=True)
class Settings:
    """Everything the porcelain needs to know about its surroundings.

    Attributes:
        repository_url: The repository's URL or absolute local path.
        storage_options: Options for the fsspec filesystem (never credentials from config).
        project_dir: The project directory (holds ``mlvc.toml``, else the current directory).
        cache_dir: Root of mlvc's local caches (per repository: ``cache_dir/<repo id>``).
        debug: ``MLVC_DEBUG`` is set to a true value.
        config_path: The project config file, if one was found.
        default_repository: True when no setting named a repository and the project's
            ``.mlvc`` directory is used.
    """

    repository_url: str
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False)
    project_dir: Path = field(default_factory=Path.cwd)
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "mlvc")
    debug: bool = False
    config_path: Path | None = None
    default_repository: bool = False

    @property
    def is_local(self) -> bool:
        """True if the repository is a local directory."""
        return is_local_url(self.repository_url)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def find_project_config(cwd: str | os.PathLike[str] | None = None) -> Path | None:
    """The nearest ``mlvc.toml`` in ``cwd`` or one of its parents, or None."""
    here = Path(cwd or Path.cwd()).absolute()
    for d in (here, *here.parents):
        candidate = d / CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


def _toml_loads(text: str) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]
        except ImportError:
            raise UsageError(
                "reading mlvc.toml on Python 3.10 needs tomli (a dependency of mlvc there): "
                "pip install tomli"
            ) from None
    return tomllib.loads(text)


def read_project_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a project config file.

    Raises:
        UsageError: The file cannot be read, is not valid TOML (or, on Python 3.10, ``tomli``
            is missing), or its ``[repository]`` table is malformed.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {p}: {exc}") from exc
    try:
        doc = _toml_loads(text)
    except ValueError as exc:
        raise UsageError(f"{p} is not valid TOML: {exc}") from exc
    repo = doc.get("repository", {})
    if not isinstance(repo, dict) or not isinstance(repo.get("url", ""), str):
        raise UsageError(f"{p}: [repository] must be a table with a string `url`")
    if not isinstance(repo.get("storage_options", {}), dict):
        raise UsageError(f"{p}: [repository.storage_options] must be a table")
    return doc


def default_cache_dir() -> Path:
    """``$MLVC_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlvc``, else ``~/.cache/mlvc``."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]).expanduser().absolute()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser().absolute() / "mlvc"
    return Path.home() / ".cache" / "mlvc"


def _absolute_local(url: str, base: Path) -> str:
    if url.startswith("file://"):
        url = url[len("file://") :]
    p = Path(url).expanduser()
    return os.path.normpath(p if p.is_absolute() else (base / p).absolute())


def _with_endpoint(url: str, options: dict[str, Any]) -> dict[str, Any]:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint or not url.startswith(("s3://", "s3a://")):
        return options
    client_kwargs = dict(options.get("client_kwargs") or {})
    if "endpoint_url" in client_kwargs or "endpoint_url" in options:
        return options
    client_kwargs["endpoint_url"] = endpoint
    return {**options, "client_kwargs": client_kwargs}


def load_settings(
    repository: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Settings:
    """Work out the settings for a command or a tracked run.

    Args:
        repository: An explicit repository URL or path (wins over everything else).
        cwd: Directory to start the search for ``mlvc.toml`` from (default: the current one).
        storage_options: Explicit storage options (merged over the config file's).

    Returns:
        The settings.

    Raises:
        UsageError: The project config file is malformed.
    """
    here = Path(cwd or Path.cwd()).absolute()
    config_path = find_project_config(here)
    project_dir = config_path.parent if config_path is not None else here
    options: dict[str, Any] = {}
    url: str | None = None
    default = False
    if config_path is not None:
        table = read_project_config(config_path).get("repository", {})
        options = dict(table.get("storage_options", {}))
        url = table.get("url") or None
        if url is not None and is_local_url(url):
            url = _absolute_local(url, project_dir)
    if repository is not None:
        url = os.fspath(repository)
        if is_local_url(url):
            url = _absolute_local(url, here)
    elif url is None and os.environ.get(ENV_REPOSITORY):
        url = os.environ[ENV_REPOSITORY]
        if is_local_url(url):
            url = _absolute_local(url, here)
    if url is None:
        url = str(project_dir / DEFAULT_REPO_DIR)
        default = True
    options.update(storage_options or {})
    return Settings(
        repository_url=url.rstrip("/") if not is_local_url(url) else url,
        storage_options=_with_endpoint(url, options),
        project_dir=project_dir,
        cache_dir=default_cache_dir(),
        debug=_truthy(os.environ.get(ENV_DEBUG)),
        config_path=config_path,
        default_repository=default,
    )


_SECRET_WORDS = ("secret", "password", "token", "credential", "key")


def _refuse_secrets(options: dict[str, Any]) -> None:
    for k, v in options.items():
        if any(w in k.lower() for w in _SECRET_WORDS):
            raise UsageError(
                f"storage option {k!r} looks like a credential: set it in the environment "
                "(AWS_* / GOOGLE_*), not in mlvc.toml"
            )
        if isinstance(v, dict):
            _refuse_secrets(v)


def write_project_config(
    directory: str | os.PathLike[str],
    url: str,
    storage_options: dict[str, Any] | None = None,
) -> Path:
    """Write ``<directory>/mlvc.toml`` naming the project's repository.

    An existing file keeps everything but its ``[repository]`` table (remotes, snapshot
    settings...); its storage options stay too when ``url`` is unchanged and none are given.

    Args:
        directory: The project directory.
        url: The repository URL or path (a local path is stored as given).
        storage_options: Non-secret filesystem options (endpoint, region...).

    Returns:
        The path written.

    Raises:
        UsageError: An option looks like a credential (credentials belong in the environment),
            or an existing file is not valid TOML.
    """
    import tomli_w

    options = dict(storage_options or {})
    _refuse_secrets(options)
    path = Path(directory) / CONFIG_NAME
    old = read_project_config(path) if path.is_file() else {}
    old_repo = old.get("repository") or {}
    if not options and old_repo.get("url") == url:
        options = dict(old_repo.get("storage_options") or {})
    repo: dict[str, Any] = {"url": url}
    if options:
        repo["storage_options"] = options
    doc = {"repository": repo, **{k: v for k, v in old.items() if k != "repository"}}
    try:
        text = tomli_w.dumps(doc)
    except TypeError as exc:
        raise UsageError(f"cannot write {CONFIG_NAME}: {exc}") from exc
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def launch_directory() -> Path:
    """The directory the run was launched from.

    Hydra changes the current directory to its output directory before the task runs; its
    original one is read back from Hydra (only when Hydra is already imported). Otherwise the
    current directory.
    """
    hydra = sys.modules.get("hydra.core.hydra_config")
    if hydra is not None:
        try:
            config = hydra.HydraConfig
            if config.initialized():
                return Path(str(config.get().runtime.cwd)).absolute()
        except Exception:  # noqa: BLE001 - any Hydra trouble: no launch directory from it
            pass
    return Path.cwd().absolute()


def _script_directory(argv0: str | None, launch: Path) -> Path | None:
    """The directory of the running script (``sys.argv[0]``), if it names a file."""
    if not argv0 or argv0 in ("-", "-c", "-m"):
        return None
    script = Path(argv0)
    if not script.is_absolute():
        script = launch / script
    return script.parent.absolute() if script.is_file() else None


def project_start(argv0: str | None) -> Path:
    """Where a tracked run looks for its project (pass it to :func:`load_settings` as ``cwd``).

    A script may change directory before ``track()`` (Hydra runs its task in an output
    directory), so the project is found from where the script lives and from where it was
    launched, first match wins:

    1. the nearest ``mlvc.toml`` above the script's directory, the launch directory
       (:func:`launch_directory`), or the current directory, in that order;
    2. the script's directory or the launch directory if it holds a repository (``.mlvc``);
    3. under Hydra, the launch directory;
    4. the script's directory if the current directory lies inside it;
    5. the current directory.

    Args:
        argv0: ``sys.argv[0]`` (the script; relative to the launch directory).

    Returns:
        The directory to start the project search from.
    """
    cwd = Path.cwd().absolute()
    launch = launch_directory()
    script = _script_directory(argv0, launch)
    for start in (script, launch, cwd):
        if start is not None:
            config = find_project_config(start)
            if config is not None:
                return config.parent
    for start in (script, launch):
        if start is not None and (start / DEFAULT_REPO_DIR / "config").is_file():
            return start
    if launch != cwd:
        return launch
    if script is not None and script in cwd.parents:
        return script
    return cwd


def distributed_rank() -> tuple[int, int] | None:
    """``(rank, local rank)`` of this process in a distributed job, or None outside one.

    Read from ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (set by ``torchrun`` and
    ``torch.distributed.launch``); a job of one process is not distributed.
    """
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ["RANK"])
    except (KeyError, ValueError):
        return None
    if world <= 1:
        return None
    try:
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        local = rank
    return rank, local
