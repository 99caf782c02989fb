"""Deterministic benchmark workloads: five versions of a model checkpoint or a data set.

Each workload is written as ``<root>/<name>/v1 .. v5`` (one file per version directory) plus
``<root>/<name>/manifest.json``. Generation is seeded and streamed: tensors are produced block by
block and every block is written into all five version files at once, so memory stays at a few
blocks whatever the file size. A workload whose manifest matches (generator version, scale,
seed, file sizes) is reused as it is.

Workloads (sizes at ``scale=1``):

* ``frozen``: a ~512 MiB safetensors checkpoint (84 tensors, float32 with bf16 MLP and
  ``lm_head``). Between versions only the "head" changes (the last block, the final norm and a
  classifier: 10 tensors, ~6% of the bytes); every other tensor stays bit-identical. From v3 on
  the JSON header carries an extra metadata entry, so every tensor's offset shifts.
* ``full``: a ~512 MiB, mostly-bf16 safetensors checkpoint where every tensor changes slightly
  between versions (a full fine-tune): float32 master weights get Gaussian noise of 1% of the
  weights' std per version and are rounded to the stored dtype. (A 1e-4 relative change is below
  bf16's resolution of 2^-8 and would leave most bf16 values bit-identical.)
* ``csv``: a ~200 MiB CSV (ids, timestamps, categories, float features, labels) that grows by 5%
  of rows per version, with a few rows in the middle edited in each version.
* ``big``: one version holding a single 4 GiB file of float32 values (peak-RSS test).

Usage: ``python benchmarks/workloads.py DIR [--scale S] [--only NAME ...]``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GENERATOR_VERSION = 1
VERSIONS = 5
WORKLOADS = ("frozen", "full", "csv")
ALL_WORKLOADS = (*WORKLOADS, "big")
BLOCK_ELEMENTS = 4 << 20  # tensor values generated per block (16 MiB of float32)
WEIGHT_STD = 0.02
FULL_NOISE_REL = 0.01  # per-version update of the full fine-tune, relative to WEIGHT_STD
CSV_BYTES = 200 << 20
CSV_GROWTH = 1.05
CSV_EDITS_PER_VERSION = 5
BIG_BYTES = 4 << 30
DTYPE_SIZES = {"F32": 4, "BF16": 2}


@dataclass
class Workload:
    """A generated workload: its version directories and their sizes."""

    name: str
    root: Path
    versions: list[Path]
    version_bytes: list[int]

    @property
    def logical_bytes(self) -> int:
        """Bytes of all versions together (what a plain copy of each would store)."""
        return sum(self.version_bytes)


@dataclass
class TensorSpec:
    """One tensor of a synthetic checkpoint."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    head: bool = False  # trained (changes between versions) in the frozen workload

    @property
    def elements(self) -> int:
        """Number of values."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Size in the file."""
        return self.elements * DTYPE_SIZES[self.dtype]


@dataclass
class ModelLayout:
    """Tensor list of a synthetic decoder-only transformer."""

    tensors: list[TensorSpec] = field(default_factory=list)

    def add(self, name: str, dtype: str, *shape: int, head: bool = False) -> None:
        """Append a tensor."""
        self.tensors.append(TensorSpec(name, dtype, tuple(shape), head))


def transformer_layout(
    scale: float,
    layers: int,
    hidden: int,
    ffn: int,
    vocab: int,
    matrix_dtype: str,
    mlp_dtype: str,
    lm_head_dtype: str,
) -> ModelLayout:
    """A llama-like tensor list; ``scale`` shrinks every matrix's rows (and so its bytes)."""

    def rows(n: int) -> int:
        return max(1, round(n * scale))

    layout = ModelLayout()
    layout.add("model.embed_tokens.weight", matrix_dtype, rows(vocab), hidden)
    for i in range(layers):
        last = i == layers - 1
        p = f"model.layers.{i}"
        layout.add(f"{p}.input_layernorm.weight", "F32", hidden, head=last)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            layout.add(
                f"{p}.self_attn.{proj}.weight", matrix_dtype, rows(hidden), hidden, head=last
            )
        layout.add(f"{p}.post_attention_layernorm.weight", "F32", hidden, head=last)
        layout.add(f"{p}.mlp.up_proj.weight", mlp_dtype, rows(ffn), hidden, head=last)
        layout.add(f"{p}.mlp.down_proj.weight", mlp_dtype, rows(hidden), ffn, head=last)
    layout.add("model.norm.weight", "F32", hidden, head=True)
    layout.add("lm_head.weight", lm_head_dtype, rows(vocab), hidden)
    layout.add("score.weight", "F32", 16, hidden, head=True)
    return layout


