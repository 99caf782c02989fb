"""A dataset of many small files: mlvc commit and checkout next to tar, cp and DVC, in one run.

The workload: ``--files`` files of 5-50 KB (sizes uniform, seeded), 1,000 to a directory, half
of them incompressible (like JPEG or PNG images), half text (like JSON or CSV annotations).
Generated once per size and seed into ``--data-dir`` and read into the page cache before
each step, so every tool reads from memory.

Steps, each a whole child process (wall clock, interpreter start-up included for mlvc), with
an untimed ``sync`` before each; the tools interleaved within each repetition:

* ``tar -cf`` of the dataset (an archive, nothing hashed or compressed), ``tar -czf`` (gzip)
  and ``tar --zstd -cf`` (zstd's own default level, in a second process), when ``zstd`` is on
  PATH: mlvc hashes and compresses what it stores, so these are its like-for-like
  baselines; then ``tar -xf`` of the plain archive into an empty directory;
* ``cp -r`` of the dataset into an empty directory;
* ``mlvc commit`` (``mlvc_driver.py commit``, through a stat cache) into a new repository;
* the same commit again, nothing changed (stat cache hits);
* ``mlvc checkout`` of that commit into a directory that does not exist yet (bytes compared
  with the source);
* ``dvc add`` in a fresh git workspace and ``dvc checkout`` into it after removing the data,
  when ``dvc`` is on PATH (``pip install dvc``).

Nothing a step wrote is deleted until the repetition ends, and the next repetition starts
``--settle`` seconds after those deletions: ext4 does not reuse an inode freed in the last
30 seconds, and creating files right after many were deleted costs several times the kernel
time (measured here: 25-35 us a file with no deletion nearby, 130-450 us after one),
whichever tool creates them. Each step's user and system CPU seconds are reported beside
its wall clock: on a shared machine the kernel's share is what swings.

``--fresh-ext4 IMAGE`` (root, Linux): each repetition runs on an ext4 file system made anew
in the file ``IMAGE`` (``mkfs.ext4``, mounted through a loop device; a sparse file of 400 KB a
source file, holding only what is written), so that every repetition, and every tool within
it, creates its files on a file system that has never deleted any: the measurement no longer
depends on what the disk went through before (on the shared disk, ``cp -r`` of the same
20,000 files took 0.9 s or 12.7 s).

Targets: commit <= tar's time, checkout <= 1.5x ``cp -r``'s, unchanged re-commit <= 5 s.
Which tar: the figures the targets came with (100,000 such files: tar 95 s, ``cp`` 39 s) are
those of a compressing tar (``tar -czf`` writes 21-28 MB/s here, 2.7 GB in 95 s is 28 MB/s; a
``tar -cf`` moves the same bytes as ``cp``), so commit is judged against ``tar -czf``, and
shown beside ``tar --zstd -cf`` (the same kind of work: read, compress, write one archive,
without hashing) and ``tar -cf`` (no compression, no hashing).

Run: ``python benchmarks/bench_smallfiles.py [--files 20000] [--reps 3]``; writes
``benchmarks/results/smallfiles.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import measure  # noqa: E402
from measure import Usage  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "smallfiles.md"
PER_DIR = 1000
GENERATOR = 1
"""Bumped when the generated content changes (a cached dataset is then made anew)."""


def generate(root: Path, n: int, seed: int) -> Path:
    """The dataset of ``n`` files under ``root`` (made once per size, seed and generator)."""
    data = root / f"smallfiles-{n}-{seed}-g{GENERATOR}"
    done = data / ".complete"
    if done.exists():
        return data / "data"
    shutil.rmtree(data, ignore_errors=True)
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5_000, 50_001, size=n)
    words = [
        b'{"label": ',
        b'"cat"',
        b'"dog"',
        b', "box": [',
        b"], ",
        b'"score": ',
        b"0.",
        b"\n",
    ]
    for i, size in enumerate(sizes):
        d = data / "data" / f"part{i // PER_DIR:04d}"
        if i % PER_DIR == 0:
            d.mkdir(parents=True)
        if i % 2 == 0:
            body = rng.integers(0, 256, size=int(size), dtype=np.uint8).tobytes()
            name = f"img{i:07d}.jpg"
        else:
            picks = rng.integers(0, len(words), size=int(size) // 4)
            digits = rng.integers(0, 10, size=len(picks))
            text = b"".join(words[p] + str(q).encode() for p, q in zip(picks, digits, strict=True))
            body = text[: int(size)]
            name = f"ann{i:07d}.json"
        (d / name).write_bytes(body)
    done.touch()
    return data / "data"


TREE = ROOT
"""The source tree whose mlvc is timed (``--tree``: another checkout, to compare)."""


def timed(cmd: list[str | os.PathLike[str]], cwd: Path | None = None) -> Usage:
    """Run ``cmd`` after a sync; its usage."""
    measure.sync()
    env = {**os.environ, "PYTHONPATH": str(TREE), "OPENBLAS_NUM_THREADS": "1"}
    return measure.run(cmd, cwd=cwd, env=env)


def same_tree(a: Path, b: Path) -> bool:
    """Whether two directories hold the same relative paths with the same bytes."""
    fa, fb = measure.files(a), measure.files(b)
    if [p.relative_to(a) for p in fa] != [p.relative_to(b) for p in fb]:
        return False
    return all(x.read_bytes() == y.read_bytes() for x, y in zip(fa, fb, strict=True))


@contextlib.contextmanager
def fresh_ext4(image: Path, mountpoint: Path, files: int) -> Iterator[Path]:
    """A new, empty ext4 file system in ``image``, mounted at ``mountpoint`` while in use."""
    size = max(1 << 30, files * (400 << 10))  # the data, its copies, a repository, DVC's
    image.parent.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size)
    mountpoint.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    try:
        measure.sync()
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
        image.unlink()


def one_rep(src: Path, work: Path, use_dvc: bool) -> dict[str, Usage]:
    """One repetition of every step; the usage of each (outputs removed only at the end)."""
    out: dict[str, Usage] = {}
    measure.warm(src)
    measure.fresh_dir(work)
    tar_src = ["-C", src.parent, src.name]
    out["tar -cf"] = timed(["tar", "-cf", work / "a.tar", *tar_src])
    out["tar -czf"] = timed(["tar", "-czf", work / "a.tar.gz", *tar_src])
    if shutil.which("zstd") is not None:
        out["tar --zstd -cf"] = timed(["tar", "--zstd", "-cf", work / "a.tar.zst", *tar_src])
    (work / "untar").mkdir()
    out["tar -xf"] = timed(["tar", "-xf", work / "a.tar", "-C", work / "untar"])
    out["cp -r"] = timed(["cp", "-r", src, work / "copy"])

    repo, cache = work / "repo", work / "statcache.sqlite"
    timed([sys.executable, TREE / "benchmarks" / "mlvc_driver.py", "init", repo])
    measure.warm(src)
    py = [sys.executable, TREE / "benchmarks" / "mlvc_driver.py"]
    u = timed([*py, "commit", repo, src, "v1", "--stat-cache", cache])
    out["mlvc commit"] = u
    cid = json.loads(u.stdout.strip().splitlines()[-1])["commit"]
    out["mlvc commit (unchanged)"] = timed([*py, "commit", repo, src, "v2", "--stat-cache", cache])
    out["mlvc checkout"] = timed([*py, "checkout", repo, cid, work / "out"])
    if not same_tree(src, work / "out"):
        raise SystemExit("mlvc checkout differs from the source")

    if use_dvc:
        ws = work / "dvc"
        ws.mkdir()
        env_cmds = [
            ["git", "init", "-q", "-b", "main"],
            ["dvc", "init", "-q"],
            ["dvc", "config", "core.analytics", "false"],
            ["dvc", "config", "core.check_update", "false"],
        ]
        for c in env_cmds:
            subprocess.run(c, cwd=ws, check=True, stdout=subprocess.DEVNULL)
        shutil.copytree(src, ws / "data")
        measure.warm(ws / "data")
        out["dvc add"] = timed(["dvc", "add", "-q", "data"], cwd=ws)
        shutil.rmtree(ws / "data")
        out["dvc checkout"] = timed(["dvc", "checkout", "-q"], cwd=ws)
    shutil.rmtree(work)
    return out


def main() -> None:
    """Run the benchmark and write its report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data-dir", type=Path, default=ROOT / "benchmarks" / ".data")
    ap.add_argument("--no-dvc", action="store_true", help="leave DVC out even if installed")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--tree", type=Path, default=ROOT, help="time the mlvc of this source tree")
    ap.add_argument(
        "--fresh-ext4",
        type=Path,
        metavar="IMAGE",
        help="run each repetition on a new ext4 file system in this file (root; Linux)",
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=30.0,
        help="seconds to wait after a repetition's deletions (ext4 reuses no inode younger)",
    )
    args = ap.parse_args()
    global TREE
    TREE = args.tree.resolve()
    src = generate(args.data_dir, args.files, args.seed)
    nbytes = measure.tree_bytes(src)
    use_dvc = not args.no_dvc and shutil.which("dvc") is not None
    runs: list[dict[str, Usage]] = []
    with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks") as tmp:
        for rep in range(args.reps):
            if args.fresh_ext4 is not None:
                with fresh_ext4(args.fresh_ext4, Path(tmp) / "mnt", args.files) as mnt:
                    runs.append(one_rep(src, mnt / "work", use_dvc))
            else:
                if rep:
                    measure.sync()
                    time.sleep(args.settle)
                runs.append(one_rep(src, Path(tmp) / "work", use_dvc))
            print({k: round(u.wall, 3) for k, u in runs[-1].items()}, flush=True)
    med = {k: measure.median(r[k].wall for r in runs) for k in runs[0]}
    rng = {k: (min(r[k].wall for r in runs), max(r[k].wall for r in runs)) for k in runs[0]}
    user = {k: measure.median(r[k].user for r in runs) for k in runs[0]}
    kernel = {k: measure.median(r[k].sys for r in runs) for k in runs[0]}
    zst = med.get("tar --zstd -cf")
    rows = [
        [
            k,
            f"{med[k]:.2f}",
            f"{rng[k][0]:.2f}-{rng[k][1]:.2f}",
            f"{user[k]:.2f}",
            f"{kernel[k]:.2f}",
            f"{med[k] / med['tar -cf']:.2f}x",
            f"{med[k] / zst:.2f}x" if zst else "-",
            f"{med[k] / med['cp -r']:.2f}x",
        ]
        for k in med
    ]
    checks = [
        ("commit <= tar -czf", med["mlvc commit"] <= med["tar -czf"]),
        ("(beside) commit <= tar -cf", med["mlvc commit"] <= med["tar -cf"]),
        ("checkout <= 1.5x cp -r", med["mlvc checkout"] <= 1.5 * med["cp -r"]),
        ("unchanged re-commit <= 5 s", med["mlvc commit (unchanged)"] <= 5.0),
    ]
    if zst:
        checks.insert(1, ("(beside) commit <= tar --zstd -cf", med["mlvc commit"] <= zst))
    report = "\n".join(
        [
            "# Many small files",
            "",
            f"`python benchmarks/bench_smallfiles.py --files {args.files} --reps {args.reps}"
            f"{' --no-dvc' if args.no_dvc else ''}"
            f"{' --fresh-ext4 ' + str(args.fresh_ext4) if args.fresh_ext4 else ''}`"
            f"{' (tree ' + str(args.tree) + ')' if TREE != ROOT else ''}: "
            f"{args.files} files of 5-50 KB ({measure.human_bytes(nbytes)}), "
            f"{PER_DIR} to a directory; {os.cpu_count()} cores, {platform.python_version()}, "
            f"load average before {os.getloadavg()[0]:.1f}; medians of {args.reps}.",
            "",
            measure.markdown_table(
                [
                    "step",
                    "median s",
                    "range s",
                    "user s",
                    "sys s",
                    "x tar -cf",
                    "x tar --zstd",
                    "x cp -r",
                ],
                rows,
            ),
            "",
            measure.markdown_table(
                ["target", "result"], [[name, measure.verdict(ok)] for name, ok in checks]
            ),
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
