"""Compare mlvc with cp, tar+zstd, DVC, git-lfs, restic and borg on the same workloads.

    python benchmarks/compare.py [--reps 3] [--scale S] [--remote] [--tools mlvc borg-zstd ...]

Each tool stores the five versions of each workload into a fresh repository, then restores the
latest version into an empty directory, which is checked byte for byte against the source.
Figures are medians over ``--reps`` repetitions (peak RSS: the largest). Times are wall-clock
seconds of the tool's own commands (untimed: creating the repository and copying a version
into a DVC / git workspace); CPU = user + system seconds of those commands; ``sync`` runs,
untimed, before each timed step. Stored bytes = what a user keeps: the repository, or the
remote for DVC and git-lfs. ``--remote`` adds ``mlvc push`` to a loopback SeaweedFS against
``s3fs.put`` (see ``remote.py``).

Output: ``benchmarks/results/compare.md``, ``compare.json`` and ``compare.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import measure
import remote
import tools
import workloads
from bench_store import machine_description
from measure import human_bytes, markdown_table, verdict

HERE = Path(__file__).resolve().parent
RESTORE_VS_CP_MAX = 2.0
PUSH_VS_PUT_MIN = 0.8
LATER_SENT_MAX = 0.15


@dataclass
class Run:
    """One tool on one workload, one repetition."""

    store: list[measure.Usage]
    stored_bytes: int
    restore: measure.Usage
    verified: bool


@dataclass
class ToolResult:
    """One tool on one workload: medians over repetitions, or the error that stopped it."""

    tool: str
    workload: str
    logical_bytes: int
    store_seconds: list[float] = field(default_factory=list)
    store_total: float = 0.0
    cpu_total: float = 0.0
    stored_bytes: int = 0
    restore_seconds: float = 0.0
    peak_rss: int = 0
    verified: bool = False
    error: str | None = None

    @property
    def ratio(self) -> float:
        """Logical bytes of all versions / stored bytes."""
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else 0.0

    @property
    def ok(self) -> bool:
        """Ran to the end and restored the right bytes."""
        return self.error is None and self.verified

    @staticmethod
    def from_runs(tool: str, w: workloads.Workload, runs: list[Run]) -> ToolResult:
        """Medians of the repetitions."""
        med = measure.median
        return ToolResult(
            tool,
            w.name,
            w.logical_bytes,
            store_seconds=[
                med(u.wall for u in per) for per in zip(*(r.store for r in runs), strict=True)
            ],
            store_total=med(sum(u.wall for u in r.store) for r in runs),
            cpu_total=med(sum(u.cpu for u in r.store) for r in runs),
            stored_bytes=round(med(r.stored_bytes for r in runs)),
            restore_seconds=med(r.restore.wall for r in runs),
            peak_rss=max(max(u.max_rss for u in [*r.store, r.restore]) for r in runs),
            verified=all(r.verified for r in runs),
        )


def run_once(tool: tools.Tool, w: workloads.Workload, expected: list, work: Path) -> Run:
    """Store every version with ``tool``, restore the latest and verify it."""
    ctx = tools.Context(measure.fresh_dir(work))
    ctx.env = {**os.environ, **tool.environment(ctx)}
    tool.setup(ctx)
    usages = []
    for v in w.versions:
        tool.prepare(ctx, v)
        measure.sync()
        usages.append(tool.store(ctx, v))
    measure.sync()
    stored = tool.stored_bytes(ctx)
    dest = ctx.work / "restored"
    tool.prepare_restore(ctx, dest)
    measure.sync()
    restore, root = tool.restore(ctx, dest)
    verified = measure.content_digest(root) == expected
    shutil.rmtree(ctx.work)
    return Run(usages, stored, restore, verified)


def bench_workload(
    w: workloads.Workload, active: list[tools.Tool], reps: int, work: Path
) -> list[ToolResult]:
    """All tools on one workload; repetitions interleave the tools to spread drift evenly."""
    measure.warm(w.root)
    expected = measure.content_digest(w.versions[-1])
    runs: dict[str, list[Run]] = {t.name: [] for t in active}
    errors: dict[str, str] = {}
    for rep in range(reps):
        for tool in active:
            if tool.name in errors:
                continue
            print(f"{w.name}: {tool.name} (repetition {rep + 1} of {reps})", flush=True)
            try:
                runs[tool.name].append(run_once(tool, w, expected, work / tool.name))
            except measure.CommandFailed as exc:
                print(f"  FAILED: {exc}")
                errors[tool.name] = exc.summary
                shutil.rmtree(work / tool.name, ignore_errors=True)
    return [
        ToolResult(t.name, w.name, w.logical_bytes, error=errors[t.name])
        if t.name in errors
        else ToolResult.from_runs(t.name, w, runs[t.name])
        for t in active
    ]


# ---------------------------------------------------------------------------- targets


@dataclass
class Check:
    """A target, what was measured, and the verdict (None: could not be evaluated)."""

    workload: str
    target: str
    measured: str
    passed: bool | None


def lookup(results: list[ToolResult], tool: str) -> ToolResult | None:
    """The result of ``tool`` if it ran successfully."""
    return next((r for r in results if r.tool == tool and r.ok), None)


def compare_check(
    workload: str,
    target: str,
    mlvc: ToolResult | None,
    ref: ToolResult | None,
    ref_name: str,
    metric: str,
    better: str,
) -> Check:
    """mlvc's ``metric`` against a reference tool's (``better``: ">=", ">" or "<=")."""
    if mlvc is None:
        return Check(workload, target, "mlvc did not run or failed", False)
    if ref is None:
        return Check(workload, target, f"{ref_name} did not run or failed", None)
    a, b = getattr(mlvc, metric), getattr(ref, metric)
    passed = {">=": a >= b, ">": a > b, "<=": a <= b}[better]
    unit = "s" if "total" in metric else "x"
    return Check(workload, target, f"mlvc {a:.2f}{unit} vs {ref_name} {b:.2f}{unit}", passed)


def workload_checks(name: str, results: list[ToolResult]) -> list[Check]:
    """The comparison targets of one workload."""
    mlvc = lookup(results, "mlvc")
    borg_zstd, borg_none = lookup(results, "borg-zstd"), lookup(results, "borg-none")
    checks = []
    if name == "frozen":
        checks.append(
            compare_check(
                name, "dedup ratio >= borg-zstd's", mlvc, borg_zstd, "borg-zstd", "ratio", ">="
            )
        )
        checks.append(
            compare_check(
                name, "store time <= borg-none's", mlvc, borg_none, "borg-none", "store_total", "<="
            )
        )
    elif name == "full":
        checks.append(
            compare_check(
                name, "dedup ratio > borg-zstd's", mlvc, borg_zstd, "borg-zstd", "ratio", ">"
            )
        )
    elif name == "csv":
        checks.append(
            compare_check(
                name,
                "dedup ratio >= restic's",
                mlvc,
                lookup(results, "restic"),
                "restic",
                "ratio",
                ">=",
            )
        )
        checks.append(
            compare_check(
                name, "store time <= borg-zstd's", mlvc, borg_zstd, "borg-zstd", "store_total", "<="
            )
        )
    cp = lookup(results, "cp")
    if mlvc is None:
        checks.append(
            Check(
                name,
                f"restore latest <= {RESTORE_VS_CP_MAX:g}x cp",
                "mlvc did not run or failed",
                False,
            )
        )
    elif cp is None:
        checks.append(
            Check(
                name,
                f"restore latest <= {RESTORE_VS_CP_MAX:g}x cp",
                "cp did not run or failed",
                None,
            )
        )
    else:
        factor = mlvc.restore_seconds / cp.restore_seconds
        checks.append(
            Check(
                name,
                f"restore latest <= {RESTORE_VS_CP_MAX:g}x cp",
                f"{factor:.2f}x cp ({mlvc.restore_seconds:.2f} s vs {cp.restore_seconds:.2f} s)",
                factor <= RESTORE_VS_CP_MAX,
            )
        )
    return checks


def remote_checks(r: remote.RemoteResult) -> list[Check]:
    """Push throughput and incremental push size."""
    if r.error:
        return [Check("frozen (remote)", "mlvc push", f"failed: {r.error}", False)]
    later = r.later_sent_fraction
    return [
        Check(
            "frozen (remote)",
            f"push >= {PUSH_VS_PUT_MIN:g}x s3fs.put throughput (v1)",
            f"{r.throughput_ratio:.2f}x",
            r.throughput_ratio >= PUSH_VS_PUT_MIN,
        ),
        Check(
            "frozen (remote)",
            f"each later checkpoint sends <= {LATER_SENT_MAX:.0%} of its size",
            "max "
            + f"{max(later):.1%} ("
            + ", ".join(f"v{i + 2} {f:.1%}" for i, f in enumerate(later))
            + ")",
            max(later) <= LATER_SENT_MAX,
        ),
    ]


# ---------------------------------------------------------------------------- report


def results_table(results: list[ToolResult]) -> str:
    """One workload's figures, a row per tool."""
    cp = lookup(results, "cp")
    rows = []
    for r in results:
        if r.error:
            rows.append([r.tool, f"**FAILED**: {r.error[:200]}"] + [""] * 8)
            continue
        vs_cp = f"{r.restore_seconds / cp.restore_seconds:.2f}x" if cp else "n/a"
        rows.append(
            [
                r.tool,
                f"{r.store_total:.2f}",
                " / ".join(f"{s:.2f}" for s in r.store_seconds),
                f"{r.cpu_total:.2f}",
                human_bytes(r.stored_bytes),
                f"{r.ratio:.2f}",
                f"{r.restore_seconds:.2f}",
                vs_cp,
                human_bytes(r.peak_rss),
                "yes" if r.verified else "**NO**",
            ]
        )
    return markdown_table(
        [
            "tool",
            "store s (total)",
            "store s per version",
            "CPU s",
            "stored",
            "ratio",
            "restore s",
            "restore vs cp",
            "peak RSS",
            "restored bytes equal",
        ],
        rows,
    )


