"""Experiments read back: listing, lookup by id prefix, status, removal.

Storage model (docs/experiments.md): an experiment is the ref ``experiments/<id>`` whose JSON
summary holds what a listing shows, plus a heartbeat object ``heartbeats/<id>`` that a live run
rewrites. :func:`list` never reads commit chains nor pack indexes: it lists the refs (one
request per 1,000), takes every unchanged ref from this machine's cache or from the compacted
catalog ``refs/experiments.catalog`` (:mod:`mlvc_core.catalog`), reads only the refs that
changed, and lists ``heartbeats/`` once. Looking one experiment up by an id prefix lists only
the refs whose names start with that prefix.

Status, derived when read: what the summary recorded when the run ended (``stopped`` for a
clean end, ``failed`` with the exception's type and message for an exception that left
``with mlvc.track()``, ``interrupted`` for Ctrl-C or SIGTERM); else ``running`` if the heartbeat
is younger than ``stale_after`` seconds (default :data:`STALE_AFTER`); otherwise ``crashed``
(the process vanished without recording an end: ``kill -9``, pre-emption, power loss).

Removal only hides: removing an experiment writes its tombstone ``removed/experiments/<id>``
(the ref as it was, which ``ls --all`` lists) and deletes its ref (and heartbeat); removing a
checkpoint adds its id to the summary's ``removed`` list. ``mlvc gc`` then frees the space of
whatever no ref reaches any more; a removed checkpoint's data stays as long as a later
checkpoint of the same chain still reaches it (the chain runs through it).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import math
import operator
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from mlvc.repo import RepositoryLike, shared_repo
from mlvc_core import schema
from mlvc_core.catalog import LocalCache, ScanResult, scan
from mlvc_core.errors import (
    FormatError,
    KeyNotFound,
    MlvcError,
    ObjectNotFound,
    RefConflict,
    UsageError,
)
from mlvc_core.ids import ObjectId, from_hex, is_hex_prefix, resolve_prefix, to_hex
from mlvc_core.objects import Commit
from mlvc_core.refs import Ref, decode_ref, encode_ref
from mlvc_core.repository import Repository

if TYPE_CHECKING:
    from mlvc.checkpoints import Checkpoint

__all__ = [
    "Experiment",
    "get",
    "list",
    "remove",
    "resolve_any",
    "STALE_AFTER",
]

KIND = "experiments"
log = logging.getLogger("mlvc")
HEARTBEAT_PREFIX = "heartbeats/"
REFS_PREFIX = f"refs/{KIND}/"
REMOVED_PREFIX = f"removed/{KIND}/"
STALE_AFTER = 60.0
"""Seconds without a heartbeat after which a run that did not stop cleanly reads as crashed."""
ENDED = ("stopped", "failed", "interrupted")
"""Statuses a run records when it ends; ``running`` and ``crashed`` are derived from the
heartbeat."""
STATUSES = ("running", "stopped", "failed", "interrupted", "crashed", "removed")
RACY_SECONDS = {"local": 1.0, "remote": 2.0}
"""A cached ref is trusted only if it was read this long after its modification time."""
SHORT = 12

Filter = Callable[["Experiment"], bool] | Sequence[str] | str | None


# ------------------------------------------------------------------------------ names and values


def ref_name(exp_id: str) -> str:
    """The ref of an experiment."""
    return f"{KIND}/{exp_id}"


def tombstone_key(exp_id: str) -> str:
    """The store key of a removed experiment's tombstone (its ref as it was when removed)."""
    return f"{REMOVED_PREFIX}{exp_id}"


def heartbeat_key(exp_id: str) -> str:
    """The store key of an experiment's heartbeat."""
    return f"{HEARTBEAT_PREFIX}{exp_id}"


