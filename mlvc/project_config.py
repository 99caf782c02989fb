"""The project file ``mlvc.toml`` as settings people edit: documented keys and named remotes.

:mod:`mlvc.settings` reads the file to find the repository; this module is what
``mlvc config`` and ``mlvc remote`` use to read and change it. Every key mlvc understands is
listed in :data:`KEYS` with its type and meaning; anything else is refused, so a typo never
passes silently. Credentials are never accepted (they belong in the environment).

Layout of ``mlvc.toml``::

    [repository]
    url = ".mlvc"                      # the project's repository (path or fsspec URL)
    [repository.storage_options]       # fsspec options of its filesystem (no credentials)
    endpoint_url = "http://127.0.0.1:9000"

    [remotes.origin]                   # `mlvc remote add origin URL`
    url = "s3://team-bucket/mlvc"

    [snapshot]
    max_file_size = 10485760           # code snapshots leave out bigger files (default 64 MiB)

Writing rewrites the whole file (comments are not kept); keys keep their order.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlvc.settings import CONFIG_NAME, find_project_config, read_project_config
from mlvc_core.errors import UsageError

__all__ = [
    "KEYS",
    "Key",
    "add_remote",
    "config_path",
    "get_value",
    "list_values",
    "remote_url",
    "remotes",
    "remove_remote",
    "set_value",
    "unset_value",
]

DEFAULT_REMOTE = "origin"
DEFAULT_MAX_FILE_SIZE = 64 << 20
"""Default size limit of one file in a code snapshot (bytes)."""

_REMOTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SECRET = re.compile(
    r"secret|password|passwd|token|credential|access_key|private_key|session", re.I
)


@dataclass(frozen=True)
class Key:
    """One documented setting.

    Attributes:
        name: Dotted key; ``*`` stands for any name (a remote's, a storage option's).
        type: ``str``, ``int``, ``bool``, ``size`` (bytes; ``10MiB`` accepted) or ``any``.
        help: What it does.
        default: Its value when unset (None: no default).
    """

    name: str
    type: str
    help: str
    default: Any = None

    def matches(self, key: str) -> bool:
        """True if ``key`` is this setting (``*`` matching one name)."""
        mine, theirs = self.name.split("."), key.split(".")
        return len(mine) == len(theirs) and all(
            m in ("*", t) for m, t in zip(mine, theirs, strict=True)
        )


KEYS: tuple[Key, ...] = (
    Key("repository.url", "str", "The project's repository: a path (relative to mlvc.toml) "
        "or an fsspec URL (s3://bucket/prefix, gs://...).", ".mlvc"),
    Key("repository.storage_options.*", "any", "An fsspec option of the repository's "
        "filesystem (endpoint_url, region...); never credentials."),
    Key("remotes.*.url", "str", "The URL or path of a named remote (`mlvc push NAME`); "
        "`origin` is the default of push and pull."),
    Key("snapshot.max_file_size", "size", "Code snapshots leave out files bigger than this "
        "(bytes, or 10MiB / 1GB), with a warning naming them; 0 for no limit.",
        DEFAULT_MAX_FILE_SIZE),
)  # fmt: skip
"""Every key ``mlvc.toml`` may hold."""


def key_of(name: str) -> Key:
    """The documented setting ``name`` is.

    Raises:
        UsageError: Not a key mlvc knows (the message lists those it does).
    """
    for key in KEYS:
        if key.matches(name):
            return key
    known = ", ".join(k.name for k in KEYS)
    raise UsageError(f"unknown setting {name!r}: mlvc.toml keys are {known}")


def config_path(cwd: str | os.PathLike[str] | None = None, create: bool = False) -> Path:
    """The project's ``mlvc.toml`` (nearest in ``cwd`` or above).

    Args:
        cwd: Where to start looking (default: the current directory).
        create: Return ``cwd/mlvc.toml`` when there is none (for writing).

    Raises:
        UsageError: No project file and ``create`` is false.
    """
    found = find_project_config(cwd)
    if found is not None:
        return found
    if create:
        return Path(cwd or Path.cwd()).absolute() / CONFIG_NAME
    raise UsageError(
        f"no {CONFIG_NAME} here or in a parent directory: run `mlvc init` to create a project"
    )


def _load(path: Path) -> dict[str, Any]:
    return read_project_config(path) if path.is_file() else {}


def _save(path: Path, doc: dict[str, Any]) -> None:
    import tomli_w

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(tomli_w.dumps(doc))
    os.replace(tmp, path)


def _flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in doc.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and not any(key.matches(name) and key.type == "any" for key in KEYS):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def parse_size(text: str) -> int:
    """``"10MiB"`` -> ``10485760``; plain digits are bytes (``KB``=1000, ``KiB``=1024).

    Raises:
        UsageError: Not a size.
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", text, re.I)
    if not m:
        raise UsageError(f"{text!r} is not a size: use bytes or a unit (10MiB, 1GB)")
    number, unit, binary = m.groups()
    base = 1024 if binary or not unit else 1000
    return int(float(number) * base ** "_KMGT".index(unit.upper() or "_"))