def remote_table(r: remote.RemoteResult) -> str:
    """Per-version push / put figures."""
    rows = []
    for i, size in enumerate(r.version_bytes):
        rows.append(
            [
                f"v{i + 1}",
                human_bytes(size),
                f"{r.push_seconds[i]:.2f}",
                f"{measure.gbps(size, r.push_seconds[i]) * 1000:.0f}",
                human_bytes(r.push_sent_bytes[i]),
                f"{r.push_sent_bytes[i] / size:.1%}",
                f"{r.put_seconds[i]:.2f}",
                f"{measure.gbps(size, r.put_seconds[i]) * 1000:.0f}",
            ]
        )
    table = markdown_table(
        [
            "version",
            "size",
            "mlvc push s",
            "push MB/s (logical)",
            "bytes sent",
            "sent / size",
            "s3fs.put s",
            "put MB/s",
        ],
        rows,
    )
    latest = r.version_bytes[-1]
    return (
        table
        + "\n\nCheckout of the latest version straight from the bucket "
        + f"(`mlvc --repo s3://... checkout`, bytes verified): {r.checkout_seconds:.2f} s "
        + f"({measure.gbps(latest, r.checkout_seconds) * 1000:.0f} MB/s), next to "
        + f"`s3fs.get` of the same files: {r.get_seconds:.2f} s "
        + f"({measure.gbps(latest, r.get_seconds) * 1000:.0f} MB/s)."
    )


