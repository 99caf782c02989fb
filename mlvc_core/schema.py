"""Shape checks for decoded documents: every field a reader relies on has the type it expects.

Pure, no I/O. Repository bytes are untrusted: JSON or msgpack can be well-formed and still hold
a number where a list belongs. Decoders (objects, refs, config, experiment summaries) describe
the fields they know as a :data:`Spec` and call :func:`check`, which raises one
:class:`~mlvc_core.errors.FormatError` naming the document and the field, so no reader later
dies on a ``TypeError``. Unknown fields pass (newer writers may add some).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from mlvc_core.errors import FormatError

Check = Callable[[Any], bool]
"""True if a value has the expected shape."""
Spec = Mapping[str, Check]
"""Field name -> its check; absent fields are not checked (a reader's default applies)."""

_HEX_ID = re.compile(r"^[0-9a-f]{64}$")


def is_str(v: Any) -> bool:
    """A string."""
    return isinstance(v, str)


def is_int(v: Any) -> bool:
    """An integer (not a bool)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float, or a non-finite float spelled as JSON has to (``"nan"``...)."""
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    if isinstance(v, float):
        return math.isfinite(v)
    return v in ("nan", "inf", "-inf")


def is_bool(v: Any) -> bool:
    """A bool."""
    return isinstance(v, bool)


_IS_STR = str.__instancecheck__
"""``isinstance(x, str)`` as one callable, so ``map`` checks keys without a Python frame each."""


def is_dict(v: Any) -> bool:
    """A mapping with string keys."""
    return isinstance(v, dict) and all(map(_IS_STR, v))


def is_hex_id(v: Any) -> bool:
    """A full object id in lower-case hex."""
    return isinstance(v, str) and _HEX_ID.match(v) is not None


def optional(check_: Check) -> Check:
    """``check_`` or None."""
    return lambda v: v is None or check_(v)


def list_of(check_: Check) -> Check:
    """A list whose items all pass ``check_``."""
    return lambda v: isinstance(v, list) and all(check_(x) for x in v)


def dict_of(check_: Check) -> Check:
    """A string-keyed mapping whose values all pass ``check_``."""
    return lambda v: is_dict(v) and all(check_(x) for x in v.values())


def shaped(spec: Spec) -> Check:
    """A mapping whose known fields pass ``spec``."""
    return lambda v: is_dict(v) and _first_bad(v, spec) is None


def _first_bad(doc: Mapping[str, Any], spec: Spec) -> str | None:
    for name, check_ in spec.items():
        if name in doc and not check_(doc[name]):
            return name
    return None


def check(doc: Any, spec: Spec, what: str) -> dict[str, Any]:
    """Check a decoded document against ``spec``; return it.

    Args:
        doc: The decoded JSON or msgpack value.
        spec: The fields to check.
        what: Names the document in the error (``ref 'tags/prod'``, ``commit 1a2b...``).

    Raises:
        FormatError: ``doc`` is not a string-keyed mapping, or a field has the wrong shape.
    """
    if not is_dict(doc):
        raise FormatError(f"{what} is malformed: not a mapping")
    bad = _first_bad(doc, spec)
    if bad is not None:
        shown = repr(doc[bad])
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise FormatError(f"{what} is malformed: field {bad!r} has an unexpected value {shown}")
    return dict(doc)
