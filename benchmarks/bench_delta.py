"""Delta coding benchmark: consecutive checkpoints of a full fine-tune, standalone vs delta.

    PYTHONPATH=$PWD python benchmarks/bench_delta.py [--scale S] [--chunk KIB] [--store|--bounds]

The tensors are those of the ``full`` workload (``workloads.full_layout``: mostly bf16, norms
float32, the generator's seeds and rounding), built in memory tensor by tensor: a version and
the next one, whose float32 master weights moved by Gaussian noise of a given fraction of the
weights' std (0.02). Three variants:

* ``full``: 1% of the std, the ``full`` workload's own step between checkpoints;
* ``per-step``: 0.1% (a checkpoint after every optimizer step or few);
* ``large-update``: 50% (a checkpoint after a long stretch of training).

Each new tensor is cut into chunks of ``--chunk`` KiB at the same offsets as the previous
version's (element-aligned), and each chunk is coded three ways: on its own by
:func:`mlvc_core.codec.compress` (what is stored today), by :func:`mlvc_core.delta.encode`
against the previous version with the tensor's dtype (ordered-integer difference), and by the
same with no dtype (XOR of bytes, one plane). Printed side by side: compression ratio
(raw / payload) and encode and decode speed (MB/s, one thread); every payload is decoded and
compared byte for byte.

``--store`` commits five versions of each variant into a repository (deltas as stored by
format version 3) and prints the stored ratio, the commit time and the checkout time of the
latest version next to the same file committed alone (no deltas), in the same run.

``--bounds`` prints how far any coder could go: the order-0 entropy of the ``full``
variants' five versions (v1's values; each later version's ordered difference from v1, the
base the one-base rule gives, and from the version before, alone and given the base's
exponent) as ratio bounds, beside what today's coder stores and what a prototype that groups
the difference by the base's exponent would, with the decoder's cost of that grouping; then
the entropy bound of the ``frozen`` workload, whose head is redrawn at every version.

``--chunking`` measures instead what tensor-aligned chunk boundaries (``mlvc_core.tensorfile``)
save on the ``frozen`` workload's step from v2 to v3 (the head's 10 tensors change and the
header grows): the bytes of v3's chunks that v2 lacks, with plain FastCDC and with forced
boundaries at the edges of large tensors, next to the bytes of the changed tensors.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workloads  # noqa: E402

from mlvc_core import codec, delta  # noqa: E402

VARIANTS = {"per-step": 0.001, "full": workloads.FULL_NOISE_REL, "large-update": 0.5}


@dataclass
class Way:
    """Totals of one coding over all chunks."""

    stored: int = 0
    encode_s: float = 0.0
    decode_s: float = 0.0


def _versions(rel: float, scale: float, seed: int) -> Iterator[tuple[str, bytes, bytes]]:
    """``(dtype, previous bytes, new bytes)`` of each tensor block of the ``full`` layout."""
    for ti, t in enumerate(workloads.full_layout(scale).tensors):
        is_norm = t.name.endswith("norm.weight")
        for b, n in workloads.tensor_blocks(t):
            master = workloads.weights(seed, ti, b, 0, n, is_norm)
            old = workloads.to_dtype(master, t.dtype)
            noise = workloads.rng(seed, ti, b, 1).standard_normal(n, dtype=np.float32)
            master += noise * np.float32(rel * workloads.WEIGHT_STD)
            yield t.dtype, old, workloads.to_dtype(master, t.dtype)


def run_variant(rel: float, scale: float, chunk: int, seed: int = 0) -> tuple[int, dict[str, Way]]:
    """Raw bytes and each way's totals for one variant."""
    ways = {"standalone": Way(), "delta": Way(), "xor": Way()}
    raw = 0
    for dtype, old, new in _versions(rel, scale, seed):
        for off in range(0, len(new), chunk):
            piece, base = new[off : off + chunk], old[off : off + chunk]
            raw += len(piece)
            w = ways["standalone"]
            t0 = time.perf_counter()
            c, payload = codec.compress(piece, planes=True)
            t1 = time.perf_counter()
            assert codec.decompress(payload, c, len(piece)) == piece
            w.encode_s += t1 - t0
            w.decode_s += time.perf_counter() - t1
            w.stored += len(payload)
            for name, dt in (("delta", dtype), ("xor", None)):
                w = ways[name]
                t0 = time.perf_counter()
                coded = delta.encode(piece, base, dt)
                t1 = time.perf_counter()
                assert delta.decode(coded, base) == piece
                w.encode_s += t1 - t0
                w.decode_s += time.perf_counter() - t1
                w.stored += len(coded)
    return raw, ways


