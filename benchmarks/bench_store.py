"""Store benchmarks: mlvc commit / restore against ``cp -r`` on the same machine, in one run.

    python benchmarks/bench_store.py [--scale S] [--reps 3] [--workloads frozen full csv]

For each workload (see ``workloads.py``) it measures, in this order and with ``sync`` (untimed)
between steps so one step's writeback does not land on the next (the whole sequence is repeated
``--reps`` times and the tables show medians):

* ``cp -r`` of each version into a fresh directory (the baseline), and separately the ``sync``
  after it. Sources are read once beforehand, so cp and mlvc both read from the page cache, and
  neither forces its writes to disk: ratios compare like with like, absolute speeds are
  page-cache speeds.
* mlvc commit of each version into one repository (``mlvc_driver.py`` in a child process per
  operation; time = the library call, RSS = that process's peak), the stored bytes (apparent
  size of the repository directory) and the dedup ratio (logical bytes of all versions / stored).
* mlvc checkout of the latest version (verified byte for byte against the source).
* re-commit of the latest version's directory (unchanged tree, stat cache hits): ms per GiB.
* re-commit of a fresh copy of it (same bytes in a new path, nothing to skip): GB/s.
* commit of a single large file (4 GiB x scale) into a new repository: peak RSS.

Results go to ``benchmarks/results/store.md`` and ``store.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import measure
import workloads
from measure import GiB, Usage, gbps, human_bytes, markdown_table, verdict

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "mlvc_driver.py"

# Targets (see README.md). Speeds in GB/s (10^9 bytes/s).
NEW_WEIGHTS_GBPS = 0.8
NEW_WEIGHTS_VS_CP = 0.45
UNCHANGED_DATA_GBPS = 2.0
UNCHANGED_TREE_MS_PER_GIB = 50.0
RESTORE_VS_CP = 0.5
DEDUP_TARGETS = {"frozen": 3.5, "csv": 9.0}
BIG_FILE_RSS_BYTES = 300e6


@dataclass
class Step:
    """One measured mlvc operation: library-call seconds plus the whole child process's usage."""

    elapsed: float
    wall: float
    cpu: float
    max_rss: int

    @staticmethod
    def combine(steps: list[Step]) -> Step:
        """Median times of repeated runs, with the largest peak RSS."""
        return Step(
            measure.median(s.elapsed for s in steps),
            measure.median(s.wall for s in steps),
            measure.median(s.cpu for s in steps),
            max(s.max_rss for s in steps),
        )


@dataclass
class WorkloadResult:
    """Everything measured for one workload."""

    name: str
    version_bytes: list[int]
    cp_seconds: list[float] = field(default_factory=list)
    cp_sync_seconds: list[float] = field(default_factory=list)
    commits: list[Step] = field(default_factory=list)
    stored_bytes: int = 0
    restore: Step | None = None
    restore_verified: bool = False
    unchanged_tree: Step | None = None
    unchanged_data: Step | None = None

    @property
    def logical_bytes(self) -> int:
        """Bytes of all versions together."""
        return sum(self.version_bytes)

    @property
    def dedup_ratio(self) -> float:
        """Logical bytes / stored bytes."""
        return self.logical_bytes / self.stored_bytes

    @staticmethod
    def combine(reps: list[WorkloadResult]) -> WorkloadResult:
        """Medians over repetitions (peak RSS: the largest; verification: all must pass)."""
        first = reps[0]
        return WorkloadResult(
            first.name,
            first.version_bytes,
            cp_seconds=[measure.median(c) for c in zip(*(r.cp_seconds for r in reps), strict=True)],
            cp_sync_seconds=[
                measure.median(c) for c in zip(*(r.cp_sync_seconds for r in reps), strict=True)
            ],
            commits=[Step.combine(list(c)) for c in zip(*(r.commits for r in reps), strict=True)],
            stored_bytes=round(measure.median(r.stored_bytes for r in reps)),
            restore=Step.combine([r.restore for r in reps]),
            restore_verified=all(r.restore_verified for r in reps),
            unchanged_tree=Step.combine([r.unchanged_tree for r in reps]),
            unchanged_data=Step.combine([r.unchanged_data for r in reps]),
        )


