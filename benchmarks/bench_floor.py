"""How close a first commit of new weights comes to what its libraries allow, on this machine.

    python benchmarks/bench_floor.py [--scale S] [--reps 5] [--workload frozen]

A first commit of a file no earlier version guides must read it, cut it (pyfastcdc), hash
every chunk (BLAKE3), compress it (zstd, byte planes) and write it into a pack. This suite
times, in one run and alternating within each repetition:

* ``cp`` of the file (the page-cache copy every store pays at least);
* ``mlvc commit`` of it into a fresh repository (``mlvc_driver.py``: the library call);
* a *bare pipeline*: the same steps with the same libraries and mlvc's own chunker
  parameters and codec, without any of mlvc's bookkeeping (no manifests, indexes, guides,
  stat cache or refs): one thread reads and cuts into four 4 MiB buffers, two threads hash,
  compress and append to one file. With ``--raw`` compression is left out;
* each step alone on one thread (CPU seconds per step), to show where the time goes.

If ``mlvc commit`` is about as fast as the bare pipeline, what is left is the libraries' work
on this machine's cores, not mlvc's. Results go to ``benchmarks/results/floor.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
_BUF = 4 << 20
_NBUF = 4
_GROUP = 4


def _cut_buffers(path: Path):  # type: ignore[no-untyped-def]
    """Yield ``(buffer index, view, [(offset, length), ...])`` as mlvc's reader does."""
    import mmap

    from mlvc_core.chunker import ChunkerParams, make_fastcdc

    cdc = make_fastcdc(ChunkerParams())
    bufs = [mmap.mmap(-1, _BUF) for _ in range(_NBUF)]
    tail = b""
    bi = 0
    eof = False
    with open(path, "rb", buffering=0) as f:
        while not eof:
            mv = memoryview(bufs[bi])
            filled = len(tail)
            mv[:filled] = tail
            while filled < _BUF:
                n = f.readinto(mv[filled:])
                if not n:
                    eof = True
                    break
                filled += n
            data = mv[:filled]
            cuts = [(c.offset, c.length) for c in cdc.cut_buf(data)] if filled else []
            if not eof:
                cuts.pop()
            yield bi, data, cuts
            pos = sum(n for _, n in cuts)
            tail = bytes(data[pos:filled])
            bi = (bi + 1) % _NBUF


def bare_pipeline(path: Path, out_path: Path, compress: bool) -> float:
    """Read, cut, hash, compress and write ``path`` with no bookkeeping; seconds taken."""
    from mlvc_core import codec
    from mlvc_core.ids import hash_bytes

    lock = threading.Lock()
    with open(out_path, "wb") as out, ThreadPoolExecutor(2) as pool:
        pool.submit(lambda: None).result()  # threads started outside the timing

        def work(pieces: list[memoryview]) -> None:
            for v in pieces:
                hash_bytes(v)
                payload = codec.compress(v, 1, True)[1] if compress else v
                with lock:
                    out.write(payload)

        start = time.perf_counter()
        futures: list[list[Future[None]]] = [[] for _ in range(_NBUF)]
        for bi, data, cuts in _cut_buffers(path):
            futures[bi] = [
                pool.submit(work, [data[o : o + n] for o, n in cuts[i : i + _GROUP]])
                for i in range(0, len(cuts), _GROUP)
            ]
            # The reader fills the next buffer as soon as it is asked for the next one: let
            # it only once every chunk cut from that buffer is written.
            for fut in futures[(bi + 1) % _NBUF]:
                fut.result()
            futures[(bi + 1) % _NBUF] = []
        for fs in futures:
            for fut in fs:
                fut.result()
        return time.perf_counter() - start


def steps_alone(path: Path, out_path: Path) -> dict[str, float]:
    """CPU seconds of each step, all on one thread."""
    from mlvc_core import codec
    from mlvc_core.ids import hash_bytes

    cpu = time.thread_time
    spent = dict.fromkeys(("read + cut", "hash", "compress", "write"), 0.0)
    codec.compress(memoryview(os.urandom(1 << 18)), 1, True)  # imports and contexts
    with open(out_path, "wb") as out:
        t = cpu()
        for _, data, cuts in _cut_buffers(path):
            spent["read + cut"] += cpu() - t
            for o, n in cuts:
                v = data[o : o + n]
                t = cpu()
                hash_bytes(v)
                t1 = cpu()
                payload = codec.compress(v, 1, True)[1]
                t2 = cpu()
                out.write(payload)
                t3 = cpu()
                spent["hash"] += t1 - t
                spent["compress"] += t2 - t1
                spent["write"] += t3 - t2
            t = cpu()
    return spent