def chunking(scale: float, seed: int = 0) -> None:
    """Print new bytes of the ``frozen`` step v2 -> v3 under plain and tensor-aligned chunking."""
    import io

    from mlvc_core import tensorfile
    from mlvc_core.chunker import ChunkerParams, cut_between, make_fastcdc
    from mlvc_core.ids import hash_bytes

    layout = workloads.frozen_layout(scale)

    def version(v: int) -> bytes:
        out = [workloads.safetensors_header(layout.tensors, workloads.checkpoint_metadata(v))]
        for ti, t in enumerate(layout.tensors):
            is_norm = t.name.endswith("norm.weight")
            for b, n in workloads.tensor_blocks(t):
                tag = v if t.head else 1
                out.append(
                    workloads.to_dtype(workloads.weights(seed, ti, b, tag, n, is_norm), t.dtype)
                )
        return b"".join(out)

    params = ChunkerParams()
    cdc = make_fastcdc(params)

    def chunks(data: bytes, aligned: bool, block: int = 0) -> list[tuple[bytes, int]]:
        plan = tensorfile.CutPlan()
        if aligned:
            found = tensorfile.read_layout(io.BytesIO(data))
            assert found is not None
            plan = tensorfile.forced_boundaries(found, params.min, block)
        mv = memoryview(data)
        cuts = cut_between(cdc, mv, 0, plan.boundaries, plan.blocks)
        return [(hash_bytes(mv[o : o + n]), n) for o, n in cuts]

    old, new = version(2), version(3)
    changed = sum(t.nbytes for t in layout.tensors if t.head)
    print(
        f"frozen layout x {scale}: v3 is {len(new) / 2**20:.1f} MiB, its changed tensors "
        f"{changed / 2**20:.2f} MiB"
    )
    print("| chunking | new MiB | reused | best possible |")
    print("|---|---|---|---|")
    ways = [
        ("plain FastCDC", False, 0),
        ("tensor-aligned, FastCDC inside", True, 0),
        ("tensor-aligned, 256 KiB blocks inside", True, 256 << 10),
        ("tensor-aligned, 1 MiB blocks inside", True, 1 << 20),
        ("tensor-aligned, 4 MiB blocks inside", True, 4 << 20),
    ]
    for name, aligned, block in ways:
        have = {c for c, _ in chunks(old, aligned, block)}
        cut = chunks(new, aligned, block)
        fresh = sum(n for c, n in cut if c not in have)
        print(
            f"| {name} ({len(cut)} chunks) | {fresh / 2**20:.2f} | "
            f"{1 - fresh / len(new):.2%} | {1 - changed / len(new):.2%} |",
            flush=True,
        )


def _write_versions(dest: Path, rel: float, scale: float, seed: int = 0) -> list[Path]:
    """Five versions of the ``full`` layout whose master weights move by ``rel`` std each."""
    layout = workloads.full_layout(scale)
    with workloads.VersionFiles(dest, "model.safetensors") as files:
        for v, f in enumerate(files, start=1):
            meta = workloads.checkpoint_metadata(v, extra_from=workloads.VERSIONS + 1)
            f.write(workloads.safetensors_header(layout.tensors, meta))
        for ti, t in enumerate(layout.tensors):
            is_norm = t.name.endswith("norm.weight")
            for b, n in workloads.tensor_blocks(t):
                master = workloads.weights(seed, ti, b, 0, n, is_norm)
                for v, f in enumerate(files, start=1):
                    noise = workloads.rng(seed, ti, b, v).standard_normal(n, dtype=np.float32)
                    master += noise * np.float32(rel * workloads.WEIGHT_STD)
                    f.write(workloads.to_dtype(master, t.dtype))
    return [dest / f"v{v}" for v in range(1, workloads.VERSIONS + 1)]


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _checkout_s(repo_path: Path, commit: object, out: Path) -> tuple[float, float]:
    """Seconds (wall, CPU of all threads) of one checkout into a fresh directory, from a
    freshly opened repository."""
    import shutil

    from mlvc_core import restore
    from mlvc_core.repository import Repository

    shutil.rmtree(out, ignore_errors=True)
    with Repository.open(repo_path) as repo:
        t0, c0 = time.perf_counter(), time.process_time()
        restore.checkout(repo, commit, out)  # type: ignore[arg-type]
        return time.perf_counter() - t0, time.process_time() - c0


