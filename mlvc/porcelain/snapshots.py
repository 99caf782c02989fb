"""Looking at snapshots: ``show``, ``diff`` and ``checkout`` of experiments, checkpoints, commits.

Params and environment come from the experiment's first commit, metrics from the commit
standing for the target (an experiment's best checkpoint), files from that commit's tree.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlvc.porcelain._resolve import (
    CommitInfo,
    FileInfo,
    Target,
    describe_commit,
    list_files,
    resolve,
)
from mlvc_core.errors import ObjectNotFound, UsageError
from mlvc_core.ids import from_hex
from mlvc_core.repository import Repository
from mlvc_core.restore import restore_tree
from mlvc_core.session import ProgressFn


def _experiment_meta(repo: Repository, experiment_id: str | None) -> dict[str, Any]:
    if not experiment_id:
        return {}
    try:
        return dict(repo.read_commit(from_hex(experiment_id)).metadata)
    except (ObjectNotFound, UsageError):
        return {}


@dataclass
class ShowResult:
    """An experiment, checkpoint or commit, with what ``show`` prints."""

    target: Target
    commit: CommitInfo
    params: dict[str, Any]
    metrics: dict[str, Any]
    env: dict[str, Any]
    files: list[FileInfo]
    experiment: dict[str, Any] | None = None
    """The experiment's summary (``Experiment.to_dict()``), for experiments."""
    checkpoints: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "kind": self.target.kind,
            "id": self.target.id,
            "target": self.target.to_dict(),
            "commit": self.commit.to_dict(),
            "params": self.params,
            "metrics": self.metrics,
            "env": self.env,
            "files": [f.to_dict() for f in self.files],
            "total_size": sum(f.size for f in self.files),
            "experiment": self.experiment,
            "checkpoints": self.checkpoints,
        }


def _params_env(
    repo: Repository, target: Target, meta: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    source = _experiment_meta(repo, target.experiment_id) if target.experiment_id else meta
    return dict(source.get("params") or {}), dict(source.get("env") or {})


def show(repo: Repository, spec: str) -> ShowResult:
    """Everything about one experiment, checkpoint or commit.

    For an experiment, the metrics and files are those of the commit it stands for (its best
    checkpoint, or latest).

    Raises:
        ObjectNotFound: Nothing by that name.
        AmbiguousId: The prefix matches several ids.
    """
    target = resolve(repo, spec)
    info = describe_commit(repo, target.commit_id)
    meta = repo.read_commit(target.commit_id).metadata
    params, env = _params_env(repo, target, meta)
    result = ShowResult(
        target=target,
        commit=info,
        params=params,
        metrics=dict(info.metrics),
        env=env,
        files=list_files(repo, target.commit_id),
    )
    if target.experiment is not None:
        exp = target.experiment
        result.experiment = exp.to_dict()
        result.checkpoints = [c.to_dict() for c in exp.checkpoints]
    return result


# -------------------------------------------------------------------------------------- diff


@dataclass(frozen=True)
class ValueChange:
    """One param, metric or environment entry that differs."""

    key: str
    a: Any
    b: Any

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"key": self.key, "a": self.a, "b": self.b}


