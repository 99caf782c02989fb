"""Checkpoints read back, and :func:`load`: from a name to a file object or a directory.

A checkpoint is a commit (``metadata.type = "checkpoint"``) on its experiment's chain; its tree
is the code snapshot plus the checkpoint's own files, listed in ``metadata.paths``
(docs/experiments.md). :meth:`Checkpoint.open` streams one file, reading only the chunks it
needs; :meth:`Checkpoint.checkout` writes files out (by default only the checkpoint's own).

:func:`load` and :func:`get` accept every name of the one grammar,
:mod:`mlvc.experiments.revisions`; an experiment stands for its best checkpoint (its latest
if it has no primary metric).
"""

from __future__ import annotations

import io
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlvc.experiments.summary import (
    ExperimentSummary,
    as_float,
    json_number,
    primary_of,
    ref_name,
)
from mlvc.repo import RepositoryLike, shared_repo
from mlvc_core.errors import ObjectNotFound, UsageError
from mlvc_core.ids import SHORT_LEN, ObjectId, to_hex
from mlvc_core.objects import Commit
from mlvc_core.reader import ChunkedReader
from mlvc_core.repository import Repository
from mlvc_core.trees import find_entry, walk_tree

if TYPE_CHECKING:
    from mlvc.experiments.model import Experiment

__all__ = ["Checkpoint", "get", "load"]


def open_file(repo: Repository, tree_id: ObjectId, path: str, where: str) -> io.BufferedReader:
    """A buffered, seekable file object over one file of a tree (streams chunks on demand).

    Raises:
        ObjectNotFound: No such file in the tree.
    """
    entry = find_entry(repo, tree_id, path)
    if entry is None or entry.kind != "file" or entry.oid is None:
        raise ObjectNotFound(path, "file", f"not in {where}")
    reader = ChunkedReader(repo, repo.read_manifest(entry.oid), name=path)
    return io.BufferedReader(reader, buffer_size=1 << 20)


