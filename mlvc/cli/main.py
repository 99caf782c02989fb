"""The root of the ``mlvc`` command line: global options, command wiring, and the error table.

Errors become words and exit codes here and nowhere else (:data:`ERROR_TABLE`). Commands
raise whatever mlvc raises; :class:`MlvcGroup` catches it around every command,
prints one ``error: ...`` line (plus a hint where one helps) and exits with the code from the
table. A traceback is printed only under ``--debug`` or ``MLVC_DEBUG=1``.

Exit codes (restic's numbering where it fits):

====  ===================================================================
0     success
1     any other mlvc error (e.g. checkout would overwrite files)
2     usage error (bad arguments, bad names, a path not in a snapshot)
3     integrity or format error (damaged data, unsafe tree, unknown format version;
      ``fsck`` found problems)
4     unknown or ambiguous id, unknown ref
5     storage or network failure
10    not a repository
11    repository locked (gc is running; or, for `gc --yes`, writers are active)
12    ref conflict (a concurrent writer moved a ref; push/pull left a diverged ref alone)
70    internal error (a bug)
130   interrupted
141   stdout closed early (``mlvc ls | head``), silently
====  ===================================================================
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from mlvc.cli import _output
from mlvc.cli._options import CliState
from mlvc.cli._params import fast_params
from mlvc_core import errors as core_errors

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

# Typer's own control flow (exit codes, --help, usage errors) passes through untouched. Newer
# Typer releases vendor Click, so find Click's exception base through Typer, not ``import click``.
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_PASS_THROUGH: tuple[type[BaseException], ...] = (typer.Exit, typer.Abort, _CLICK_EXCEPTION)
_USAGE_ERROR: Any = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")

_STORAGE_HINT = (
    "hint: check that the repository location is reachable and writable; for S3 and GCS, "
    "endpoints and credentials come from the environment (AWS_PROFILE, AWS_ENDPOINT_URL, "
    "GOOGLE_APPLICATION_CREDENTIALS, STORAGE_EMULATOR_HOST) or storage options in mlvc.toml"
)


_CONFLICTS_SHOWN = 20


def _plain(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _unknown_id(exc: BaseException) -> str:
    if isinstance(exc, core_errors.ObjectNotFound):
        what = "id" if exc.what in ("object", "revision", "commit") else f"{exc.what} id"
        what = "file" if exc.what == "file" else what
        if exc.detail:
            return f"unknown {what}: {exc.oid!r} ({exc.detail})"
        return f"unknown {what}: {exc.oid!r}\nhint: `mlvc ls` lists experiments, `mlvc log` commits"
    if isinstance(exc, core_errors.RefNotFound):
        kind, _, name = exc.name.partition("/")
        noun = {"tags": "tag", "heads": "branch", "experiments": "experiment"}.get(kind, "name")
        hint = {
            "tags": "`mlvc tag` lists tags",
            "heads": "nothing was committed to it yet (`mlvc log ID` shows an experiment's "
            "checkpoints, `mlvc ls` lists experiments)",
        }.get(kind, "`mlvc ls` lists experiments, `mlvc tag` tags")
        return f"unknown {noun}: {name or exc.name!r}\nhint: {hint}"
    return _plain(exc)


def _ambiguous(exc: BaseException) -> str:
    assert isinstance(exc, core_errors.AmbiguousId)
    lines = [f"ambiguous id {exc.prefix!r}: it matches {len(exc.candidates)} ids:"]
    lines += [f"  {c}" for c in exc.candidates]
    if all("/" in c for c in exc.candidates):
        lines.append("hint: write the one you mean in full (tags/NAME or heads/NAME)")
    else:
        lines.append("hint: give more hex digits")
    return "\n".join(lines)


def _integrity(exc: BaseException) -> str:
    return f"{_plain(exc)}\nhint: run `mlvc fsck` to list everything that is damaged"


def _missing_key(exc: BaseException) -> str:
    key = getattr(exc, "key", "?")
    return (
        f"repository data is missing: {key}\n"
        "hint: run `mlvc fsck` to list everything that is damaged"
    )


def _would_overwrite(exc: BaseException) -> str:
    paths = list(getattr(exc, "details", None) or getattr(exc, "paths", []))
    if len(paths) == 1:
        return f"would overwrite existing files: {paths[0]}\nhint: pass -f/--force to replace it"
    lines = [f"would overwrite existing files: {len(paths)} paths are in the way:"]
    lines += [f"  {p}" for p in paths[:_CONFLICTS_SHOWN]]
    if len(paths) > _CONFLICTS_SHOWN:
        lines.append(f"  ... and {len(paths) - _CONFLICTS_SHOWN} more")
    lines.append("hint: pass -f/--force to replace them")
    return "\n".join(lines)


def _ref_conflict(exc: BaseException) -> str:
    return (
        f"{_plain(exc)}\nhint: another writer moved it first and nothing of yours was lost; "
        "see where it points now (`mlvc log`), then run the command again"
    )


def _storage(exc: BaseException) -> str:
    return f"storage error: {_plain(exc)}\n{_STORAGE_HINT}"


def _io(exc: BaseException) -> str:
    return f"I/O error: {_plain(exc)}"


Matcher = type[BaseException] | str
"""An exception class, or the dotted name of one in a module that may not be imported."""

ERROR_TABLE: list[tuple[Matcher, Callable[[BaseException], str], int]] = [
    # Most specific first: the first row whose class matches wins. (mlvc.errors re-exports
    # these classes and adds TrackingError, an MlvcError: exit 1.)
    (core_errors.UsageError, _plain, 2),
    (core_errors.InvalidRefName, _plain, 2),
    (core_errors.UnsafePath, _plain, 3),
    (core_errors.IntegrityError, _integrity, 3),
    (core_errors.FormatError, _plain, 3),
    (core_errors.KeyNotFound, _missing_key, 3),
    (core_errors.NotARepository, _plain, 10),
    (core_errors.RepositoryLocked, _plain, 11),
    (core_errors.RefConflict, _ref_conflict, 12),
    (core_errors.MissingObject, _integrity, 3),
    (core_errors.AmbiguousId, _ambiguous, 4),
    (core_errors.ObjectNotFound, _unknown_id, 4),
    (core_errors.RefNotFound, _unknown_id, 4),
    (core_errors.FileExistsConflict, _would_overwrite, 1),
    (core_errors.StorageError, _storage, 5),
    (core_errors.MlvcError, _plain, 1),
    ("botocore.exceptions.BotoCoreError", _storage, 5),
    ("botocore.exceptions.ClientError", _storage, 5),
    ("aiohttp.ClientError", _storage, 5),
    ("google.auth.exceptions.GoogleAuthError", _storage, 5),
    (ConnectionError, _storage, 5),
    (TimeoutError, _storage, 5),
    (OSError, _io, 5),
]
"""``(exception class, message function, exit code)``; anything else is an internal error."""


def _resolve(matcher: Matcher) -> type[BaseException] | None:
    if not isinstance(matcher, str):
        return matcher
    module, _, name = matcher.rpartition(".")
    mod = sys.modules.get(module)  # never import a backend library just to name its errors
    cls = getattr(mod, name, None) if mod is not None else None
    return cls if isinstance(cls, type) and issubclass(cls, BaseException) else None


def classify(exc: BaseException) -> tuple[str, int]:
    """The message and exit code for ``exc`` from :data:`ERROR_TABLE`."""
    for matcher, message, code in ERROR_TABLE:
        cls = _resolve(matcher)
        if cls is not None and isinstance(exc, cls):
            return message(exc), code
    return (
        f"internal error: {type(exc).__name__}: {_plain(exc)}\n"
        "this is a bug in mlvc; rerun with MLVC_DEBUG=1 (or --debug) for a traceback and report it",
        EXIT_INTERNAL,
    )


def _debug_wanted(ctx: Any) -> bool:
    obj = ctx.find_root().obj if ctx is not None else None
    if isinstance(obj, CliState) and obj.debug:
        return True
    # The CLI edge may read the environment (see the style guide); settings may not load at all.
    return os.environ.get("MLVC_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def report(exc: BaseException, ctx: Any = None) -> int:
    """Print ``exc`` for people (traceback only when debugging); return the exit code."""
    message, code = classify(exc)
    if _debug_wanted(ctx):
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    _output.error(message)
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (test runners)
        pass


COMMAND_TABLE: dict[str, tuple[str, str]] = {
    "init": ("init", "Create a repository and write mlvc.toml naming it."),
    "commit": ("commit", "Snapshot files or directories as a commit; print its id."),
    "log": ("log", "Show history, newest first."),
    "ls": (
        "ls",
        "List experiments: id, created, status, user, host, params, latest step and metrics, best.",
    ),
    "ps": ("ls", "List running experiments (a live heartbeat in the last minute)."),
    "show": (
        "show",
        "Show an experiment, checkpoint or commit: params, metrics, environment, files.",
    ),
    "diff": ("diff", "Compare two experiments, checkpoints or commits."),
    "checkout": ("checkout", "Restore files; never overwrites existing files unless -f."),
    "tag": ("tag", "Set, move, delete or list tags."),
    "rm": ("rm", "Remove experiments or checkpoints from view; `mlvc gc --yes` frees their space."),
    "gc": ("gc", "Find (and with --yes, free) data nothing reaches any more."),
    "fsck": (
        "fsck",
        "Verify every pack, index and object, and that every ref reaches only stored data.",
    ),
    "stats": ("stats", "Show how much the repository holds and how much it stores."),
    "upgrade": (
        "upgrade",
        "Upgrade the repository's format to this mlvc's version (also done on first write).",
    ),
    "push": ("remote", "Send refs and what they reach to a remote (default: origin)."),
    "pull": ("remote", "Fetch refs and what they reach from a remote (default: origin)."),
    "clone": ("remote", "Copy a repository into DIR/.mlvc; write DIR/mlvc.toml naming it."),
    "remote": ("remotes", "Name other repositories: add, remove, list (stored in mlvc.toml)."),
    "config": ("config", "Get, set or list the project's settings in mlvc.toml."),
    "plot": (
        "plot",
        "Plot metrics (logged with run.log, or recorded at checkpoints) of experiments.",
    ),
    "sync": (
        "sync",
        "Send the checkpoints and run ends kept in the local outbox to their repositories.",
    ),
}
"""Command name -> (module under ``mlvc.cli``, one-line help). A command's module is imported
only when that command runs (or its own ``--help`` is asked for): ``mlvc --help`` and
``mlvc --version`` import none (they do not even import Typer: :mod:`mlvc.cli._help`), and
``mlvc ls`` imports only :mod:`mlvc.cli.ls`. The help lines here are those of the commands'
docstrings (a test keeps them equal, and another keeps :data:`mlvc.cli._help.ROOT_HELP` equal
to the root help Typer renders from them)."""


def _example_block(doc: str) -> str:
    """Keep an ``Examples:`` section's lines as written (Click would rewrap them into one)."""
    lines = doc.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        if line.strip() != "Examples:":
            continue
        examples: list[str] = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
            if lines[i].strip():
                examples.append("  " + lines[i].strip())
            i += 1
        out += ["", "\b", *examples, ""]
    return "\n".join(out).rstrip() + "\n"