@dataclass
class DiffResult:
    """Differences between two experiments, checkpoints or commits."""

    a: Target
    b: Target
    params: list[ValueChange]
    metrics: list[ValueChange]
    env: list[ValueChange]
    files: list[Any]
    """:class:`mlvc_core.diff.Change` items."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "params": [c.to_dict() for c in self.params],
            "metrics": [c.to_dict() for c in self.metrics],
            "env": [c.to_dict() for c in self.env],
            "files": [c.to_dict() for c in self.files],
        }


def _flatten(d: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k in sorted(d, key=str):
        v = d[k]
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _compare(a: dict[str, Any], b: dict[str, Any]) -> list[ValueChange]:
    fa, fb = dict(_flatten(a)), dict(_flatten(b))
    return [
        ValueChange(k, fa.get(k), fb.get(k))
        for k in sorted(set(fa) | set(fb))
        if fa.get(k) != fb.get(k)
    ]


def diff(repo: Repository, spec_a: str, spec_b: str) -> DiffResult:
    """Compare params, metrics, environment and files of two ids.

    Raises:
        ObjectNotFound: Either id names nothing.
        AmbiguousId: Either prefix matches several ids.
    """
    from mlvc_core.diff import diff_trees

    ta, tb = resolve(repo, spec_a), resolve(repo, spec_b)
    ca, cb = repo.read_commit(ta.commit_id), repo.read_commit(tb.commit_id)
    pa, ea = _params_env(repo, ta, ca.metadata)
    pb, eb = _params_env(repo, tb, cb.metadata)
    return DiffResult(
        a=ta,
        b=tb,
        params=_compare(pa, pb),
        metrics=_compare(
            dict(ca.metadata.get("metrics") or {}), dict(cb.metadata.get("metrics") or {})
        ),
        env=_compare(ea, eb),
        files=diff_trees(repo, ca.tree, cb.tree),
    )


# ---------------------------------------------------------------------------------- checkout


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
    """The paths ``checkout`` restores (None: the whole snapshot).

    ``paths`` if given; else a checkpoint's own files (its recorded ``paths``) unless
    ``everything``; else everything.
    """
    if paths:
        return [p.strip("/") for p in paths]
    if everything or target.kind == "commit":
        return None
    meta = repo.read_commit(target.commit_id).metadata
    if meta.get("type") == "checkpoint" and "paths" in meta:
        return [str(p).strip("/") for p in meta.get("paths") or []]
    return None


def _selected(files: list[FileInfo], wanted: list[str] | None) -> list[FileInfo]:
    if wanted is None:
        return files
    return [f for f in files if any(f.path == w or f.path.startswith(w + "/") for w in wanted)]


def checkout_size(
    repo: Repository, target: Target, paths: Iterable[str] | None = None, everything: bool = False
) -> int:
    """Bytes ``checkout`` would write (for a progress bar)."""
    wanted = checkout_paths(repo, target, paths, everything)
    return sum(f.size for f in _selected(list_files(repo, target.commit_id), wanted))


def checkout(
    repo: Repository,
    target: Target | str,
    dest: str | os.PathLike[str],
    paths: Iterable[str] | None = None,
    force: bool = False,
    everything: bool = False,
    progress: ProgressFn | None = None,
) -> CheckoutResult:
    """Restore the files of an experiment (its best checkpoint), checkpoint or commit.

    For a checkpoint (or an experiment) only the checkpoint's own files are written (the
    weights, as :meth:`mlvc.checkpoints.Checkpoint.checkout` does) unless ``everything``
    asks for the whole snapshot, code included. A plain commit is restored whole.

    Args:
        repo: The repository.
        target: A :class:`Target` from :func:`resolve`, or what the user typed.
        dest: Directory to write into. One the checkout creates gets a
            :data:`mlvc.tracking.ignore.CHECKOUT_MARKER` file, so code snapshots leave it out.
        paths: Only these files or directories of the snapshot.
        force: Overwrite existing files.
        everything: Restore the whole snapshot of a checkpoint, code included.
        progress: Called with bytes written.

    Entries that cannot be restored safely here (a link leading out of ``dest``, a name this
    system refuses) are skipped and listed in the result's ``skipped``; files already as the
    snapshot has them are left alone (not in ``files``).

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
    if fresh:  # a directory of mlvc's own: code snapshots leave it out
        from mlvc.tracking.ignore import mark_checkout

        mark_checkout(dest, t.commit_id.hex())
    files = list_files(repo, t.commit_id)
    sizes = {f.path: f.size for f in files}
    unchanged = len(_selected(files, wanted)) - len(written) - len(skipped)
    return CheckoutResult(
        t, str(dest), written, sum(sizes.get(p, 0) for p in written), skipped, max(unchanged, 0)
    )
