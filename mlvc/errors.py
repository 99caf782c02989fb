"""Errors raised by mlvc: the core hierarchy (:mod:`mlvc_core.errors`) plus porcelain-only classes.

``except mlvc.errors.MlvcError`` catches everything mlvc raises on purpose.
"""

from __future__ import annotations

from mlvc_core.errors import (
    AmbiguousId,
    FileChanged,
    FileExistsConflict,
    FormatError,
    IntegrityError,
    InvalidRefName,
    KeyNotFound,
    MlvcError,
    NotARepository,
    ObjectNotFound,
    PreconditionFailed,
    RefConflict,
    RefError,
    RefNotFound,
    RepositoryError,
    RepositoryExists,
    RepositoryLocked,
    StorageError,
    UnsafePath,
    UnsupportedFormatVersion,
    UsageError,
)

__all__ = [
    "AmbiguousId",
    "FileChanged",
    "FileExistsConflict",
    "FormatError",
    "IntegrityError",
    "InvalidRefName",
    "KeyNotFound",
    "MlvcError",
    "NotARepository",
    "ObjectNotFound",
    "PreconditionFailed",
    "ReadOnlyError",
    "RefConflict",
    "RefError",
    "RefNotFound",
    "RepositoryError",
    "RepositoryExists",
    "RepositoryLocked",
    "StorageError",
    "TrackingError",
    "UnsafePath",
    "UnsupportedFormatVersion",
    "UsageError",
]


class TrackingError(MlvcError):
    """A tracked run failed to record something (raised only with ``strict=True``).

    The original exception is chained as ``__cause__``.

    Attributes:
        what: What was being recorded ("checkpoint at step 3", "experiment start"...).
    """

    def __init__(self, what: str, cause: BaseException) -> None:
        self.what = what
        super().__init__(f"mlvc could not record {what}: {type(cause).__name__}: {cause}")


class ReadOnlyError(MlvcError, PermissionError):
    """A write through a read-only view (``mlvc://``): snapshots never change."""