class Mlvc:
    """Runs ``mlvc_driver.py`` operations in child processes."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.stat_cache = repo.with_name(repo.name + ".statcache.sqlite")
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (os.environ.get("PYTHONPATH"), str(HERE.parent)) if p
        )

    def _call(self, *args: object) -> tuple[dict[str, object], Usage]:
        usage = measure.run([sys.executable, DRIVER, *args], env=self.env)
        return json.loads(usage.stdout.strip().splitlines()[-1]), usage

    def _step(self, *args: object) -> tuple[dict[str, object], Step]:
        out, usage = self._call(*args)
        return out, Step(float(out["elapsed"]), usage.wall, usage.cpu, usage.max_rss)

    def init(self) -> None:
        """Create the repository (and forget any stat cache of an earlier one)."""
        shutil.rmtree(self.repo, ignore_errors=True)
        for p in self.stat_cache.parent.glob(self.stat_cache.name + "*"):
            p.unlink()
        self._call("init", self.repo)

    def commit(self, src: Path, message: str) -> tuple[str, Step]:
        """Commit ``src``; returns the commit id and the measurement."""
        out, step = self._step("commit", self.repo, src, message, "--stat-cache", self.stat_cache)
        return str(out["commit"]), step

    def checkout(self, commit: str, dest: Path) -> Step:
        """Restore ``commit`` into ``dest``."""
        return self._step("checkout", self.repo, commit, dest)[1]


def bench_cp(w: workloads.Workload, work: Path, result: WorkloadResult) -> None:
    """``cp -r`` each version into a fresh directory; time the copy and the sync after it."""
    dest = measure.fresh_dir(work / "cp")
    for v in w.versions:
        measure.sync()
        result.cp_seconds.append(measure.run(["cp", "-r", v, dest / v.name]).wall)
        start = time.perf_counter()
        measure.sync()
        result.cp_sync_seconds.append(result.cp_seconds[-1] + time.perf_counter() - start)
    shutil.rmtree(dest)


def bench_mlvc(w: workloads.Workload, work: Path, result: WorkloadResult, log) -> None:
    """Commit every version, restore the latest, then re-commit it twice (see module doc)."""
    mlvc = Mlvc(work / "repo")
    mlvc.init()
    commit = ""
    for v in w.versions:
        measure.sync()
        commit, step = mlvc.commit(v, v.name)
        result.commits.append(step)
        rss = human_bytes(step.max_rss)
        log(f"  {w.name} {v.name}: commit {step.elapsed:.2f} s, peak RSS {rss}")
    measure.sync()
    result.stored_bytes = measure.tree_bytes(mlvc.repo)

    restored = work / "restored"
    shutil.rmtree(restored, ignore_errors=True)
    result.restore = mlvc.checkout(commit, restored)
    expected = measure.content_digest(w.versions[-1])
    result.restore_verified = measure.content_digest(restored) == expected
    shutil.rmtree(restored)

    measure.sync()
    result.unchanged_tree = mlvc.commit(w.versions[-1], "unchanged tree")[1]

    copy = work / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(w.versions[-1], copy, copy_function=shutil.copy)
    measure.sync()
    result.unchanged_data = mlvc.commit(copy, "unchanged data, new path")[1]
    shutil.rmtree(copy)
    shutil.rmtree(mlvc.repo)


def bench_workload(w: workloads.Workload, work: Path, reps: int, log) -> WorkloadResult:
    """cp baseline and mlvc on one workload, repeated ``reps`` times (medians)."""
    measure.warm(w.root)
    results = []
    for rep in range(reps):
        log(f" {w.name}: repetition {rep + 1} of {reps}")
        result = WorkloadResult(w.name, w.version_bytes)
        bench_cp(w, work, result)
        bench_mlvc(w, work, result, log)
        results.append(result)
    return WorkloadResult.combine(results)


def bench_big_file(w: workloads.Workload, work: Path) -> Step:
    """Commit one large file into a fresh repository; the interesting figure is peak RSS."""
    measure.warm(w.root)
    mlvc = Mlvc(work / "big-repo")
    mlvc.init()
    measure.sync()
    step = mlvc.commit(w.versions[0], "big file")[1]
    shutil.rmtree(mlvc.repo)
    return step


# ---------------------------------------------------------------------------- targets


@dataclass
class Check:
    """One target with the measured value and the verdict."""

    target: str
    workload: str
    measured: str
    passed: bool


def speed_vs_cp(result: WorkloadResult, versions: slice) -> tuple[float, float]:
    """(mlvc GB/s, mlvc speed / cp speed) over the given versions."""
    nbytes = sum(result.version_bytes[versions])
    mlvc_s = sum(s.elapsed for s in result.commits[versions])
    cp_s = sum(result.cp_seconds[versions])
    return gbps(nbytes, mlvc_s), cp_s / mlvc_s


def checks_for(r: WorkloadResult) -> list[Check]:
    """The targets that apply to one workload."""
    checks = []
    latest = r.version_bytes[-1]
    new_weights = {"frozen": slice(0, 1), "full": slice(0, None)}.get(r.name)
    if new_weights is not None:
        speed, vs_cp = speed_vs_cp(r, new_weights)
        what = "v1" if r.name == "frozen" else "v1-v5"
        checks.append(
            Check(
                f"new weights committed >= {NEW_WEIGHTS_GBPS} GB/s and >= "
                f"{NEW_WEIGHTS_VS_CP}x cp ({what})",
                r.name,
                f"{speed:.2f} GB/s, {vs_cp:.2f}x cp",
                speed >= NEW_WEIGHTS_GBPS and vs_cp >= NEW_WEIGHTS_VS_CP,
            )
        )
    speed = gbps(latest, r.unchanged_data.elapsed)
    checks.append(
        Check(
            f"unchanged data (new path) re-committed >= {UNCHANGED_DATA_GBPS} GB/s",
            r.name,
            f"{speed:.2f} GB/s",
            speed >= UNCHANGED_DATA_GBPS,
        )
    )
    ms_per_gib = r.unchanged_tree.elapsed * 1000 / (latest / GiB)
    checks.append(
        Check(
            f"unchanged tree re-committed < {UNCHANGED_TREE_MS_PER_GIB:.0f} ms/GiB",
            r.name,
            f"{ms_per_gib:.1f} ms/GiB",
            ms_per_gib < UNCHANGED_TREE_MS_PER_GIB,
        )
    )
    vs_cp = r.cp_seconds[-1] / r.restore.elapsed
    checks.append(
        Check(
            f"restore of latest >= {RESTORE_VS_CP}x cp speed (bytes verified)",
            r.name,
            f"{vs_cp:.2f}x cp, {'verified' if r.restore_verified else 'MISMATCH'}",
            vs_cp >= RESTORE_VS_CP and r.restore_verified,
        )
    )
    if r.name in DEDUP_TARGETS:
        checks.append(
            Check(
                f"dedup ratio >= {DEDUP_TARGETS[r.name]}",
                r.name,
                f"{r.dedup_ratio:.2f}",
                r.dedup_ratio >= DEDUP_TARGETS[r.name],
            )
        )
    return checks


def big_file_check(step: Step, nbytes: int) -> Check:
    """Peak RSS while committing the large file."""
    return Check(
        f"peak RSS < {BIG_FILE_RSS_BYTES / 1e6:.0f} MB committing one {human_bytes(nbytes)} file",
        "big",
        f"{step.max_rss / 1e6:.0f} MB ({gbps(nbytes, step.elapsed):.2f} GB/s)",
        step.max_rss < BIG_FILE_RSS_BYTES,
    )


# ---------------------------------------------------------------------------- report


def workload_table(r: WorkloadResult) -> str:
    """Per-version figures for one workload."""
    rows = []
    for i, step in enumerate(r.commits):
        nbytes = r.version_bytes[i]
        rows.append(
            [
                f"v{i + 1}",
                human_bytes(nbytes),
                f"{r.cp_seconds[i]:.3f}",
                f"{r.cp_sync_seconds[i]:.3f}",
                f"{gbps(nbytes, r.cp_seconds[i]):.2f}",
                f"{step.elapsed:.3f}",
                f"{gbps(nbytes, step.elapsed):.2f}",
                f"{r.cp_seconds[i] / step.elapsed:.2f}x",
                f"{step.wall:.2f}",
                f"{step.cpu:.2f}",
                human_bytes(step.max_rss),
            ]
        )
    return markdown_table(
        [
            "version",
            "size",
            "cp s",
            "cp+sync s",
            "cp GB/s",
            "mlvc commit s",
            "mlvc GB/s",
            "mlvc speed vs cp",
            "mlvc process s",
            "mlvc CPU s",
            "mlvc peak RSS",
        ],
        rows,
    )


def summary_table(results: list[WorkloadResult]) -> str:
    """Storage, restore and re-commit figures per workload."""
    rows = []
    for r in results:
        latest = r.version_bytes[-1]
        rows.append(
            [
                r.name,
                human_bytes(r.logical_bytes),
                human_bytes(r.stored_bytes),
                f"{r.dedup_ratio:.2f}",
                f"{r.cp_seconds[-1]:.3f}",
                f"{r.restore.elapsed:.3f}",
                f"{r.cp_seconds[-1] / r.restore.elapsed:.2f}x",
                "yes" if r.restore_verified else "**NO**",
                human_bytes(r.restore.max_rss),
                f"{gbps(latest, r.unchanged_data.elapsed):.2f}",
                f"{r.unchanged_tree.elapsed * 1000 / (latest / GiB):.1f}",
            ]
        )
    return markdown_table(
        [
            "workload",
            "logical (5 versions)",
            "stored",
            "dedup ratio",
            "cp latest s",
            "restore latest s",
            "restore speed vs cp",
            "restored bytes equal",
            "restore peak RSS",
            "unchanged data GB/s",
            "unchanged tree ms/GiB",
        ],
        rows,
    )


def render_markdown(
    meta: dict[str, object],
    results: list[WorkloadResult],
    checks: list[Check],
    big: tuple[Step, int] | None,
) -> str:
    """The whole report."""
    parts = [
        "# mlvc store benchmark",
        "",
        f"Run {meta['date']} on {meta['machine']}: "
        f"`python benchmarks/bench_store.py --scale {meta['scale']} --reps {meta['reps']}`.",
        "",
        "Timings are wall-clock seconds, medians of the repetitions (peak RSS: the largest). "
        "Sources are read into the page cache first; neither cp nor mlvc syncs, so both measure "
        "page-cache speed (the `cp+sync` column adds the `sync` after each copy). mlvc times "
        "are the library call inside its child process (interpreter start-up and imports "
        "excluded; `mlvc process s` includes them). "
        "GB = 10^9 bytes. Stored = apparent size of the repository directory.",
        "",
        "## Targets",
        "",
        markdown_table(
            ["target", "workload", "measured", "result"],
            [[c.target, c.workload, c.measured, verdict(c.passed)] for c in checks],
        ),
        "",
        "## Storage, restore and re-commit",
        "",
        summary_table(results),
    ]
    for r in results:
        parts += ["", f"## {r.name}: commit of each version", "", workload_table(r)]
    if big is not None:
        step, nbytes = big
        parts += [
            "",
            "## Large file",
            "",
            f"One {human_bytes(nbytes)} file committed in {step.elapsed:.2f} s "
            f"({gbps(nbytes, step.elapsed):.2f} GB/s), peak RSS {human_bytes(step.max_rss)}.",
        ]
    if meta["scale"] != 1.0:
        parts += [
            "",
            f"Scale {meta['scale']}: files are small, so fixed costs dominate; the "
            "targets are meant for scale 1.",
        ]
    return "\n".join(parts) + "\n"


def machine_description() -> str:
    """CPU count, memory and Python of this machine."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return (
        f"{platform.machine()} Linux, {os.cpu_count()} cores, {human_bytes(mem)} RAM, "
        f"Python {platform.python_version()}"
    )


