"""Listing experiments: :func:`list`, with filter conditions and sorting on summary fields.

Fields (docs/experiments.md, "Listing fields"): the columns (:data:`COLUMNS`), ``params.NAME``,
``latest.NAME`` (= ``metrics.NAME``), ``best.NAME``, and a bare name (a param, else a metric's
latest value). Everything is decided from ref summaries: no commit is read.
"""

from __future__ import annotations

import builtins
import math
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from mlvc.experiments.catalog import removed_experiments, scan
from mlvc.experiments.model import STALE_AFTER, Experiment
from mlvc.experiments.summary import as_float
from mlvc.repo import RepositoryLike, shared_repo
from mlvc_core.errors import UsageError

Filter = Callable[[Experiment], bool] | Sequence[str] | str | None

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "=": operator.eq,
    "<": operator.lt,
    ">": operator.gt,
}
_CONDITION = re.compile(r"^\s*([A-Za-z_][\w.\-/]*)\s*(<=|>=|==|!=|=|<|>)\s*((?![<>=!\s]).+?)\s*$")
_OPERATOR = re.compile(r"<=|>=|==|!=|=|<|>")
_MISSING = object()


COLUMNS = (
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
    rec = exp.record
    direct: dict[str, Callable[[], Any]] = {
        "id": lambda: exp.id,
        "name": lambda: exp.name,
        "status": lambda: exp.status,
        "user": lambda: exp.user,
        "host": lambda: exp.host,
        "command": lambda: exp.command,
        "created": lambda: as_float(rec.created),
        "ended": lambda: as_float(rec.ended),
        "checkpoints": lambda: rec.checkpoints,
        "step": lambda: rec.latest_step,
        "best": lambda: rec.best_value,
        "error": lambda: exp.error,
    }
    if name in direct:
        value = direct[name]()
        return _MISSING if value is None else value
    head, _, rest = name.partition(".")
    if rest and head == "params":
        return exp.params.get(rest, _MISSING)
    if rest and head in ("metrics", "latest_metrics", "latest"):
        return _metric(rec.latest_metrics, rest)
    if rest and head == "best":
        pm = exp.primary_metric
        if pm is None or pm[0] != rest:
            return _MISSING
        return direct["best"]() if direct["best"]() is not None else _MISSING
    if name in exp.params:
        return exp.params[name]
    return _metric(rec.latest_metrics, name)


def _known_field(exps: Iterable[Experiment], name: str) -> bool:
    """True if ``name`` is a column, or a param or metric of at least one experiment."""
    if name in COLUMNS:
        return True
    head, _, rest = name.partition(".")
    for exp in exps:
        metrics = exp.record.latest_metrics
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
        metrics = sorted({k for e in exps for k in e.record.latest_metrics})
        raise UsageError(
            f"unknown field {name!r}: not a column ({', '.join(COLUMNS)}), param "
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


def _what_is_wrong(text: str) -> str:
    """Which part of ``FIELD OP VALUE`` a malformed condition lacks or garbles."""
    op = _OPERATOR.search(text)
    if op is None:
        return "no operator"
    if not text[: op.start()].strip():
        return f"no field before {op.group()!r}"
    if not text[op.end() :].strip():
        return f"no value after {op.group()!r}"
    return "cannot parse it"


class _Condition:
    """One ``FIELD OP VALUE`` filter condition."""

    def __init__(self, text: str) -> None:
        m = _CONDITION.match(text)
        if m is None:
            raise UsageError(
                f"bad filter {text!r}: {_what_is_wrong(text)}; write FIELD OP VALUE, e.g. "
                "'loss < 0.2', 'lr = 0.01', 'status = running' (OP is one of = == != < <= > >=; "
                "an empty text value is written '')"
            )
        self.field, op_text, self.raw = m.groups()
        self.text = text
        self.op = _OPS[op_text]
        self.want = _literal(self.raw)
        # An unquoted word ordered against a number is a typo, not a text comparison.
        self.word = op_text in ("<", "<=", ">", ">=") and self.raw == self.want

    def __call__(self, exp: Experiment) -> bool:
        have = _field(exp, self.field)
        if have is _MISSING:
            return False
        want, op = self.want, self.op
        if isinstance(have, bool) or isinstance(want, bool):
            return bool(op(str(have).lower(), str(want).lower()))
        if isinstance(have, (int, float)) and isinstance(want, float):
            return bool(op(float(have), want))
        if isinstance(have, (int, float)) and self.word:
            raise UsageError(
                f"bad filter {self.text!r}: {self.field} is a number and {self.raw!r} is not "
                "(quote it to compare as text)"
            )
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
    exps = scan(repo, stale_after)
    if include_removed:
        exps += removed_experiments(repo, {e.id for e in exps})
    _check_fields(exps, [*fields, *([sort_field] if sort_field else [])])
    if check is not None:
        exps = [e for e in exps if check(e)]
    if sort_field:
        return _sorted(exps, sort_field, desc)
    exps.sort(key=lambda e: as_float(e.record.created) or 0.0, reverse=True)
    return exps
