"""Drive one mlvc operation through the Python API, as a child process the benchmarks measure.

    python benchmarks/mlvc_driver.py init REPO
    python benchmarks/mlvc_driver.py commit REPO SRC_DIR MESSAGE [--stat-cache PATH]
    python benchmarks/mlvc_driver.py checkout REPO COMMIT_HEX DEST

``commit`` prints ``{"commit": HEX, "elapsed": SECONDS}`` and ``checkout`` prints
``{"elapsed": SECONDS}``: the time of the library call alone, without interpreter start-up,
imports or opening the repository (the caller measures the whole process separately).
"""

from __future__ import annotations

import argparse
import json
import os
import time

# As the mlvc CLI does: OpenBLAS threads (started when numpy loads) would spin on the cores
# mlvc hashes and compresses on.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from mlvc_core import restore  # noqa: E402
from mlvc_core.history import commit_paths  # noqa: E402
from mlvc_core.repository import Repository  # noqa: E402


def init(args: argparse.Namespace) -> dict[str, object]:
    """Create an empty repository."""
    start = time.perf_counter()
    Repository.init(args.repo).close()
    return {"elapsed": time.perf_counter() - start}


def commit(args: argparse.Namespace) -> dict[str, object]:
    """Commit the contents of ``src`` on branch ``main``, optionally through a stat cache."""
    repo = Repository.open(args.repo)
    stat_cache = None
    if args.stat_cache:
        from mlvc_core.statcache import StatCache

        stat_cache = StatCache(args.stat_cache)
    try:
        start = time.perf_counter()
        if stat_cache is None:
            cid = commit_paths(repo, [args.src], message=args.message, branch="main")
        else:
            cid = commit_paths(
                repo, [args.src], message=args.message, branch="main", stat_cache=stat_cache
            )
            stat_cache.close()
        elapsed = time.perf_counter() - start
    finally:
        repo.close()
    return {"commit": cid.hex(), "elapsed": elapsed}


def checkout(args: argparse.Namespace) -> dict[str, object]:
    """Restore the files of a commit into ``dest``."""
    repo = Repository.open(args.repo)
    try:
        start = time.perf_counter()
        restore.checkout(repo, args.commit, args.dest)
        elapsed = time.perf_counter() - start
    finally:
        repo.close()
    return {"elapsed": elapsed}


def parse_args() -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description="Run one mlvc operation and time it.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init")
    p.add_argument("repo")
    p.set_defaults(func=init)
    p = sub.add_parser("commit")
    p.add_argument("repo")
    p.add_argument("src")
    p.add_argument("message")
    p.add_argument("--stat-cache", help="SQLite file of a stat cache to consult and update")
    p.set_defaults(func=commit)
    p = sub.add_parser("checkout")
    p.add_argument("repo")
    p.add_argument("commit")
    p.add_argument("dest")
    p.set_defaults(func=checkout)
    return parser.parse_args()


def main() -> None:
    """Run the requested operation and print its result as JSON."""
    args = parse_args()
    print(json.dumps(args.func(args)))


if __name__ == "__main__":
    main()