def as_float(value: Any) -> float | None:
    """A metric value as a float (``"nan"``/``"inf"`` as stored for non-finite values), or None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def json_number(value: float) -> float | str:
    """A float as stored in summaries and commits: non-finite values as strings."""
    return value if math.isfinite(value) else str(value)


def _datetime(ts: Any) -> datetime | None:
    f = as_float(ts)
    return datetime.fromtimestamp(f, tz=timezone.utc) if f is not None else None


def _iso(ts: Any) -> str | None:
    d = _datetime(ts)
    return d.isoformat() if d is not None else None


def primary_of(summary_or_meta: dict[str, Any]) -> tuple[str, str] | None:
    """``(name, goal)`` of the primary metric recorded in a summary or checkpoint metadata."""
    pm = summary_or_meta.get("primary_metric")
    if isinstance(pm, dict) and isinstance(pm.get("name"), str):
        return pm["name"], "maximize" if pm.get("goal") == "maximize" else "minimize"
    return None


def is_better(goal: str, value: float, than: float | None) -> bool:
    """True if ``value`` beats ``than`` for ``goal`` (NaN never wins; ties keep the older)."""
    if math.isnan(value):
        return False
    if than is None or math.isnan(than):
        return True
    return value > than if goal == "maximize" else value < than


def summary_with_checkpoint(
    summary: dict[str, Any],
    checkpoint: str,
    step: int | None,
    metrics: dict[str, Any],
    primary: tuple[str, str] | None,
) -> dict[str, Any]:
    """The summary after appending one checkpoint (pure; keeps every other field)."""
    out = dict(summary)
    out["checkpoints"] = int(out.get("checkpoints") or 0) + 1
    out["latest"] = checkpoint
    out["latest_step"] = step
    out["latest_metrics"] = dict(metrics)
    if primary is not None and primary_of(out) is None:
        out["primary_metric"] = {"name": primary[0], "goal": primary[1]}
    pm = primary_of(out)
    if pm is not None:
        value = as_float(metrics.get(pm[0]))
        best = out.get("best") or None
        if value is not None and is_better(pm[1], value, as_float(best["value"]) if best else None):
            out["best"] = {"checkpoint": checkpoint, "step": step, "value": json_number(value)}
    return out


def rebuild_summary(repo: Repository, target: ObjectId, summary: dict[str, Any]) -> dict[str, Any]:
    """Recompute the checkpoint fields of a summary from the chain (honours ``removed``)."""
    removed = set(summary.get("removed") or [])
    chain = [(oid, c) for oid, c in repo.log(target) if c.metadata.get("type") == "checkpoint"]
    chain.reverse()
    out = dict(summary)
    out.update(checkpoints=0, latest=None, latest_step=None, latest_metrics={}, best=None)
    for oid, c in chain:
        h = to_hex(oid)
        if h in removed:
            continue
        m = c.metadata
        out = summary_with_checkpoint(
            out, h, m.get("step"), dict(m.get("metrics") or {}), primary_of(m)
        )
    return out


_RUN_SUMMARY: schema.Spec = {
    "type": schema.is_str,
    "name": schema.optional(schema.is_str),
    "created": schema.optional(schema.is_number),
    "ended": schema.optional(schema.is_number),
    "user": schema.optional(schema.is_str),
    "host": schema.optional(schema.is_str),
    "command": schema.optional(schema.is_str),
    "params": schema.is_dict,
    "status": schema.is_str,
    "end_reason": schema.optional(schema.is_str),
    "resumed": schema.optional(schema.is_int),
    "checkpoints": schema.is_int,
    "latest": schema.optional(schema.is_hex_id),
    "latest_step": schema.optional(schema.is_int),
    "latest_metrics": schema.is_dict,
    "primary_metric": schema.optional(
        schema.shaped({"name": schema.is_str, "goal": schema.is_str})
    ),
    "best": schema.optional(
        schema.shaped(
            {
                "checkpoint": schema.is_hex_id,
                "step": schema.optional(schema.is_int),
                "value": schema.optional(schema.is_number),
            }
        )
    ),
    "removed": schema.list_of(schema.is_str),
}
"""The fields of an experiment's ref summary (docs/experiments.md) that readers use."""


def checked_ref(ref: Ref | None) -> Ref | None:
    """``ref``, once its experiment summary is checked field by field.

    Raises:
        FormatError: A field has the wrong type (the error names the ref).
    """
    if ref is not None:
        schema.check(ref.summary, _RUN_SUMMARY, f"ref {ref.name!r}")
    return ref


# ------------------------------------------------------------------------------ the listing

_caches: dict[tuple[str, str], LocalCache] = {}
_caches_lock = threading.Lock()


def _cache_for(repo: Repository) -> LocalCache:
    """This machine's copies of the repository's refs (``<cache dir>/refs.sqlite``)."""
    path = repo.cache_dir / "refs.sqlite" if repo.cache_dir is not None else None
    key = (repo.config.repo_id, str(path) if path is not None else f"mem:{id(repo)}")
    with _caches_lock:
        cache = _caches.get(key)
        if cache is None:
            cache = _caches[key] = LocalCache(path)
        return cache


def _racy(repo: Repository) -> float:
    return RACY_SECONDS["local" if repo.store.is_local else "remote"]


def scan_refs(
    repo: Repository, prefix: str, compact: bool = True, compact_threshold: int | None = None
) -> ScanResult:
    """Every ref under ``prefix`` via the catalog and the local cache (see mlvc_core.catalog).

    Raises:
        StorageError: The listing or a ref read failed.
    """
    return scan(
        repo.store,
        prefix,
        _cache_for(repo),
        _racy(repo),
        compact=compact,
        compact_threshold=compact_threshold,
    )


