"""The text of ``mlvc --help``, answered without importing Typer.

``mlvc --help`` is the command people run most often to find their way; importing Typer (and
the Click it vendors) costs about as much as starting the interpreter. So the root help is
kept here as Typer renders it for a terminal at least :data:`WIDTH` columns wide (Click
wraps help at 78 columns there, whatever the terminal's width), and printed directly;
narrower terminals get Typer's own rendering. A test keeps :data:`ROOT_HELP` equal to what
Typer prints.
"""

from __future__ import annotations

import shutil

WIDTH = 80
"""Click wraps help text at ``min(columns, 80) - 2``: from 80 columns on, the text is the same."""

ROOT_HELP = """\
Usage: mlvc [OPTIONS] COMMAND [ARGS]...

  Version control for machine learning: experiments, checkpoints and data,
  deduplicated, on disk, S3 or GCS.

Options:
  -R, --repo URL        Repository URL or path (default: mlvc.toml, then
                        MLVC_REPOSITORY, then ./.mlvc).
  -q, --quiet           Print only results: no notes, no progress.
  --debug               Print tracebacks (same as MLVC_DEBUG=1).
  --version             Show version.
  --install-completion  Install completion for the current shell.
  --show-completion     Show completion for the current shell, to copy it or
                        customize the installation.
  -h, --help            Show this message and exit.

Commands:
  init      Create a repository and write mlvc.toml naming it.
  commit    Snapshot files or directories as a commit; print its id.
  log       Show history, newest first.
  ls        List experiments: id, created, status, user, host, params, latest
            step and metrics, best.
  ps        List running experiments (a live heartbeat in the last minute).
  show      Show an experiment, checkpoint or commit: params, metrics,
            environment, files.
  diff      Compare two experiments, checkpoints or commits.
  checkout  Restore files; never overwrites existing files unless -f.
  tag       Set, move, delete or list tags.
  rm        Remove experiments or checkpoints from view; `mlvc gc --yes` frees
            their space.
  gc        Find (and with --yes, free) data nothing reaches any more.
  fsck      Verify every pack, index and object, and that every ref reaches
            only stored data.
  stats     Show how much the repository holds and how much it stores.
  upgrade   Upgrade the repository's format to this mlvc's version (also done
            on first write).
  push      Send refs and what they reach to a remote (default: origin).
  pull      Fetch refs and what they reach from a remote (default: origin).
  clone     Copy a repository into DIR/.mlvc; write DIR/mlvc.toml naming it.
  remote    Name other repositories: add, remove, list (stored in mlvc.toml).
  config    Get, set or list the project's settings in mlvc.toml.
  plot      Plot metrics (logged with run.log, or recorded at checkpoints) of
            experiments.
  sync      Send the checkpoints and run ends kept in the local outbox to
            their repositories.

  Examples:
    mlvc init
    mlvc commit data/ -m 'raw data'
    mlvc ls
    mlvc checkout 1a2b3c4@best -o out/
"""


def fits_terminal() -> bool:
    """True when the terminal is wide enough that Typer would print :data:`ROOT_HELP` as is.

    Measured as Click measures it (``COLUMNS``, else the terminal, else 80).
    """
    return shutil.get_terminal_size().columns >= WIDTH
