"""Refs: named pointers to commits, moved only by compare-and-swap.

Kinds (key ``refs/<kind>/<name>`` in the store):

* ``heads/<branch>`` - branches for ``mlvc commit`` (default ``main``);
* ``experiments/<id>`` - an experiment's newest commit;
* ``tags/<name>`` - named versions such as ``production``.

A ref's value is a small JSON document: ``{"target": "<hex commit id>", ...summary}``. The
summary (status, params, latest step, best metric...) lets ``ls`` show experiments by reading
one small object each, never their commit chains. JSON keeps refs readable with ``cat``.

Every update names the target it expects to replace (``None``: the ref must not exist). If the
ref moved meanwhile, :class:`~mlvc_core.errors.RefConflict` is raised: no silent overwrite.
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mlvc_core import schema
from mlvc_core.catalog import LocalCache, scan
from mlvc_core.errors import (
    FormatError,
    InvalidRefName,
    KeyNotFound,
    PreconditionFailed,
    RefConflict,
    RefNotFound,
)
from mlvc_core.ids import ObjectId, from_hex, to_hex
from mlvc_core.storage.base import KeyInfo, Store, Version

KINDS = ("heads", "experiments", "tags")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PREFIX = "refs/"


def validate_name(name: str) -> str:
    """Check a full ref name such as ``tags/production``; return it.

    Raises:
        InvalidRefName: Unknown kind, or a name with characters outside ``[A-Za-z0-9._-]``.
    """
    kind, sep, short = name.partition("/")
    if not sep or kind not in KINDS:
        raise InvalidRefName(f"invalid ref {name!r}: must be one of {', '.join(KINDS)} + '/<name>'")
    if not _NAME.match(short) or short.endswith(".lock") or ".." in short:
        raise InvalidRefName(
            f"invalid {kind[:-1] if kind != 'heads' else 'branch'} name {short!r}: use letters, "
            "digits, '.', '_' and '-' (at most 128, not starting with a punctuation mark)"
        )
    return name


@dataclass(frozen=True)
class Ref:
    """One ref as read from the store."""

    name: str
    target: ObjectId
    summary: dict[str, Any] = field(default_factory=dict)
    version: Version | None = field(default=None, compare=False, repr=False)

    @property
    def kind(self) -> str:
        """``heads``, ``experiments`` or ``tags``."""
        return self.name.split("/", 1)[0]

    @property
    def short_name(self) -> str:
        """The name without its kind."""
        return self.name.split("/", 1)[1]


_TAG_EVENT: schema.Spec = {
    "target": schema.is_hex_id,
    "set_at": schema.optional(schema.is_number),
    "set_by": schema.optional(schema.is_str),
    "moved_at": schema.optional(schema.is_number),
}
SUMMARY_SPEC: schema.Spec = {
    "type": schema.is_str,
    "set_at": schema.optional(schema.is_number),
    "set_by": schema.optional(schema.is_str),
    "history": schema.list_of(schema.shaped(_TAG_EVENT)),
}
"""Summary fields mlvc_core itself reads (a tag's ``history`` keeps old targets alive)."""
MAX_REF_SIZE = 16 << 20
"""Largest ref document read (a summary is a few KiB; a tag's history a few per move)."""


def encode_ref(target: ObjectId, summary: dict[str, Any]) -> bytes:
    """The stored bytes of a ref: canonical JSON of the summary plus ``target``."""
    doc = dict(summary)
    doc["target"] = to_hex(target)
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode_ref(name: str, data: bytes, version: Version | None = None) -> Ref:
    """A ref from its stored bytes (as listed in a catalog, or read).

    Raises:
        FormatError: Not a ref document.
    """
    what = f"ref {name!r}"
    if len(data) > MAX_REF_SIZE:
        raise FormatError(f"{what} is malformed: {len(data)} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{what} is not readable: {exc}") from exc
    doc = schema.check(doc, {"target": schema.is_hex_id, **SUMMARY_SPEC}, what)
    if "target" not in doc:
        raise FormatError(f"{what} is malformed: it has no target")
    target = from_hex(doc.pop("target"))
    return Ref(name, target, doc, version)


class RefStore:
    """Read, list and compare-and-swap refs kept in a :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, name: str) -> Ref | None:
        """The ref ``name``, or None if it does not exist."""
        validate_name(name)
        try:
            data, version = self.store.read_versioned(PREFIX + name, MAX_REF_SIZE)
        except KeyNotFound:
            return None
        return decode_ref(name, data, version)

    def require(self, name: str) -> Ref:
        """The ref ``name``.

        Raises:
            RefNotFound: It does not exist.
        """
        ref = self.get(name)
        if ref is None:
            raise RefNotFound(name)
        return ref

    def set(
        self,
        name: str,
        target: ObjectId,
        expected: ObjectId | None,
        summary: dict[str, Any] | None = None,
    ) -> Ref:
        """Point ``name`` at ``target`` if it still points at ``expected``.

        Args:
            name: Full ref name (``heads/main``...).
            target: The new commit id.
            expected: The commit id the caller read, or None to create the ref.
            summary: Extra fields stored beside the target (replaces the old summary).

        Returns:
            The ref as written.

        Raises:
            RefConflict: The ref exists when ``expected`` is None, or points elsewhere.
        """
        validate_name(name)
        key = PREFIX + name
        version: Version | None = None
        if expected is not None:
            current = self.get(name)
            if current is None or current.target != expected:
                raise RefConflict(
                    name, to_hex(expected), to_hex(current.target) if current else None
                )
            version = current.version
        data = encode_ref(target, summary or {})
        try:
            new_version = self.store.write_if(key, data, version)
        except PreconditionFailed:
            now = self.get(name)
            raise RefConflict(
                name, to_hex(expected) if expected else None, to_hex(now.target) if now else None
            ) from None
        return Ref(name, target, dict(summary or {}), new_version)

    def update_summary(self, ref: Ref, summary: dict[str, Any]) -> Ref:
        """Rewrite a ref's summary, keeping its target, by compare-and-swap on ``ref``.

        Raises:
            RefConflict: The ref changed since ``ref`` was read.
        """
        try:
            new_version = self.store.write_if(
                PREFIX + ref.name, encode_ref(ref.target, summary), ref.version
            )
        except PreconditionFailed:
            raise RefConflict(ref.name, to_hex(ref.target)) from None
        return Ref(ref.name, ref.target, dict(summary), new_version)

    def move(self, ref: Ref, target: ObjectId, summary: dict[str, Any]) -> Ref:
        """Point ``ref`` at ``target`` with a new summary, by compare-and-swap on ``ref``.

        Unlike :meth:`set` (which compares targets only), this fails if anything about the ref
        changed since it was read, summary included, so a concurrent summary edit (a checkpoint
        hidden by ``rm``) is never overwritten.

        Raises:
            RefConflict: The ref changed since ``ref`` was read.
        """
        try:
            new_version = self.store.write_if(
                PREFIX + ref.name, encode_ref(target, summary), ref.version
            )
        except PreconditionFailed:
            now = self.get(ref.name)
            raise RefConflict(
                ref.name, to_hex(ref.target), to_hex(now.target) if now else None
            ) from None
        return Ref(ref.name, target, dict(summary), new_version)

    def delete(self, name: str, expected: ObjectId | Ref | None = None) -> None:
        """Remove the ref ``name``, on condition of what the caller read (``expected``).

        With a :class:`Ref` (as read by :meth:`get`), the ref goes only if nothing about it
        changed since, summary included: one conditional delete on the version read
        (:meth:`Store.delete_if`; a ref without a version, as listed, is read again and
        compared whole first). With a commit id, it goes only if it still points there (read,
        compared, deleted on condition of the version read). Either way a concurrent move is
        never lost silently. Without ``expected``, the ref goes whatever it holds (use
        :meth:`delete_unreadable` for one that could not be read).

        Raises:
            RefNotFound: It does not exist.
            RefConflict: It changed since ``expected`` was read, or points elsewhere.
            FormatError: ``expected`` was given and the ref is now unreadable.
        """
        validate_name(name)
        key = PREFIX + name
        if expected is None:
            if not self.store.exists(key):
                raise RefNotFound(name)
            self.store.delete(key)
            return
        want = expected.target if isinstance(expected, Ref) else expected
        version = expected.version if isinstance(expected, Ref) else None
        if version is None:
            current = self.get(name)
            if current is None:
                if isinstance(expected, Ref):
                    raise RefConflict(name, to_hex(want), None)
                raise RefNotFound(name)
            same = current == expected if isinstance(expected, Ref) else current.target == want
            if not same or current.version is None:
                raise RefConflict(name, to_hex(want), to_hex(current.target))
            version = current.version
        try:
            self.store.delete_if(key, version)
        except PreconditionFailed:
            try:
                now = self.get(name)
            except FormatError:
                now = None
            raise RefConflict(name, to_hex(want), to_hex(now.target) if now else None) from None

    def delete_unreadable(self, name: str) -> None:
        """Remove the ref ``name`` only if it is (still) unreadable, as a caller found it.

        Read, checked and deleted on condition of the version read: a ref rewritten readable
        meanwhile stays.

        Raises:
            RefNotFound: It does not exist.
            RefConflict: It is readable (now).
        """
        validate_name(name)
        key = PREFIX + name
        try:
            data, version = self.store.read_versioned(key, MAX_REF_SIZE)
        except KeyNotFound:
            raise RefNotFound(name) from None
        except FormatError:
            self.store.delete(key)  # too large to read, so no version: it goes as it is
            return
        try:
            ref = decode_ref(name, data)
        except FormatError:
            pass
        else:
            raise RefConflict(name, "an unreadable ref", to_hex(ref.target))
        try:
            self.store.delete_if(key, version)
        except PreconditionFailed:
            raise RefConflict(name, "an unreadable ref", "a new value") from None

    def list_keys(self, kind: str | None = None) -> Iterator[tuple[str, KeyInfo]]:
        """Names (and listing info: size, mtime) of refs, without reading them."""
        prefix = PREFIX + (f"{kind}/" if kind else "")
        for info in self.store.list(prefix):
            name = info.key[len(PREFIX) :]
            if name.partition("/")[0] in KINDS:
                yield name, info

    def list(self, kind: str | None = None) -> list[Ref]:
        """Every ref (of one kind), read.

        Experiment refs come through their catalog (:mod:`mlvc_core.catalog`): one listing,
        one read of the catalog and a read of each ref changed since it, not a read per ref.
        The refs so returned carry no version: re-read one before moving it.

        Raises:
            FormatError: A ref is unreadable (:meth:`scan` reads the others instead).
        """
        refs, bad = self.scan(kind)
        if bad:
            raise FormatError(bad[0][1])
        return refs

    def scan(
        self, kind: str | None = None
    ) -> tuple[builtins.list[Ref], builtins.list[tuple[str, str]]]:
        """Every readable ref (of one kind), and ``(name, why)`` of each unreadable one.

        For operations that can go on without the unreadable ones (listing, fsck). A key
        under ``refs/`` whose name no mlvc would write counts as unreadable, not as absent.
        """
        out: builtins.list[Ref] = []
        bad: builtins.list[tuple[str, str]] = []
        for k in [kind] if kind is not None else builtins.list(KINDS):
            if k == "experiments":
                found = scan(
                    self.store,
                    f"{PREFIX}{k}/",
                    LocalCache(None),
                    racy=1.0 if self.store.is_local else 2.0,
                    compact=False,
                )
                for key, data in found.docs.items():
                    name = key[len(PREFIX) :]
                    try:
                        out.append(decode_ref(validate_name(name), data, None))
                    except InvalidRefName as exc:
                        bad.append((name, f"ref {name!r} has an invalid name: {exc}"))
                    except FormatError as exc:
                        bad.append((name, str(exc)))
                continue
            for name, _info in self.list_keys(k):
                try:
                    ref = self.get(name)
                except InvalidRefName as exc:
                    bad.append((name, f"ref {name!r} has an invalid name: {exc}"))
                    continue
                except FormatError as exc:
                    bad.append((name, str(exc)))
                    continue
                if ref is not None:
                    out.append(ref)
        return sorted(out, key=lambda r: r.name), bad
