"""Overhead of ``run.checkpoint()`` as the training loop sees it, next to ``torch.save``.

For a ~512 MiB state dict (scaled by ``--scale``), measured in the same run:

* ``torch.save`` of the state dict to a file (the baseline the loop already pays);
* the ``run.checkpoint(path=...)`` call right after it (what the loop waits for; the store
  happens in the background) - target: under 5% of ``torch.save``. Measured both ways: the
  default (``copy=True``: the files are leased or copied before the call returns, so the loop
  may overwrite them at once) and ``copy=False`` (nothing copied; the files are read in place
  in the background);
* the end-of-run flush (``run.close()``), as throughput, next to a plain
  ``Repository.commit`` of the same file (the core store's throughput) - target: the same.

* ``run.log`` of ``--log-points`` points (default 100,000), two metrics each, in a loop whose
  body is a small matrix product (a stand-in for a training step), beside the same loop
  without it and with a bare ``list.append`` instead (the floor), in alternating blocks -
  target: overhead under 1%; and the calling thread's CPU time per call in a tight loop,
  beside the same bare append - target: under 0.3 us.

* the longest ``run.checkpoint()`` call while the storage refuses every write, is frozen
  (writes never return) or slow (2 s per write), over 6 checkpoints of 8 MiB with the default
  queue - target: at most 1 s per call (what cannot be stored goes to the outbox at exit).

* with ``--copy-only``: how long the ``run.checkpoint()`` call blocks the loop for a file of
  64 MiB and of 512 MiB just written (in the page cache), under the default copy budget
  (1 s: the file is copied before the call returns when it fits, see
  :mod:`mlvc.tracking.copies`), and how long an overwrite right after the call takes (it never
  waits for mlvc), with the checkpoint verified stored.

Run: ``python benchmarks/bench_tracking.py [--scale S] [--reps 3]``; writes
``benchmarks/results/tracking.md``. With ``--log-only``, only the ``run.log`` loop, written to
``benchmarks/results/tracking-log.md``; with ``--copy-only``, only the copy figures, written
to ``benchmarks/results/tracking-copy.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def state_dict(total_bytes: int, seed: int = 0):  # noqa: ANN201 - torch types
    import torch

    g = torch.Generator().manual_seed(seed)
    n_tensors = 16
    per = total_bytes // 4 // n_tensors
    return {f"layer{i}.weight": torch.randn(per, generator=g) * 0.02 for i in range(n_tensors)}


def perturb(sd, step: int) -> None:  # noqa: ANN001
    for t in sd.values():
        t.add_(1e-3 * step)


def run(scale: float, reps: int, work: Path) -> dict[str, float]:
    import torch

    import mlvc
    from mlvc_core.history import commit_paths
    from mlvc_core.repository import Repository

    sd = state_dict(int(512 * (1 << 20) * scale))
    size = sum(t.numel() * t.element_size() for t in sd.values())
    code = work / "project"
    code.mkdir()
    (code / "train.py").write_text("# training script\n")
    ckpt = code / "model.pth"

    saves: list[float] = []
    calls: dict[bool, list[float]] = {True: [], False: []}
    repo_url = work / "repo"
    with mlvc.track(path=code, repository=str(repo_url), params={"bench": True}) as r:
        for step in range(2 * reps):
            copy = step % 2 == 0
            perturb(sd, step)
            t0 = time.perf_counter()
            torch.save(sd, ckpt)
            t1 = time.perf_counter()
            r.checkpoint(path=ckpt, step=step, metrics={"loss": 1.0 / (step + 1)}, copy=copy)
            t2 = time.perf_counter()
            saves.append(t1 - t0)
            calls[copy].append(t2 - t1)
            r.flush()  # measure each call against an idle background, as in a real epoch
        perturb(sd, 2 * reps)
        os.sync()  # both timed stores below start with no earlier writes still in flight
        torch.save(sd, ckpt)
        r.checkpoint(path=ckpt, step=2 * reps)
        t3 = time.perf_counter()
    flush = time.perf_counter() - t3

    plain = Repository.init(work / "plain")
    perturb(sd, reps + 1)
    os.sync()
    torch.save(sd, ckpt)
    t4 = time.perf_counter()
    commit_paths(plain, ckpt, "plain")
    commit = time.perf_counter() - t4
    plain.close()
    return {
        "size": size,
        "torch_save": statistics.median(saves),
        "call_copy": statistics.median(calls[True]),
        "call_in_place": statistics.median(calls[False]),
        "flush": flush,
        "commit": commit,
    }


def log_overhead(points: int, work: Path, blocks: int = 20, side: int = 96) -> dict[str, float]:
    """The training loop without ``run.log``, with it, and with a bare list append instead.

    Each step of the loop is one ``side`` x ``side`` float32 matrix product on one thread:
    96 gives a step of about 20-30 us (a stress test: far shorter than any real training
    step), 384 one of a few milliseconds (a small model's step on a CPU).

    ``points`` steps of each loop, in ``blocks`` blocks; each block runs the three loops one
    after the other, in an order rotated from block to block (the machine is shared: load
    changes by the second). Per loop: wall clock and the calling thread's CPU time. The rest
    of the process's CPU time over all blocks and ``close()`` is the background's: mostly the
    thread writing segments (the run's other threads idle meanwhile).

    The bare loop is the floor of any ``run.log`` in CPython: one ``list.append`` of
    ``(step, time.time(), dict(metrics))`` per step, no method call.
    """
    import torch

    import mlvc

    torch.set_num_threads(1)
    a, b = torch.rand(side, side), torch.rand(side, side)
    now = time.time

    def body() -> float:
        return float(torch.mm(a, b)[0, 0])

    per = max(1, points // blocks)
    wall: dict[str, list[float]] = {"plain": [], "logged": [], "bare": []}
    cpu: dict[str, list[float]] = {"plain": [], "logged": [], "bare": []}
    with mlvc.track(path=work, repository=str(work / "log-repo")) as r:
        r.log({"loss": 0.0, "lr": 0.0}, step=0)  # the writing thread runs in every block
        r.flush()  # the experiment's first commit is done before the clock starts
        proc0, thread0 = time.process_time(), time.thread_time()
        for blk in range(blocks):
            order = ["plain", "logged", "bare"]
            order = order[blk % 3 :] + order[: blk % 3]
            for what in order:
                base = 1 + blk * per
                kept: list[tuple[int, float, dict[str, float]]] = []
                keep = kept.append
                c0, t0 = time.thread_time(), time.perf_counter()
                if what == "plain":
                    for _step in range(base, base + per):
                        body()
                elif what == "logged":
                    for step in range(base, base + per):
                        x = body()
                        r.log({"loss": x, "lr": 0.001}, step=step)
                else:
                    for step in range(base, base + per):
                        x = body()
                        keep((step, now(), dict({"loss": x, "lr": 0.001})))
                wall[what].append(time.perf_counter() - t0)
                cpu[what].append(time.thread_time() - c0)
        t0 = time.perf_counter()
    close = time.perf_counter() - t0
    background = time.process_time() - proc0 - (time.thread_time() - thread0)
    exp = mlvc.experiments.get(r.id, repository=str(work / "log-repo"))  # type: ignore[arg-type]
    assert len(exp.metrics("loss")) == 1 + blocks * per
    ratios = [lg / pl - 1 for lg, pl in zip(wall["logged"], wall["plain"], strict=True)]
    floor = [bb / pl - 1 for bb, pl in zip(wall["bare"], wall["plain"], strict=True)]
    n = blocks * per
    return {
        "points": n,
        "blocks": blocks,
        "side": side,
        "plain": sum(wall["plain"]),
        "logged": sum(wall["logged"]),
        "bare": sum(wall["bare"]),
        "log_ratio_median": statistics.median(ratios),
        "log_ratio_low": min(ratios),
        "log_ratio_high": max(ratios),
        "bare_ratio_median": statistics.median(floor),
        "log_cpu_us": (sum(cpu["logged"]) - sum(cpu["plain"])) / n * 1e6,
        "bare_cpu_us": (sum(cpu["bare"]) - sum(cpu["plain"])) / n * 1e6,
        "background_cpu_us": background / n * 1e6,
        "log_close": close,
    }


def log_call_cost(calls: int, work: Path, blocks: int = 60) -> dict[str, float]:
    """The calling thread's CPU time per ``run.log`` call in a tight loop, and the floor's.

    No training step between calls (the figure least disturbed by a loaded machine): blocks of
    ``calls // blocks`` calls alternate with the same loop building the metrics dict only, and
    with the bare ``list.append`` of :func:`log_overhead`; medians over the blocks.
    """
    import mlvc

    now = time.time
    per = max(1, calls // blocks)
    cpu: dict[str, list[float]] = {"empty": [], "log": [], "bare": []}
    with mlvc.track(path=work, repository=str(work / "call-repo")) as r:
        r.log({"loss": 0.0, "lr": 0.0}, step=0)
        r.flush()
        base = 1
        for blk in range(blocks):
            order = ["empty", "log", "bare"]
            for what in order[blk % 3 :] + order[: blk % 3]:
                kept: list[tuple[int, float, dict[str, float]]] = []
                keep = kept.append
                c0 = time.thread_time()
                if what == "empty":
                    for _step in range(base, base + per):
                        x = 0.5
                        {"loss": x, "lr": 0.001}  # noqa: B018 - the dict the other loops build
                elif what == "log":
                    for step in range(base, base + per):
                        x = 0.5
                        r.log({"loss": x, "lr": 0.001}, step=step)
                    base += per
                else:
                    for step in range(base, base + per):
                        x = 0.5
                        keep((step, now(), dict({"loss": x, "lr": 0.001})))
                cpu[what].append(time.thread_time() - c0)

    def per_call(what: str) -> list[float]:
        return [(c - e) / per * 1e6 for c, e in zip(cpu[what], cpu["empty"], strict=True)]

    log_q = statistics.quantiles(per_call("log"))
    bare_q = statistics.quantiles(per_call("bare"))
    return {
        "call_log_us": log_q[1],
        "call_log_q1": log_q[0],
        "call_log_q3": log_q[2],
        "call_bare_us": bare_q[1],
        "call_bare_q1": bare_q[0],
        "call_bare_q3": bare_q[2],
    }


def outage_blocking(work: Path) -> dict[str, float]:
    """Longest ``checkpoint()`` call while the storage refuses, freezes or crawls."""
    import threading

    import mlvc
    from mlvc_core.errors import StorageError
    from mlvc_core.repository import Repository
    from mlvc_core.storage import LocalStore

    class Faulty(LocalStore):
        mode = "ok"
        gate = threading.Event()

        def write(self, key: str, data: bytes) -> None:
            if self.mode == "refused":
                raise StorageError("connection refused")
            if self.mode == "frozen":
                self.gate.wait()
            if self.mode == "slow":
                time.sleep(2.0)
            super().write(key, data)

        def open_write(self, key: str):  # noqa: ANN202 - the store's writer type
            if self.mode == "refused":
                raise StorageError("connection refused")
            if self.mode == "frozen":
                self.gate.wait()
            if self.mode == "slow":
                time.sleep(2.0)
            return super().open_write(key)

    out: dict[str, float] = {}
    data = os.urandom(8 << 20)
    for mode in ("refused", "frozen", "slow"):
        root = work / f"outage-{mode}"
        Repository.init(str(root / "repo")).close()
        store = Faulty(root / "repo")
        repo = Repository.open(store, cache_dir=root / "cache")
        (root / "model.bin").write_bytes(data)
        run = mlvc.init(path=root, repository=repo, exit_timeout=1.0)
        run.flush()
        store.mode = mode
        longest = 0.0
        for step in range(6):
            t0 = time.perf_counter()
            run.checkpoint(path=root / "model.bin", step=step)
            longest = max(longest, time.perf_counter() - t0)
        run.close()
        Faulty.gate.set()
        out[f"outage_{mode}"] = longest
    return out


def checkpoint_rows(m: dict[str, float]) -> list[tuple[str, str, str, str]]:
    """Table rows of :func:`run`'s figures."""
    flush_gbs = m["size"] / m["flush"] / 1e9
    commit_gbs = m["size"] / m["commit"] / 1e9
    return [
        ("torch.save of the state dict", f"{m['torch_save']:.3f} s", "baseline", ""),
        *[
            (
                label,
                f"{m[key]:.4f} s",
                f"{m[key] / m['torch_save']:.1%} of torch.save",
                "PASS" if m[key] / m["torch_save"] < 0.05 else "**FAIL** (target < 5%)",
            )
            for label, key in [
                ("run.checkpoint() call, default (copy=True)", "call_copy"),
                ("run.checkpoint(copy=False) call", "call_in_place"),
            ]
        ],
        (
            "end-of-run flush (one checkpoint)",
            f"{m['flush']:.3f} s = {flush_gbs:.2f} GB/s",
            f"{flush_gbs / commit_gbs:.2f}x the core store",
            "PASS" if flush_gbs >= 0.8 * commit_gbs else "**FAIL** (target ~1x)",
        ),
        (
            "core store: Repository.commit of the file",
            f"{m['commit']:.3f} s = {commit_gbs:.2f} GB/s",
            "baseline",
            "",
        ),
    ]


def log_rows(m: dict[str, float]) -> list[tuple[str, str, str, str]]:
    """Table rows of :func:`log_overhead`'s figures."""
    overhead = m["logged"] / m["plain"] - 1
    per_call = (m["logged"] - m["plain"]) / m["points"] * 1e6
    bare = (m["bare"] - m["plain"]) / m["points"] * 1e6
    spread = (
        f"blocks: median {m['log_ratio_median']:+.2%}, "
        f"{m['log_ratio_low']:+.2%} to {m['log_ratio_high']:+.2%}"
    )
    return [
        (
            f"loop of {m['points']:.0f} steps (a {m['side']:.0f}x{m['side']:.0f} matmul each, "
            f"{m['plain'] / m['points'] * 1e6:.0f} us), {m['blocks']:.0f} blocks",
            f"{m['plain']:.3f} s",
            "baseline",
            "",
        ),
        (
            "same loop with run.log of 2 metrics per step",
            f"{m['logged']:.3f} s ({per_call:+.2f} us per call; calling thread's CPU "
            f"{m['log_cpu_us']:.2f} us per call)",
            f"{overhead:+.2%} ({spread})",
            "PASS" if overhead < 0.01 else "**FAIL** (target < 1%)",
        ),
        (
            "background CPU (writing segments) per point",
            f"{m['background_cpu_us']:.2f} us",
            "",
            "",
        ),
        (
            "floor: a bare list.append((step, time.time(), dict(metrics))) instead",
            f"{m['bare']:.3f} s ({bare:+.2f} us per step; CPU {m['bare_cpu_us']:.2f} us)",
            f"{m['bare'] / m['plain'] - 1:+.2%} (blocks: median {m['bare_ratio_median']:+.2%})",
            "",
        ),
        ("writing the last segment at close()", f"{m['log_close']:.3f} s", "", ""),
    ]


def call_rows(m: dict[str, float]) -> list[tuple[str, str, str, str]]:
    """Table rows of :func:`log_call_cost`'s figures."""
    return [
        (
            "run.log call, tight loop: calling thread's CPU (median, quartiles)",
            f"{m['call_log_us']:.3f} us ({m['call_log_q1']:.3f}-{m['call_log_q3']:.3f})",
            "",
            "PASS" if m["call_log_us"] < 0.3 else "**FAIL** (target < 0.3 us)",
        ),
        (
            "floor: bare list.append((step, time.time(), dict(metrics))), tight loop",
            f"{m['call_bare_us']:.3f} us ({m['call_bare_q1']:.3f}-{m['call_bare_q3']:.3f})",
            "",
            "",
        ),
    ]


def report(m: dict[str, float], command: str) -> str:
    """The markdown report of the figures measured."""
    rows = checkpoint_rows(m) if "size" in m else []
    if "points" in m:
        rows += log_rows(m)
    if "call_log_us" in m:
        rows += call_rows(m)
    for mode in ("refused", "frozen", "slow"):
        key = f"outage_{mode}"
        if key in m:
            rows.append(
                (
                    f"longest checkpoint() call, storage {mode}",
                    f"{m[key]:.3f} s",
                    "",
                    "PASS" if m[key] <= 1.0 + 0.1 else "**FAIL** (target <= 1 s)",
                )
            )
    state = f"; state dict {m['size'] / (1 << 20):.0f} MiB" if "size" in m else ""
    lines = [
        "# Tracking overhead",
        "",
        f"`{command}` on {platform.machine()} {platform.system()}, {os.cpu_count()} cores{state}.",
        "",
        "| what | time | ratio | target |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
    ]
    return "\n".join(lines)


def copy_blocking(work: Path, reps: int, sizes_mib: tuple[int, ...] = (64, 512)) -> str:
    """A table: ``checkpoint()`` call and the overwrite right after it, per file size."""
    import mlvc

    project = work / "copy-project"
    project.mkdir(parents=True, exist_ok=True)
    old = os.getcwd()
    os.chdir(project)
    rows = []
    try:
        for mib in sizes_mib:
            calls, saves, plain, background = [], [], [], 0
            expected: dict[int, bytes] = {}
            with mlvc.track(repository=str(work / "copy-repo")) as r:
                for step in range(reps):
                    data = os.urandom(mib << 20)
                    with open("model.bin", "wb") as f:
                        f.write(data)
                    expected[step] = data
                    t0 = time.perf_counter()
                    r.checkpoint(path="model.bin", step=step)
                    calls.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    with open("model.bin", "wb") as f:  # the next save, right away
                        f.write(b"x")
                    saves.append(time.perf_counter() - t0)
                    r.flush()
                    with open("model.bin", "wb") as f:  # the baseline: no checkpoint before
                        f.write(data)
                    t0 = time.perf_counter()
                    with open("model.bin", "wb") as f:
                        f.write(b"x")
                    plain.append(time.perf_counter() - t0)
                copier = r._files.copier
                background = copier.background_copies if copier is not None else 0
            exp = mlvc.experiments.get(r.id, repository=str(work / "copy-repo"))
            kept = 0
            for c in exp.checkpoints:
                with c.open("model.bin") as f:
                    kept += f.read() == expected[c.step]
            rows.append(
                f"| {mib} MiB | {min(calls):.3f}-{max(calls):.3f} s "
                f"({mib / 1024 / statistics.median(calls):.1f} GB/s) | "
                f"{max(saves) * 1000:.1f} ms | {max(plain) * 1000:.1f} ms | {kept}/{reps} "
                f"| {background} |"
            )
    finally:
        os.chdir(old)
    return "\n".join(
        [
            "| file | `checkpoint()` call (default budget) | overwrite right after, longest "
            "| the same overwrite without a checkpoint | checkpoints stored equal "
            "| copies left to the background |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--log-points", type=int, default=100_000)
    ap.add_argument("--log-blocks", type=int, default=20)
    ap.add_argument(
        "--log-matmul",
        type=int,
        default=96,
        help="side of the square matrix product each step of the run.log loop computes",
    )
    ap.add_argument("--log-only", action="store_true", help="only the run.log loop")
    ap.add_argument("--copy-only", action="store_true", help="only the copy figures")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlvc-bench-tracking-"))
    if args.copy_only:
        try:
            table = copy_blocking(work, args.reps)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        text = f"`python benchmarks/bench_tracking.py --copy-only --reps {args.reps}`\n\n{table}"
        print(text)
        Path(args.results).mkdir(parents=True, exist_ok=True)
        (Path(args.results) / "tracking-copy.md").write_text(text)
        return
    m: dict[str, float] = {}
    try:
        if not args.log_only:
            m.update(run(args.scale, args.reps, work))
        (work / "project").mkdir(exist_ok=True)
        m.update(log_overhead(args.log_points, work / "project", args.log_blocks, args.log_matmul))
        m.update(log_call_cost(3 * args.log_points, work / "project"))
        if not args.log_only:
            m.update(outage_blocking(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = (
        f"python benchmarks/bench_tracking.py --log-points {args.log_points} "
        f"--log-blocks {args.log_blocks} --log-matmul {args.log_matmul}"
    )
    command += " --log-only" if args.log_only else f" --scale {args.scale} --reps {args.reps}"
    text = report(m, command)
    print(text)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / ("tracking-log.md" if args.log_only else "tracking.md")).write_text(text)


if __name__ == "__main__":
    main()
