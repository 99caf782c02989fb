"""Looking at experiments, checkpoints and commits: ``show`` one, ``diff`` two.

Params and environment come from the experiment's first commit, metrics from the commit
standing for the target (an experiment's best checkpoint), files from that commit's tree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mlvc.commands._describe import (
    CommitInfo,
    FileInfo,
    describe_commit,
    list_files,
)
from mlvc.experiments.revisions import Target, resolve
from mlvc_core.errors import ObjectNotFound, UsageError
from mlvc_core.ids import from_hex
from mlvc_core.repository import Repository


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