def frozen_layout(scale: float) -> ModelLayout:
    """~512 MiB, mostly float32: 84 tensors, of which 10 form the trained head."""
    return transformer_layout(
        scale,
        layers=10,
        hidden=1024,
        ffn=4096,
        vocab=32768,
        matrix_dtype="F32",
        mlp_dtype="BF16",
        lm_head_dtype="BF16",
    )


def full_layout(scale: float) -> ModelLayout:
    """~512 MiB, bf16 matrices (norms float32): 132 tensors."""
    return transformer_layout(
        scale,
        layers=16,
        hidden=1024,
        ffn=4096,
        vocab=32768,
        matrix_dtype="BF16",
        mlp_dtype="BF16",
        lm_head_dtype="BF16",
    )


# ---------------------------------------------------------------------------- safetensors


def safetensors_header(tensors: list[TensorSpec], metadata: dict[str, str]) -> bytes:
    """The 8-byte length prefix plus the JSON header, padded with spaces to 8-byte alignment."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for t in tensors:
        header[t.name] = {
            "dtype": t.dtype,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return len(text).to_bytes(8, "little") + text


def checkpoint_metadata(version: int, extra_from: int = 3) -> dict[str, str]:
    """Fixed-width metadata; from version ``extra_from`` on an extra entry grows the header."""
    meta = {"format": "pt", "step": f"{version * 1000:08d}"}
    if version >= extra_from:
        meta["optimizer"] = "adamw(lr=2e-5, betas=(0.9, 0.999), weight_decay=0.01)"
    return meta


def to_dtype(values: np.ndarray, dtype: str) -> bytes:
    """float32 values as the bytes of ``dtype`` (bf16 rounds to nearest even)."""
    if dtype == "F32":
        return values.astype("<f4", copy=False).tobytes()
    bits = values.astype(np.float32).view(np.uint32).copy()
    bits += 0x7FFF + ((bits >> 16) & 1)
    return (bits >> 16).astype("<u2").tobytes()


def tensor_blocks(t: TensorSpec) -> Iterator[tuple[int, int]]:
    """(block index, element count) of a tensor, generated block by block."""
    for b, start in enumerate(range(0, t.elements, BLOCK_ELEMENTS)):
        yield b, min(BLOCK_ELEMENTS, t.elements - start)


def rng(*key: int) -> np.random.Generator:
    """A generator seeded by a tuple of non-negative ints."""
    return np.random.default_rng(list(key))


def weights(seed: int, tensor: int, block: int, tag: int, n: int, is_norm: bool) -> np.ndarray:
    """Initial weights: N(0, 0.02) for matrices, around 1.0 for norm scales."""
    values = rng(seed, tensor, block, tag).standard_normal(n, dtype=np.float32)
    values *= WEIGHT_STD
    if is_norm:
        values += 1.0
    return values


def write_frozen(dest: Path, scale: float, seed: int) -> None:
    """Five checkpoints in which only the head tensors change."""
    layout = frozen_layout(scale)
    with VersionFiles(dest, "model.safetensors") as files:
        for v, f in enumerate(files, start=1):
            f.write(safetensors_header(layout.tensors, checkpoint_metadata(v)))
        for ti, t in enumerate(layout.tensors):
            is_norm = t.name.endswith("norm.weight")
            for b, n in tensor_blocks(t):
                for v, f in enumerate(files, start=1):
                    if v == 1 or t.head:
                        data = to_dtype(
                            weights(seed, ti, b, v if t.head else 1, n, is_norm), t.dtype
                        )
                    f.write(data)


def write_full(dest: Path, scale: float, seed: int) -> None:
    """Five checkpoints of a full fine-tune: every tensor drifts a little each version."""
    layout = full_layout(scale)
    with VersionFiles(dest, "model.safetensors") as files:
        for v, f in enumerate(files, start=1):
            f.write(
                safetensors_header(layout.tensors, checkpoint_metadata(v, extra_from=VERSIONS + 1))
            )
        for ti, t in enumerate(layout.tensors):
            is_norm = t.name.endswith("norm.weight")
            for b, n in tensor_blocks(t):
                master = weights(seed, ti, b, 0, n, is_norm)
                for v, f in enumerate(files, start=1):
                    noise = rng(seed, ti, b, v).standard_normal(n, dtype=np.float32)
                    master += noise * np.float32(FULL_NOISE_REL * WEIGHT_STD)
                    f.write(to_dtype(master, t.dtype))


# ---------------------------------------------------------------------------- CSV

CSV_COLUMNS = (
    "id,timestamp,user_id,country,category,device,price,quantity,f0,f1,f2,f3,f4,f5,score,label"
)
COUNTRIES = np.array("US GB DE FR IN BR JP CA AU ES IT NL SE PL MX KR ZA NG AR TR".split())
CATEGORIES = np.array(
    [
        "electronics",
        "books",
        "home_garden",
        "toys",
        "sports_outdoors",
        "fashion",
        "beauty",
        "grocery",
        "automotive",
        "music",
        "software",
        "pet_supplies",
        "office",
        "health",
        "video_games",
    ]
)
DEVICES = np.array(["mobile", "desktop", "tablet"])
CSV_ROWS_PER_BLOCK = 50_000
CSV_ROW_FORMAT = "%d,%s,%d,%s,%s,%s,%.2f,%d,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f,%.4f,%d"


def csv_block(seed: int, block: int) -> list[str]:
    """Rows ``block * CSV_ROWS_PER_BLOCK ...`` as lines (without newlines)."""
    n = CSV_ROWS_PER_BLOCK
    r = rng(seed, 1_000_000 + block)
    ids = np.arange(block * n, (block + 1) * n) + 1
    seconds = ids * 7 + r.integers(0, 7, n)
    stamps = np.datetime_as_string(np.datetime64("2024-01-01T00:00:00") + seconds, unit="s")
    feats = r.standard_normal((6, n))
    columns = [
        ids.tolist(),
        stamps.tolist(),
        r.integers(10_000, 999_999, n).tolist(),
        COUNTRIES[r.integers(0, len(COUNTRIES), n)].tolist(),
        CATEGORIES[r.integers(0, len(CATEGORIES), n)].tolist(),
        DEVICES[r.integers(0, len(DEVICES), n)].tolist(),
        np.round(r.lognormal(3.0, 1.0, n), 2).tolist(),
        r.integers(1, 11, n).tolist(),
        *(f.tolist() for f in feats),
        r.random(n).tolist(),
        (feats[0] + feats[1] > 0).astype(int).tolist(),
    ]
    return [CSV_ROW_FORMAT % row for row in zip(*columns, strict=True)]


def edit_row(line: str, seed: int, version: int, row: int) -> str:
    """A corrected row: its label flipped, a feature and the price re-measured."""
    fields = line.split(",")
    r = rng(seed, 2_000_000 + version, row)
    fields[6] = f"{r.lognormal(3.0, 1.0):.2f}"
    fields[8] = f"{r.standard_normal():.6f}"
    fields[15] = str(1 - int(fields[15]))
    return ",".join(fields)


def csv_row_counts(seed: int, scale: float) -> list[int]:
    """Rows of each version: ~CSV_BYTES * scale at v1, then 5% more rows per version."""
    sample = csv_block(seed, 0)
    row_bytes = sum(map(len, sample)) / len(sample) + 1
    first = max(CSV_ROWS_PER_BLOCK // 10, round(CSV_BYTES * scale / row_bytes))
    return [round(first * CSV_GROWTH**i) for i in range(VERSIONS)]


def csv_edits(seed: int, counts: list[int]) -> dict[int, list[int]]:
    """Row -> versions that edit it: each version edits a few rows in the middle of the old ones."""
    edits: dict[int, list[int]] = {}
    for v in range(2, VERSIONS + 1):
        existing = counts[v - 2]
        rows = rng(seed, 3_000_000 + v).integers(
            existing // 4, 3 * existing // 4, CSV_EDITS_PER_VERSION
        )
        for row in rows.tolist():
            edits.setdefault(row, []).append(v)
    return edits


def write_csv(dest: Path, scale: float, seed: int) -> None:
    """A growing CSV with a few edited rows per version."""
    counts = csv_row_counts(seed, scale)
    edits = csv_edits(seed, counts)
    with VersionFiles(dest, "events.csv") as files:
        for f in files:
            f.write((CSV_COLUMNS + "\n").encode())
        for block in range(math.ceil(counts[-1] / CSV_ROWS_PER_BLOCK)):
            lines = csv_block(seed, block)
            first_row = block * CSV_ROWS_PER_BLOCK
            for v, f in enumerate(files, start=1):
                end = min(len(lines), counts[v - 1] - first_row)
                if end <= 0:
                    continue
                versioned = [
                    edited_line(lines[i], first_row + i, v, edits, seed) for i in range(end)
                ]
                f.write(("\n".join(versioned) + "\n").encode())


def edited_line(line: str, row: int, version: int, edits: dict[int, list[int]], seed: int) -> str:
    """``line`` with every edit made up to ``version`` applied."""
    for edit_version in edits.get(row, ()):
        if edit_version <= version:
            line = edit_row(line, seed, edit_version, row)
    return line


# ---------------------------------------------------------------------------- big file


def write_big(dest: Path, scale: float, seed: int) -> None:
    """A single version holding one large file of float32 values."""
    total = max(BLOCK_ELEMENTS * 4, round(BIG_BYTES * scale)) // 4
    with VersionFiles(dest, "big.bin", versions=1) as (f,):
        for b, start in enumerate(range(0, total, BLOCK_ELEMENTS)):
            n = min(BLOCK_ELEMENTS, total - start)
            f.write(weights(seed, 0, b, 0, n, is_norm=False).tobytes())


# ---------------------------------------------------------------------------- plumbing


class VersionFiles:
    """Opens ``dest/v1/<name> .. dest/vN/<name>`` for writing, as a context manager."""

    def __init__(self, dest: Path, name: str, versions: int = VERSIONS) -> None:
        self.paths = [dest / f"v{v}" / name for v in range(1, versions + 1)]

    def __enter__(self) -> list:
        for p in self.paths:
            p.parent.mkdir(parents=True, exist_ok=True)
        self.files = [open(p, "wb") for p in self.paths]  # noqa: SIM115
        return self.files

    def __exit__(self, *exc: object) -> None:
        for f in self.files:
            f.close()


WRITERS: dict[str, Callable[[Path, float, int], None]] = {
    "frozen": write_frozen,
    "full": write_full,
    "csv": write_csv,
    "big": write_big,
}


def manifest_key(name: str, scale: float, seed: int) -> dict[str, object]:
    """What a cached workload must match to be reused."""
    return {"generator": GENERATOR_VERSION, "workload": name, "scale": scale, "seed": seed}


def read_manifest(dest: Path, key: dict[str, object]) -> Workload | None:
    """The cached workload at ``dest`` if its manifest matches ``key`` and its files are intact."""
    try:
        manifest = json.loads((dest / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("key") != key:
        return None
    versions = [dest / v for v in manifest["versions"]]
    sizes = manifest["version_bytes"]
    for vdir, files in zip(versions, manifest["files"], strict=True):
        for rel, size in files.items():
            p = vdir / rel
            if not p.is_file() or p.stat().st_size != size:
                return None
    return Workload(str(key["workload"]), dest, versions, sizes)


def write_manifest(dest: Path, key: dict[str, object]) -> Workload:
    """Record what was generated (written last, so an interrupted run regenerates)."""
    versions = sorted((p for p in dest.iterdir() if p.is_dir()), key=lambda p: int(p.name[1:]))
    files = [
        {str(f.relative_to(v)): f.stat().st_size for f in sorted(v.rglob("*")) if f.is_file()}
        for v in versions
    ]
    sizes = [sum(fs.values()) for fs in files]
    manifest = {
        "key": key,
        "versions": [v.name for v in versions],
        "files": files,
        "version_bytes": sizes,
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return Workload(str(key["workload"]), dest, versions, sizes)


def ensure(
    name: str, root: Path, scale: float = 1.0, seed: int = 0, log: Callable[[str], None] = print
) -> Workload:
    """The workload ``name`` under ``root``, generated unless a matching one is cached there."""
    dest = Path(root) / name
    key = manifest_key(name, scale, seed)
    cached = read_manifest(dest, key)
    if cached is not None:
        return cached
    log(f"generating workload {name!r} (scale {scale}) into {dest}")
    (dest / "manifest.json").unlink(missing_ok=True)
    for old in dest.glob("v*/*"):
        old.unlink()
    WRITERS[name](dest, scale, seed)
    return write_manifest(dest, key)


def main() -> None:
    """Generate workloads from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="directory to generate into")
    parser.add_argument("--scale", type=float, default=1.0, help="size factor (e.g. 0.05)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", choices=ALL_WORKLOADS, default=list(WORKLOADS))
    args = parser.parse_args()
    for name in args.only:
        w = ensure(name, args.root, args.scale, args.seed)
        sizes = ", ".join(f"{b / 2**20:.1f}" for b in w.version_bytes)
        print(f"{name}: {len(w.versions)} versions, MiB: {sizes}")


if __name__ == "__main__":
    main()
