"""Object ids: BLAKE3-256 digests of an object's canonical, uncompressed bytes.

The only module that imports ``blake3``. Ids are raw 32-byte strings inside the program; hex
appears only at the edges (``to_hex``/``from_hex``/``short``). Any unique prefix of
:data:`MIN_PREFIX` or more hex digits names an object; :func:`resolve_prefix` does the lookup.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NewType

import blake3

from mlvc_core.errors import AmbiguousId, ObjectNotFound, UsageError

ObjectId = NewType("ObjectId", bytes)
"""A 32-byte BLAKE3 digest."""

DIGEST_SIZE = 32
MIN_PREFIX = 7
SHORT_LEN = 12
_HEX = re.compile(r"^[0-9a-f]+$")
# blake3 releases the GIL for inputs above this size when asked for one thread; ask for more
# threads only on very large buffers, where the split pays for itself.
_PARALLEL_THRESHOLD = 8 << 20


def hash_bytes(data: bytes | bytearray | memoryview) -> ObjectId:
    """Return the id of ``data``."""
    if len(data) >= _PARALLEL_THRESHOLD:
        return ObjectId(blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest())
    return ObjectId(blake3.blake3(data).digest())


def to_hex(oid: bytes) -> str:
    """Full hex form of an id."""
    return oid.hex()


def short(oid: bytes, length: int = SHORT_LEN) -> str:
    """Short hex form for display."""
    return oid.hex()[:length]


def from_hex(text: str) -> ObjectId:
    """Parse a full 64-digit hex id.

    Raises:
        UsageError: ``text`` is not 64 hex digits.
    """
    text = text.strip().lower()
    if len(text) != DIGEST_SIZE * 2 or not _HEX.match(text):
        raise UsageError(f"not a full object id: {text!r}")
    return ObjectId(bytes.fromhex(text))


def is_hex_prefix(text: str) -> bool:
    """True if ``text`` could be an id prefix (7 to 64 lowercase hex digits)."""
    return MIN_PREFIX <= len(text) <= DIGEST_SIZE * 2 and bool(_HEX.match(text.lower()))


def resolve_prefix(prefix: str, candidates: Iterable[str], what: str = "object") -> str:
    """Find the one hex id in ``candidates`` that starts with ``prefix``.

    Args:
        prefix: At least :data:`MIN_PREFIX` hex digits.
        candidates: Full hex ids to choose from (duplicates are ignored).
        what: Noun used in error messages ("experiment", "checkpoint"...).

    Returns:
        The matching full hex id.

    Raises:
        UsageError: The prefix is too short or not hex.
        ObjectNotFound: Nothing matches.
        AmbiguousId: More than one id matches.
    """
    p = prefix.strip().lower()
    if len(p) < MIN_PREFIX or not _HEX.match(p):
        raise UsageError(
            f"{prefix!r} is not an id: give at least {MIN_PREFIX} hex digits of a {what} id"
        )
    found = sorted({c for c in candidates if c.startswith(p)})
    if not found:
        raise ObjectNotFound(prefix, what)
    if len(found) > 1:
        raise AmbiguousId(prefix, [c[: max(len(p) + 4, SHORT_LEN)] for c in found])
    return found[0]
