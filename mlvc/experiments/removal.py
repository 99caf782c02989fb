"""Removal: hiding experiments and checkpoints (``mlvc gc`` frees their space later).

Removing an experiment writes its tombstone ``removed/experiments/<id>`` (the ref as it was,
which ``ls --all`` lists) and deletes its ref, heartbeat and metric series; removing a
checkpoint adds its id to the summary's ``removed`` list by compare-and-swap and recomputes
latest/best. A removed checkpoint's data stays as long as a later checkpoint of the same chain
still reaches it (the chain runs through it).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from mlvc.experiments.revisions import removable
from mlvc.experiments.summary import (
    ExperimentSummary,
    heartbeat_key,
    rebuild_summary,
    ref_name,
    tombstone_key,
)
from mlvc.repo import RepositoryLike, shared_repo
from mlvc_core.errors import ObjectNotFound, RefConflict
from mlvc_core.refs import encode_ref
from mlvc_core.repository import Repository


def remove(ids: str | Iterable[str], repository: RepositoryLike = None) -> list[str]:
    """Hide experiments and/or checkpoints (``mlvc gc`` frees their space later).

    Every id is resolved (any form of :mod:`mlvc.experiments.revisions` that names an
    experiment or a checkpoint: an id prefix, ``EXP@best``...) before anything is removed.

    Returns:
        The full ids removed.

    Raises:
        ObjectNotFound: An id names nothing (nothing was removed).
        AmbiguousId: An id prefix is ambiguous (nothing was removed).
        UsageError: An id names a tag, a branch or a plain commit (nothing was removed).
    """
    repo = shared_repo(repository)
    wanted = [ids] if isinstance(ids, str) else list(ids)
    targets = [removable(repo, i) for i in wanted]
    done = []
    for t in targets:
        if t.kind == "checkpoint" and t.experiment_id:
            remove_checkpoint(repo, t.experiment_id, t.id)
        elif t.experiment_id:
            remove_experiment(repo, t.experiment_id)
        done.append(t.id)
    return done


def remove_experiment(repo: Repository, exp_id: str) -> None:
    """Hide one experiment (full id): tombstone, then ref, heartbeat and metric series go.

    The ref goes only as it was read: one that moved meanwhile (a live run recorded a
    checkpoint) stays, with everything else, and that is a conflict (its tombstone, written
    first, is ignored beside a live ref and replaced by the next removal).

    Raises:
        ObjectNotFound: No such experiment.
        RefConflict: The experiment changed between reading and removing it.
    """
    from mlvc.series import delete_series

    ref = repo.refs.get(ref_name(exp_id))
    if ref is None:
        raise ObjectNotFound(exp_id, "experiment")
    # A tombstone first (the ref as it was), so ``ls --all`` finds what ``gc`` has not
    # collected yet without reading every commit; then the ref goes.
    repo.store.write(tombstone_key(exp_id), encode_ref(ref.target, ref.summary))
    repo.refs.delete(ref.name, expected=ref)
    repo.store.delete(heartbeat_key(exp_id))
    delete_series(repo, exp_id)


def remove_checkpoint(
    repo: Repository, exp_id: str, checkpoint_id: str, attempts: int = 20
) -> None:
    """Hide one checkpoint (full ids) from its experiment's summary, by compare-and-swap.

    Raises:
        ObjectNotFound: The experiment is gone.
        RefConflict: Still losing the race after ``attempts`` tries.
    """
    for _ in range(attempts):
        ref = repo.refs.get(ref_name(exp_id))
        if ref is None:
            raise ObjectNotFound(exp_id, "experiment")
        summary = ExperimentSummary.from_dict(ref.summary)
        if checkpoint_id in summary.removed:
            return
        summary = rebuild_summary(repo, ref.target, summary.without_checkpoint(checkpoint_id))
        try:
            repo.refs.update_summary(ref, summary.to_dict())
            return
        except RefConflict:
            time.sleep(0.05)
    raise RefConflict(ref_name(exp_id), None)