def render_markdown(
    meta: dict,
    by_workload: dict[str, list[ToolResult]],
    checks: list[Check],
    remote_result: remote.RemoteResult | None,
    skipped: dict[str, str],
) -> str:
    """The whole report."""
    parts = [
        "# mlvc compared with other tools",
        "",
        f"Run {meta['date']} on {meta['machine']}: "
        f"`python benchmarks/compare.py --reps {meta['reps']} --scale {meta['scale']}"
        f"{' --remote' if meta['remote'] else ''}`. mlvc via {meta['mlvc_frontend']}.",
        "",
        "Medians of the repetitions (peak RSS: the largest). Times are wall-clock seconds of the "
        "tool's commands, page cache warm, no fsync forced; ratio = logical bytes of the 5 "
        "versions / stored bytes (for DVC and git-lfs: the remote).",
        "",
        "## Targets",
        "",
        markdown_table(
            ["workload", "target", "measured", "result"],
            [[c.workload, c.target, c.measured, verdict(c.passed)] for c in checks],
        ),
    ]
    for name, results in by_workload.items():
        logical = results[0].logical_bytes
        parts += [
            "",
            f"## {name} ({human_bytes(logical)} in 5 versions)",
            "",
            results_table(results),
        ]
    if remote_result is not None and not remote_result.error:
        parts += [
            "",
            "## Remote: mlvc push vs s3fs.put (SeaweedFS on 127.0.0.1, frozen)",
            "",
            remote_table(remote_result),
        ]
    if skipped:
        parts += ["", "Skipped: " + "; ".join(f"{t} ({why})" for t, why in skipped.items()) + "."]
    return "\n".join(parts) + "\n"


