"""The repository config: format version, hash, chunker and compression settings.

Stored as JSON under the key ``config``, written by ``init`` and rewritten only to upgrade the
format version (by compare-and-swap), so every writer of a repository chunks and compresses
alike (changing the chunker would silently destroy dedup). Opening a repository checks the
format version first and refuses one it does not know.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from mlvc_core import schema
from mlvc_core.chunker import ChunkerParams
from mlvc_core.errors import (
    FormatError,
    PreconditionFailed,
    StorageError,
    UnsupportedFormatVersion,
)
from mlvc_core.storage import Store

log = logging.getLogger(__name__)

FORMAT = "mlvc"
FORMAT_VERSION = 3
"""Version written by this mlvc. 2: index files cover several packs, gc advances a generation.
3: chunks may be stored as deltas against a base chunk; large tensors are cut in fixed blocks."""
SUPPORTED_VERSIONS = (1, 2, 3)
"""Versions this mlvc reads; an older repository is upgraded before its first write."""
DEFAULT_TENSOR_BLOCK = 1 << 20
"""Fixed chunk size inside large tensors of a version-3 repository (see ``tensor_block``)."""
MIN_TENSOR_BLOCK = 64 << 10
MAX_TENSOR_BLOCK = 4 << 20
HASH = "blake3-256"
DEFAULT_PACK_SIZE = 64 << 20
MAX_CONFIG_SIZE = 64 << 10
"""Largest config read (a real one is a few hundred bytes)."""
MAX_PACK_SIZE = 1 << 32
"""Largest ``pack_size`` a config may name (packs are read by offset within it)."""

_SPEC: schema.Spec = {
    "id": schema.is_str,
    "version": schema.is_int,
    "chunker": schema.shaped(
        {k: schema.is_int for k in ("min", "avg", "max", "normalization", "seed")}
    ),
    "compression": schema.shaped({"level": schema.is_int, "byte_planes": schema.is_bool}),
    "pack_size": lambda v: schema.is_int(v) and 1 << 12 <= v <= MAX_PACK_SIZE,
}
_TENSORS: schema.Spec = {
    "block": lambda v: (
        schema.is_int(v) and MIN_TENSOR_BLOCK <= v <= MAX_TENSOR_BLOCK and v % 4096 == 0
    ),
}


@dataclass(frozen=True)
class RepoConfig:
    """What every reader and writer of one repository agrees on."""

    chunker: ChunkerParams = field(default_factory=ChunkerParams)
    compression_level: int = 1
    byte_planes: bool = True
    """Let the codec split numeric data into byte planes (see ``mlvc_core.codec``)."""
    pack_size: int = DEFAULT_PACK_SIZE
    repo_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    version: int = FORMAT_VERSION
    tensor_block: int = DEFAULT_TENSOR_BLOCK
    """Large tensors are cut into chunks of this many bytes from their first byte (so a
    changed tensor's chunks line up with its previous version's, for deltas); 0 (format
    versions before 3) cuts them by content."""

    def upgraded(self) -> RepoConfig:
        """The same settings at this mlvc's format version (version 3 adds a tensor block)."""
        return replace(
            self, version=FORMAT_VERSION, tensor_block=self.tensor_block or DEFAULT_TENSOR_BLOCK
        )

    def for_new_repository(self) -> RepoConfig:
        """The same settings under a fresh repository id (push to a new remote, clone).

        Chunker and compression carry over, so dedup works across the two; the id does not,
        so the two never share local caches.
        """
        return replace(self.upgraded(), repo_id=uuid.uuid4().hex)

    def encode(self) -> bytes:
        """JSON form."""
        doc = {
            "format": FORMAT,
            "version": self.version,
            "id": self.repo_id,
            "hash": HASH,
            "chunker": self.chunker.to_dict(),
            "compression": {
                "codec": "zstd",
                "level": self.compression_level,
                "byte_planes": self.byte_planes,
            },
            "pack_size": self.pack_size,
        }
        if self.version >= 3:
            doc["tensors"] = {"block": self.tensor_block}
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def decode(cls, data: bytes) -> RepoConfig:
        """Parse and check a stored config.

        Raises:
            UnsupportedFormatVersion: A version this mlvc does not know.
            FormatError: Not an mlvc config.
        """
        try:
            doc: dict[str, Any] = json.loads(data)
        except ValueError as exc:
            raise FormatError(f"repository config is not JSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise FormatError("not an mlvc repository config")
        if doc.get("version") not in SUPPORTED_VERSIONS:
            raise UnsupportedFormatVersion(doc.get("version"), SUPPORTED_VERSIONS)
        if doc.get("hash") != HASH:
            raise FormatError(f"unsupported hash {doc.get('hash')!r}")
        schema.check(doc, _SPEC, "repository config")
        block = 0
        if doc["version"] >= 3:
            tensors = schema.check(doc.get("tensors"), _TENSORS, "repository config's tensors")
            if "block" not in tensors:
                raise FormatError("repository config names no tensor block size")
            block = tensors["block"]
        try:
            config = cls(
                chunker=ChunkerParams.from_dict(doc["chunker"]),
                compression_level=doc["compression"]["level"],
                byte_planes=bool(doc["compression"].get("byte_planes", False)),
                pack_size=doc["pack_size"],
                repo_id=doc["id"],
                version=doc["version"],
                tensor_block=block,
            )
            config.chunker.validate()
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"malformed repository config: {exc}") from exc
        return config


def upgrade_config(store: Store, key: str, *, announce: bool = True) -> tuple[RepoConfig, bool]:
    """Bring the config stored at ``key`` to this mlvc's format version, by compare-and-swap.

    Only the config is rewritten (version-1 index files stay valid; version 3 adds the
    tensor block size). mlvc versions that know only the older version refuse the
    repository afterwards, with a message.

    Args:
        store: The repository's store.
        key: The config's key.
        announce: Log a warning when this call upgrades (False where the caller reports it).

    Returns:
        The config as it now is, and whether this call upgraded it.

    Raises:
        UnsupportedFormatVersion: The stored config names a version this mlvc does not know.
        StorageError: The config kept changing under it.
    """
    for _ in range(5):
        data, version = store.read_versioned(key, MAX_CONFIG_SIZE)
        current = RepoConfig.decode(data)
        if current.version >= FORMAT_VERSION:
            return current, False
        upgraded = current.upgraded()
        try:
            store.write_if(key, upgraded.encode(), version)
        except PreconditionFailed:
            continue  # another process upgraded it at the same moment: read it again
        if not announce:
            return upgraded, True
        log.warning(
            "mlvc: upgraded the repository at %s from format version %d to %d "
            "(mlvc versions that only know version %d can no longer open it)",
            store.url,
            current.version,
            FORMAT_VERSION,
            current.version,
        )
        return upgraded, True
    raise StorageError(f"cannot upgrade {store.url}: its config keeps changing")
