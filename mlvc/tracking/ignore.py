"""Which files a code snapshot leaves out: ``.gitignore`` / ``.mlvcignore`` rules and fixed skips.

Rules follow gitignore semantics (a small matcher, no dependency): ``#`` comments, ``!``
negation, a trailing ``/`` for directories only, a ``/`` at the start or in the middle anchors a
pattern to its file's directory, otherwise it matches at any depth; ``*``, ``?``, ``[...]`` and
``**`` as in git. Rule files are read in every directory walked; a deeper file's rules override
a shallower one's, ``.mlvcignore`` overrides ``.gitignore`` of the same directory, and within one
file the last matching rule wins. As in git, nothing inside an excluded directory is
re-included.

Always skipped, whatever the rules say: version-control and tool directories (``.git``,
``.mlvc``, ``__pycache__``...), virtual environments (any directory holding ``pyvenv.cfg`` or
``conda-meta``), mlvc repositories whatever their name (a directory whose ``config`` says
``"format": "mlvc"``), directories ``mlvc checkout`` created (they hold a
:data:`~mlvc.experiments.checkout.CHECKOUT_MARKER` file), and the extra paths the caller names
(the repository, caches, checkpoint copies).

:func:`ensure_git_ignores` adds mlvc's own directories to a git project's ``.gitignore``.

Left out by default, before any rule file is read (so a rule file can take one back with
``!``): files that hold credentials (:data:`SECRET_RULES`: ``.env``, ``*.pem``, ``*.key``, ssh
keys...).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mlvc.experiments.checkout import CHECKOUT_MARKER

ALWAYS_SKIP = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".mlvc",
        ".mlvc-staging",
        "__pycache__",
        ".ipynb_checkpoints",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        ".tox",
        ".nox",
        ".venv",
        "venv",
    }
)
"""Names skipped at any depth."""

RULE_FILES = (".gitignore", ".mlvcignore")
"""File ``mlvc checkout`` leaves in a directory it created: code snapshots skip that directory."""
_REPO_CONFIG_MAX = 64 << 10

SECRET_RULES = (
    ".env",
    ".env.*",
    ".envrc",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "id_rsa",
    "id_dsa",
    "id_ecdsa",
    "id_ed25519",
    ".netrc",
    ".pgpass",
    ".git-credentials",
    ".aws/",
    ".ssh/",
)
"""Files that hold credentials, left out by default (rules applied before the project's own:
``!.env.example`` in ``.mlvcignore`` takes one back)."""

__all__ = [
    "ALWAYS_SKIP",
    "SECRET_RULES",
    "IgnoreMatcher",
    "Rule",
    "ensure_git_ignores",
    "is_repository",
    "parse_rules",
]


@dataclass(frozen=True)
class Rule:
    """One compiled gitignore pattern."""

    pattern: str
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool

    def matches(self, rel: str, is_dir: bool) -> bool:
        """True if this rule's pattern matches ``rel`` (relative to the rule file's directory)."""
        if self.dir_only and not is_dir:
            return False
        return self.regex.match(rel) is not None


def _glob_segment(seg: str) -> str:
    out = []
    i = 0
    while i < len(seg):
        c = seg[i]
        if c == "\\" and i + 1 < len(seg):
            out.append(re.escape(seg[i + 1]))
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = seg.find("]", i + 2 if seg[i + 1 : i + 2] in ("!", "^") else i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = seg[i + 1 : j]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def compile_rule(line: str) -> Rule | None:
    """Compile one line of a rule file; None for blanks and comments."""
    line = line.rstrip("\n\r")
    stripped = line.rstrip(" ")
    if stripped.endswith("\\") and len(line) > len(stripped):
        stripped += " "  # an escaped trailing space is kept
    line = stripped
    if not line or line.startswith("#"):
        return None
    negate = line.startswith("!")
    if negate:
        line = line[1:]
    elif line.startswith("\\!") or line.startswith("\\#"):
        line = line[1:]
    dir_only = line.endswith("/")
    body = line.rstrip("/")
    if not body:
        return None
    anchored = "/" in body
    body = body.lstrip("/")
    segs = body.split("/")
    regex = ""
    for i, seg in enumerate(segs):
        last = i == len(segs) - 1
        if seg == "**":
            regex += ".*" if last else "(?:.*/)?"
        else:
            regex += _glob_segment(seg) + ("" if last else "/")
    full = ("^" if anchored else "^(?:.*/)?") + regex + "$"
    return Rule(line, re.compile(full, re.DOTALL), negate, dir_only)


def parse_rules(lines: Iterable[str]) -> list[Rule]:
    """Compile the lines of a rule file."""
    return [r for r in (compile_rule(line) for line in lines) if r is not None]


_SECRET_RULES = parse_rules(SECRET_RULES)


def _is_venv(path: Path) -> bool:
    return (path / "pyvenv.cfg").is_file() or (path / "conda-meta").is_dir()


def is_repository(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a local mlvc repository (its ``config`` says ``"format": "mlvc"``)."""
    import json

    config = Path(path) / "config"
    try:
        if not config.is_file() or config.stat().st_size > _REPO_CONFIG_MAX:
            return False
        doc = json.loads(config.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == "mlvc"


def _is_mlvc_dir(path: Path) -> bool:
    return (path / CHECKOUT_MARKER).is_file() or is_repository(path)


def _git_root(start: Path) -> Path | None:
    for d in (start, *start.parents):
        if (d / ".git").exists():
            return d
    return None


def ensure_git_ignores(project_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """In a git project, add ``path`` (a directory of mlvc's) to ``project_dir/.gitignore``.

    Nothing happens outside a git work tree, for a path outside ``project_dir``, or when a
    line of that ``.gitignore`` already names it.

    Returns:
        True if a line was added.
    """
    project = Path(project_dir).absolute()
    if _git_root(project) is None:
        return False
    try:
        rel = Path(os.path.realpath(path)).relative_to(os.path.realpath(project)).as_posix()
    except ValueError:
        return False
    if rel in ("", "."):
        return False
    line = f"/{rel}/"
    gitignore = project / ".gitignore"
    try:
        text = gitignore.read_text()
    except FileNotFoundError:
        text = ""
    names = {entry.strip().strip("/") for entry in text.splitlines()}
    if rel in names:
        return False
    prefix = "" if not text or text.endswith("\n") else "\n"
    with open(gitignore, "a") as f:
        f.write(f"{prefix}{line}\n")
    return True


class IgnoreMatcher:
    """An exclude predicate over ``/``-separated paths relative to ``root``.

    Call it with a relative path (as :class:`mlvc_core.ingest.TreeBuilder` does); it returns
    True for paths to leave out. Rule files are read lazily, once per directory.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        extra_rules: Iterable[str] = (),
        skip_paths: Iterable[str | os.PathLike[str]] = (),
    ) -> None:
        """Create a matcher.

        Args:
            root: The directory the relative paths are relative to.
            extra_rules: gitignore-style lines applied after the root's rule files.
            skip_paths: Absolute paths to leave out (ignored unless they lie under ``root``).
        """
        self.root = Path(root).absolute()
        self._rules: dict[str, list[Rule]] = {}
        self._extra = parse_rules(extra_rules)
        self._skip: set[str] = set()
        root_real = os.path.realpath(self.root)
        for p in skip_paths:
            real = os.path.realpath(p)
            if real.startswith(root_real + os.sep):
                self._skip.add(os.path.relpath(real, root_real).replace(os.sep, "/"))

    def _dir_rules(self, rel_dir: str) -> list[Rule]:
        rules = self._rules.get(rel_dir)
        if rules is None:
            rules = [] if rel_dir else list(_SECRET_RULES)
            base = self.root / rel_dir if rel_dir else self.root
            for name in RULE_FILES:
                try:
                    text = (base / name).read_text(errors="replace")
                except OSError:
                    continue
                rules.extend(parse_rules(text.splitlines()))
            if not rel_dir:
                rules.extend(self._extra)
            self._rules[rel_dir] = rules
        return rules

    def __call__(self, rel: str) -> bool:
        """True if ``rel`` (or one of its parent directories) is excluded."""
        rel = rel.strip("/")
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            if self._excluded_here("/".join(parts[:i])):
                return True
        return False

    def _excluded_here(self, rel: str) -> bool:
        """Whether ``rel`` itself is excluded, its parents assumed included."""
        name = rel.rpartition("/")[2]
        if name in ALWAYS_SKIP or rel in self._skip:
            return True
        path = self.root / rel
        is_dir: bool | None = None

        def isdir() -> bool:
            nonlocal is_dir
            if is_dir is None:
                is_dir = path.is_dir() and not path.is_symlink()
            return is_dir

        result = False
        parts = rel.split("/")
        for depth in range(len(parts)):
            rel_dir = "/".join(parts[:depth])
            sub = "/".join(parts[depth:])
            for rule in self._dir_rules(rel_dir):
                if rule.dir_only and not isdir():
                    continue
                if rule.regex.match(sub):
                    result = not rule.negate
        if not result and isdir() and (_is_venv(path) or _is_mlvc_dir(path)):
            return True
        return result