def render_chart(by_workload: dict[str, list[ToolResult]], path: Path) -> None:
    """Grouped bars per workload: stored bytes, total store time and restore time (log scales)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(by_workload)
    tool_names = [r.tool for r in next(iter(by_workload.values()))]
    panels = [
        ("stored (MiB)", lambda r: r.stored_bytes / measure.MiB),
        ("store time, 5 versions (s)", lambda r: r.store_total),
        ("restore latest (s)", lambda r: r.restore_seconds),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.8))
    width = 0.8 / len(tool_names)
    x = np.arange(len(names))
    for ax, (label, value) in zip(axes, panels, strict=True):
        for i, tool in enumerate(tool_names):
            heights = [
                next((value(r) for r in by_workload[n] if r.tool == tool and r.ok), 0)
                for n in names
            ]
            ax.bar(x + (i - (len(tool_names) - 1) / 2) * width, heights, width, label=tool)
        ax.set_xticks(x, names)
        ax.set_yscale("log")
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(tool_names), frameon=False)
    fig.suptitle("mlvc vs other tools (lower is better; failed or missing tools have no bar)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    """Command-line arguments."""
    names = [t.name for t in tools.all_tools()]
    parser = argparse.ArgumentParser(description="Compare mlvc with other storage tools.")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (medians reported)")
    parser.add_argument("--scale", type=float, default=1.0, help="workload size factor")
    parser.add_argument("--remote", action="store_true", help="also push to a local SeaweedFS")
    parser.add_argument("--tools", nargs="*", choices=names, default=names)
    parser.add_argument(
        "--mlvc-frontend",
        choices=("auto", "cli", "driver"),
        default="auto",
        help="auto: the `mlvc` CLI when on PATH, else mlvc_driver.py",
    )
    parser.add_argument(
        "--workloads", nargs="*", choices=workloads.WORKLOADS, default=list(workloads.WORKLOADS)
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("MLVC_BENCH_DATA", HERE / ".data"))
    )
    parser.add_argument("--work-dir", type=Path, default=HERE / ".work")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def available_tools(
    selected: list[str], mlvc_frontend: str
) -> tuple[list[tools.Tool], dict[str, str]]:
    """The selected tools that can run here, and why the others cannot."""
    active, skipped = [], {}
    for tool in tools.all_tools(mlvc_frontend):
        if tool.name not in selected:
            continue
        reason = tool.missing()
        if reason:
            print(f"skip {tool.name}: {reason}")
            skipped[tool.name] = reason
        else:
            active.append(tool)
    return active, skipped


def main() -> None:
    """Run the comparison and write the reports."""
    args = parse_args()
    active, skipped = available_tools(args.tools, args.mlvc_frontend)
    data = args.data_dir / f"scale-{args.scale:g}"
    work = measure.fresh_dir(args.work_dir / "compare")
    mlvc_frontend = tools.Mlvc(args.mlvc_frontend).describe()
    print(f"mlvc via {mlvc_frontend}")
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine_description(),
        "reps": args.reps,
        "scale": args.scale,
        "remote": args.remote,
        "seed": args.seed,
        "mlvc_frontend": mlvc_frontend,
    }
    by_workload: dict[str, list[ToolResult]] = {}
    checks: list[Check] = []
    remote_result = None
    try:
        for name in args.workloads:
            w = workloads.ensure(name, data, args.scale, args.seed)
            by_workload[name] = bench_workload(w, active, args.reps, work)
            checks += workload_checks(name, by_workload[name])
        if args.remote:
            w = workloads.ensure("frozen", data, args.scale, args.seed)
            remote_result = remote.bench_remote(w, work, args.reps)
            if remote_result is not None:
                checks += remote_checks(remote_result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.results.mkdir(parents=True, exist_ok=True)
    report = render_markdown(meta, by_workload, checks, remote_result, skipped)
    (args.results / "compare.md").write_text(report)
    payload = {
        "meta": meta,
        "skipped": skipped,
        "results": {
            n: [asdict(r) | {"ratio": r.ratio} for r in rs] for n, rs in by_workload.items()
        },
        "remote": None
        if remote_result is None
        else asdict(remote_result)
        | (
            {}
            if remote_result.error
            else {
                "throughput_ratio": remote_result.throughput_ratio,
                "later_sent_fraction": remote_result.later_sent_fraction,
            }
        ),
        "targets": [asdict(c) for c in checks],
    }
    (args.results / "compare.json").write_text(json.dumps(payload, indent=1))
    if by_workload and active:
        render_chart(by_workload, args.results / "compare.png")
    print(report)


if __name__ == "__main__":
    main()
