"""Plain conversions of command-line values, in place of Typer's pydantic ones.

Typer (0.23 on) converts every value through a pydantic ``TypeAdapter``: importing pydantic
and building adapters cost more than the rest of a small command's start-up.
:func:`fast_params` gives parameters of plain types a direct conversion with the same results
and messages, and names their values in help as Click does. With a Typer that works
differently inside, it changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

_SIMPLE = {str: str, int: int, float: float, bool: None}


def fast_params(command: Any) -> None:
    """Give a command's simple parameters a direct conversion instead of Typer's default.

    Typer (0.23 on) converts every value through a pydantic ``TypeAdapter``: importing
    pydantic and building adapters cost more than the rest of a small command's start-up.
    Parameters of plain types (``str``, ``int`` with ``min``/``max``, ``float``, ``bool``,
    ``Path`` without checks, and lists of those) are converted here the same way, with the
    same messages; anything else keeps Typer's conversion. With a Typer that works
    differently inside, this changes nothing.
    """
    for sub in getattr(command, "commands", {}).values():
        fast_params(sub)
    if getattr(command, "_mlvc_fast", False):
        return
    for param in getattr(command, "params", []):
        _plain_metavar(param)
    if _FastParam is None:
        command._mlvc_fast = True  # noqa: SLF001
        return
    for param in getattr(command, "params", []):
        _fast_param(param)
    make_help = getattr(command, "get_help_option", None)
    if make_help is not None:  # built per invocation: convert it too

        def get_help_option(ctx: Any) -> Any:
            option = make_help(ctx)
            if option is not None:
                _fast_param(option)
            return option

        command.get_help_option = get_help_option
    command._mlvc_fast = True  # noqa: SLF001


_METAVARS: dict[type, str] = {str: "TEXT", int: "INTEGER", float: "FLOAT", Path: "PATH"}


def _plain_metavar(param: Any) -> None:
    """Name a value in help as Click does (``ID``, ``PATHS...``, ``--limit INTEGER``).

    Typer 0.29 shows ``{id_}`` and ``<list[str]>``; an author's own ``metavar`` is kept.
    """
    if getattr(param, "param_type_name", "") == "argument":
        _plain_argument(param)
        return
    if getattr(param, "metavar", None) is not None or getattr(param, "is_flag", False):
        return
    desc = getattr(param, "type_descriptor", None)
    annotation: Any = getattr(desc, "annotation", None)
    if getattr(annotation, "__origin__", None) is list:
        (annotation,) = getattr(annotation, "__args__", (None,))
    name = _METAVARS.get(annotation) if isinstance(annotation, type) else None
    if name is not None:
        param.metavar = name


def _plain_argument(param: Any) -> None:
    """Show an argument as Click does: ``ID`` or ``[URL]`` or ``PATHS...``, no ``<str>`` type.

    Typer 0.29 writes ``{ID}`` in the usage line and ``ID <str>`` in the list of arguments.
    """
    if getattr(param, "metavar", None) is None:
        param.metavar = (param.name or "value").strip("_").upper()
    if not hasattr(param, "_usage_display_name"):  # a Typer that renders arguments itself
        return
    name = param.metavar + ("..." if param.nargs != 1 else "")
    usage = name if param.required else f"[{name}]"
    param._usage_display_name = lambda: usage  # noqa: SLF001
    param.display_type_rich = lambda ctx: None


def _fast_param(param: Any) -> None:
    desc = getattr(param, "type_descriptor", None)
    if desc is None or getattr(param, "_runtime_param", 0) is not None:
        return
    info = desc.parameter_info
    if desc.file_annotation is not None or getattr(info, "clamp", False):
        return
    if any(
        getattr(info, name, None)
        for name in ("parser", "click_type", "exists", "resolve_path", "allow_dash")
    ):
        return
    annotation = desc.annotation
    item = annotation
    if getattr(annotation, "__origin__", None) is list:
        (item,) = getattr(annotation, "__args__", (None,))
    if item in _SIMPLE or item is Path:
        param._runtime_param = _FastParam(info, annotation, item)  # noqa: SLF001


try:  # Typer's conversion contract (0.23 on); without it, Typer converts everything itself
    from typer._coercion import RuntimeParam as _RuntimeParam
except ImportError:  # pragma: no cover - older Typer: no pydantic, nothing to avoid
    _FastParam: Any = None
else:

    class _FastParam(_RuntimeParam):  # type: ignore[no-redef]
        """Conversion of one plain-typed parameter value (see :func:`fast_params`)."""

        item: Any

        def __init__(self, info: Any, annotation: Any, item: Any) -> None:
            object.__setattr__(self, "parameter_info", info)
            object.__setattr__(self, "annotation", annotation)
            object.__setattr__(self, "item", item)

        def _one(self, value: Any, param: Any, ctx: Any) -> Any:
            kind = self.item
            if kind is Path:
                return value if isinstance(value, Path) else Path(value)
            if kind is str:
                return value if isinstance(value, str) else str(value)
            if kind is bool:
                if isinstance(value, bool):
                    return value
                text = str(value).strip().lower()
                if text in ("1", "true", "t", "yes", "y", "on"):
                    return True
                if text in ("0", "false", "f", "no", "n", "off"):
                    return False
                raise typer.BadParameter(f"{value!r} is not a valid boolean.", ctx, param)
            try:
                number = (
                    kind(value) if not isinstance(value, kind) or isinstance(value, bool) else value
                )
            except (TypeError, ValueError):
                noun = "integer" if kind is int else "float"
                raise typer.BadParameter(f"{value!r} is not a valid {noun}.", ctx, param) from None
            info = self.parameter_info
            low, high = info.min, info.max
            if (low is not None and number < low) or (high is not None and number > high):
                bounds = " and ".join(
                    b
                    for b in (
                        f"x>={low}" if low is not None else "",
                        f"x<={high}" if high is not None else "",
                    )
                    if b
                )
                raise typer.BadParameter(f"{number} is not in the range {bounds}.", ctx, param)
            return number

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            if self.annotation is not self.item:  # a list
                return [self._one(v, param, ctx) for v in value]
            return self._one(value, param, ctx)