def _child(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if args.child == "steps":
        print(json.dumps(steps_alone(Path(args.file), out)))
    else:
        print(json.dumps({"elapsed": bare_pipeline(Path(args.file), out, args.child == "bare")}))
    out.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workload", choices=["frozen", "full"], default="frozen")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("MLVC_BENCH_DATA", HERE / ".data"))
    )
    parser.add_argument("--child", choices=["bare", "raw", "steps"], help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    import measure
    import workloads
    from measure import gbps, markdown_table

    data = args.data_dir / f"scale-{args.scale:g}"
    w = workloads.ensure(args.workload, data, args.scale, args.seed)
    src = w.versions[0] / next(p.name for p in w.versions[0].iterdir())
    size = src.stat().st_size
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(HERE.parent)) if p)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the mlvc CLI does
    me = [sys.executable, str(Path(__file__).resolve())]
    driver = [sys.executable, str(HERE / "mlvc_driver.py")]
    times: dict[str, list[float]] = {k: [] for k in ("cp", "mlvc commit", "bare", "raw")}
    steps: list[dict[str, float]] = []
    measure.warm(src.parent)
    with tempfile.TemporaryDirectory(dir=HERE) as tmp:
        work = Path(tmp)
        for rep in range(args.reps):
            print(f"{args.workload} v1: repetition {rep + 1} of {args.reps}", file=sys.stderr)
            measure.sync()
            times["cp"].append(measure.run(["cp", src, work / "copy"], env=env).wall)
            (work / "copy").unlink()
            repo = work / f"repo{rep}"
            measure.run([*driver, "init", repo], env=env)
            measure.sync()
            usage = measure.run([*driver, "commit", repo, src.parent, "v1"], env=env)
            times["mlvc commit"].append(json.loads(usage.stdout)["elapsed"])
            for kind in ("bare", "raw"):
                measure.sync()
                usage = measure.run(
                    [*me, "--child", kind, "--file", src, "--out", work / "out"], env=env
                )
                times[kind].append(json.loads(usage.stdout)["elapsed"])
            measure.sync()
            usage = measure.run(
                [*me, "--child", "steps", "--file", src, "--out", work / "out"], env=env
            )
            steps.append(json.loads(usage.stdout))

    med = {k: statistics.median(v) for k, v in times.items()}
    labels = {
        "cp": "`cp` of the file",
        "mlvc commit": "`mlvc commit` (library call)",
        "bare": "bare pipeline: read, cut, hash, compress, write",
        "raw": "bare pipeline without compression",
    }
    rows = [
        [
            labels[k],
            f"{med[k]:.3f}",
            f"{min(times[k]):.3f}-{max(times[k]):.3f}",
            f"{gbps(size, med[k]):.2f}",
            f"{med[k] / med['mlvc commit']:.2f}x",
        ]
        for k in ("cp", "mlvc commit", "bare", "raw")
    ]
    step_rows = [[name, f"{statistics.median(s[name] for s in steps):.3f}"] for name in steps[0]]
    total = sum(statistics.median(s[name] for s in steps) for name in steps[0])
    step_rows.append(["total", f"{total:.3f}"])
    report = "\n".join(
        [
            "# What the libraries allow: a first commit of new weights",
            "",
            f"Run {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()} {platform.system()}, "
            f"{os.cpu_count()} cores, Python {platform.python_version()}: "
            f"`python benchmarks/bench_floor.py --workload {args.workload} --scale {args.scale} "
            f"--reps {args.reps}`. File: {args.workload} v1, {size / 2**20:.0f} MiB, read from "
            "the page cache. Medians; GB = 10^9 bytes.",
            "",
            markdown_table(["what", "median s", "range s", "GB/s", "time vs mlvc commit"], rows),
            "",
            "Each step alone on one thread (CPU seconds, medians):",
            "",
            markdown_table(["step", "CPU s"], step_rows),
            "",
        ]
    )
    out = HERE / "results" / "floor.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
