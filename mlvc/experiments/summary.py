"""The experiment summary: the record beside an experiment ref's target, and the keys around it.

An experiment is the ref ``experiments/<id>`` (docs/experiments.md); its JSON document holds
the target commit plus this summary, so ``mlvc ls`` shows an experiment by reading one small
object. :class:`ExperimentSummary` is that summary, typed: :meth:`~ExperimentSummary.from_dict`
reads what a ref holds (fields checked by :data:`SUMMARY_SPEC`), :meth:`~ExperimentSummary.to_dict`
gives back the same JSON form, keeping fields it does not know. Writers (``track()``, the
outbox, ``rm``) build the next summary with its methods, never by editing dicts.

This module owns the summary's fields and the names of the keys of an experiment (ref,
heartbeat, tombstone); it does no I/O except :func:`rebuild_summary`, which reads commits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from operator import attrgetter
from typing import Any

from mlvc_core import schema
from mlvc_core.ids import ObjectId, to_hex
from mlvc_core.refs import Ref
from mlvc_core.repository import Repository

KIND = "experiments"
HEARTBEAT_PREFIX = "heartbeats/"
REFS_PREFIX = f"refs/{KIND}/"
REMOVED_PREFIX = f"removed/{KIND}/"
ENDED = ("stopped", "failed", "interrupted")
"""Statuses a run records when it ends; ``running`` and ``crashed`` are derived from the
heartbeat."""


def ref_name(exp_id: str) -> str:
    """The ref of an experiment (``experiments/<id>``)."""
    return f"{KIND}/{exp_id}"


def tombstone_key(exp_id: str) -> str:
    """The store key of a removed experiment's tombstone (its ref as it was when removed)."""
    return f"{REMOVED_PREFIX}{exp_id}"


def heartbeat_key(exp_id: str) -> str:
    """The store key of an experiment's heartbeat."""
    return f"{HEARTBEAT_PREFIX}{exp_id}"


# ------------------------------------------------------------------------------ values


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


def as_datetime(ts: Any) -> datetime | None:
    """Epoch seconds (as stored) as an aware UTC datetime, or None."""
    f = as_float(ts)
    return datetime.fromtimestamp(f, tz=timezone.utc) if f is not None else None


def iso(ts: Any) -> str | None:
    """Epoch seconds (as stored) as ISO 8601 in UTC (the form ``--json`` uses), or None."""
    d = as_datetime(ts)
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


# ------------------------------------------------------------------------------ the record

