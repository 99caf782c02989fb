"""Start-up cost of the command line, next to a bare interpreter, measured in the same run.

Times (wall clock, fresh process each time, runs interleaved so machine load hits all alike):

* ``python -c pass`` - the floor every Python CLI pays;
* ``mlvc --help`` and ``mlvc --version`` - targets: at most 2x the floor;
* ``mlvc ls`` on a small repository (two tracked experiments, a few commits) - target: at
  most 3x the floor.

``mlvc`` runs as ``python -m mlvc`` from this source tree, its bytecode cached (as an installed
package's is) in the temporary directory. ``--profile`` adds the slowest
imports of ``mlvc --help`` and ``mlvc ls`` (``python -X importtime``).

Run: ``python benchmarks/bench_cli.py [--reps 15] [--profile]``; writes
``benchmarks/results/cli.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "cli.md"


TREE = ROOT
"""The source tree whose ``mlvc`` is timed (``--tree``)."""


def _env(cache: Path) -> dict[str, str]:
    # Bytecode is cached (in the temporary directory) as an installed package's would be: a
    # PYTHONDONTWRITEBYTECODE environment would otherwise compile mlvc from source every run.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {
        **env,
        "PYTHONPATH": str(TREE),
        "MLVC_CACHE_DIR": str(cache),
        "PYTHONPYCACHEPREFIX": str(cache.parent / "pycache"),
    }


def make_project(d: Path) -> None:
    env = _env(d / "cache")
    mlvc = [sys.executable, "-m", "mlvc", "-q"]
    subprocess.run([*mlvc, "init"], cwd=d, env=env, check=True)
    (d / "data").mkdir()
    for i in range(3):
        (d / "data" / f"part{i}.csv").write_text("x,y\n" + f"{i},{i * 2}\n" * 1000)
        subprocess.run([*mlvc, "commit", "data", "-m", f"v{i}"], cwd=d, env=env, check=True)
    script = (
        "import mlvc, pathlib\n"
        "code = pathlib.Path('code'); code.mkdir(exist_ok=True)\n"
        "(code / 'train.py').write_text('pass')\n"
        "for lr in (0.1, 0.01):\n"
        "    with mlvc.track(path=code, params={'lr': lr}, primary_metric=('loss', 'minimize'),"
        " strict=True) as run:\n"
        "        for step in range(3):\n"
        "            (code / 'w.bin').write_bytes(bytes([step]) * 4096)\n"
        "            loss = lr / (step + 1)\n"
        "            run.checkpoint(path=code / 'w.bin', step=step, metrics={'loss': loss})\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=d, env=env, check=True)
    subprocess.run([*mlvc, "ls"], cwd=d, env=env, check=True, stdout=subprocess.DEVNULL)  # warm


CASES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "mlvc --help": [sys.executable, "-m", "mlvc", "--help"],
    "mlvc --version": [sys.executable, "-m", "mlvc", "--version"],
    "mlvc ls": [sys.executable, "-m", "mlvc", "ls"],
}
TARGETS = {"mlvc --help": 2.0, "mlvc --version": 2.0, "mlvc ls": 3.0}


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def measure(d: Path, reps: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and CPU (user + system) seconds of each case, ``reps`` times each."""
    env = _env(d / "cache")
    wall: dict[str, list[float]] = {k: [] for k in CASES}
    cpu: dict[str, list[float]] = {k: [] for k in CASES}
    for cmd in CASES.values():  # warm: bytecode written, files in the page cache
        subprocess.run(cmd, cwd=d, env=env, check=True, stdout=subprocess.DEVNULL)
    for _ in range(reps):
        for name, cmd in CASES.items():
            c0, t0 = _cpu(), time.perf_counter()
            subprocess.run(cmd, cwd=d, env=env, check=True, stdout=subprocess.DEVNULL)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(_cpu() - c0)
    return wall, cpu


def profile(d: Path, command: list[str], top: int = 15) -> str:
    """The slowest imports (cumulative) of ``mlvc COMMAND``, from ``python -X importtime``."""
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mlvc", *command],
        cwd=d,
        env=_env(d / "cache"),
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for line in r.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].rstrip()))
    rows.sort(reverse=True)
    return "\n".join(f"{us / 1000:8.1f} ms  {name}" for us, name in rows[:top])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--tree", type=Path, help="time this checkout of mlvc instead (print only)")
    args = ap.parse_args()
    global TREE
    if args.tree is not None:
        TREE = args.tree.resolve()
        args.no_write = True
    with tempfile.TemporaryDirectory(prefix="mlvc-bench-cli-") as tmp:
        d = Path(tmp)
        make_project(d)
        times, cpu = measure(d, args.reps)
        profiles = (
            {" ".join(c): profile(d, c) for c in (["--help"], ["ls"])} if args.profile else {}
        )
    floor = statistics.median(times["python -c pass"])
    cpu_floor = statistics.median(cpu["python -c pass"])
    lines = [
        "# CLI start-up",
        "",
        f"`python benchmarks/bench_cli.py --reps {args.reps}` ({TREE}) on {platform.node()} "
        f"({os.cpu_count()} CPUs, Python {platform.python_version()}), "
        f"{time.strftime('%Y-%m-%d')}, load average {os.getloadavg()[0]:.1f} at the end; "
        f"medians of {args.reps} interleaved runs. Wall clock, and CPU time (user + system: "
        "less sensitive to other work on the machine).",
        "",
        "| command | wall median | wall min | x floor (wall) | CPU median | x floor (CPU) "
        "| target |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, ts in times.items():
        med = statistics.median(ts)
        cmed = statistics.median(cpu[name])
        target = f"<= {TARGETS[name]:.0f}x" if name in TARGETS else ""
        lines.append(
            f"| `{name}` | {med * 1000:.0f} ms | {min(ts) * 1000:.0f} ms | "
            f"{med / floor:.2f}x | {cmed * 1000:.0f} ms | {cmed / cpu_floor:.2f}x | {target} |"
        )
    for command, prof in profiles.items():
        lines += ["", f"Slowest imports of `mlvc {command}` (cumulative):", "", "```", prof, "```"]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
