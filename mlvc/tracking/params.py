"""Params as a run records them: flat, canonical, JSON-safe, without secrets.

:func:`canonical_params` turns what a user passes to ``track(params=...)`` (a dict, an
``argparse.Namespace``, a dataclass, an OmegaConf/Hydra config, nested any way) into a flat
``{dotted key: value}`` mapping, the same for the same config whatever its construction:

* nested mappings, dataclasses and namespaces are flattened to dotted keys
  (``{"model": {"depth": 4}}`` records ``model.depth = 4``), so filters reach them; an empty one
  records as ``{}``;
* values are JSON scalars or lists: numpy and torch scalars become numbers (``.item()``), small
  arrays and tensors lists, sets and frozensets sorted lists, tuples lists, paths strings,
  enums ``Class.NAME``, non-finite floats the strings ``nan``/``inf``/``-inf``, integers beyond
  64 bits strings, anything else its ``repr``;
* keys are strings; a key that is not one (``1``) keeps its text unless that collides with
  another key (``"1"``), in which case it records as ``1#int`` with a warning: nothing is
  dropped silently;
* a value that cannot be converted (a config that contains itself, a property that raises)
  costs that one param and a warning, never the run;
* the value of a key that looks like a credential (:func:`mlvc.tracking.redaction.secret_name`) is
  recorded as ``<redacted>``, and URL passwords inside strings are removed.
"""

from __future__ import annotations

import dataclasses
import decimal
import enum
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

from mlvc.tracking.redaction import REDACTED, redact_text, secret_name

log = logging.getLogger("mlvc")

__all__ = ["MAX_DEPTH", "MAX_LIST", "canonical_params", "canonical_value"]

MAX_DEPTH = 64
"""Nesting deeper than this costs the param (a warning)."""
MAX_LIST = 10_000
"""Arrays and tensors with more elements record as their ``repr``."""
_INT_LIMIT = 1 << 63


class _Unconvertible(ValueError):
    """A value that cannot be recorded (the message says why)."""


def _as_mapping(value: Any) -> Mapping[Any, Any] | None:
    """The mapping view of a nested config (mapping, dataclass, namespace), else None."""
    if isinstance(value, Mapping):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    cls = type(value)
    if cls.__name__ in ("Namespace", "SimpleNamespace") and hasattr(value, "__dict__"):
        return dict(vars(value))
    return None


def _sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, bool):
        return (0, int(value))
    if isinstance(value, (int, float)):
        return (1, value) if not (isinstance(value, float) and math.isnan(value)) else (2, 0)
    return (3, repr(value))


def canonical_value(value: Any, _path: tuple[int, ...] = ()) -> Any:
    """One param value as recorded (see the module docstring); mappings stay nested here.

    Raises:
        ValueError: The value contains itself, nests too deep, or its conversion failed.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if -_INT_LIMIT <= value < _INT_LIMIT else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if len(_path) > MAX_DEPTH:
        raise _Unconvertible(f"nested more than {MAX_DEPTH} levels deep")
    if id(value) in _path:
        raise _Unconvertible("it contains itself")
    path = (*_path, id(value))
    mapping = _as_mapping(value)
    if mapping is not None:
        return {str(k): canonical_value(v, path) for k, v in mapping.items()}
    if isinstance(value, (set, frozenset)):
        items = [canonical_value(v, path) for v in value]
        return sorted(items, key=_sort_key)
    if isinstance(value, (list, tuple)):
        return [canonical_value(v, path) for v in value]
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return repr(bytes(value))
    numel_fn = getattr(value, "numel", None)
    numel = numel_fn() if callable(numel_fn) else getattr(value, "size", None)
    if isinstance(numel, int) and numel > MAX_LIST:
        return repr(value)
    for attr in ("item", "tolist"):
        fn = getattr(value, attr, None)
        if callable(fn):
            try:
                converted = fn()
            except (TypeError, ValueError, RuntimeError):
                continue
            if converted is not value:
                return canonical_value(converted, path)
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def _describe(path: tuple[Any, ...]) -> str:
    return ".".join(str(k) for k in path)


def canonical_params(params: Any) -> dict[str, Any]:
    """The flat, canonical, redacted params to record (see the module docstring).

    Args:
        params: A mapping, ``argparse.Namespace``, dataclass, OmegaConf config, or None.

    Returns:
        ``{dotted key: JSON-safe value}``; problems are logged as warnings.

    Raises:
        TypeError: ``params`` is not a mapping-like object (nothing to record).
    """
    if params is None:
        return {}
    top = _as_mapping(params)
    if top is None:
        if not hasattr(params, "__dict__"):
            raise TypeError(f"params must be a mapping, not {type(params).__name__}")
        top = dict(vars(params))
    leaves: list[tuple[tuple[Any, ...], Any]] = []
    _flatten(top, (), (id(params),), leaves)
    out: dict[str, Any] = {}
    later: list[tuple[tuple[Any, ...], Any]] = []
    for keys, value in leaves:  # keys that are all strings claim their names first
        name = ".".join(str(k) for k in keys)
        if all(isinstance(k, str) for k in keys) and name not in out:
            out[name] = value
        else:
            later.append((keys, value))
    for keys, value in later:
        name = ".".join(str(k) for k in keys)
        odd = next((k for k in reversed(keys) if not isinstance(k, str)), None)
        base = f"{name}#{type(odd).__name__}" if odd is not None else name
        unique, n = base, 2
        while unique in out:
            unique, n = f"{base}#{n}", n + 1
        log.warning(
            "mlvc: params %s and another key both read %r: this one is recorded as %r",
            ".".join(k if isinstance(k, str) else f"{k!r} ({type(k).__name__})" for k in keys),
            name,
            unique,
        )
        out[unique] = value
    return out


def _flatten(
    mapping: Mapping[Any, Any],
    prefix: tuple[Any, ...],
    path: tuple[int, ...],
    leaves: list[tuple[tuple[Any, ...], Any]],
) -> None:
    try:
        items = list(mapping.items())
    except Exception as exc:  # noqa: BLE001 - a config object that cannot be read
        log.warning("mlvc: param %s not recorded: %s", _describe(prefix) or "(params)", exc)
        return
    for key, value in items:
        keys = (*prefix, key)
        name = str(key)
        try:
            if secret_name(name) and not isinstance(value, (bool, int, float, type(None))):
                leaves.append((keys, REDACTED))
                continue
            nested = _as_mapping(value)
            if nested is not None and len(nested) > 0:
                if id(value) in path:
                    raise _Unconvertible("it contains itself")
                if len(path) > MAX_DEPTH:
                    raise _Unconvertible(f"nested more than {MAX_DEPTH} levels deep")
                _flatten(nested, keys, (*path, id(value)), leaves)
                continue
            converted = canonical_value(value, path)
            leaves.append((keys, _redacted(converted)))
        except RecursionError:
            log.warning("mlvc: param %s not recorded: it nests too deep", _describe(keys))
        except Exception as exc:  # noqa: BLE001 - one param, never the run
            log.warning(
                "mlvc: param %s not recorded: %s", _describe(keys), exc or type(exc).__name__
            )


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, dict):
        return {k: REDACTED if secret_name(k) else _redacted(v) for k, v in value.items()}
    return value
