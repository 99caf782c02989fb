"""``mlvc show``: one experiment, checkpoint or commit in full."""

from __future__ import annotations

from typing import Any

import typer

from mlvc import commands
from mlvc.cli import _output
from mlvc.cli._options import IdArg, JsonOpt, state
from mlvc.cli.ls import cells, shorten

_ENV_SCALARS = ("python", "user", "host", "command", "cwd")
MAX_SHOWN = 200
"""Characters of one param or metric value shown (``--json`` shows all)."""


def _env_pairs(env: dict[str, Any]) -> list[tuple[str, str]]:
    pairs = [
        (k, " ".join(map(str, v)) if isinstance(v, list) else _output.fmt_value(v))
        for k in _ENV_SCALARS
        if (v := env.get(k)) not in (None, "", [])
    ]
    git = env.get("git") or {}
    if isinstance(git, dict) and git:
        dirty = " (dirty)" if git.get("dirty") else ""
        pairs.append(
            (
                "git",
                f"{_output.short_id(git.get('commit'))} {git.get('branch') or ''}{dirty}".strip(),
            )
        )
    packages = env.get("packages") or {}
    if isinstance(packages, dict) and packages:
        pairs.append(("packages", f"{len(packages)} installed (--json lists them)"))
    for k in sorted(env):
        if k not in (*_ENV_SCALARS, "git", "packages"):
            pairs.append((k, _output.fmt_value(env[k])))
    return pairs


def show(ctx: typer.Context, id_: IdArg, json_: JsonOpt = False) -> None:
    """Show an experiment, checkpoint or commit: params, metrics, environment, files.

    For an experiment, metrics and files are those of its best checkpoint (latest if it has
    no primary metric), and every checkpoint is listed.

    Examples:
        mlvc show 1a2b3c4d

        mlvc show 1a2b3c4d@latest --json

        mlvc show production
    """
    st = state(ctx)
    r = commands.show(st.repo(), id_)
    if json_:
        _output.print_json(r.to_dict())
        return
    t, c = r.target, r.commit
    header = [("id", t.id), ("kind", t.kind)]
    if t.via:
        header.append(("via", t.via))
    if t.kind == "experiment":
        exp = r.experiment or {}
        header.append(("status", str(exp.get("status") or "-")))
        if exp.get("error"):
            header.append(("error", str(exp["error"])))
        elif exp.get("end_reason") and exp.get("status") != "running":
            header.append(("ended by", str(exp["end_reason"])))
        header += [
            ("created", _output.human_time(exp.get("created"))),
            ("checkpoints", str(len(r.checkpoints))),
        ]
        if t.commit_id.hex() != t.id:
            header.append(("selected", f"{_output.short_id(t.commit_id.hex())} (step {c.step})"))
    else:
        if t.experiment_id and t.experiment_id != t.id:
            header.append(("experiment", _output.short_id(t.experiment_id)))
        if c.step is not None:
            header.append(("step", str(c.step)))
        header += [("time", _output.human_time(c.time)), ("author", c.author)]
        if c.message:
            header.append(("message", c.message))
    _output.kv(header)
    for title, values in (("params", r.params), ("metrics", r.metrics)):
        if values:
            _output.kv(
                [(k, shorten(_output.fmt_value(v), MAX_SHOWN)) for k, v in sorted(values.items())],
                f"\n{title}",
            )
    if r.env:
        _output.kv(_env_pairs(r.env), title="\nenvironment")
    if r.checkpoints:
        _output.out("\ncheckpoints")
        rows = [
            [
                _output.short_id(str(cp.get("id"))),
                _output.fmt_value(cp.get("step")),
                cells(cp.get("metrics"), limit=6),
            ]
            for cp in r.checkpoints
        ]
        _output.table(["id", "step", "metrics"], rows, right=["step"])
    total = sum(f.size for f in r.files)
    _output.out(f"\nfiles ({len(r.files)}, {_output.human_size(total)})")
    _output.table(
        ["size", "path"],
        [[_output.human_size(f.size) if f.kind == "file" else f.kind, f.path] for f in r.files],
        right=["size"],
    )


def register(app: typer.Typer) -> None:
    """Add ``show`` to ``app``."""
    app.command()(show)