def _paired(delta: tuple[Path, object], alone: tuple[Path, object], out: Path, reps: int) -> str:
    """Checkouts of both repositories taken in turn: median seconds and speed ratio (range).

    On a shared machine the load moves within seconds; a pair of checkouts taken back to
    back sees about the same load, so the ratio of each pair is steadier than the ratio of
    the medians. The CPU seconds (all threads) say what the checkout costs whatever the
    load: their ratio is what the wall-clock ratio tends to once the cores are busy.
    """
    import statistics

    pairs = [(_checkout_s(*delta, out), _checkout_s(*alone, out)) for _ in range(reps)]
    ratios = sorted(a[0] / d[0] for d, a in pairs)
    d_s = statistics.median(d[0] for d, _ in pairs)
    a_s = statistics.median(a[0] for _, a in pairs)
    d_cpu = statistics.median(d[1] for d, _ in pairs)
    a_cpu = statistics.median(a[1] for _, a in pairs)
    return (
        f"{d_s:.3f} / {a_s:.3f} | {statistics.median(ratios):.2f}x "
        f"({ratios[0]:.2f}-{ratios[-1]:.2f}) | {d_cpu:.3f} / {a_cpu:.3f} ({a_cpu / d_cpu:.2f}x) |"
    )


def store(scale: float, reps: int, work: Path) -> None:
    """Commit five versions of each variant into a repository: ratio, time, checkout speed.

    The checkout of the latest version (four deltas into its run) is timed next to the same
    file committed alone into another repository (no deltas), in the same run.
    """
    import shutil

    from mlvc_core import codec as codecs
    from mlvc_core.history import commit_paths
    from mlvc_core.repository import Repository

    print(f"full layout x {scale}, 5 versions per variant, commit and checkout in-process")
    print(
        "| variant | logical MiB | stored MiB | ratio | deltas | commit s (all) | "
        "checkout s (delta / alone) | speed vs alone (range) | checkout CPU s (ratio) |"
    )
    print("|" + "---|" * 9)
    for variant, rel in VARIANTS.items():
        root = work / variant
        shutil.rmtree(root, ignore_errors=True)
        versions = _write_versions(root / "data", rel, scale)
        repo_path, alone_path = root / "repo", root / "alone"
        logical = sum(_size(v) for v in versions)
        t0 = time.perf_counter()
        with Repository.init(repo_path) as repo:
            for v in versions:
                last = commit_paths(repo, [v], v.name, branch="main")
        commit_s = time.perf_counter() - t0
        with Repository.open(repo_path) as repo:
            n_delta = sum(1 for _, loc in repo.iter_index() if loc.codec == codecs.DELTA)
        with Repository.init(alone_path) as repo:
            alone = commit_paths(repo, [versions[-1]], "alone", branch="main")
        stored = _size(repo_path)
        timed = _paired((repo_path, last), (alone_path, alone), root / "out", reps)
        print(
            f"| {variant} ({rel:g} std) | {logical / 2**20:.0f} | {stored / 2**20:.1f} | "
            f"{logical / stored:.2f}x | {n_delta} | {commit_s:.2f} | {timed}",
            flush=True,
        )
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------- bounds


def _entropy(counts: np.ndarray) -> float:
    """Order-0 entropy (bits per symbol) of a histogram."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


class _Histogram:
    """Counts of int64 symbols, merged block by block (memory: the distinct symbols)."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, np.int64)
        self.counts = np.zeros(0, np.int64)

    def add(self, symbols: np.ndarray) -> None:
        keys, counts = np.unique(symbols, return_counts=True)
        keys, inv = np.unique(np.concatenate([self.keys, keys]), return_inverse=True)
        self.counts = np.bincount(inv, np.concatenate([self.counts, counts])).astype(np.int64)
        self.keys = keys

    def bits(self, context_shift: int = 0) -> float:
        """Entropy of the symbols; with ``context_shift``, given their bits above it."""
        h = _entropy(self.counts)
        if context_shift:
            _, inv = np.unique(self.keys >> context_shift, return_inverse=True)
            h -= _entropy(np.bincount(inv, self.counts))
        return h

    def marginal_bits(self, context_shift: int) -> float:
        """Entropy of the symbols' bits below ``context_shift`` alone."""
        _, inv = np.unique(self.keys & ((1 << context_shift) - 1), return_inverse=True)
        return _entropy(np.bincount(inv, self.counts))


_Z = 16
"""Bits of a zigzag-coded bf16 difference."""


def _zigzag(new: bytes | np.ndarray, old: bytes | np.ndarray) -> np.ndarray:
    """The words :mod:`mlvc_core.delta` codes for a bf16 piece: zigzag(ordered difference)."""
    a, b = memoryview(new).cast("B"), memoryview(old).cast("B")
    return delta._code(a, b, delta.ORDERED, 2, 0, len(a))