def compact_catalog(repo: Repository, threshold: int | None = None) -> ScanResult:
    """List the experiment refs and rewrite their catalog if too many are newer than it.

    What a writer calls after moving refs (a tracked run does when it stops): one listing,
    and only when the catalog is out of date a read of it, of the changed refs, and one
    compare-and-swap.

    Raises:
        StorageError: The listing or a ref read failed.
    """
    return scan_refs(repo, REFS_PREFIX, compact=True, compact_threshold=threshold)


def heartbeats(repo: Repository) -> dict[str, float]:
    """Experiment id -> modification time of its heartbeat (one listing)."""
    return {
        info.key[len(HEARTBEAT_PREFIX) :]: info.mtime for info in repo.store.list(HEARTBEAT_PREFIX)
    }


def heartbeat_of(repo: Repository, exp_id: str) -> float | None:
    """Modification time of one experiment's heartbeat, or None (one listing of its name)."""
    key = heartbeat_key(exp_id)
    for info in repo.store.list(key):
        if info.key == key:
            return info.mtime
    return None


def _parse_ref_doc(key: str, data: bytes) -> tuple[bytes, dict[str, Any]]:
    """The target and checked summary of a stored experiment ref document.

    Raises:
        FormatError: Not a well-formed experiment ref (the error names ``key``).
    """
    ref = decode_ref(key, data)
    checked_ref(ref)
    return ref.target, ref.summary


def _experiments_of(
    repo: Repository, docs: dict[str, bytes], prefix: str, stale_after: float, removed: bool
) -> builtins.list[Experiment]:
    beats = heartbeats(repo) if not removed else {}
    out = []
    now = time.time()
    for key, data in docs.items():
        exp_id = key[len(prefix) :]
        try:
            target, summary = _parse_ref_doc(key, data)
        except FormatError:
            # A copy from this machine's cache or the catalog may be what is damaged: read
            # the ref itself, and forget the copy.
            _cache_for(repo).update([], [key])
            try:
                target, summary = _parse_ref_doc(key, repo.store.read(key))
            except (FormatError, KeyNotFound) as exc:
                # Listed without it: the others are still shown (fsck names it too).
                log.warning("mlvc: skipping experiment %s: %s", exp_id[:12], exc)
                continue
        if removed:
            summary["status"] = "removed"
        out.append(
            Experiment(
                repo,
                exp_id,
                ObjectId(target),
                summary,
                beats.get(exp_id),
                stale_after,
                removed=removed,
                now=now,
            )
        )
    return out


def _scan(repo: Repository, stale_after: float) -> builtins.list[Experiment]:
    result = scan_refs(repo, REFS_PREFIX)
    return _experiments_of(repo, result.docs, REFS_PREFIX, stale_after, removed=False)


# ------------------------------------------------------------------------------ filter and sort

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "=": operator.eq,
    "<": operator.lt,
    ">": operator.gt,
}
_CONDITION = re.compile(r"^\s*([A-Za-z_][\w.\-/]*)\s*(<=|>=|==|!=|=|<|>)\s*((?![<>=!]).+?)\s*$")
_MISSING = object()


_DIRECT_FIELDS = (
    "id",
    "name",
    "status",
    "user",
    "host",
    "command",
    "created",
    "ended",
    "checkpoints",
    "step",
    "best",
    "error",
)


def _field(exp: Experiment, name: str) -> Any:
    """The value of a filter/sort field, or ``_MISSING``.

    ``best`` and ``best.NAME`` are the best value of the primary metric (``NAME`` must be the
    primary metric), as the ``best`` column of ``mlvc ls`` shows; ``latest.NAME`` (also
    ``metrics.NAME``) a metric's value at the latest checkpoint, as the ``latest`` column
    shows; ``params.NAME`` a param; a bare name a param if there is one by that name, else the
    latest value of a metric.
    """
    summary = exp.summary
    direct: dict[str, Callable[[], Any]] = {
        "id": lambda: exp.id,
        "name": lambda: exp.name,
        "status": lambda: exp.status,
        "user": lambda: exp.user,
        "host": lambda: exp.host,
        "command": lambda: exp.command,
        "created": lambda: as_float(summary.get("created")),
        "ended": lambda: as_float(summary.get("ended")),
        "checkpoints": lambda: summary.get("checkpoints", 0),
        "step": lambda: summary.get("latest_step"),
        "best": lambda: as_float((summary.get("best") or {}).get("value")),
        "error": lambda: exp.error,
    }
    if name in direct:
        value = direct[name]()
        return _MISSING if value is None else value
    head, _, rest = name.partition(".")
    if rest and head == "params":
        return exp.params.get(rest, _MISSING)
    if rest and head in ("metrics", "latest_metrics", "latest"):
        return _metric(summary.get("latest_metrics") or {}, rest)
    if rest and head == "best":
        pm = exp.primary_metric
        if pm is None or pm[0] != rest:
            return _MISSING
        return direct["best"]() if direct["best"]() is not None else _MISSING
    if name in exp.params:
        return exp.params[name]
    return _metric(summary.get("latest_metrics") or {}, name)


