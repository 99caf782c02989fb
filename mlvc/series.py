"""Step metrics: ``run.log({"loss": 0.3}, step=120)`` series, stored in batched segments.

A run keeps logged points in memory (:class:`mlvc.tracking.steplog.StepLog`: a list append,
no lock, no I/O) and a background thread writes them out as *segments*: one store key per
batch, every :data:`SEGMENT_SECONDS` seconds, as soon as :data:`SEGMENT_POINTS` points wait,
and when the run ends. No commit and no file per point; what was written survives a crash of
the run.

Format (``docs/experiments.md``): the key ``series/<experiment id>/<writer>-<seq>`` where
``writer`` is ``<start time in ms, 13 digits>-<12 hex digits>`` (one per run, resumed runs
included, so keys sort in writing order) and ``seq`` a 6-digit counter; the value is
zlib-compressed JSON ``{"v": 1, "points": [[step, time, {name: value}], ...]}`` with
non-finite values as the strings ``"nan"``, ``"inf"``, ``"-inf"``. Segments are not
content-addressed objects: ``gc`` leaves them alone, removing the experiment deletes them,
and ``push``/``pull``/``clone`` copy those the other side lacks (:func:`copy_series`).

Values: Python and numpy numbers, 0-d arrays and one-element tensors (bf16 and ones that
require grad included: ``.item()``), bools (0/1) and ``Decimal`` are recorded as floats;
anything else (a string, a tensor of several elements) is refused with a warning naming the
metric, never silently dropped.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from decimal import Decimal
from itertools import chain
from typing import Any

import orjson

from mlvc_core.errors import FormatError, KeyNotFound
from mlvc_core.repository import Repository

log = logging.getLogger("mlvc")

__all__ = [
    "SEGMENT_POINTS",
    "SEGMENT_SECONDS",
    "SERIES_PREFIX",
    "decode_segment",
    "delete_series",
    "encode_segment",
    "last_step",
    "metric_value",
    "read_points",
    "segment_key",
]

SERIES_PREFIX = "series/"
MAX_SEGMENT_SIZE = 64 << 20
"""Largest stored segment read (a repository is untrusted); a larger one is skipped."""
MAX_SEGMENT_EXPANSION = 256
"""A segment inflates to at most this many times its stored size (plus 1 MiB): JSON points
compress far less, while a zlib bomb inflates about 1,000 times."""
SEGMENT_POINTS = 20_000
"""A segment is written as soon as this many points wait."""
SEGMENT_SECONDS = 5.0
"""Points wait at most about this long before they are written."""
MAX_BUFFERED = 2_000_000
"""Points kept in memory while the storage fails; older ones are dropped beyond (a warning)."""
FORMAT = 1

Point = tuple[int, float, dict[str, float]]
RawPoint = tuple[int, float, dict[Any, Any]]
"""A point as logged: names and values as given (plain ``float``/``int`` values)."""


def series_prefix(exp_id: str) -> str:
    """The key prefix of an experiment's segments."""
    return f"{SERIES_PREFIX}{exp_id}/"


def segment_key(exp_id: str, writer: str, seq: int) -> str:
    """The key of one segment."""
    return f"{series_prefix(exp_id)}{writer}-{seq:06d}"


def metric_value(value: Any) -> float:
    """A metric value as a float.

    Raises:
        TypeError: Not a number, or not a single one (a string, a tensor of several elements).
    """
    kind = type(value)
    if kind is float or kind is int:
        return float(value)
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{value!r} is not a number")
    if isinstance(value, (bool, int, float, Decimal)):
        return float(value)
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return metric_value(item())
        except (ValueError, RuntimeError) as exc:  # several elements
            raise TypeError(f"{type(value).__name__} is not a single number: {exc}") from exc
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{type(value).__name__} {value!r} is not a number") from exc


SLICE_POINTS = 64
"""Points :func:`encode_segment` encodes between two calls of its ``pause``."""

_AS_IS = frozenset([str, float])


def _stored(step: int, t: float, values: dict[Any, Any]) -> list[Any]:
    """One point as stored: names as ``str``, values as floats, non-finite ones as strings."""
    out: dict[str, float | str] = {}
    for k, v in values.items():
        try:
            value = float(v)
        except (TypeError, ValueError, OverflowError) as exc:
            log.warning("mlvc: metric %r of step %s not recorded: %s", k, step, exc)
            continue
        out[str(k)] = value if math.isfinite(value) else str(value)
    return [step, t, out]


def _points_json(points: Sequence[RawPoint]) -> bytes:
    """``points`` as a JSON array, as stored (see :func:`encode_segment`)."""
    maps = [m for _, _, m in points]
    kinds = set(
        map(type, chain(chain.from_iterable(maps), chain.from_iterable(map(dict.values, maps))))
    )
    if kinds <= _AS_IS:  # values are numbers (the caller's), so: str names, float values
        try:
            text = orjson.dumps(points)
        except TypeError:  # a float name; a name orjson refuses (a lone surrogate)
            pass
        else:
            if b'":null' not in text:  # orjson writes NaN and the infinities as null
                return text
    return json.dumps([_stored(*point) for point in points], separators=(",", ":")).encode()


