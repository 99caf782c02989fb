"""``mlvc diff``: params, metrics, environment and files between two ids.

``--code``: changed lines of text files; ``--tensors``: changed tensors of checkpoints.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mlvc import commands
from mlvc.cli import _output
from mlvc.cli._options import IdArg, JsonOpt, state
from mlvc.experiments.revisions import Target
from mlvc_core.errors import UsageError

_MAX_CELL = 60


def _cell(v: Any) -> str:
    text = _output.fmt_value(v)
    return text if len(text) <= _MAX_CELL else f"<{len(text)} characters>"


def _size_change(old: int | None, new: int | None) -> str:
    if old is None:
        return f"+{_output.human_size(new)}"
    if new is None:
        return f"-{_output.human_size(old)}"
    delta = new - old
    sign = "+" if delta >= 0 else "-"
    change = f"{sign}{_output.human_size(abs(delta))}"
    return f"{_output.human_size(old)} -> {_output.human_size(new)} ({change})"


def _label(t: Target) -> str:
    text = f"{t.kind} {_output.short_id(t.id)}"
    if t.kind == "experiment" and t.commit_id.hex() != t.id:
        text += f" (checkpoint {_output.short_id(t.commit_id.hex())})"
    if not t.id.startswith(t.spec.lower()):
        text += f" = {t.spec}"
    return text


def diff(
    ctx: typer.Context,
    a: IdArg,
    b: IdArg,
    code: Annotated[
        bool,
        typer.Option(
            "--code",
            "-c",
            help="Show a unified diff of the changed text files and of the recorded git diffs "
            "(binary and large files summarised).",
        ),
    ] = False,
    tensors: Annotated[
        bool,
        typer.Option(
            "--tensors",
            "-t",
            help="Compare the tensors of the safetensors and PyTorch checkpoint files both hold: "
            "which changed, by how much (max and mean |b - a|, ||b - a|| / ||a||).",
        ),
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Compare two experiments, checkpoints or commits.

    Shows params, metrics and environment entries (package versions, git commit...) that
    differ, and files added, removed or changed with their sizes. With --code, the changed
    lines of text files instead (coloured on a terminal, plain when piped).

    Examples:
        mlvc diff 1a2b3c4d 5e6f7a8b

        mlvc diff 1a2b3c4d@best production --json

        mlvc diff 1a2b3c4d 5e6f7a8b --code | less -R

        mlvc diff 1a2b3c4d@1000 1a2b3c4d@2000 --tensors
    """
    st = state(ctx)
    if code and tensors:
        raise UsageError("--code and --tensors cannot be combined: choose one")
    if tensors:
        _tensors(st.repo(), a, b, json_)
        return
    if code:
        _code(st.repo(), a, b, json_)
        return
    r = commands.diff(st.repo(), a, b)
    if json_:
        _output.print_json(r.to_dict())
        return
    _output.out(f"a: {_label(r.a)}")
    _output.out(f"b: {_label(r.b)}")
    same = True
    for title, changes in (("params", r.params), ("metrics", r.metrics), ("environment", r.env)):
        if changes:
            same = False
            _output.out("")
            _output.table([title, "a", "b"], [[c.key, _cell(c.a), _cell(c.b)] for c in changes])
    if r.files:
        same = False
        _output.out("")
        marks = {"added": "+", "removed": "-", "modified": "M"}
        _output.table(
            ["", "file", "size"],
            [
                [marks.get(c.status, "?"), c.path, _size_change(c.old_size, c.new_size)]
                for c in r.files
            ],
            title=f"files: {sum(c.status == 'added' for c in r.files)} added, "
            f"{sum(c.status == 'removed' for c in r.files)} removed, "
            f"{sum(c.status == 'modified' for c in r.files)} changed",
        )
    if same:
        _output.out("no differences")


def _code(repo: Any, a: str, b: str, json_: bool) -> None:
    from mlvc.commands.codediff import code_diff

    r = code_diff(repo, a, b)
    if json_:
        _output.print_json(r.to_dict())
        return
    colour = _output.colour_wanted()
    for f in r.files:
        if f.kind == "text":
            _output.diff_lines(f.lines, colour)
            continue
        what = "Binary files" if f.kind == "binary" else "Large files"
        sides = (
            "/dev/null" if f.old_size is None else f"a/{f.path}",
            "/dev/null" if f.new_size is None else f"b/{f.path}",
        )
        _output.out(
            f"{what} {sides[0]} and {sides[1]} differ ({_size_change(f.old_size, f.new_size)})"
        )
    if not r.files:
        _output.note("no differences in files")


def _number(v: float | None) -> str:
    return "" if v is None else f"{v:.3g}"


def _tensors(repo: Any, a: str, b: str, json_: bool) -> None:
    from mlvc.commands.tensordiff import tensor_diff

    r = tensor_diff(repo, a, b)
    if json_:
        _output.print_json(r.to_dict())
        return
    marks = {"unchanged": "=", "changed": "M", "added": "+", "removed": "-", "retyped": "T"}
    for f in r.files:
        rows = []
        for t in f.tensors:
            shape = "x".join(map(str, t.shape)) or "scalar"
            if t.status == "retyped":
                old = "x".join(map(str, t.old_shape or ())) or "scalar"
                shape = f"{t.old_dtype} {old} -> {t.dtype} {shape}"
            else:
                shape = f"{t.dtype} {shape}"
            rows.append(
                [
                    marks[t.status],
                    t.name,
                    shape,
                    _number(t.max_abs),
                    _number(t.mean_abs),
                    _number(t.rel_norm),
                ]
            )
        _output.table(
            ["", "tensor", "dtype shape", "max |b-a|", "mean |b-a|", "||b-a||/||a||"],
            rows,
            title=f"{f.path} ({f.kind}): {f.changed} of {len(f.tensors)} tensors changed",
        )
    if not r.files:
        _output.note("no tensor files in both snapshots")
    if r.not_tensor_files:
        n = len(r.not_tensor_files)
        names = ", ".join(r.not_tensor_files[:5]) + (f", +{n - 5} more" if n > 5 else "")
        _output.note(
            f"{n} changed {'file is' if n == 1 else 'files are'} not tensor files "
            f"(not compared): {names}"
        )


def register(app: typer.Typer) -> None:
    """Add ``diff`` to ``app``."""
    app.command()(diff)