def parse_args() -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description="mlvc store benchmark (vs cp -r)")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="size factor for every workload (e.g. 0.05 for a quick run)",
    )
    parser.add_argument(
        "--workloads", nargs="*", choices=workloads.WORKLOADS, default=list(workloads.WORKLOADS)
    )
    parser.add_argument(
        "--no-big-file",
        action="store_true",
        help="skip the peak-RSS commit of one 4 GiB (x scale) file",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("MLVC_BENCH_DATA", HERE / ".data")),
        help="where generated workloads are cached (env MLVC_BENCH_DATA)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=HERE / ".work",
        help="scratch space for copies and repositories (emptied at the end)",
    )
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument(
        "--reps",
        type=int,
        default=3,
        help="repetitions per workload; tables show medians (default 3)",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    """Run the benchmark and write the reports."""
    args = parse_args()
    data = args.data_dir / f"scale-{args.scale:g}"
    work = measure.fresh_dir(args.work_dir / "store")
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine_description(),
        "scale": args.scale,
        "reps": args.reps,
        "seed": args.seed,
    }
    results, checks, big = [], [], None
    try:
        for name in args.workloads:
            w = workloads.ensure(name, data, args.scale, args.seed)
            print(f"{name}: {len(w.versions)} versions, {human_bytes(w.logical_bytes)} in all")
            results.append(bench_workload(w, work, args.reps, print))
            checks += checks_for(results[-1])
        if not args.no_big_file:
            w = workloads.ensure("big", data, args.scale, args.seed)
            big = (bench_big_file(w, work), w.version_bytes[0])
            checks.append(big_file_check(*big))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.results.mkdir(parents=True, exist_ok=True)
    report = render_markdown(meta, results, checks, big)
    (args.results / "store.md").write_text(report)
    payload = {
        "meta": meta,
        "workloads": [asdict(r) | {"dedup_ratio": r.dedup_ratio} for r in results],
        "big_file": None if big is None else {"bytes": big[1], **asdict(big[0])},
        "targets": [asdict(c) for c in checks],
    }
    (args.results / "store.json").write_text(json.dumps(payload, indent=1))
    print(report)


if __name__ == "__main__":
    main()