def _typed(key: Key, name: str, value: str) -> Any:
    if _SECRET.search(name):
        raise UsageError(
            f"{name!r} looks like a credential: set it in the environment (AWS_* / GOOGLE_*), "
            "not in mlvc.toml"
        )
    if key.type == "size":
        return parse_size(value)
    if key.type == "int":
        try:
            return int(value)
        except ValueError:
            raise UsageError(f"{name} takes a whole number, not {value!r}") from None
    if key.type == "bool" or (key.type == "any" and value.lower() in ("true", "false")):
        if value.lower() not in ("true", "false"):
            raise UsageError(f"{name} takes true or false, not {value!r}")
        return value.lower() == "true"
    if key.type == "any":
        try:
            return int(value)
        except ValueError:
            return value
    if "://" in value and "@" in value.split("://", 1)[1].split("/", 1)[0]:
        raise UsageError(f"{name}: a URL with credentials in it belongs in the environment")
    return value


def get_value(name: str, cwd: str | os.PathLike[str] | None = None) -> Any:
    """The value of setting ``name`` in the project file (its default when unset).

    Raises:
        UsageError: Unknown key, or unset with no default.
    """
    key = key_of(name)
    path = find_project_config(cwd)
    values = _flatten(_load(path)) if path is not None else {}
    if name in values:
        return values[name]
    if key.default is not None:
        return key.default
    raise UsageError(f"{name} is not set")


def set_value(name: str, value: str, cwd: str | os.PathLike[str] | None = None) -> Path:
    """Set ``name`` to ``value`` (converted to the key's type) in the project file.

    Returns:
        The file written.

    Raises:
        UsageError: Unknown key, a value of the wrong type, or something like a credential.
    """
    key = key_of(name)
    typed = _typed(key, name, value)
    path = config_path(cwd, create=True)
    doc = _load(path)
    table = doc
    *parents, last = name.split(".")
    for part in parents:
        nxt = table.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise UsageError(f"{CONFIG_NAME}: {part} is a value, not a table")
        table = nxt
    table[last] = typed
    _save(path, doc)
    return path


def unset_value(name: str, cwd: str | os.PathLike[str] | None = None) -> bool:
    """Remove ``name`` from the project file; False if it was not set.

    Raises:
        UsageError: Unknown key, or no project file.
    """
    key_of(name)
    path = config_path(cwd)
    doc = _load(path)
    tables = [doc]
    *parents, last = name.split(".")
    for part in parents:
        nxt = tables[-1].get(part)
        if not isinstance(nxt, dict):
            return False
        tables.append(nxt)
    if last not in tables[-1]:
        return False
    del tables[-1][last]
    for part, table in zip(reversed(parents), reversed(tables[:-1]), strict=True):
        if not table[part]:
            del table[part]
    _save(path, doc)
    return True


def list_values(cwd: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Every key set in the project file, flattened (``remotes.origin.url``...)."""
    path = find_project_config(cwd)
    return _flatten(_load(path)) if path is not None else {}


# ------------------------------------------------------------------------------- remotes


def _check_remote_name(name: str) -> str:
    if not _REMOTE_NAME.match(name):
        raise UsageError(
            f"invalid remote name {name!r}: use letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit)"
        )
    return name


def remotes(cwd: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Named remotes of the project: name -> URL as written."""
    path = find_project_config(cwd)
    table = _load(path).get("remotes", {}) if path is not None else {}
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [remotes] must be a table of [remotes.NAME] tables")
    return {
        name: str(entry.get("url", ""))
        for name, entry in table.items()
        if isinstance(entry, dict) and entry.get("url")
    }


def add_remote(
    name: str, url: str, cwd: str | os.PathLike[str] | None = None, replace: bool = False
) -> Path:
    """Record remote ``name`` at ``url`` in the project file.

    A relative local path is stored as given and read relative to the file's directory.

    Raises:
        UsageError: A bad name, a URL holding credentials, or the name exists and ``replace``
            is false.
    """
    _check_remote_name(name)
    if not url.strip():
        raise UsageError("a remote needs a URL or path")
    if not replace and name in remotes(cwd):
        raise UsageError(
            f"remote {name!r} exists ({remotes(cwd)[name]}): remove it first or pass --force"
        )
    return set_value(f"remotes.{name}.url", url, cwd)


def remove_remote(name: str, cwd: str | os.PathLike[str] | None = None) -> None:
    """Forget remote ``name``.

    Raises:
        UsageError: No such remote.
    """
    if name not in remotes(cwd):
        raise UsageError(f"no remote named {name!r}: `mlvc remote list` shows them")
    unset_value(f"remotes.{name}.url", cwd)


def remote_url(name_or_url: str | None, cwd: str | os.PathLike[str] | None = None) -> str:
    """The URL to push to or pull from.

    Args:
        name_or_url: A remote's name, a URL or path, or None for ``origin``.
        cwd: Where to look for ``mlvc.toml``.

    Returns:
        The remote's URL (a relative local path made absolute from ``mlvc.toml``'s
        directory), or ``name_or_url`` itself when it names no remote.

    Raises:
        UsageError: None given and no ``origin`` remote.
    """
    known = remotes(cwd)
    name = DEFAULT_REMOTE if name_or_url is None else name_or_url
    if name not in known:
        if name_or_url is None:
            raise UsageError(
                "no remote given and no `origin`: pass a URL or add one with "
                "`mlvc remote add origin URL`"
            )
        return name_or_url
    url = known[name]
    if "://" not in url or url.startswith("file://"):
        base = config_path(cwd).parent
        url = os.path.normpath(base / Path(url.removeprefix("file://")).expanduser())
    return url