def _known_field(exps: Iterable[Experiment], name: str) -> bool:
    """True if ``name`` is a column, or a param or metric of at least one experiment."""
    if name in _DIRECT_FIELDS:
        return True
    head, _, rest = name.partition(".")
    for exp in exps:
        metrics = exp.summary.get("latest_metrics") or {}
        if rest and head == "params" and rest in exp.params:
            return True
        if rest and head in ("metrics", "latest_metrics", "latest") and rest in metrics:
            return True
        if rest and head == "best" and (exp.primary_metric or ("",))[0] == rest:
            return True
        if name in exp.params or name in metrics:
            return True
    return False


def _check_fields(exps: builtins.list[Experiment], fields: Iterable[str]) -> None:
    """Raise a clear error for a filter or sort field that nothing listed has.

    Raises:
        UsageError: A field is neither a column nor a param or metric of any experiment.
    """
    if not exps:
        return
    for name in fields:
        if _known_field(exps, name):
            continue
        params = sorted({k for e in exps for k in e.params})
        metrics = sorted({k for e in exps for k in (e.summary.get("latest_metrics") or {})})
        raise UsageError(
            f"unknown field {name!r}: not a column ({', '.join(_DIRECT_FIELDS)}), param "
            f"({', '.join(params[:12]) or 'none'}) or metric ({', '.join(metrics[:12]) or 'none'})"
            " of any listed experiment"
        )


def _metric(metrics: dict[str, Any], name: str) -> Any:
    if name not in metrics:
        return _MISSING
    value = as_float(metrics[name])
    return _MISSING if value is None else value


def _literal(text: str) -> Any:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return float(text)
    except ValueError:
        return text


class _Condition:
    """One ``FIELD OP VALUE`` filter condition."""

    def __init__(self, text: str) -> None:
        m = _CONDITION.match(text)
        if m is None:
            raise UsageError(
                f"bad filter {text!r}: write FIELD OP VALUE, e.g. 'loss < 0.2', 'lr = 0.01', "
                "'status = running' (OP is one of = == != < <= > >=)"
            )
        self.field, op_text, self.raw = m.groups()
        self.op = _OPS[op_text]
        self.want = _literal(self.raw)

    def __call__(self, exp: Experiment) -> bool:
        have = _field(exp, self.field)
        if have is _MISSING:
            return False
        want, op = self.want, self.op
        if isinstance(have, bool) or isinstance(want, bool):
            return bool(op(str(have).lower(), str(want).lower()))
        if isinstance(have, (int, float)) and isinstance(want, float):
            return bool(op(float(have), want))
        if isinstance(have, str) and isinstance(want, float):
            number = as_float(have)  # "nan"/"inf" as stored for non-finite values
            if number is not None and not math.isfinite(number):
                return bool(op(number, want))
        return bool(op(str(have), str(want) if not isinstance(want, float) else self.raw))


def _compile_filter(
    flt: Filter,
) -> tuple[Callable[[Experiment], bool] | None, builtins.list[str]]:
    """The filter as a predicate, and the fields its conditions name."""
    if flt is None:
        return None, []
    if callable(flt):
        return flt, []
    conditions = [_Condition(flt)] if isinstance(flt, str) else [_Condition(c) for c in flt]
    return (lambda exp: all(c(exp) for c in conditions)), [c.field for c in conditions]


def _sorted(exps: builtins.list[Experiment], field: str, desc: bool) -> builtins.list[Experiment]:
    """Experiments sorted by ``field``.

    Finite numbers, then text, both in the order asked; then non-finite numbers (NaN,
    infinities) and experiments without the field, always last.
    """
    numbers: builtins.list[tuple[float, Experiment]] = []
    texts: builtins.list[tuple[str, Experiment]] = []
    non_finite: builtins.list[Experiment] = []
    missing: builtins.list[Experiment] = []
    for exp in exps:
        value = _field(exp, field)
        if value is _MISSING:
            missing.append(exp)
            continue
        number = (
            float(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool)
            else as_float(value)
            if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf")
            else None
        )
        if number is None:
            texts.append((str(value), exp))
        elif math.isfinite(number):
            numbers.append((number, exp))
        else:
            non_finite.append(exp)
    numbers.sort(key=lambda pair: pair[0], reverse=desc)
    texts.sort(key=lambda pair: pair[0], reverse=desc)
    return [e for _, e in numbers] + [e for _, e in texts] + non_finite + missing


# ------------------------------------------------------------------------------ Experiment


