"""The exception hierarchy of mlvc.

Every error mlvc raises on purpose derives from :class:`MlvcError`. Subclasses also inherit the
builtin they refine (``KeyError``, ``ValueError``, ``OSError``...) so callers that only know the
builtins still catch them. Errors carry structured attributes; they never print. Turning them into
words and exit codes happens once, at the CLI edge.
"""

from __future__ import annotations

from collections.abc import Sequence


class MlvcError(Exception):
    """Root of every error mlvc raises on purpose."""


class ObjectNotFound(MlvcError, KeyError):
    """An object id is not in the repository."""

    def __init__(self, oid: str, what: str = "object", detail: str = "") -> None:
        self.oid = oid
        self.what = what
        self.detail = detail
        """Why nothing matched (e.g. the steps an experiment does have); may be empty."""
        super().__init__(f"{what} {oid} not found" + (f" ({detail})" if detail else ""))

    def __str__(self) -> str:
        return str(self.args[0])


class MissingObject(ObjectNotFound):
    """Something stored refers to an object or chunk that is not stored.

    The repository is damaged (a ref, commit, tree or manifest names it), unlike an unknown
    id a user typed.
    """

    def __init__(self, oid: str, what: str = "object") -> None:
        super().__init__(oid, what)
        self.args = (f"{what} {oid} is referenced but not stored",)


class AmbiguousId(MlvcError, LookupError):
    """An id prefix matches more than one object."""

    def __init__(self, prefix: str, candidates: Sequence[str]) -> None:
        self.prefix = prefix
        self.candidates = list(candidates)
        shown = ", ".join(self.candidates[:10])
        more = f" and {len(self.candidates) - 10} more" if len(self.candidates) > 10 else ""
        super().__init__(f"id prefix {prefix!r} is ambiguous: it matches {shown}{more}")


class IntegrityError(MlvcError):
    """Stored bytes do not hash to the id they are stored under."""

    def __init__(self, oid: str, detail: str = "") -> None:
        self.oid = oid
        self.detail = detail
        msg = f"integrity error: object {oid} is corrupted"
        super().__init__(f"{msg} ({detail})" if detail else msg)


class FormatError(MlvcError, ValueError):
    """Bytes that cannot be decoded as the expected object or file."""


class UnsupportedFormatVersion(FormatError):
    """The repository was written by a format this version of mlvc does not know."""

    def __init__(self, found: object, supported: Sequence[int]) -> None:
        self.found = found
        self.supported = list(supported)
        super().__init__(
            f"repository format version {found} is not supported by this mlvc "
            f"(supported: {', '.join(map(str, self.supported))}); upgrade mlvc to open it"
        )


class RefError(MlvcError):
    """Base of errors about refs (branches, experiments, tags)."""


class RefNotFound(RefError, KeyError):
    """A ref does not exist."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"ref {name!r} not found")

    def __str__(self) -> str:
        return str(self.args[0])


class RefConflict(RefError):
    """A compare-and-swap on a ref lost a race: the ref moved since it was read."""

    def __init__(self, name: str, expected: str | None, actual: str | None = None) -> None:
        self.name = name
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"ref {name!r} was changed concurrently (expected {expected or 'absent'}"
            + (f", found {actual}" if actual else "")
            + "); re-read it and retry"
        )


class InvalidRefName(RefError, ValueError):
    """A ref name that is not allowed."""


class RepositoryError(MlvcError):
    """Base of errors about a repository as a whole."""


class NotARepository(RepositoryError):
    """The location holds no mlvc repository."""

    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(f"no mlvc repository at {url} (create one with `mlvc init {url}`)")


class RepositoryExists(RepositoryError):
    """``init`` on a location that already holds a repository."""

    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(f"a repository already exists at {url}")


class RepositoryLocked(RepositoryError):
    """An exclusive operation (gc) is running elsewhere."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        super().__init__(f"repository is locked by {holder}")


class LockLost(RepositoryLocked):
    """A lock this process held was taken over (it went unrefreshed too long): stop now."""

    def __init__(self, what: str) -> None:
        self.holder = what
        MlvcError.__init__(self, what)


class StorageError(MlvcError, OSError):
    """The storage backend failed (network, permissions, full disk...)."""


class KeyNotFound(StorageError, FileNotFoundError):
    """A key is absent from the store."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"{key} not found in store")

    def __str__(self) -> str:
        return f"{self.key} not found in store"


class PreconditionFailed(StorageError):
    """A conditional write found the key in another state than expected."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"conditional write to {key} failed: it was changed concurrently")

    def __str__(self) -> str:
        return f"conditional write to {self.key} failed: it was changed concurrently"


class UnsafePath(MlvcError, ValueError):
    """A tree entry name or target that would escape the checkout directory."""


class FileExistsConflict(MlvcError, FileExistsError):
    """Checkout would overwrite or replace existing paths (files, directories, links).

    ``paths`` lists them; ``details`` says for each what is in the way (same order).
    """

    def __init__(self, paths: Sequence[str], details: Sequence[str] | None = None) -> None:
        self.paths = list(paths)
        self.details = list(details) if details is not None else list(self.paths)
        shown = ", ".join(self.details[:5])
        more = f" and {len(self.paths) - 5} more" if len(self.paths) > 5 else ""
        super().__init__(f"would overwrite existing files: {shown}{more} (use force to overwrite)")

    def __str__(self) -> str:
        return str(self.args[0])


class FileChanged(MlvcError):
    """A file kept changing while it was read, so it was not recorded (it would be torn)."""

    def __init__(self, path: str, reads: int, seconds: float) -> None:
        self.path = path
        self.reads = reads
        self.seconds = seconds
        super().__init__(
            f"{path} changed while it was being read ({reads} reads over {seconds:.0f} s), so "
            "it was not recorded (its bytes would be a mix of versions); commit again once "
            "nothing writes it, or exclude it"
        )

    def __str__(self) -> str:
        return str(self.args[0])


class UsageError(MlvcError):
    """Bad input from the user: printed without a traceback."""
