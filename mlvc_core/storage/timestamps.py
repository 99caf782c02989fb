"""Modification times as object stores report them, turned into seconds since the epoch.

fsspec backends name and encode a key's last write differently (s3fs a ``datetime`` in
``LastModified``, gcsfs an RFC 3339 string in ``updated``, the memory filesystem a
``datetime`` in ``created``...). Pure functions; no backend library is imported here.
"""

from __future__ import annotations

import email.utils
import re
from datetime import datetime, timezone
from typing import Any

__all__ = ["mtime", "to_epoch"]

_FRACTION = re.compile(r"(\.\d{6})\d+")

_MTIME_FIELDS = ("mtime", "LastModified", "updated", "last_modified", "modified", "created",
                 "timeCreated", "ctime")  # fmt: skip


def to_epoch(value: Any) -> float | None:
    """Seconds since the epoch from a datetime, a number or an ISO-8601/RFC-1123 string.

    Args:
        value: A ``datetime`` (naive ones are UTC), a number of seconds, or a string in
            ISO 8601 (any number of fractional digits, ``Z`` or an offset) or RFC 1123.

    Returns:
        The time in seconds, or None if ``value`` is none of those.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return float(value.timestamp())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return float(value)
        except ValueError:
            pass
        text = _FRACTION.sub(r"\1", value.strip())
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            return to_epoch(datetime.fromisoformat(text))
        except ValueError:
            pass
        try:
            return to_epoch(email.utils.parsedate_to_datetime(value))
        except (TypeError, ValueError):
            return None
    return None


def mtime(info: dict[str, Any]) -> float:
    """The modification time of an fsspec info dict, whatever the backend calls it.

    Returns:
        Seconds since the epoch; 0.0 if the dict names no readable time.
    """
    for name in _MTIME_FIELDS:
        if name in info:
            seconds = to_epoch(info[name])
            if seconds is not None:
                return seconds
    return 0.0
