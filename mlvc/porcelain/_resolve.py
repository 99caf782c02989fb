"""Naming things: what a user-typed id refers to, and how commits and files are described.

:func:`resolve` turns ``exp@best``, a tag, a branch, an experiment/checkpoint/commit id prefix
(7+ hex digits) into a :class:`Target`: the kind of thing named and the commit standing for
it. Experiments are looked up through :mod:`mlvc.experiments` (their best checkpoint depends
on their summary); everything else reads commit metadata (format: ``docs/experiments.md``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from mlvc_core.errors import InvalidRefName, ObjectNotFound, UsageError
from mlvc_core.ids import SHORT_LEN, ObjectId, from_hex, is_hex_prefix, to_hex
from mlvc_core.refs import Ref, validate_name
from mlvc_core.repository import Repository
from mlvc_core.trees import walk_tree

Kind = Literal["experiment", "checkpoint", "commit"]


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as ISO 8601 in UTC (the form ``--json`` uses for times)."""
    if epoch is None:
        return None
    import datetime as _dt

    return _dt.datetime.fromtimestamp(float(epoch), _dt.timezone.utc).isoformat()


def oid_of(value: Any) -> ObjectId:
    """An id given as raw bytes or hex."""
    if isinstance(value, bytes):
        return ObjectId(value)
    return from_hex(str(value))


def hex_of(value: Any) -> str | None:
    """An id given as raw bytes or hex, as hex (None stays None)."""
    if value is None:
        return None
    return value.hex() if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------------- describing


@dataclass(frozen=True)
class CommitInfo:
    """One commit as people and scripts see it."""

    id: str
    time: float
    author: str
    message: str
    type: str
    """``experiment``, ``checkpoint`` or ``commit`` (from its metadata)."""
    parents: list[str]
    experiment: str | None = None
    step: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (time as ISO 8601)."""
        d = asdict(self)
        d["time"] = iso(self.time)
        d["short_id"] = self.id[:SHORT_LEN]
        return d


def describe_commit(repo: Repository, oid: ObjectId) -> CommitInfo:
    """Read one commit into a :class:`CommitInfo`."""
    c = repo.read_commit(oid)
    meta = c.metadata
    kind = str(meta.get("type") or "commit")
    experiment = meta.get("experiment") if kind == "checkpoint" else None
    if kind == "experiment":
        experiment = to_hex(oid)
    step = meta.get("step")
    return CommitInfo(
        id=to_hex(oid),
        time=c.time,
        author=c.author,
        message=c.message,
        type=kind,
        parents=[to_hex(p) for p in c.parents],
        experiment=str(experiment) if experiment else None,
        step=int(step) if isinstance(step, (int, float)) else None,
        metrics=dict(meta.get("metrics") or {}),
    )


@dataclass(frozen=True)
class FileInfo:
    """One file of a snapshot."""

    path: str
    size: int
    kind: str = "file"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)


def list_files(repo: Repository, commit_id: ObjectId) -> list[FileInfo]:
    """Every file (and symlink) of a commit's tree, sorted by path."""
    tree = repo.read_commit(commit_id).tree
    return [FileInfo(rel, e.size, e.kind) for rel, e in walk_tree(repo, tree) if e.kind != "dir"]


# --------------------------------------------------------------------------------- resolving


@dataclass
class Target:
    """What a user-typed id names, and the commit it stands for.

    Attributes:
        spec: What the user typed.
        kind: ``experiment``, ``checkpoint`` or ``commit``.
        commit_id: The commit whose files ``checkout`` restores and ``diff`` compares: for an
            experiment its best checkpoint (latest if it has no primary metric; its first
            commit if it has no checkpoint yet).
        experiment_id: The experiment it belongs to, if any (hex).
        via: How it was found (``tags/production``, ``heads/main``, ``exp@best``...), or None.
        experiment: The :class:`mlvc.experiments.Experiment`, when kind is experiment.
    """

    spec: str
    kind: Kind
    commit_id: ObjectId
    experiment_id: str | None = None
    via: str | None = None
    experiment: Any = None

    @property
    def id(self) -> str:
        """The hex id of the thing named: the experiment's id for an experiment."""
        if self.kind == "experiment" and self.experiment_id:
            return self.experiment_id
        return to_hex(self.commit_id)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "spec": self.spec,
            "kind": self.kind,
            "id": self.id,
            "commit": to_hex(self.commit_id),
            "experiment": self.experiment_id,
            "via": self.via,
        }