class Experiment:
    """One experiment, as read from its ref summary (commits are read only on demand).

    Attributes:
        id: Full hex id (the id of the experiment's first commit).
    """

    def __init__(
        self,
        repo: Repository,
        exp_id: str,
        target: ObjectId,
        summary: dict[str, Any],
        heartbeat: float | None = None,
        stale_after: float = STALE_AFTER,
        removed: bool = False,
        now: float | None = None,
    ) -> None:
        self._repo = repo
        self.id = exp_id
        self.target = target
        self._summary = summary
        self._heartbeat = heartbeat
        self._removed = removed
        self._status = self._derive_status(time.time() if now is None else now, stale_after)
        self._first: Commit | None = None
        self._checkpoints: builtins.list[Checkpoint] | None = None

    def _derive_status(self, now: float, stale_after: float) -> str:
        if self._removed:
            return "removed"
        recorded = self._summary.get("status")
        if recorded in ENDED:
            return str(recorded)
        if self._heartbeat is not None and now - self._heartbeat <= stale_after:
            return "running"
        return "crashed"

    def __repr__(self) -> str:
        return f"<Experiment {self.short_id} {self.name!r} {self.status}>"

    @property
    def repository(self) -> Repository:
        """The repository the experiment lives in."""
        return self._repo

    @property
    def short_id(self) -> str:
        """The id shortened for display (12 hex digits)."""
        return self.id[:SHORT]

    @property
    def summary(self) -> dict[str, Any]:
        """A copy of the ref summary (see docs/experiments.md)."""
        return dict(self._summary)

    @property
    def name(self) -> str:
        """The experiment's name ("" if none)."""
        return str(self._summary.get("name") or "")

    @property
    def created(self) -> datetime | None:
        """When the run started (UTC)."""
        return _datetime(self._summary.get("created"))

    @property
    def ended(self) -> datetime | None:
        """When the run stopped cleanly (UTC), or None."""
        return _datetime(self._summary.get("ended"))

    @property
    def params(self) -> dict[str, Any]:
        """The hyperparameters given to ``track()``."""
        return dict(self._summary.get("params") or {})

    @property
    def status(self) -> str:
        """What became of the run (see :data:`STATUSES`).

        ``running`` (a live heartbeat), ``stopped`` (a clean end), ``failed`` (an exception
        ended it: :attr:`error`), ``interrupted`` (Ctrl-C or SIGTERM), ``crashed`` (the process
        vanished: no heartbeat for ``stale_after`` seconds and no recorded end), ``removed``.
        """
        return self._status

    @property
    def end_reason(self) -> str | None:
        """Why the run ended, or None while it runs or after a crash.

        ``ok`` (closed), ``exit`` (the interpreter exited), ``SIGTERM``,
        ``KeyboardInterrupt``, ``exception``.
        """
        reason = self._summary.get("end_reason")
        return str(reason) if reason else None

    @property
    def error(self) -> str | None:
        """``"Type: message"`` of the exception that ended a ``failed`` run, else None."""
        err = self._summary.get("error")
        if not isinstance(err, dict):
            return None
        message = str(err.get("message") or "")
        return f"{err.get('type') or 'Exception'}" + (f": {message}" if message else "")

    @property
    def user(self) -> str:
        """Who ran it."""
        return str(self._summary.get("user") or "")

    @property
    def host(self) -> str:
        """Where it ran."""
        return str(self._summary.get("host") or "")

    @property
    def command(self) -> str:
        """The command line that ran it."""
        return str(self._summary.get("command") or "")

    @property
    def primary_metric(self) -> tuple[str, str] | None:
        """``(name, "minimize" | "maximize")`` or None."""
        return primary_of(self._summary)

    @property
    def heartbeat(self) -> datetime | None:
        """When a live run last reported (UTC), or None."""
        return _datetime(self._heartbeat)

    def _first_commit(self) -> Commit:
        if self._first is None:
            self._first = self._repo.read_commit(from_hex(self.id))
        return self._first

    @property
    def env(self) -> dict[str, Any]:
        """The recorded environment: python, packages, git, user, host, command, cwd..."""
        return dict(self._first_commit().metadata.get("env") or {})

    @property
    def removed_checkpoints(self) -> builtins.list[str]:
        """Ids of checkpoints hidden by ``remove``."""
        return builtins.list(self._summary.get("removed") or [])

    @property
    def checkpoints(self) -> builtins.list[Checkpoint]:
        """The checkpoints, oldest first (removed ones left out). Reads the commit chain."""
        if self._checkpoints is None:
            from mlvc.checkpoints import Checkpoint

            removed = set(self._summary.get("removed") or [])
            out = [
                Checkpoint(self._repo, oid, c)
                for oid, c in self._repo.log(self.target)
                if c.metadata.get("type") == "checkpoint" and to_hex(oid) not in removed
            ]
            out.reverse()
            self._checkpoints = out
        return builtins.list(self._checkpoints)

    def _checkpoint(self, hex_id: Any) -> Checkpoint | None:
        from mlvc.checkpoints import Checkpoint

        if not isinstance(hex_id, str):
            return None
        oid = from_hex(hex_id)
        return Checkpoint(self._repo, oid, self._repo.read_commit(oid))

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint, or None if there is none."""
        return self._checkpoint(self._summary.get("latest"))

    def best(self) -> Checkpoint | None:
        """The checkpoint with the best primary metric, or None without a primary metric."""
        return self._checkpoint((self._summary.get("best") or {}).get("checkpoint"))

    def best_or_latest(self) -> Checkpoint | None:
        """:meth:`best` if the experiment has a primary metric, else :meth:`latest`."""
        return self.best() or self.latest()

    def metrics(self, name: str) -> builtins.list[tuple[int | None, float]]:
        """``(step, value)`` of one metric, ordered by step.

        What ``run.log`` recorded, and the checkpoints' values at steps ``run.log`` did not
        record. Reads the experiment's metric segments and its commit chain.
        """
        from mlvc.series import read_points

        out: builtins.list[tuple[int | None, float]] = [
            (step, values[name])
            for step, _time, values in read_points(self._repo, self.id)
            if name in values
        ]
        logged = {step for step, _ in out}
        for c in self.checkpoints:
            value = as_float(c.metrics.get(name))
            if value is not None and c.step not in logged:
                out.append((c.step, value))
        out.sort(key=lambda p: -1 if p[0] is None else p[0])
        return out

    def metric_names(self) -> builtins.list[str]:
        """Names of every metric logged or recorded at a checkpoint, sorted."""
        from mlvc.series import read_points

        names = {k for _s, _t, values in read_points(self._repo, self.id) for k in values}
        for c in self.checkpoints:
            names.update(c.metrics)
        return sorted(names)

    def metrics_frame(self, names: Sequence[str] | None = None) -> Any:
        """The metrics as a pandas DataFrame: one row per step, one column per metric.

        Args:
            names: The metrics (default: every one, see :meth:`metric_names`).

        Raises:
            UsageError: pandas is not installed.
        """
        try:
            import pandas as pd  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            raise UsageError("Experiment.metrics_frame needs pandas: pip install pandas") from None
        columns = {}
        for name in builtins.list(names) if names is not None else self.metric_names():
            points = self.metrics(name)
            columns[name] = (
                pd.Series([v for _, v in points], index=[s for s, _ in points], dtype="float64")
                .groupby(level=0)
                .last()
            )
        frame = pd.DataFrame(columns)
        frame.index.name = "step"
        return frame

    def plot(self, name: str, ax: Any = None) -> Any:
        """Plot one metric against the step with matplotlib; return the Axes.

        Raises:
            UsageError: matplotlib is not installed, or the metric was never recorded.
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            raise UsageError("Experiment.plot needs matplotlib: pip install matplotlib") from None
        points = self.metrics(name)
        if not points:
            raise UsageError(f"experiment {self.short_id} has no metric {name!r}")
        if ax is None:
            _fig, ax = plt.subplots()
        xs = [s if s is not None else i for i, (s, _) in enumerate(points)]
        ax.plot(xs, [v for _, v in points], marker="o", label=self.name or self.short_id)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.set_title(f"{name} - {self.name or self.short_id}")
        return ax

    def to_dict(self, full: bool = False) -> dict[str, Any]:
        """A JSON-safe description with stable keys.

        Args:
            full: Also include ``env`` and the list of checkpoints (reads commits).
        """
        s = self._summary
        best = s.get("best") or None
        out: dict[str, Any] = {
            "id": self.id,
            "short_id": self.short_id,
            "name": self.name,
            "status": self.status,
            "created": _iso(s.get("created")),
            "ended": _iso(s.get("ended")),
            "user": self.user,
            "host": self.host,
            "command": self.command,
            "params": _json_safe(self.params),
            "primary_metric": (
                {"name": self.primary_metric[0], "goal": self.primary_metric[1]}
                if self.primary_metric
                else None
            ),
            "checkpoints": int(s.get("checkpoints") or 0),
            "latest": s.get("latest"),
            "latest_step": s.get("latest_step"),
            "latest_metrics": _json_safe(dict(s.get("latest_metrics") or {})),
            "best": _json_safe(dict(best)) if best else None,
            "removed": self.removed_checkpoints,
            "end_reason": self.end_reason,
            "error": self.error,
            "heartbeat": self.heartbeat.isoformat() if self.heartbeat else None,
            "repository": self._repo.url,
        }
        if full:
            out["env"] = _json_safe(self.env)
            out["checkpoint_list"] = [c.to_dict() for c in self.checkpoints]
        return out

    def remove(self) -> None:
        """Hide this experiment (delete its ref and heartbeat; ``gc`` frees the space)."""
        _remove_experiment(self._repo, self.id)


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats (not JSON) by their string form, recursively."""
    if isinstance(value, float):
        return json_number(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (builtins.list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# ------------------------------------------------------------------------------ public functions


def list(  # noqa: A001 - the public name the API promises
    repository: RepositoryLike = None,
    filter: Filter = None,  # noqa: A002
    sort: str | None = None,
    include_removed: bool = False,
    stale_after: float = STALE_AFTER,
) -> builtins.list[Experiment]:
    """Every experiment of a repository, from ref summaries only.

    Args:
        repository: A repository, settings, URL or path; None for the project's.
        filter: A callable on :class:`Experiment`, or conditions such as ``"loss < 0.2"``,
            ``"lr = 0.01"``, ``"status = running"`` (all must hold). Fields: ``params.X`` /
            ``metrics.X`` / a bare name (params first, then latest metrics), ``best`` (best
            value of the primary metric), ``status``, ``name``, ``user``, ``host``, ``id``,
            ``created``, ``checkpoints``, ``step``.
        sort: A field name, ``-field`` for descending; default newest first. Experiments
            without the field come last.
        include_removed: Also list experiments removed but not yet collected by ``gc`` (this
            reads every commit of the repository: slow on large ones).
        stale_after: Seconds without a heartbeat after which a running run reads as crashed.

    Returns:
        The experiments.

    Raises:
        UsageError: A malformed filter condition.
        NotARepository: No repository there.
    """
    repo = shared_repo(repository)
    check, fields = _compile_filter(filter)
    desc = bool(sort) and sort is not None and sort.startswith("-")
    sort_field = sort.lstrip("-+") if sort else None
    exps = _scan(repo, stale_after)
    if include_removed:
        exps += _removed_experiments(repo, {e.id for e in exps})
    _check_fields(exps, [*fields, *([sort_field] if sort_field else [])])
    if check is not None:
        exps = [e for e in exps if check(e)]
    if sort_field:
        return _sorted(exps, sort_field, desc)
    exps.sort(key=lambda e: as_float(e._summary.get("created")) or 0.0, reverse=True)
    return exps


def _removed_experiments(repo: Repository, live: set[str]) -> builtins.list[Experiment]:
    """Experiments removed but not collected yet, from their tombstones (not from commits).

    A tombstone whose commit ``gc`` has freed is dropped from the listing (and deleted).
    """
    result = scan_refs(repo, REMOVED_PREFIX)
    docs = {k: v for k, v in result.docs.items() if k[len(REMOVED_PREFIX) :] not in live}
    exps = _experiments_of(repo, docs, REMOVED_PREFIX, STALE_AFTER, removed=True)
    out = []
    for exp in exps:
        if repo.has(exp.target):
            out.append(exp)
        else:
            with contextlib.suppress(MlvcError, OSError):
                repo.store.delete(tombstone_key(exp.id))  # collected: nothing left to show
    return out


def _experiment_ids(repo: Repository, prefix: str = "") -> builtins.list[str]:
    """Ids of the experiments whose id starts with ``prefix`` (one listing of those names)."""
    start = REFS_PREFIX + prefix
    return [
        info.key[len(REFS_PREFIX) :]
        for info in repo.store.list(start)
        if info.key.startswith(REFS_PREFIX) and "/" not in info.key[len(REFS_PREFIX) :]
    ]


def _load_experiment(repo: Repository, exp_id: str, stale_after: float = STALE_AFTER) -> Experiment:
    ref = repo.refs.get(ref_name(exp_id))
    if ref is None:
        raise ObjectNotFound(exp_id, "experiment")
    return _from_ref(repo, ref, heartbeat_of(repo, exp_id), stale_after)


def _from_ref(
    repo: Repository, ref: Ref, heartbeat: float | None, stale_after: float = STALE_AFTER
) -> Experiment:
    checked_ref(ref)
    return Experiment(repo, ref.short_name, ref.target, ref.summary, heartbeat, stale_after)


def resolve_any(
    repo: Repository, id_prefix: str, stale_after: float = STALE_AFTER
) -> Experiment | Checkpoint | None:
    """Find what an id prefix or name refers to.

    Accepts an experiment id prefix, a checkpoint (or any commit) id prefix of 7+ hex digits,
    ``experiments/<id>``, or a ref name (``production``, ``tags/production``, ``heads/main``).

    Returns:
        The :class:`Experiment` or :class:`~mlvc.checkpoints.Checkpoint`; None for a commit
        that is neither (a plain ``mlvc commit``, the first commit of a removed experiment...).

    Raises:
        ObjectNotFound: Nothing by that id or name.
        AmbiguousId: The prefix matches several experiments or commits.
    """
    from mlvc.checkpoints import Checkpoint

    text = id_prefix.strip()
    if text.startswith(f"{KIND}/"):
        wanted = text.split("/", 1)[1].lower()
        if not is_hex_prefix(wanted):
            resolve_prefix(wanted, [], "experiment")  # raises the usage error
        exp_full = resolve_prefix(wanted, _experiment_ids(repo, wanted), "experiment")
        return _load_experiment(repo, exp_full, stale_after)
    oid: ObjectId | None = None
    if is_hex_prefix(text.lower()):
        text = text.lower()
        # Experiments first, by a listing of the names that start with the prefix; commits
        # (every pack index) only if no experiment matches.
        exp_ids = _experiment_ids(repo, text)
        if exp_ids:
            return _load_experiment(repo, resolve_prefix(text, exp_ids, "experiment"), stale_after)
        try:
            oid = from_hex(_resolve_hex(repo, text))
        except ObjectNotFound:
            oid = None
    if oid is None:
        try:
            oid = repo.resolve(text)
        except (ObjectNotFound, UsageError, ValueError):
            raise ObjectNotFound(id_prefix, "experiment or checkpoint") from None
    commit = repo.read_commit(oid)
    if commit.metadata.get("type") == "checkpoint":
        return Checkpoint(repo, oid, commit)
    return None


def _resolve_hex(repo: Repository, prefix: str) -> str:
    if len(prefix) == 64:
        repo.locate(from_hex(prefix))  # one id: no need to list every commit
        return prefix
    try:
        return resolve_prefix(prefix, (to_hex(c) for c in repo.commit_ids()), "checkpoint")
    except ObjectNotFound:
        if repo.load_index():
            return resolve_prefix(prefix, (to_hex(c) for c in repo.commit_ids()), "checkpoint")
        raise


def get(id: str, repository: RepositoryLike = None, stale_after: float = STALE_AFTER) -> Experiment:  # noqa: A002
    """The experiment named by an id prefix (7+ hex digits) of it or of one of its checkpoints.

    Raises:
        ObjectNotFound: No such experiment (or it was removed).
        AmbiguousId: The prefix matches several; the error lists them.
    """
    repo = shared_repo(repository)
    found = resolve_any(repo, id, stale_after)
    if isinstance(found, Experiment):
        return found
    if found is not None:
        return _load_experiment(repo, found.experiment_id, stale_after)
    raise ObjectNotFound(id, "experiment")


def remove(ids: str | Iterable[str], repository: RepositoryLike = None) -> builtins.list[str]:
    """Hide experiments and/or checkpoints (``mlvc gc`` frees their space later).

    An experiment id deletes the experiment's ref and heartbeat. A checkpoint id adds the
    checkpoint to its experiment's ``removed`` list (by compare-and-swap) and recomputes the
    summary's latest/best. Every id is resolved before anything is removed.

    Returns:
        The full ids removed.

    Raises:
        ObjectNotFound: An id names nothing (nothing was removed).
        AmbiguousId: An id prefix is ambiguous (nothing was removed).
    """
    from mlvc.checkpoints import Checkpoint

    repo = shared_repo(repository)
    wanted = [ids] if isinstance(ids, str) else builtins.list(ids)
    targets = []
    for i in wanted:
        found = resolve_any(repo, i)
        if found is None:
            raise ObjectNotFound(i, "experiment or checkpoint")
        targets.append(found)
    done = []
    for t in targets:
        if isinstance(t, Checkpoint):
            _remove_checkpoint(repo, t.experiment_id, t.id)
        else:
            _remove_experiment(repo, t.id)
        done.append(t.id)
    return done


def _remove_experiment(repo: Repository, exp_id: str) -> None:
    from mlvc.series import delete_series

    ref = repo.refs.get(ref_name(exp_id))
    if ref is not None:
        # A tombstone first (the ref as it was), so ``ls --all`` finds what ``gc`` has not
        # collected yet without reading every commit; then the ref goes.
        repo.store.write(tombstone_key(exp_id), encode_ref(ref.target, ref.summary))
    repo.refs.delete(ref_name(exp_id))
    repo.store.delete(heartbeat_key(exp_id))
    delete_series(repo, exp_id)


def _remove_checkpoint(
    repo: Repository, exp_id: str, checkpoint_id: str, attempts: int = 20
) -> None:
    for _ in range(attempts):
        ref = repo.refs.get(ref_name(exp_id))
        if ref is None:
            raise ObjectNotFound(exp_id, "experiment")
        removed = builtins.list(ref.summary.get("removed") or [])
        if checkpoint_id in removed:
            return
        summary = dict(ref.summary, removed=[*removed, checkpoint_id])
        try:
            repo.refs.update_summary(ref, rebuild_summary(repo, ref.target, summary))
            return
        except RefConflict:
            time.sleep(0.05)
    raise RefConflict(ref_name(exp_id), None)
