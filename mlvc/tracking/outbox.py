"""The local outbox: what a run could not store before it ended, sent later by ``mlvc sync``.

When the storage does not take a run's pending checkpoints within ``exit_timeout`` (it is down,
frozen, or too slow), the run keeps them on local disk instead of losing them, and its last
line names ``mlvc sync``. Layout, under ``<cache dir>/outbox/`` (docs/experiments.md):

* ``<experiment id>/<time ns, 20 digits>-<12 hex>/`` per kept item, in the order they happened;
* ``entry.json`` in it, written last (a directory without one is unfinished and ignored):
  ``{"v": 1, "kind": "checkpoint" | "end", "repository": URL, "experiment": id, ...}``; a
  checkpoint adds ``code_tree`` (hex), ``step``, ``metrics``, ``primary``, ``time`` and
  ``files`` (``[[path in the tree, file or directory name under files/]...]``); an end adds
  ``status``, ``ended``, ``end_reason`` and ``error``;
* ``files/``: the checkpoint's files as they were at the ``checkpoint()`` call.

:func:`sync` sends every entry in order: a checkpoint becomes the same commit the run would
have made (after the experiment's newest commit, by compare-and-swap), unless the experiment
already holds a checkpoint with that step and time (the run stored it after all); an end sets
the run's final status if the experiment still reads as running. A sent entry is deleted.
Credentials come from the environment, as for every command.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlvc.settings import Settings, default_cache_dir, load_settings

log = logging.getLogger("mlvc")

__all__ = ["OUTBOX", "SyncReport", "outbox_dir", "pending", "save", "sync"]

OUTBOX = "outbox"
ENTRY = "entry.json"
FORMAT = 1


def outbox_dir(cache_dir: Path | None = None) -> Path:
    """The outbox directory (under the cache directory)."""
    return (cache_dir or default_cache_dir()) / OUTBOX


def save(
    root: Path,
    entry: dict[str, Any],
    files: Iterable[tuple[str, Path]] = (),
    copy: Callable[[Path, Path], None] | None = None,
) -> Path:
    """Keep one entry (and copies of its files) in the outbox; return its directory.

    Args:
        root: The outbox directory.
        entry: What to record (``kind``, ``repository``, ``experiment`` and the rest).
        files: ``(path in the tree, local file or directory)`` to keep with it.
        copy: Copies one file (default :func:`shutil.copy2`).

    Raises:
        OSError: The outbox could not be written (nothing is left half-written).
    """
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"
    target = root / str(entry["experiment"]) / name
    tmp = target.with_name("." + name)
    (tmp / "files").mkdir(parents=True)
    try:
        listed = []
        for i, (rel, src) in enumerate(files):
            dst = tmp / "files" / f"{i}-{src.name}"
            if src.is_dir() and not src.is_symlink():
                shutil.copytree(src, dst, symlinks=True, copy_function=_copier(copy))
            else:
                (copy or shutil.copy2)(src, dst)
            listed.append([rel, dst.name])
        doc = {"v": FORMAT, **entry, "files": listed}
        (tmp / ENTRY).write_text(json.dumps(doc))
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _copier(copy: Callable[[Path, Path], None] | None) -> Callable[[str, str], object]:
    if copy is None:
        return shutil.copy2
    fn = copy

    def do(src: str, dst: str) -> str:
        fn(Path(src), Path(dst))
        return dst

    return do


def pending(root: Path | None = None) -> list[Path]:
    """Finished outbox entries, oldest first per experiment."""
    base = root or outbox_dir()
    out: list[Path] = []
    if not base.is_dir():
        return out
    for exp_dir in sorted(base.iterdir()):
        if exp_dir.is_dir():
            out.extend(d for d in sorted(exp_dir.iterdir()) if (d / ENTRY).is_file())
    return out


@dataclass
class SyncReport:
    """What :func:`sync` did.

    Attributes:
        sent: Entries stored in their repository (and removed from the outbox).
        already: Checkpoints the repository already held (removed from the outbox).
        failed: ``(entry directory, reason)`` of entries kept for a later sync.
    """

    sent: int = 0
    already: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"sent": self.sent, "already": self.already, "failed": self.failed}


def sync(root: Path | None = None, settings: Settings | None = None) -> SyncReport:
    """Send every outbox entry to its repository, in order; keep those that fail.

    Args:
        root: The outbox directory (default: the one under the cache directory).
        settings: Storage options for the repositories (default: from the environment).

    Returns:
        What was sent.
    """
    from mlvc_core.errors import MlvcError

    report = SyncReport()
    blocked: set[str] = set()  # an experiment whose earlier entry failed: keep the order
    repos: dict[str, Any] = {}
    try:
        for entry_dir in pending(root):
            doc = json.loads((entry_dir / ENTRY).read_text())
            exp_id = str(doc["experiment"])
            if exp_id in blocked:
                report.failed.append((str(entry_dir), "an earlier entry of it failed"))
                continue
            try:
                url = str(doc["repository"])
                repo = repos.get(url)
                if repo is None:
                    repo = repos[url] = _open(url, settings)
                stored = _send(repo, doc, entry_dir)
            except (MlvcError, OSError, ValueError, KeyError) as exc:
                blocked.add(exp_id)
                report.failed.append((str(entry_dir), f"{type(exc).__name__}: {exc}"))
                continue
            if stored:
                report.sent += 1
            else:
                report.already += 1
            shutil.rmtree(entry_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                entry_dir.parent.rmdir()  # the experiment's last entry
    finally:
        for repo in repos.values():
            with contextlib.suppress(OSError):
                repo.close()
    return report


def _open(url: str, settings: Settings | None) -> Any:
    from mlvc.repo import open_repo

    same = settings is not None and settings.repository_url == url
    options = dict(settings.storage_options) if settings is not None and same else None
    return open_repo(load_settings(url, storage_options=options))


def _send(repo: Any, doc: dict[str, Any], entry_dir: Path) -> bool:
    """Store one entry; False if the repository already held it."""
    if doc.get("kind") == "end":
        return _send_end(repo, doc)
    return _send_checkpoint(repo, doc, entry_dir)


def _send_checkpoint(repo: Any, doc: dict[str, Any], entry_dir: Path) -> bool:
    from mlvc.experiments.summary import ref_name, summary_with_checkpoint
    from mlvc.tracking.commits import checkpoint_commit, on_parent, overlay
    from mlvc_core.history import advance
    from mlvc_core.ids import ObjectId, from_hex
    from mlvc_core.ingest import TreeBuilder
    from mlvc_core.objects import Commit, TreeEntry
    from mlvc_core.session import WriteSession

    exp_id = str(doc["experiment"])
    step, when = doc.get("step"), float(doc["time"])
    ref = repo.refs.require(ref_name(exp_id))
    for _oid, c in repo.log(ref.target, limit=1000):
        meta = c.metadata
        if meta.get("type") == "checkpoint" and meta.get("step") == step and c.time == when:
            return False
    primary = tuple(doc["primary"]) if doc.get("primary") else None
    paths = [rel for rel, _ in doc["files"]]
    with WriteSession(repo) as s:
        builder = TreeBuilder(s)
        entries: dict[str, TreeEntry] = {}
        for rel, name in doc["files"]:
            entry = builder.entry(entry_dir / "files" / name, rel.rsplit("/", 1)[-1], rel)
            if entry is not None:
                entries[rel] = entry
        code_tree = from_hex(doc["code_tree"]) if doc.get("code_tree") else None
        tree_id = s.add_object(overlay(s, code_tree, entries))

        def make(parent: ObjectId) -> Commit:
            return checkpoint_commit(
                tree_id, parent, exp_id, step, doc["metrics"], primary, when, paths
            )

        def summarize(old: dict[str, Any], cid: str) -> dict[str, Any]:
            return summary_with_checkpoint(old, cid, step, doc["metrics"], primary)

        advance(s, ref.name, ref, on_parent(make), summarize)
    return True


def _send_end(repo: Any, doc: dict[str, Any]) -> bool:
    from mlvc.experiments.summary import ExperimentSummary, ref_name
    from mlvc.tracking.commits import update_summary

    def summarize(old: dict[str, Any]) -> dict[str, Any] | None:
        if old.get("status") not in (None, "running"):
            return None  # resumed and ended since
        return (
            ExperimentSummary.from_dict(old)
            .ended_with(doc["status"], doc.get("ended"), doc.get("end_reason"), doc.get("error"))
            .to_dict()
        )

    return update_summary(repo, ref_name(str(doc["experiment"])), summarize) is not None
