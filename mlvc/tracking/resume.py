"""Resuming an experiment: what ``track(resume=...)`` continues from, and restoring its files.

``resume`` takes any id ``mlvc`` accepts: an experiment id prefix (continues from its latest
checkpoint), ``EXP@best``, ``EXP@latest``, ``EXP@step=N``, a checkpoint id, or a tag naming a
checkpoint. The params recorded before are carried over (those passed now win) and step
numbering goes on after the checkpoint's step. Resume problems always raise, even without
``strict``: silently training from scratch would waste the run. Reads the repository; writes
only the restored files.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlvc.errors import FileExistsConflict
from mlvc.series import last_step
from mlvc_core.repository import Repository

if TYPE_CHECKING:
    from mlvc.experiments.checkpoints import Checkpoint

log = logging.getLogger("mlvc")

__all__ = ["Resumption", "find_resumption", "restore"]


@dataclass(frozen=True)
class Resumption:
    """What a resumed run continues.

    Attributes:
        exp_id: The experiment.
        checkpoint: The checkpoint continued from (None if the experiment has none yet).
        name: The experiment's name.
        primary: Its primary metric.
        params: The params recorded so far.
        next_step: The step of the next checkpoint.
        next_log_step: The step of the next ``log()`` point.
    """

    exp_id: str
    checkpoint: Checkpoint | None
    name: str | None
    primary: tuple[str, str] | None
    params: dict[str, Any]
    next_step: int
    next_log_step: int


def find_resumption(repo: Repository, resume: str) -> Resumption:
    """Find what ``resume`` names and where a run continuing it starts.

    Raises:
        UsageError: ``resume`` names neither an experiment nor a checkpoint.
        ObjectNotFound: It names nothing.
    """
    from mlvc.experiments.revisions import resumable

    exp, ckpt = resumable(repo, resume)
    step = ckpt.step if ckpt is not None else None
    if step is None:
        step = exp.summary.get("latest_step")
    next_step = int(step) + 1 if isinstance(step, (int, float)) else 0
    logged = last_step(repo, exp.id)
    return Resumption(
        exp_id=exp.id,
        checkpoint=ckpt,
        name=exp.name,
        primary=exp.primary_metric,
        params=dict(exp.params),
        next_step=next_step,
        next_log_step=logged + 1 if logged is not None else next_step,
    )


def _same_content(local: Path, remote: io.BufferedReader) -> bool:
    with open(local, "rb") as f, remote:
        while True:
            a = f.read(1 << 20)
            b = remote.read(1 << 20)
            if a != b:
                return False
            if not a:
                return True


def restore(ckpt: Checkpoint, code_dir: Path, force: bool) -> None:
    """Write a checkpoint's files back under ``code_dir``; identical files are left alone.

    Raises:
        FileExistsConflict: A local file differs and ``force`` is false.
    """
    conflicts, wanted = [], []
    for rel, _size in ckpt.files():
        local = code_dir / rel
        if local.is_file() and _same_content(local, ckpt.open(rel)):
            continue
        if os.path.lexists(local) and not force:
            conflicts.append(rel)
        wanted.append(rel)
    if conflicts:
        err = FileExistsConflict(conflicts)
        err.args = (
            f"restoring checkpoint {ckpt.short_id} would overwrite local files that differ: "
            f"{', '.join(conflicts[:5])}; pass restore_force=True or move them away",
        )
        raise err
    if wanted:
        ckpt.checkout(code_dir, paths=wanted, force=True)
    log.info(
        "mlvc: restored %d file(s) of checkpoint %s into %s", len(wanted), ckpt.short_id, code_dir
    )