class Checkpoint:
    """One checkpoint of an experiment (or, through :func:`load`, any commit).

    Attributes:
        oid: The commit id (raw bytes).
        commit: The commit object.
    """

    def __init__(self, repo: Repository, oid: ObjectId, commit: Commit) -> None:
        self._repo = repo
        self.oid = oid
        self.commit = commit

    def __repr__(self) -> str:
        return f"<Checkpoint {self.short_id} step={self.step} {self.metrics}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Checkpoint) and other.oid == self.oid

    def __hash__(self) -> int:
        return hash(self.oid)

    @property
    def id(self) -> str:
        """Full hex id."""
        return to_hex(self.oid)

    @property
    def short_id(self) -> str:
        """The id shortened for display."""
        return self.id[:SHORT_LEN]

    @property
    def metadata(self) -> dict[str, Any]:
        """The commit's metadata."""
        return dict(self.commit.metadata)

    @property
    def experiment_id(self) -> str:
        """Full hex id of the experiment ("" for a commit outside any experiment)."""
        return str(self.commit.metadata.get("experiment") or "")

    @property
    def step(self) -> int | None:
        """The training step given to ``checkpoint()``."""
        step = self.commit.metadata.get("step")
        return int(step) if isinstance(step, (int, float)) else None

    @property
    def metrics(self) -> dict[str, float]:
        """Metrics recorded with the checkpoint."""
        out = {}
        for k, v in (self.commit.metadata.get("metrics") or {}).items():
            f = as_float(v)
            if f is not None:
                out[str(k)] = f
        return out

    @property
    def primary_metric(self) -> tuple[str, str] | None:
        """``(name, goal)`` in force when the checkpoint was saved."""
        return primary_of(self.commit.metadata)

    @property
    def time(self) -> datetime:
        """When the checkpoint was taken (UTC)."""
        return datetime.fromtimestamp(self.commit.time, tz=timezone.utc)

    @property
    def message(self) -> str:
        """The commit message."""
        return self.commit.message

    @property
    def paths(self) -> list[str]:
        """The checkpoint's own files and directories, relative to the tree root."""
        return [str(p) for p in self.commit.metadata.get("paths") or []]

    @property
    def tree(self) -> ObjectId:
        """The root tree id."""
        return self.commit.tree

    @property
    def removed(self) -> bool:
        """True if the checkpoint was hidden by ``remove`` (reads the experiment's ref)."""
        if not self.experiment_id:
            return False
        ref = self._repo.refs.get(ref_name(self.experiment_id))
        return ref is None or self.id in ExperimentSummary.from_dict(ref.summary).removed

    def experiment(self) -> Experiment:
        """The experiment this checkpoint belongs to.

        Raises:
            ObjectNotFound: The experiment was removed (or this commit is not a checkpoint).
        """
        from mlvc.experiments.catalog import load_experiment

        if not self.experiment_id:
            raise ObjectNotFound(self.short_id, "experiment of commit")
        return load_experiment(self._repo, self.experiment_id)

    def files(self, all: bool = False) -> list[tuple[str, int]]:  # noqa: A002
        """``(relative path, size)`` of the checkpoint's own files (``all``: code too).

        A commit that is not a checkpoint (no recorded paths) lists every file.
        """
        if all or "paths" not in self.commit.metadata:
            return [
                (rel, e.size) for rel, e in walk_tree(self._repo, self.tree) if e.kind == "file"
            ]
        out: list[tuple[str, int]] = []
        for p in self.paths:
            entry = find_entry(self._repo, self.tree, p)
            if entry is None:
                continue
            if entry.kind == "dir" and entry.oid is not None:
                out += [
                    (rel, e.size)
                    for rel, e in walk_tree(self._repo, entry.oid, p.rstrip("/") + "/")
                    if e.kind == "file"
                ]
            elif entry.kind == "file":
                out.append((p, entry.size))
        return out

    def open(self, path: str) -> io.BufferedReader:
        """A read-only, seekable file object over one file of the checkpoint.

        Only the chunks actually read are fetched (and verified), so ``torch.load`` or
        ``safetensors`` can read a large file without writing it to disk first.

        Args:
            path: The file's path in the tree, e.g. ``"model.pth"``; a bare name is also looked
                up among the checkpoint's own paths (``"model.pth"`` for ``"ckpt/model.pth"``).

        Raises:
            ObjectNotFound: No such file.
        """
        where = f"checkpoint {self.short_id}"
        if find_entry(self._repo, self.tree, path) is None and "/" not in path.strip("/"):
            matches = [p for p, _ in self.files() if p.rsplit("/", 1)[-1] == path]
            if len(matches) == 1:
                path = matches[0]
        return open_file(self._repo, self.tree, path, where)

    def checkout(
        self,
        output_dir: str | os.PathLike[str],
        paths: list[str] | None = None,
        force: bool = False,
        all: bool = False,  # noqa: A002
    ) -> list[str]:
        """Write files of the checkpoint into ``output_dir`` (created if needed).

        Args:
            output_dir: Where to write; files keep their paths relative to the tree root.
            paths: Files or directories to write (default: the checkpoint's own files).
            force: Overwrite existing files.
            all: Write the whole tree, code included.

        Returns:
            The relative paths written.

        Raises:
            FileExistsConflict: A file exists and ``force`` is false (nothing was written).
        """
        from mlvc.experiments.checkout import checkout
        from mlvc.experiments.revisions import Kind, Target

        own_files = "paths" in self.commit.metadata
        kind: Kind = "checkpoint" if own_files else "commit"
        target = Target(self.id, kind, self.oid, self.experiment_id or None)
        return checkout(
            self._repo, target, output_dir, paths, force, everything=all, mark=False
        ).files

    def remove(self) -> None:
        """Hide this checkpoint from its experiment (CAS on the experiment's summary)."""
        from mlvc.experiments.removal import remove_checkpoint

        if not self.experiment_id:
            raise UsageError(f"{self.short_id} is not a checkpoint of an experiment")
        remove_checkpoint(self._repo, self.experiment_id, self.id)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe description with stable keys."""
        pm = self.primary_metric
        return {
            "id": self.id,
            "short_id": self.short_id,
            "experiment": self.experiment_id,
            "step": self.step,
            "metrics": {k: json_number(v) for k, v in self.metrics.items()},
            "primary_metric": {"name": pm[0], "goal": pm[1]} if pm else None,
            "time": self.time.isoformat(),
            "message": self.message,
            "paths": self.paths,
            "parents": [to_hex(p) for p in self.commit.parents],
        }


def get(id: str, repository: RepositoryLike = None) -> Checkpoint:  # noqa: A002
    """The checkpoint a name refers to (an experiment gives its best, else its latest).

    Any form of :mod:`mlvc.experiments.revisions`: an id prefix, ``EXP@best``,
    ``EXP@step=N``, a tag on a checkpoint, ``EXP@latest~1``...

    Raises:
        ObjectNotFound: No such checkpoint (or the name is a commit that is not one).
        AmbiguousId: The prefix matches several; the error lists them.
        UsageError: A malformed name.
    """
    from mlvc.experiments.revisions import checkpoint_of

    return checkpoint_of(shared_repo(repository), id)


def load(
    ref: str,
    path: str | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    repository: RepositoryLike = None,
    force: bool = False,
) -> Any:
    """Fetch a checkpoint for inference in one line.

    ``torch.load(mlvc.load("production", "model.pth"))`` streams the file from the repository.

    Args:
        ref: Any name of :mod:`mlvc.experiments.revisions`: an id prefix, a tag, a branch,
            ``<experiment>@best|@latest|@step=N``, ``NAME~N``... An experiment gives its
            best checkpoint (its latest without a primary metric).
        path: One file to open; returns a seekable binary file object.
        output_dir: Without ``path``: where to check the checkpoint's files out (default a
            cache directory, reused by later calls for the same checkpoint).
        repository: A repository, settings, URL or path; None for the project's.
        force: Overwrite existing files in ``output_dir``.

    Returns:
        A file object (with ``path``) or the directory :class:`~pathlib.Path`.

    Raises:
        ObjectNotFound: No such checkpoint or file.
        AmbiguousId: An ambiguous id prefix.
        UsageError: A malformed name.
        FileExistsConflict: Files exist in ``output_dir`` and ``force`` is false.
    """
    from mlvc.experiments.revisions import checkpoint_of

    ckpt = checkpoint_of(shared_repo(repository), ref, any_commit=True)
    if path is not None:
        return ckpt.open(path)
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        ckpt.checkout(output_dir, force=force)
        return Path(output_dir)
    repo = ckpt._repo
    base = repo.cache_dir if repo.cache_dir is not None else Path.home() / ".cache" / "mlvc"
    final = base / "checkouts" / ckpt.id
    if final.is_dir():
        return final
    tmp = final.with_name(f".{ckpt.id}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir(parents=True)
        ckpt.checkout(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
