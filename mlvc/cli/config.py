"""``mlvc config get/set/unset/list``: the project's settings in ``mlvc.toml``.

Every key is documented (:data:`mlvc.project_config.KEYS`, and ``mlvc config list --all``);
unknown keys and anything that looks like a credential are refused.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mlvc.cli import _output
from mlvc.cli._options import JsonOpt, state


def complete_keys(incomplete: str) -> list[tuple[str, str]]:
    """Shell completion of a setting: the documented keys and those set in mlvc.toml."""
    from mlvc.project_config import KEYS, key_of, list_values

    try:
        present = list(list_values())
    except Exception:  # noqa: BLE001 - completion must never fail loudly
        present = []
    names = [k.name for k in KEYS if "*" not in k.name] + present
    out: dict[str, str] = {}
    for name in names:
        if name.startswith(incomplete):
            out.setdefault(name, key_of(name).help.split(";")[0].split(":")[0])
    return list(out.items())


KeyArg = Annotated[
    str,
    typer.Argument(
        help="A dotted key, e.g. snapshot.max_file_size.",
        show_default=False,
        autocompletion=complete_keys,
    ),
]

config_app = typer.Typer(
    name="config",
    no_args_is_help=True,
    help="Get, set or list the project's settings in mlvc.toml.",
)


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return _output.fmt_value(value)


@config_app.command("get")
def get(key: KeyArg, json_: JsonOpt = False) -> None:
    """Print one setting (its default when unset).

    Examples:
        mlvc config get repository.url
    """
    from mlvc.project_config import get_value

    value = get_value(key)
    if json_:
        _output.print_json({"key": key, "value": value})
    else:
        _output.out(_shown(value))


@config_app.command("set")
def set_(
    ctx: typer.Context,
    key: KeyArg,
    value: Annotated[str, typer.Argument(help="The new value.", show_default=False)],
) -> None:
    """Set one setting in mlvc.toml (created if missing).

    Examples:
        mlvc config set snapshot.max_file_size 50MiB

        mlvc config set repository.storage_options.endpoint_url http://127.0.0.1:9000
    """
    from mlvc.project_config import set_value

    path = set_value(key, value)
    _output.note(f"{key} set in {path}", state(ctx).quiet)


@config_app.command("unset")
def unset(ctx: typer.Context, key: KeyArg) -> None:
    """Remove one setting from mlvc.toml (it takes its default again).

    Examples:
        mlvc config unset snapshot.max_file_size
    """
    from mlvc.project_config import unset_value

    if not unset_value(key):
        _output.note(f"{key} was not set", state(ctx).quiet)


@config_app.command("list")
def list_(
    all_: Annotated[
        bool, typer.Option("--all", "-a", help="Every documented key, with its meaning.")
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """List the settings of mlvc.toml (with --all, every key mlvc knows).

    Examples:
        mlvc config list

        mlvc config list --all
    """
    from mlvc.project_config import KEYS, list_values

    values = list_values()
    if all_:
        rows = [{"key": k.name, "type": k.type, "default": k.default, "help": k.help} for k in KEYS]
        if json_:
            _output.print_json({"values": values, "keys": rows})
            return
        for r in rows:
            default = "" if r["default"] is None else f" (default: {_shown(r['default'])})"
            _output.out(f"{r['key']}  [{r['type']}]{default}\n    {r['help']}")
        if values:
            _output.out("")
    if json_:
        _output.print_json(values)
        return
    for k, v in values.items():
        _output.out(f"{k} = {_shown(v)}")


def register(app: typer.Typer) -> None:
    """Add the ``config`` group to ``app``."""
    app.add_typer(config_app)