def encode_segment(points: Sequence[RawPoint], pause: Callable[[], object] | None = None) -> bytes:
    """The stored form of a segment.

    Encodes :data:`SLICE_POINTS` points at a time, calling ``pause`` between two slices (the
    writing thread lets the training loop's thread have the interpreter there). A slice of
    ``str`` names and finite ``float`` values is encoded as it is; any other point by point:
    names through ``str``, values through ``float`` (one that is not a number is left out with
    a warning), non-finite values as the strings ``"nan"``, ``"inf"``, ``"-inf"``. Numbers are
    written in their shortest form that reads back as the same float; zlib level 1.

    Args:
        points: ``(step, time, {name: value})`` in logging order; values numbers.
        pause: Called after each slice (None: never).

    Returns:
        The segment's bytes (see the module's docstring).
    """
    parts = [b'{"v":%d,"points":[' % FORMAT]
    for i in range(0, len(points), SLICE_POINTS):
        if i:
            parts.append(b",")
            if pause is not None:
                pause()
        parts.append(_points_json(points[i : i + SLICE_POINTS])[1:-1])
    parts.append(b"]}")
    return zlib.compress(b"".join(parts), 1)


def decode_segment(data: bytes) -> list[Point]:
    """The points of a stored segment.

    Raises:
        ValueError: Not a segment this version of mlvc can read.
    """
    inflate = zlib.decompressobj()
    text = inflate.decompress(data, MAX_SEGMENT_EXPANSION * len(data) + (1 << 20))
    if inflate.unconsumed_tail:
        raise ValueError(f"a segment inflates to more than {MAX_SEGMENT_EXPANSION}x its size")
    doc = json.loads(text)
    if not isinstance(doc, dict) or doc.get("v") != FORMAT:
        raise ValueError("unknown series segment format")
    return [
        (int(s), float(t), {str(k): float(v) for k, v in m.items()}) for s, t, m in doc["points"]
    ]


def _segments(repo: Repository, exp_id: str) -> Iterator[bytes]:
    for info in sorted(repo.store.list(series_prefix(exp_id)), key=lambda i: i.key):
        try:
            yield repo.store.read(info.key, MAX_SEGMENT_SIZE)
        except KeyNotFound:
            continue  # removed meanwhile
        except FormatError as exc:
            log.warning("mlvc: a metrics segment of %s is unreadable: %s", exp_id[:12], exc)


def read_points(repo: Repository, exp_id: str) -> list[Point]:
    """Every point logged for an experiment, in logging order (unreadable segments skipped)."""
    out: list[Point] = []
    for data in _segments(repo, exp_id):
        try:
            out.extend(decode_segment(data))
        except (ValueError, zlib.error, KeyError, TypeError) as exc:
            log.warning("mlvc: a metrics segment of %s is unreadable: %s", exp_id[:12], exc)
    return out


def last_step(repo: Repository, exp_id: str) -> int | None:
    """The step of the newest point logged for an experiment (reads one segment), or None."""
    keys = sorted(i.key for i in repo.store.list(series_prefix(exp_id)))
    for key in reversed(keys):
        try:
            points = decode_segment(repo.store.read(key, MAX_SEGMENT_SIZE))
        except (KeyNotFound, ValueError, zlib.error, KeyError, TypeError):
            continue
        if points:
            return points[-1][0]
    return None


PER_EXPERIMENT_LISTING = 16
"""Up to this many experiments, :func:`copy_series` lists each one's segments; above it, it
lists all segments of both sides once (requests then grow with segments / 1,000, not with
experiments)."""


def _segment_keys(repo: Repository, exp_ids: list[str]) -> dict[str, list[str]]:
    """Segment keys of ``exp_ids`` in ``repo``, by experiment id."""
    wanted = set(exp_ids)
    found: dict[str, list[str]] = {e: [] for e in exp_ids}
    if len(exp_ids) <= PER_EXPERIMENT_LISTING:
        for exp_id in exp_ids:
            found[exp_id] = [info.key for info in repo.store.list(series_prefix(exp_id))]
        return found
    for info in repo.store.list(SERIES_PREFIX):
        exp_id = info.key[len(SERIES_PREFIX) :].split("/", 1)[0]
        if exp_id in wanted:
            found[exp_id].append(info.key)
    return found


def copy_series(src: Repository, dst: Repository, exp_ids: Iterable[str]) -> int:
    """Copy the segments of experiments that ``dst`` lacks (push, pull, clone). Returns how many.

    Segments never change once written and their keys are unique, so a key ``dst`` already
    lists is already there; one that cannot be read (over :data:`MAX_SEGMENT_SIZE`) is left
    behind with a warning, as reading it would. Listing costs two requests per experiment up
    to :data:`PER_EXPERIMENT_LISTING` experiments, else one listing of each side.
    """
    ids = sorted(set(exp_ids))
    if not ids:
        return 0
    theirs = _segment_keys(src, ids)
    have = {key for keys in _segment_keys(dst, ids).values() for key in keys}
    copied = 0
    for exp_id in ids:
        for key in sorted(theirs[exp_id]):
            if key in have:
                continue
            try:
                data = src.store.read(key, MAX_SEGMENT_SIZE)
            except KeyNotFound:
                continue  # removed meanwhile
            except FormatError as exc:
                log.warning("mlvc: a metrics segment of %s is not copied: %s", exp_id[:12], exc)
                continue
            dst.store.write(key, data)
            copied += 1
    return copied


def delete_series(repo: Repository, exp_id: str) -> None:
    """Delete an experiment's segments."""
    for info in list(repo.store.list(series_prefix(exp_id))):
        repo.store.delete(info.key)