def _difference(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """``old``'s bf16 exponent << _Z | the coded word, as int64 (a symbol in its context)."""
    return ((old.astype(np.int64) >> 7) & 0xFF) << _Z | _zigzag(new, old).astype(np.int64)


def _grouped_size(new: bytes, old: bytes) -> int:
    """Payload bytes of a prototype that codes the difference grouped by the base's exponent.

    The zigzag words are stably sorted by the base's exponent (a permutation the decoder can
    rebuild from the base), then split into byte planes and zstd as :mod:`mlvc_core.delta`.
    """
    b = np.frombuffer(old, np.uint16)
    perm = np.argsort(((b >> 7) & 0xFF).astype(np.uint8), kind="stable")
    grid = _zigzag(new, old)[perm].view(np.uint8).reshape(-1, 2)
    size = 0
    for i in range(2):
        plane = np.ascontiguousarray(grid[:, i]).tobytes()
        size += min(len(plane), len(codec.compress_plane(plane)))
    return size


def _permutation_ms(count: int, reps: int = 20) -> float:
    """Milliseconds a decoder spends rebuilding and applying that permutation (bf16 words)."""
    rng = np.random.default_rng(0)
    base = workloads.to_dtype(rng.standard_normal(count, np.float32) * 0.02, "BF16")
    b = np.frombuffer(base, np.uint16)
    z, out = b.copy(), np.empty_like(b)
    t0 = time.perf_counter()
    for _ in range(reps):
        perm = np.argsort(((b >> 7) & 0xFF).astype(np.uint8), kind="stable")
        out[perm] = z
    return (time.perf_counter() - t0) / reps * 1e3


def bounds(scale: float, chunk: int, seed: int = 0) -> None:
    """Print the order-0 entropy bounds of the ``full`` variants and the ``frozen`` workload.

    ``full`` variants: five bf16 versions as the ``full`` workload writes them; the entropy of
    v1's values, and of each later version's ordered difference (zigzag) from v1 (the
    keyframe rule: one base per chunk) and from the version before (a chain), alone and given
    the base's exponent. The float32 norms (0.4% of the bytes) count as free, so a ratio bound
    is an upper bound. Beside them, today's coder (:func:`mlvc_core.delta.encode_difference`
    on ``chunk``-byte pieces, and the per-chunk codec for v1) and the exponent-grouped
    prototype (:func:`_grouped_size`).
    """
    layout = workloads.full_layout(scale)
    versions = workloads.VERSIONS
    print(
        f"full layout x {scale}: bits per bf16 element "
        f"(order-0 entropy; coded: {chunk >> 10} KiB pieces)"
    )
    print(
        "| variant | v1 H / coded | v_k - v1: H, H given exponent, coded, grouped (k = 2..5) "
        "| v_k - v_k-1: H given exponent | ratio bound keyframe / chain | ratio coded |"
    )
    print("|" + "---|" * 6)
    for variant, rel in VARIANTS.items():
        first, coded_v1 = np.zeros(1 << 16, np.int64), 0
        key = [_Histogram() for _ in range(versions)]
        chain = [_Histogram() for _ in range(versions)]
        coded, grouped = [0] * versions, [0] * versions
        elements = 0
        for ti, t in enumerate(layout.tensors):
            if t.dtype != "BF16":
                continue
            for b, n in workloads.tensor_blocks(t):
                master = workloads.weights(seed, ti, b, 0, n, False)
                vs: list[bytes] = []
                for v in range(1, versions + 1):
                    noise = workloads.rng(seed, ti, b, v).standard_normal(n, dtype=np.float32)
                    master += noise * np.float32(rel * workloads.WEIGHT_STD)
                    vs.append(workloads.to_dtype(master, "BF16"))
                words = [np.frombuffer(v, np.uint16) for v in vs]
                elements += n
                first += np.bincount(words[0], minlength=1 << 16)
                for off in range(0, len(vs[0]), chunk):
                    coded_v1 += len(codec.compress(vs[0][off : off + chunk], planes=True)[1])
                for k in range(1, versions):
                    key[k].add(_difference(words[k], words[0]))
                    chain[k].add(_difference(words[k], words[k - 1]))
                    for off in range(0, len(vs[0]), chunk):
                        new, old = vs[k][off : off + chunk], vs[0][off : off + chunk]
                        payload = len(delta.encode(new, old, "BF16"))
                        coded[k] += payload
                        grouped[k] += min(payload, _grouped_size(new, old))
        h1 = _entropy(first)
        ks = range(1, versions)
        cells = "; ".join(
            f"{key[k].marginal_bits(_Z):.2f}, {key[k].bits(_Z):.2f}, "
            f"{8 * coded[k] / elements:.2f}, {8 * grouped[k] / elements:.2f}"
            for k in ks
        )
        keyframe = h1 + sum(key[k].bits(_Z) for k in ks)
        chained = h1 + sum(chain[k].bits(_Z) for k in ks)
        today = 8 * (coded_v1 + sum(coded[k] for k in ks)) / elements
        print(
            f"| {variant} ({rel:g} std) | {h1:.2f} / {8 * coded_v1 / elements:.2f} | {cells} | "
            + ", ".join(f"{chain[k].bits(_Z):.2f}" for k in ks)
            + f" | {16 * versions / keyframe:.2f}x / {16 * versions / chained:.2f}x "
            f"| {16 * versions / today:.2f}x |",
            flush=True,
        )
    print(
        f"rebuilding and applying the grouping permutation costs "
        f"{_permutation_ms(chunk // 2):.2f} ms per {chunk >> 10} KiB of bf16 (decoder side)"
    )
    _frozen_bound(scale, seed)


def _frozen_bound(scale: float, seed: int) -> None:
    """Print the ``frozen`` workload's entropy bound (its heads are redrawn every version).

    bf16 tensors: the order-0 entropy of their values. float32 tensors: the entropy of the
    generator's Gaussian rounded to float32, estimated on the values themselves as the mean
    of ``-log2(pdf(x) * ulp(x))``.
    """
    layout = workloads.frozen_layout(scale)
    hist = {False: np.zeros(1 << 16, np.int64), True: np.zeros(1 << 16, np.int64)}
    f32_bits = {False: 0.0, True: 0.0}
    total = 0
    for ti, t in enumerate(layout.tensors):
        is_norm = t.name.endswith("norm.weight")
        for b, n in workloads.tensor_blocks(t):
            x = workloads.weights(seed, ti, b, 1, n, is_norm)
            total += n * workloads.DTYPE_SIZES[t.dtype]
            if t.dtype == "BF16":
                words = np.frombuffer(workloads.to_dtype(x, "BF16"), np.uint16)
                hist[t.head] += np.bincount(words, minlength=1 << 16)
                continue
            std = workloads.WEIGHT_STD
            u = (x - (1.0 if is_norm else 0.0)) / std
            log_pdf = -0.5 * u.astype(np.float64) ** 2 - np.log(std * np.sqrt(2 * np.pi))
            ulp = np.spacing(np.abs(x)).astype(np.float64)
            f32_bits[t.head] += float((-(log_pdf / np.log(2)) - np.log2(ulp)).sum())
    bits = {head: _entropy(h) * int(h.sum()) + f32_bits[head] for head, h in hist.items()}
    versions = workloads.VERSIONS
    stored = bits[False] + bits[True] * versions
    print(
        f"frozen layout x {scale}: {total / 2**20:.2f} MiB per version; entropy of v1 "
        f"{(bits[False] + bits[True]) / 8 / 2**20:.2f} MiB, of each later version's redrawn "
        f"head {bits[True] / 8 / 2**20:.2f} MiB; ratio bound over {versions} versions "
        f"{versions * total * 8 / stored:.2f}x"
    )


def main() -> None:
    """Run every variant and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.25, help="of the ~512 MiB layout")
    parser.add_argument("--chunk", type=int, default=256, help="chunk size in KiB")
    parser.add_argument("--chunking", action="store_true", help="tensor-aligned chunking")
    parser.add_argument("--store", action="store_true", help="commit 5 versions, check out")
    parser.add_argument("--bounds", action="store_true", help="entropy bounds of the ratios")
    parser.add_argument("--reps", type=int, default=9, help="checkout pairs timed (--store)")
    parser.add_argument("--work", type=Path, default=Path(__file__).parent / ".work" / "delta")
    args = parser.parse_args()
    if args.chunking:
        chunking(args.scale)
        return
    if args.store:
        store(args.scale, args.reps, args.work)
        return
    if args.bounds:
        bounds(args.scale, args.chunk << 10)
        return
    print(f"full layout x {args.scale}, {args.chunk} KiB chunks, one thread")
    head = "| variant | raw MiB | way | ratio | encode MB/s | decode MB/s |"
    print(head)
    print("|" + "---|" * 6)
    for variant, rel in VARIANTS.items():
        raw, ways = run_variant(rel, args.scale, args.chunk << 10)
        for name, w in ways.items():
            print(
                f"| {variant} ({rel:g} std) | {raw / 2**20:.0f} | {name} | "
                f"{raw / w.stored:.2f}x | {raw / w.encode_s / 1e6:.0f} | "
                f"{raw / w.decode_s / 1e6:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
