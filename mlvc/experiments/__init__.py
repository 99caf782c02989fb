"""Experiments read back: listing, lookup by any name, status, checkpoints, removal.

Storage model (docs/experiments.md): an experiment is the ref ``experiments/<id>`` whose JSON
summary (:class:`~mlvc.experiments.summary.ExperimentSummary`) holds what a listing shows,
plus a heartbeat object ``heartbeats/<id>`` that a live run rewrites. Its checkpoints are
commits on the ref's chain.

Modules:

* :mod:`~mlvc.experiments.summary` - the summary record and the keys of an experiment;
* :mod:`~mlvc.experiments.model` - :class:`Experiment`;
* :mod:`~mlvc.experiments.checkpoints` - :class:`Checkpoint` and ``load``;
* :mod:`~mlvc.experiments.checkout` - the one checkout (``mlvc checkout`` and
  :meth:`Checkpoint.checkout`) and the marker of a directory it created;
* :mod:`~mlvc.experiments.catalog` - reading refs through the catalog and the local cache;
* :mod:`~mlvc.experiments.listing` - :func:`list` with filters and sorting;
* :mod:`~mlvc.experiments.revisions` - the one id grammar, for every command and API;
* :mod:`~mlvc.experiments.removal` - :func:`remove`.
"""

from __future__ import annotations

from mlvc.experiments.checkpoints import Checkpoint
from mlvc.experiments.listing import Filter, list
from mlvc.experiments.model import STALE_AFTER, STATUSES, Experiment
from mlvc.experiments.removal import remove
from mlvc.experiments.revisions import experiment_of
from mlvc.repo import RepositoryLike, shared_repo

__all__ = [
    "STALE_AFTER",
    "STATUSES",
    "Checkpoint",
    "Experiment",
    "Filter",
    "get",
    "list",
    "remove",
]


def get(id: str, repository: RepositoryLike = None, stale_after: float = STALE_AFTER) -> Experiment:  # noqa: A002
    """The experiment a name refers to.

    Its id prefix (7+ hex digits), or any name of one of its checkpoints (a checkpoint id,
    ``EXP@best``, a tag on a checkpoint...).

    Args:
        id: Any name of :mod:`mlvc.experiments.revisions`.
        repository: A repository, settings, URL or path; None for the project's.
        stale_after: Seconds without a heartbeat after which a running run reads as crashed.

    Raises:
        ObjectNotFound: No such experiment (or it was removed), or a commit outside any.
        AmbiguousId: The prefix matches several; the error lists them.
        UsageError: A malformed name.
    """
    return experiment_of(shared_repo(repository), id, stale_after)
