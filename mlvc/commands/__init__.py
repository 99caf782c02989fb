"""One function per command-line verb that is not experiment-specific.

Each takes an open :class:`~mlvc_core.repository.Repository` (or a URL), returns a dataclass
with a ``to_dict()`` (the ``--json`` form: stable keys, full hex ids, ISO 8601 times), and
never prints; progress is a callback parameter. Experiment listing and removal live in
:mod:`mlvc.experiments`, and so do checkout (:mod:`mlvc.experiments.checkout`, shared with
:meth:`mlvc.Checkpoint.checkout`) and the one id grammar (:mod:`mlvc.experiments.revisions`)
that every verb resolves names with.

* :mod:`~mlvc.commands._describe` - commit and file info;
* :mod:`~mlvc.commands.history` - :func:`commit`, :func:`log`, tags;
* :mod:`~mlvc.commands.inspect` - :func:`show`, :func:`diff`;
* :mod:`~mlvc.commands.maintenance` - :func:`gc`, :func:`fsck`, :func:`stats`;
* :mod:`~mlvc.commands.remote` - :func:`init`, :func:`push`, :func:`pull`, :func:`clone`.
"""

from __future__ import annotations

from mlvc.commands._describe import (
    CommitInfo,
    FileInfo,
    describe_commit,
    list_files,
)
from mlvc.commands.history import (
    DEFAULT_BRANCH,
    CommitResult,
    LogEntry,
    LogResult,
    TagInfo,
    commit,
    input_size,
    log,
    tag_delete,
    tag_list,
    tag_set,
)
from mlvc.commands.inspect import DiffResult, ShowResult, ValueChange, diff, show
from mlvc.commands.maintenance import fsck, gc, parse_duration, stats, stored_size, upgrade
from mlvc.commands.remote import (
    DEFAULT_REPO_DIR,
    InitResult,
    TransferResult,
    clone,
    init,
    open_url,
    pull,
    push,
)

__all__ = [
    "DEFAULT_BRANCH",
    "DEFAULT_REPO_DIR",
    "CommitInfo",
    "CommitResult",
    "DiffResult",
    "FileInfo",
    "InitResult",
    "LogEntry",
    "LogResult",
    "ShowResult",
    "TagInfo",
    "TransferResult",
    "ValueChange",
    "clone",
    "commit",
    "describe_commit",
    "diff",
    "fsck",
    "gc",
    "init",
    "input_size",
    "list_files",
    "log",
    "open_url",
    "parse_duration",
    "pull",
    "push",
    "show",
    "stats",
    "stored_size",
    "tag_delete",
    "tag_list",
    "tag_set",
    "upgrade",
]