def _load_module(module_name: str) -> dict[str, Any]:
    """Import ``mlvc.cli.<module_name>`` and build the Click commands it registers."""
    import importlib
    import inspect

    import typer.main

    module = importlib.import_module(f"mlvc.cli.{module_name}")
    sub = typer.Typer(rich_markup_mode=None)
    module.register(sub)
    for info in sub.registered_commands:
        doc = (inspect.getdoc(info.callback) if info.callback else info.help) or ""
        info.help = _example_block(doc)
    for group in sub.registered_groups:
        for info in group.typer_instance.registered_commands if group.typer_instance else []:
            doc = (inspect.getdoc(info.callback) if info.callback else info.help) or ""
            info.help = _example_block(doc)
    commands = dict(typer.main.get_group(sub).commands)
    for command in commands.values():
        fast_params(command)
    return commands


class MlvcGroup(TyperGroup):
    """The root group: loads commands on demand; maps their errors through :data:`ERROR_TABLE`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """Parse the root options (with the plain conversions of :func:`fast_params`)."""
        fast_params(self)
        return list(super().parse_args(ctx, args))

    def list_commands(self, ctx: Any) -> list[str]:
        """Every command name, in help order."""
        return list(COMMAND_TABLE) + [n for n in self.commands if n not in COMMAND_TABLE]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        """The command named ``cmd_name`` (its module imported now), or None."""
        if cmd_name not in self.commands and cmd_name in COMMAND_TABLE:
            self.commands.update(_load_module(COMMAND_TABLE[cmd_name][0]))
        return self.commands.get(cmd_name)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        """Find the command ``args`` name; suggest close names for a typo."""
        try:
            return super().resolve_command(ctx, args)
        except _USAGE_ERROR as exc:
            if args and "Did you mean" not in exc.message:
                import difflib

                matches = difflib.get_close_matches(args[0], self.list_commands(ctx))
                if matches:
                    suggestions = ", ".join(repr(m) for m in matches)
                    exc.message = f"{exc.message.rstrip('.')}. Did you mean {suggestions}?"
            raise

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """List commands with their one-line help, without importing any of them."""
        rows = [(name, help_) for name, (_module, help_) in COMMAND_TABLE.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def shell_complete(self, ctx: Any, incomplete: str) -> list[Any]:
        """Complete command names from the table (no import), and the root's options."""
        try:  # Typer vendors Click from 0.22 on
            from typer._click.shell_completion import CompletionItem
        except ImportError:  # pragma: no cover - older Typer
            from click.shell_completion import CompletionItem  # type: ignore[assignment]

        if incomplete.startswith("-"):
            return list(super().shell_complete(ctx, incomplete))
        return [
            CompletionItem(name, help=help_)
            for name, (_module, help_) in COMMAND_TABLE.items()
            if name.startswith(incomplete)
        ]

    def invoke(self, ctx: Any) -> Any:
        """Run the chosen command; turn its errors into a message and an exit code."""
        try:
            return super().invoke(ctx)
        except _PASS_THROUGH:
            raise
        except BrokenPipeError:  # `mlvc ls | head`: the reader left; say nothing more
            _silence_stdout()
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except KeyboardInterrupt:
            _output.error("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:  # noqa: BLE001 - the one place every error becomes an exit code
            raise typer.Exit(report(exc, ctx)) from None


app = typer.Typer(
    cls=MlvcGroup,
    name="mlvc",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Version control for machine learning: experiments, checkpoints and data, "
    "deduplicated, on disk, S3 or GCS.",
    epilog="\b\nExamples:\n  mlvc init\n  mlvc commit data/ -m 'raw data'\n  mlvc ls\n"
    "  mlvc checkout 1a2b3c4@best -o out/",
)


def _print_version(value: bool) -> None:
    if value:
        from mlvc import __version__

        _output.out(f"mlvc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    repo: Annotated[
        str | None,
        typer.Option(
            "--repo",
            "-R",
            metavar="URL",
            help="Repository URL or path (default: mlvc.toml, then MLVC_REPOSITORY, then ./.mlvc).",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only results: no notes, no progress.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Print tracebacks (same as MLVC_DEBUG=1).")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Show version."),
    ] = False,
) -> None:
    """Version control for machine learning."""
    state = CliState(repo_url=repo, quiet=quiet, debug=debug)
    ctx.obj = state
    ctx.call_on_close(state.close)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``mlvc`` console script and ``python -m mlvc``."""
    # mlvc multiplies no matrices, but numpy (imported for the byte-plane codec) starts
    # OpenBLAS's thread pool as it loads, and those threads spin on every core for a while:
    # CPU taken from hashing and compressing on a small machine. Only when the user has not
    # chosen, and only for this process.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        app(args=argv, prog_name="mlvc")
    except KeyboardInterrupt:  # raised outside a command (e.g. while parsing)
        _output.error("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - raised outside a command (an option callback)
        sys.exit(report(exc))
