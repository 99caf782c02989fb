"""``checkout``: write the files of an experiment, checkpoint or commit into a directory.

The one checkout of :mod:`mlvc`: ``mlvc checkout`` and :meth:`mlvc.Checkpoint.checkout` both
come here. It chooses what to restore (a checkpoint's own files unless the whole snapshot is
asked for), has :func:`mlvc_core.restore.restore_tree` write it (which finds every conflict
before the first byte and never writes outside ``dest``), and says what it did.

It also owns the checkout marker: a directory ``mlvc checkout`` creates holds a
:data:`CHECKOUT_MARKER` file, which :mod:`mlvc.tracking.ignore` reads so that code snapshots
leave such directories out.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlvc.experiments.revisions import Target, resolve
from mlvc_core.ids import ObjectId
from mlvc_core.repository import Repository
from mlvc_core.restore import restore_tree
from mlvc_core.session import ProgressFn
from mlvc_core.trees import walk_tree

CHECKOUT_MARKER = ".mlvc-checkout"
"""The file that marks a directory ``mlvc checkout`` created (code snapshots leave it out)."""


def mark_checkout(directory: str | os.PathLike[str], source: str) -> None:
    """Mark ``directory`` as written by ``mlvc checkout`` (code snapshots then leave it out).

    Args:
        directory: A directory the checkout created.
        source: What was checked out (a commit id), recorded for people reading the marker.
    """
    marker = Path(directory) / CHECKOUT_MARKER
    marker.write_text(
        "# Written by `mlvc checkout`: mlvc's code snapshots leave this directory out.\n"
        f"# Delete this file to include it.\nsource = {source}\n"
    )


def _file_sizes(repo: Repository, commit_id: ObjectId) -> dict[str, int]:
    """Every file (and symlink) of a commit's tree: relative path -> size in bytes."""
    tree = repo.read_commit(commit_id).tree
    return {rel: e.size for rel, e in walk_tree(repo, tree) if e.kind != "dir"}


@dataclass(frozen=True)
class CheckoutResult:
    """What ``checkout`` wrote."""

    target: Target
    dest: str
    files: list[str]
    bytes: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """``(path, reason)`` of entries left out (links leading out of ``dest``...)."""
    unchanged: int = 0
    """Files and links already in ``dest`` exactly as the snapshot has them (left alone)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "target": self.target.to_dict(),
            "dest": self.dest,
            "files": self.files,
            "bytes": self.bytes,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "unchanged": self.unchanged,
        }


def checkout_paths(
    repo: Repository, target: Target, paths: Iterable[str] | None = None, everything: bool = False
) -> list[str] | None:
    """The paths ``checkout`` restores (None: the whole snapshot; ``[]``: nothing).

    ``paths`` if given (None: not given); else a checkpoint's own files (its recorded
    ``paths``) unless ``everything``; else everything.
    """
    if paths is not None:
        return [p.strip("/") for p in paths]
    if everything or target.kind == "commit":
        return None
    meta = repo.read_commit(target.commit_id).metadata
    if "paths" in meta:  # a checkpoint's own files
        return [str(p).strip("/") for p in meta.get("paths") or []]
    return None


def _selected(sizes: dict[str, int], wanted: list[str] | None) -> list[str]:
    if wanted is None:
        return list(sizes)
    return [p for p in sizes if any(p == w or p.startswith(w + "/") for w in wanted)]


def checkout_size(
    repo: Repository, target: Target, paths: Iterable[str] | None = None, everything: bool = False
) -> int:
    """Bytes ``checkout`` would write (for a progress bar)."""
    wanted = checkout_paths(repo, target, paths, everything)
    sizes = _file_sizes(repo, target.commit_id)
    return sum(sizes[p] for p in _selected(sizes, wanted))


def checkout(
    repo: Repository,
    target: Target | str,
    dest: str | os.PathLike[str],
    paths: Iterable[str] | None = None,
    force: bool = False,
    everything: bool = False,
    progress: ProgressFn | None = None,
    mark: bool = True,
) -> CheckoutResult:
    """Restore the files of an experiment (its best checkpoint), checkpoint or commit.

    For a checkpoint (or an experiment) only the checkpoint's own files are written (the
    weights) unless ``everything`` asks for the whole snapshot, code included. A plain commit
    is restored whole.

    Args:
        repo: The repository.
        target: A :class:`Target` from :func:`resolve`, or what the user typed.
        dest: Directory to write into (created if needed).
        paths: Only these files or directories of the snapshot (None: see above).
        force: Overwrite existing files.
        everything: Restore the whole snapshot of a checkpoint, code included.
        progress: Called with bytes written.
        mark: Leave a :data:`CHECKOUT_MARKER` file in a ``dest`` this checkout
            creates, so code snapshots leave it out (``mlvc checkout`` does; the Python API's
            :meth:`mlvc.Checkpoint.checkout` does not).

    Returns:
        What was written: ``files`` lists the relative paths written. Entries that cannot be
        restored safely here (a link leading out of ``dest``, a name this system refuses) are
        skipped and listed in ``skipped``; files already as the snapshot has them are left
        alone (counted in ``unchanged``, not in ``files``).

    Raises:
        FileExistsConflict: Paths are in the way and ``force`` is false (nothing was written).
        UsageError: A requested path is not in the snapshot.
    """
    t = resolve(repo, target) if isinstance(target, str) else target
    tree = repo.read_commit(t.commit_id).tree
    wanted = checkout_paths(repo, t, paths, everything)
    if wanted == []:
        return CheckoutResult(t, str(dest), [], 0)
    fresh = not os.path.lexists(dest)
    skipped: list[tuple[str, str]] = []
    written = restore_tree(
        repo,
        tree,
        Path(dest),
        paths=wanted,
        force=force,
        progress=progress,
        on_skip=lambda p, why: skipped.append((p, why)),
    )
    if fresh and mark:  # a directory of mlvc's own: code snapshots leave it out
        mark_checkout(dest, t.commit_id.hex())
    sizes = _file_sizes(repo, t.commit_id)
    unchanged = len(_selected(sizes, wanted)) - len(written) - len(skipped)
    return CheckoutResult(
        t, str(dest), written, sum(sizes.get(p, 0) for p in written), skipped, max(unchanged, 0)
    )
