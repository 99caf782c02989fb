"""The one id grammar: what a user-typed name refers to, for every command and API.

Grammar (docs/format.md, "Names"), parsed by :func:`parse` into a :class:`Revision`::

    REVISION := BASE [ "@" SELECTOR ] { "~" [N] }
    BASE     := a tag | a branch | KIND "/" NAME (tags/x, heads/x, experiments/<id prefix>)
              | an experiment, checkpoint or commit id: 7 to 64 hex digits (a unique prefix)
    SELECTOR := "best" | "latest" | "step=" N | N         (BASE names an experiment)
              | "{" N "}"                                  (BASE names a tag: its N-th earlier
                                                            target, 0 = where it points now)

``~N`` (``~`` alone is ``~1``) goes N first parents back from the commit the rest names.
A base of 7+ hex digits is first an experiment id prefix (one listing of
``refs/experiments/<prefix>``); then any base is looked up as a tag, then a branch; last a hex
base is looked up among all commits (checkpoints included: this reads the pack indexes). An
experiment stands for its best checkpoint (its latest without a primary metric; its first
commit before any checkpoint). Ref names never contain ``@``, ``~``, ``{`` or ``}``, so the
grammar is unambiguous.

:func:`resolve` gives a :class:`Target` for ``show``/``diff``/``checkout``/``log``/``tag`` and
the mlvc:// filesystem; the entry points that accept only some kinds of targets go through one
function each here (:func:`experiment_of`, :func:`checkpoint_of`, :func:`resumable`,
:func:`removable`, :func:`ref_of`), so every form is accepted, or refused, the same way
everywhere. Plain ref and id lookups are :class:`~mlvc_core.repository.Repository`'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Literal

from mlvc.experiments.catalog import experiment_ids, load_experiment
from mlvc.experiments.checkpoints import Checkpoint
from mlvc.experiments.model import STALE_AFTER, Experiment
from mlvc.experiments.summary import tombstone_key
from mlvc_core.errors import AmbiguousId, InvalidRefName, ObjectNotFound, UsageError
from mlvc_core.ids import ObjectId, from_hex, is_hex_prefix, resolve_prefix, to_hex
from mlvc_core.refs import Ref, validate_name
from mlvc_core.repository import Repository

Kind = Literal["experiment", "checkpoint", "commit"]
Selector = Literal["best", "latest", "step"]

_ANCESTOR = re.compile(r"~(\d*)$")
_STEP = re.compile(r"^(?:step=)?(-?\d+)$")
_VERSION = re.compile(r"^\{(\d+)\}$")
_SYNTAX = "@best, @latest, @step=N (or @N) after an experiment, @{N} after a tag"


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


# ------------------------------------------------------------------------------ parsing


@dataclass(frozen=True)
class Revision:
    """A parsed name: what to look up (``base``), then what to select from it.

    Attributes:
        text: What the user typed (stripped).
        base: The tag, branch, ``kind/name`` or hex id prefix to look up.
        selector: ``best``, ``latest`` or ``step`` (with :attr:`step`), or None.
        step: The step of ``@step=N`` / ``@N``.
        version: ``N`` of ``TAG@{N}``: the tag's N-th earlier target (0: its current one).
        back: How many first parents ``~N`` goes back (0: none).
    """

    text: str
    base: str
    selector: Selector | None = None
    step: int | None = None
    version: int | None = None
    back: int = 0


def parse(text: str) -> Revision:
    """Parse a name into a :class:`Revision` (no I/O).

    Raises:
        UsageError: An empty name, or a malformed ``@`` selector or ``~`` suffix.
    """
    s = text.strip()
    if not s:
        raise UsageError("empty id: give an experiment, checkpoint or commit id, a tag or a branch")
    rest, back = s, 0
    while (m := _ANCESTOR.search(rest)) is not None:
        back += int(m.group(1) or 1)
        rest = rest[: m.start()]
    base, at, sel = rest.partition("@")
    selector: Selector | None = None
    step = version = None
    if at:
        low = sel.strip().lower()
        if low in ("best", "latest"):
            selector = "best" if low == "best" else "latest"
        elif (m_step := _STEP.match(low)) is not None:
            selector, step = "step", int(m_step.group(1))
        elif (m_version := _VERSION.match(low)) is not None:
            version = int(m_version.group(1))
        else:
            raise UsageError(f"bad selector {'@' + sel!r} in {s!r}: use {_SYNTAX}")
    if not base or any(c in base for c in "@~{}") or base != base.strip():
        raise UsageError(f"malformed id {s!r}: write NAME, NAME@SELECTOR or NAME~N ({_SYNTAX})")
    return Revision(s, base, selector, step, version, back)


# ------------------------------------------------------------------------------ targets


@dataclass
class Target:
    """What a name refers to, and the commit standing for it.

    Attributes:
        spec: What the user typed.
        kind: ``experiment``, ``checkpoint`` or ``commit``.
        commit_id: The commit whose files ``checkout`` restores and ``diff`` compares: for an
            experiment its best checkpoint (latest if it has no primary metric; its first
            commit if it has no checkpoint yet).
        experiment_id: The experiment it belongs to, if any (hex).
        via: How it was found (``tags/production``, ``heads/main``, ``@best``, ``~1``...), or
            None for an id.
        experiment: The :class:`~mlvc.experiments.Experiment`, when kind is experiment.
        ref: The tag or branch (full ref name) the name went through, if any.
    """

    spec: str
    kind: Kind
    commit_id: ObjectId
    experiment_id: str | None = None
    via: str | None = None
    experiment: Experiment | None = None
    ref: str | None = None

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


def resolve(repo: Repository, spec: str | Revision, stale_after: float = STALE_AFTER) -> Target:
    """Turn a name (see the module docstring) into a :class:`Target`.

    Raises:
        ObjectNotFound: Nothing by that name, no such step, no such earlier tag target, or
            history shorter than ``~N``.
        AmbiguousId: A prefix that matches several ids (the candidates are listed).
        UsageError: A malformed name, or a selector that does not apply to what it follows.
    """
    rev = parse(spec) if isinstance(spec, str) else spec
    target = _resolve_base(repo, rev, stale_after)
    if rev.version is not None:
        target = _tag_version(repo, rev, target)
    elif rev.selector is not None:
        if target.kind != "experiment" or target.experiment is None:
            raise UsageError(
                f"{rev.base!r} is not an experiment: @{rev.selector} applies to experiments"
            )
        target = _select(rev, target.experiment)
    if rev.back:
        target = _ancestor(repo, rev, target)
    return target


def _target_of_commit(
    repo: Repository, spec: str, oid: ObjectId, via: str | None, ref: str | None = None
) -> Target:
    meta = repo.read_commit(oid).metadata
    if meta.get("type") == "checkpoint":
        return Target(spec, "checkpoint", oid, hex_of(meta.get("experiment")), via, None, ref)
    exp_id = to_hex(oid) if meta.get("type") == "experiment" else None
    return Target(spec, "commit", oid, exp_id, via, None, ref)


def _experiment_target(spec: str, exp: Experiment) -> Target:
    # From the summary alone: naming an experiment reads no commit (and no pack index).
    rec = exp.record
    commit_id = from_hex(rec.best.checkpoint if rec.best is not None else rec.latest or exp.id)
    return Target(spec, "experiment", commit_id, exp.id, None, exp)


def _ref_named(repo: Repository, name: str) -> Ref | None:
    found: list[Ref] = []
    for kind in ("tags", "heads"):
        try:
            ref = repo.refs.get(f"{kind}/{name}")
        except InvalidRefName:
            return None
        if ref is not None:
            found.append(ref)
    if len(found) > 1:  # written before new names were checked (see check_new_name)
        raise AmbiguousId(name, [r.name for r in found])
    return found[0] if found else None


def check_new_name(repo: Repository, kind: Literal["tags", "heads"], name: str) -> None:
    """Refuse a new tag or branch name that another name would shadow or be shadowed by.

    A tag and a branch never share a name, and neither is 7+ hex digits (that reads as an id
    prefix), so every name resolves to one thing.

    Args:
        repo: The repository the name is created in.
        kind: ``"tags"`` or ``"heads"`` (branches).
        name: The new name (its characters are checked by :func:`validate_name`).

    Raises:
        InvalidRefName: Characters a ref name may not hold.
        UsageError: The name reads as an id, or the other kind of ref has it.
    """
    noun = "tag" if kind == "tags" else "branch"
    validate_name(f"{kind}/{name}")
    if is_hex_prefix(name):
        raise UsageError(
            f"{noun} name {name!r} reads as an id prefix (7+ hex digits): choose another name"
        )
    other = "heads" if kind == "tags" else "tags"
    if repo.refs.get(f"{other}/{name}") is not None:
        taken = "branch" if other == "heads" else "tag"
        raise UsageError(f"{noun} name {name!r} is already a {taken}'s: choose another name")


def _experiment_target_of(
    repo: Repository, spec: str, prefix: str, ids: list[str], stale_after: float
) -> Target:
    exp_id = resolve_prefix(prefix, ids, "experiment")
    return _experiment_target(spec, load_experiment(repo, exp_id, stale_after))


def _resolve_base(repo: Repository, rev: Revision, stale_after: float) -> Target:
    spec, base = rev.text, rev.base
    hex_like = is_hex_prefix(base)
    if hex_like:
        # Experiments first, by one listing of the names that start with the prefix.
        ids = experiment_ids(repo, base.lower())
        if ids:
            return _experiment_target_of(repo, spec, base.lower(), ids, stale_after)
    ref = _ref_named(repo, base)
    if ref is not None:
        return _target_of_commit(repo, spec, ref.target, ref.name, ref.name)
    if "/" in base:
        kind, _, name = base.partition("/")
        if kind == "experiments":
            prefix = name.lower()
            ids = experiment_ids(repo, prefix) if is_hex_prefix(prefix) else []
            return _experiment_target_of(repo, spec, prefix, ids, stale_after)
        ref = repo.refs.require(validate_name(base))
        return _target_of_commit(repo, spec, ref.target, ref.name, ref.name)
    if not hex_like:
        raise ObjectNotFound(base, "experiment, checkpoint, commit, tag or branch")
    try:  # any commit (every pack index is read)
        oid = repo.resolve(base.lower())
    except ObjectNotFound:
        raise ObjectNotFound(base, "experiment or checkpoint") from None
    return _target_of_commit(repo, spec, oid, None)


def _select(rev: Revision, exp: Experiment) -> Target:
    """The checkpoint ``@best``, ``@latest`` or ``@step=N`` picks from ``exp``."""
    chosen: Checkpoint | None
    if rev.selector == "best":
        chosen = exp.best()
        if chosen is None:
            raise ObjectNotFound(rev.text, "checkpoint", "the experiment has no primary metric")
    elif rev.selector == "latest":
        chosen = exp.latest()
        if chosen is None:
            raise ObjectNotFound(rev.text, "checkpoint", "the experiment has no checkpoints yet")
    else:
        matches = [c for c in exp.checkpoints if c.step == rev.step]
        if not matches:
            steps = ", ".join(dict.fromkeys(str(c.step) for c in exp.checkpoints)) or "none"
            raise ObjectNotFound(rev.text, "checkpoint", f"steps of this experiment: {steps}")
        chosen = matches[-1]
    return Target(rev.text, "checkpoint", chosen.oid, exp.id, f"@{rev.selector}")


def _tag_version(repo: Repository, rev: Revision, target: Target) -> Target:
    """``TAG@{N}``: where the tag pointed N moves ago (tags keep that history)."""
    if target.ref is None or not target.ref.startswith("tags/"):
        raise UsageError(f"{rev.base!r} is not a tag: @{{N}} names a tag's earlier targets")
    tag = repo.refs.require(target.ref)
    history = [h for h in reversed(tag.summary.get("history") or []) if isinstance(h, dict)]
    version = rev.version or 0
    if version == 0:
        return replace(target, spec=rev.text)
    if version > len(history):
        raise ObjectNotFound(
            rev.text,
            "tag target",
            f"{tag.short_name} has named {len(history) + 1} commit(s): "
            f"@{{0}} to @{{{len(history)}}}",
        )
    oid = oid_of(history[version - 1].get("target"))
    return _target_of_commit(repo, rev.text, oid, f"{tag.name}@{{{version}}}", tag.name)


def _ancestor(repo: Repository, rev: Revision, target: Target) -> Target:
    """``~N``: N first parents back from the commit ``target`` stands for."""
    chain = [oid for oid, _ in repo.log(target.commit_id, limit=rev.back + 1)]
    if len(chain) <= rev.back:
        raise ObjectNotFound(
            rev.text,
            "ancestor",
            f"only {len(chain) - 1} commit(s) before {rev.text.split('~', 1)[0]}",
        )
    return _target_of_commit(repo, rev.text, chain[-1], f"~{rev.back}", target.ref)


# ------------------------------------------------------------------------------ entry points


def experiment_of(repo: Repository, spec: str, stale_after: float = STALE_AFTER) -> Experiment:
    """The experiment a name refers to (a checkpoint's or commit's experiment too).

    What ``mlvc.experiments.get`` and ``mlvc plot`` accept.

    Raises:
        ObjectNotFound: Nothing by that name, or a commit outside any experiment.
        AmbiguousId: An ambiguous id prefix.
        UsageError: A malformed name.
    """
    target = resolve(repo, spec, stale_after)
    if target.experiment is not None:
        return target.experiment
    if target.experiment_id is None:
        raise ObjectNotFound(spec, "experiment")
    return load_experiment(repo, target.experiment_id, stale_after)


def checkpoint_of(repo: Repository, spec: str, any_commit: bool = False) -> Checkpoint:
    """The checkpoint a name refers to; an experiment gives its best (else latest) one.

    What ``mlvc.checkpoints.get`` (``any_commit`` false) and ``mlvc.load`` (``any_commit``
    true: a tag or id of a plain commit gives a :class:`Checkpoint` over that commit) accept.

    Raises:
        ObjectNotFound: Nothing by that name, an experiment without checkpoints, or (unless
            ``any_commit``) a commit that is not a checkpoint.
        AmbiguousId: An ambiguous id prefix.
        UsageError: A malformed name.
    """
    target = resolve(repo, spec)
    if target.kind == "experiment":
        exp = target.experiment
        chosen = exp.best_or_latest() if exp is not None else None
        if chosen is None:
            raise ObjectNotFound(spec, "checkpoint", "the experiment has no checkpoints yet")
        return chosen
    if target.kind == "commit" and not any_commit:
        raise ObjectNotFound(spec, "checkpoint", "it names a commit, not a checkpoint")
    return Checkpoint(repo, target.commit_id, repo.read_commit(target.commit_id))


def resumable(repo: Repository, spec: str) -> tuple[Experiment, Checkpoint | None]:
    """The experiment ``track(resume=spec)`` continues, and the checkpoint it continues from.

    An experiment continues from its latest checkpoint (None before its first one); a
    checkpoint (``EXP@best``, a checkpoint id, a tag on a checkpoint...) from itself.

    Raises:
        UsageError: The name is neither an experiment nor a checkpoint (a branch, a plain
            commit), or is malformed.
        ObjectNotFound: Nothing by that name.
        AmbiguousId: An ambiguous id prefix.
    """
    target = resolve(repo, spec)
    if target.kind == "commit" or target.experiment_id is None:
        raise UsageError(f"cannot resume {spec!r}: it is neither an experiment nor a checkpoint")
    exp = target.experiment or load_experiment(repo, target.experiment_id)
    if target.kind == "experiment":
        return exp, exp.latest()
    return exp, Checkpoint(repo, target.commit_id, repo.read_commit(target.commit_id))


def removable(repo: Repository, spec: str) -> Target:
    """What ``mlvc rm`` hides: an experiment or a checkpoint, named by id or selector.

    A name that goes through a tag or a branch is refused, so ``rm production`` cannot hide
    a checkpoint when the tag was meant; nor can a commit outside any experiment be hidden.

    Raises:
        UsageError: A tag, a branch or a plain commit, or a malformed name.
        ObjectNotFound: Nothing by that name.
        AmbiguousId: An ambiguous id prefix.
    """
    target = resolve(repo, spec)
    if target.ref is not None:
        kind, _, name = target.ref.partition("/")
        what = "tag" if kind == "tags" else "branch"
        hint = f"`mlvc tag -d {name}` deletes the tag; " if kind == "tags" else ""
        raise UsageError(
            f"cannot remove {spec!r}: it goes through the {what} {name!r}; {hint}"
            "give the experiment or checkpoint id to hide it"
        )
    if target.kind == "commit":
        if repo.store.exists(tombstone_key(to_hex(target.commit_id))):
            raise UsageError(f"cannot remove {spec!r}: the experiment is already removed")
        raise UsageError(f"cannot remove {spec!r}: it is neither an experiment nor a checkpoint")
    return target


def ref_of(repo: Repository, spec: str) -> str:
    """The full ref name (``tags/x``, ``heads/x``, ``experiments/<id>``) ``push``/``pull`` move.

    Raises:
        UsageError: A selector or ``~N`` (they name commits, not refs), a checkpoint or
            commit id, or a malformed name.
        RefNotFound: A ``kind/name`` ref that does not exist.
        ObjectNotFound: Nothing by that name.
        AmbiguousId: An ambiguous experiment id prefix.
    """
    rev = parse(spec)
    if rev.selector is not None or rev.version is not None or rev.back:
        raise UsageError(
            f"cannot transfer {spec!r}: push and pull move refs (a tag, a branch or an "
            "experiment), not a single commit"
        )
    target = resolve(repo, rev)
    if target.ref is not None:
        return target.ref
    if target.kind == "experiment" and target.experiment_id:
        return f"experiments/{target.experiment_id}"
    raise UsageError(
        f"cannot transfer {spec!r}: it is a {target.kind}; push and pull move refs (a tag, a "
        "branch or an experiment)"
    )