def _target_of_commit(repo: Repository, spec: str, oid: ObjectId, via: str | None) -> Target:
    meta = repo.read_commit(oid).metadata
    if meta.get("type") == "checkpoint":
        return Target(spec, "checkpoint", oid, hex_of(meta.get("experiment")), via)
    return Target(
        spec, "commit", oid, to_hex(oid) if meta.get("type") == "experiment" else None, via
    )


def _experiment_target(
    repo: Repository, spec: str, exp: Any, select: str | None, via: str | None
) -> Target:
    """The commit standing for experiment ``exp``.

    ``select`` None: best checkpoint, else latest, else the first commit (no checkpoint yet);
    ``best`` (needs a primary metric), ``latest``, ``step=N`` or ``N``: that checkpoint.
    """
    eid = hex_of(exp.id)
    assert eid is not None
    sel = (select or "").strip().lower()
    chosen: Any
    if not sel:
        chosen = exp.best() or exp.latest()
    elif sel == "best":
        chosen = exp.best()
        if chosen is None:
            raise ObjectNotFound(f"{spec} (the experiment has no primary metric)", "checkpoint")
    elif sel == "latest":
        chosen = exp.latest()
        if chosen is None:
            raise ObjectNotFound(f"{spec} (the experiment has no checkpoints yet)", "checkpoint")
    else:
        try:
            step = int(sel.removeprefix("step="))
        except ValueError:
            raise UsageError(
                f"bad selector {select!r} in {spec!r}: use @best, @latest or @step=N"
            ) from None
        matches = [c for c in exp.checkpoints if c.step == step]
        if not matches:
            steps = ", ".join(str(c.step) for c in exp.checkpoints) or "none"
            raise ObjectNotFound(f"{spec} (steps of this experiment: {steps})", "checkpoint")
        chosen = matches[-1]
    commit_id = oid_of(chosen.id) if chosen is not None else oid_of(eid)
    if via is None:
        return Target(spec, "experiment", commit_id, eid, None, exp)
    return Target(spec, "checkpoint", commit_id, eid, via)


def _ref_named(repo: Repository, name: str) -> Ref | None:
    for kind in ("tags", "heads"):
        try:
            ref = repo.refs.get(f"{kind}/{name}")
        except InvalidRefName:
            return None
        if ref is not None:
            return ref
    return None


def resolve(repo: Repository, spec: str) -> Target:
    """Turn what a user typed into a :class:`Target`.

    Accepted, in this order: ``EXP@best``/``EXP@latest``/``EXP@step=N`` (or ``EXP@N``); a tag;
    a branch; a ``kind/name`` ref; an experiment or checkpoint id (7+ hex digits); any commit
    id. An experiment stands for its best checkpoint (latest without a primary metric; its
    first commit before any checkpoint).

    Raises:
        ObjectNotFound: Nothing by that name.
        AmbiguousId: A prefix that matches several ids (the candidates are listed).
        UsageError: A malformed selector.
    """
    spec = spec.strip()
    if not spec:
        raise UsageError("empty id")
    if "@" in spec:
        base, _, select = spec.rpartition("@")
        found = _resolve_plain(repo, base)
        if found.kind != "experiment" or found.experiment is None:
            raise UsageError(f"{base!r} is not an experiment: @{select} applies to experiments")
        return _experiment_target(repo, spec, found.experiment, select, f"@{select}")
    return _resolve_plain(repo, spec)


def _resolve_plain(repo: Repository, spec: str) -> Target:
    ref = _ref_named(repo, spec)
    if ref is not None:
        return _target_of_commit(repo, spec, ref.target, ref.name)
    if "/" in spec:
        kind, _, name = spec.partition("/")
        ref = repo.refs.require(validate_name(spec))
        if kind == "experiments":
            return _resolve_plain(repo, name)
        return _target_of_commit(repo, spec, ref.target, ref.name)
    if is_hex_prefix(spec):
        from mlvc.experiments import Experiment, resolve_any

        found = resolve_any(repo, spec)
        if isinstance(found, Experiment):
            return _experiment_target(repo, spec, found, None, None)
        if found is not None:  # a Checkpoint
            return Target(spec, "checkpoint", oid_of(found.id), found.experiment_id or None)
    return _target_of_commit(repo, spec, repo.resolve(spec), None)