SUMMARY_SPEC: schema.Spec = {
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

_ALWAYS = frozenset(
    (
        "type",
        "name",
        "created",
        "user",
        "host",
        "command",
        "params",
        "status",
        "ended",
        "checkpoints",
        "latest",
        "latest_step",
        "latest_metrics",
        "primary_metric",
        "best",
        "removed",
    )
)
"""Fields a new summary always writes, null or not (the others only once they have a value)."""


@dataclass(frozen=True)
class Best:
    """The best checkpoint by the primary metric: its id (hex), step and value."""

    checkpoint: str
    step: int | None
    value: float | str | None
    """As stored: a number, or ``"nan"``/``"inf"``/``"-inf"``."""

    def to_dict(self) -> dict[str, Any]:
        """The stored form ``{"checkpoint", "step", "value"}``."""
        return {"checkpoint": self.checkpoint, "step": self.step, "value": self.value}


@dataclass(frozen=True)
class ExperimentSummary:
    """An experiment's ref summary (format: docs/experiments.md, "Ref summary").

    Times are epoch seconds; ids full lower-case hex. ``extra`` carries fields this version
    does not know, so a summary read and written back loses nothing.
    """

    type: str = "experiment"
    name: str | None = None
    created: float | None = None
    user: str | None = None
    host: str | None = None
    command: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    status: str = "running"
    """As recorded: ``running``, ``stopped``, ``failed`` or ``interrupted``."""
    ended: float | None = None
    end_reason: str | None = None
    error: dict[str, Any] | None = None
    """``{"type", "message"}`` of the exception that ended a failed run."""
    resumed: int | None = None
    checkpoints: int = 0
    latest: str | None = None
    latest_step: int | None = None
    latest_metrics: dict[str, Any] = field(default_factory=dict)
    primary_metric: tuple[str, str] | None = None
    """``(name, "minimize" | "maximize")``."""
    best: Best | None = None
    removed: tuple[str, ...] = ()
    """Ids of checkpoints hidden by ``rm``."""
    extra: dict[str, Any] = field(default_factory=dict)
    present: frozenset[str] = field(default=_ALWAYS, compare=False, repr=False)
    """The fields the stored form has (a null one included), so ``to_dict`` writes them back.

    Bookkeeping, left out of comparisons and of ``repr`` (a set's order depends on how it was
    built: a summary from the row cache must print as a freshly decoded one does)."""

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ExperimentSummary:
        """The summary of a ref document (lenient: a missing or odd field reads as unset).

        Use :func:`checked_ref` first where a malformed summary must be refused.
        """
        known = _KNOWN
        best = doc.get("best")
        removed = doc.get("removed")
        return cls(
            type=str(doc.get("type") or "experiment"),
            name=_opt_str(doc.get("name")),
            created=_opt_num(doc.get("created")),
            user=_opt_str(doc.get("user")),
            host=_opt_str(doc.get("host")),
            command=_opt_str(doc.get("command")),
            params=dict(doc.get("params") or {}),
            status=str(doc.get("status") or "running"),
            ended=_opt_num(doc.get("ended")),
            end_reason=_opt_str(doc.get("end_reason")),
            error=dict(doc["error"]) if isinstance(doc.get("error"), dict) else None,
            resumed=_opt_int(doc.get("resumed")),
            checkpoints=_opt_int(doc.get("checkpoints")) or 0,
            latest=_opt_str(doc.get("latest")),
            latest_step=_opt_int(doc.get("latest_step")),
            latest_metrics=dict(doc.get("latest_metrics") or {}),
            primary_metric=primary_of(doc),
            best=(
                Best(str(best["checkpoint"]), _opt_int(best.get("step")), best.get("value"))
                if isinstance(best, dict) and isinstance(best.get("checkpoint"), str)
                else None
            ),
            removed=tuple(str(r) for r in removed) if isinstance(removed, list) else (),
            extra={} if doc.keys() <= known else {k: v for k, v in doc.items() if k not in known},
            present=frozenset(doc.keys() & known),
        )

    def to_dict(self) -> dict[str, Any]:
        """The stored JSON form: the fields read (or always written), unknown ones kept."""
        values: dict[str, Any] = {
            "type": self.type,
            "name": self.name,
            "created": self.created,
            "user": self.user,
            "host": self.host,
            "command": self.command,
            "params": dict(self.params),
            "status": self.status,
            "ended": self.ended,
            "end_reason": self.end_reason,
            "error": dict(self.error) if self.error is not None else None,
            "resumed": self.resumed,
            "checkpoints": self.checkpoints,
            "latest": self.latest,
            "latest_step": self.latest_step,
            "latest_metrics": dict(self.latest_metrics),
            "primary_metric": (
                {"name": self.primary_metric[0], "goal": self.primary_metric[1]}
                if self.primary_metric is not None
                else None
            ),
            "best": self.best.to_dict() if self.best is not None else None,
            "removed": list(self.removed),
        }
        out = dict(self.extra)
        out.update(
            (k, v) for k, v in values.items() if k in self.present or v not in (None, {}, [])
        )
        return out

    @property
    def best_value(self) -> float | None:
        """The best value of the primary metric as a float, or None."""
        return as_float(self.best.value) if self.best is not None else None

    def with_checkpoint(
        self,
        checkpoint: str,
        step: int | None,
        metrics: dict[str, Any],
        primary: tuple[str, str] | None,
    ) -> ExperimentSummary:
        """The summary after appending one checkpoint (hex id) with its step and metrics."""
        pm = self.primary_metric
        if pm is None and primary is not None:
            pm = (primary[0], primary[1])
        best = self.best
        if pm is not None:
            value = as_float(metrics.get(pm[0]))
            if value is not None and is_better(pm[1], value, self.best_value):
                best = Best(checkpoint, step, json_number(value))
        return replace(
            self,
            checkpoints=self.checkpoints + 1,
            latest=checkpoint,
            latest_step=step,
            latest_metrics=dict(metrics),
            primary_metric=pm,
            best=best,
            present=self.present | {"checkpoints", "latest", "latest_step", "latest_metrics"},
        )

    def ended_with(
        self, status: str, ended: float | None, reason: str | None, error: dict[str, Any] | None
    ) -> ExperimentSummary:
        """The summary once the run ended (``error`` and ``end_reason`` written even if null)."""
        return replace(
            self,
            status=status,
            ended=ended,
            end_reason=reason,
            error=error,
            present=self.present | {"status", "ended", "end_reason", "error"},
        )

    def resumed_with(self, params: dict[str, Any]) -> ExperimentSummary:
        """The summary when a run resumes the experiment: running again, ``params`` merged in."""
        return replace(
            self,
            status="running",
            ended=None,
            end_reason=None,
            error=None,
            resumed=(self.resumed or 0) + 1,
            params={**self.params, **params},
            present=self.present | {"status", "ended", "end_reason", "error", "resumed"},
        )

    def without_checkpoint(self, checkpoint: str) -> ExperimentSummary:
        """The summary with one more checkpoint hidden (fields recomputed by the caller)."""
        if checkpoint in self.removed:
            return self
        return replace(self, removed=(*self.removed, checkpoint))

    def to_row(self) -> list[Any]:
        """The summary as one flat list of plain values, in :data:`ROW_FIELDS` order.

        What the listing's row cache keeps (msgpack): :meth:`from_row` gives back an equal
        summary without decoding or checking the ref again.
        """
        pm, best = self.primary_metric, self.best
        return [
            *_plain_fields(self),
            [pm[0], pm[1]] if pm is not None else None,
            [best.checkpoint, best.step, best.value] if best is not None else None,
            list(self.removed),
            self.extra,
            sorted(self.present),
        ]

    @classmethod
    def from_row(cls, row: list[Any]) -> ExperimentSummary:
        """The summary a :meth:`to_row` list describes (``present`` may be a frozenset).

        Raises:
            TypeError: ``row`` does not have the shape :meth:`to_row` gives.
            ValueError: Likewise.
        """
        if len(row) != len(ROW_FIELDS):
            raise ValueError(f"a summary row has {len(ROW_FIELDS)} fields, not {len(row)}")
        pm, best, removed, extra, present = row[_PLAIN:]
        if isinstance(present, frozenset):
            shared = present
        else:
            key = tuple(present)
            shared = _PRESENT.get(key) or _PRESENT.setdefault(key, frozenset(present))
        # Every field set at once, as the frozen dataclass's __init__ would one by one (it
        # has no checks to skip): a listing builds thousands of summaries.
        summary = object.__new__(cls)
        summary.__dict__.update(
            zip(
                ROW_FIELDS,
                (
                    *row[:_PLAIN],
                    (pm[0], pm[1]) if pm is not None else None,
                    Best(best[0], best[1], best[2]) if best is not None else None,
                    tuple(removed),
                    extra,
                    shared,
                ),
                strict=True,
            )
        )
        return summary


_KNOWN = frozenset(f.name for f in fields(ExperimentSummary)) - {"extra", "present"}
"""The stored fields :class:`ExperimentSummary` reads (the others go to ``extra``)."""
ROW_FIELDS = tuple(f.name for f in fields(ExperimentSummary))
"""The order of :meth:`ExperimentSummary.to_row`: a row cache written for another is ignored."""
_PLAIN = ROW_FIELDS.index("primary_metric")
"""Row fields before this one are stored as they are."""
_plain_fields = attrgetter(*ROW_FIELDS[:_PLAIN])
_PRESENT: dict[tuple[str, ...], frozenset[str]] = {}
"""One frozenset per distinct ``present`` (rows mostly share a handful)."""


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _opt_num(value: Any) -> float | None:
    """A stored number as it is (an int stays an int, so it is written back the same)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _opt_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    return int(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def summary_with_checkpoint(
    summary: dict[str, Any],
    checkpoint: str,
    step: int | None,
    metrics: dict[str, Any],
    primary: tuple[str, str] | None,
) -> dict[str, Any]:
    """A stored summary after appending one checkpoint (:meth:`ExperimentSummary.with_checkpoint`).

    What ref writers pass to a compare-and-swap, which hands them the stored dict.
    """
    return (
        ExperimentSummary.from_dict(summary)
        .with_checkpoint(checkpoint, step, metrics, primary)
        .to_dict()
    )


def rebuild_summary(
    repo: Repository, target: ObjectId, summary: ExperimentSummary
) -> ExperimentSummary:
    """Recompute the checkpoint fields of a summary from the chain (honours ``removed``)."""
    removed = set(summary.removed)
    chain = [(oid, c) for oid, c in repo.log(target) if c.metadata.get("type") == "checkpoint"]
    chain.reverse()
    out = replace(
        summary,
        checkpoints=0,
        latest=None,
        latest_step=None,
        latest_metrics={},
        best=None,
        present=summary.present | {"best"},
    )
    for oid, c in chain:
        h = to_hex(oid)
        if h in removed:
            continue
        m = c.metadata
        out = out.with_checkpoint(h, m.get("step"), dict(m.get("metrics") or {}), primary_of(m))
    return out


def checked_ref(ref: Ref | None) -> Ref | None:
    """``ref``, once its experiment summary is checked field by field.

    Raises:
        FormatError: A field has the wrong type (the error names the ref).
    """
    if ref is not None:
        schema.check(ref.summary, SUMMARY_SPEC, f"ref {ref.name!r}")
    return ref
