"""Delta payloads: consecutive versions of a tensor file stored as differences, read exactly."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from mlvc_core import codec
from mlvc_core.check import check
from mlvc_core.history import commit_paths
from mlvc_core.ids import ObjectId
from mlvc_core.manifests import FileIngester
from mlvc_core.objects import CHUNK, Manifest, Tree, TreeEntry
from mlvc_core.packs import Location
from mlvc_core.reader import ChunkedReader
from mlvc_core.repository import Repository
from mlvc_core.restore import checkout
from mlvc_core.session import WriteSession
from mlvc_core.tensorfile import read_layout

MiB = 1 << 20


def model(
    step: int, seed: int = 0, noise: float = 0.01, extra: dict[str, str] | None = None
) -> bytes:
    """A safetensors file of bf16 and f32 tensors after ``step`` steps of small updates."""
    rng = np.random.default_rng(seed)
    master = {
        "embed": rng.normal(0, 0.02, (640, 1024)).astype(np.float32),
        "mlp": rng.normal(0, 0.02, (1024, 768)).astype(np.float32),
        "norm": rng.normal(1, 0.02, (1024,)).astype(np.float32),
    }
    steps = np.random.default_rng(seed + 1)
    for _ in range(step):
        for w in master.values():
            w += steps.normal(0, noise * 0.02, w.shape).astype(np.float32)
    tensors = [
        ("embed", "F32", master["embed"]),
        ("mlp", "BF16", (master["mlp"].view(np.uint32) >> 16).astype(np.uint16)),
        ("norm", "F32", master["norm"]),
    ]
    return safetensors(tensors, extra)


def safetensors(tensors: list[tuple[str, str, np.ndarray]], meta: dict[str, str] | None) -> bytes:
    header: dict[str, object] = {"__metadata__": meta} if meta else {}
    off, blobs = 0, []
    for name, dtype, arr in tensors:
        b = arr.tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": list(arr.shape),
            "data_offsets": [off, off + len(b)],
        }
        off += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return len(h).to_bytes(8, "little") + h + b"".join(blobs)


def deltas(repo: Repository) -> dict[ObjectId, Location]:
    return {oid: loc for oid, loc in repo.iter_index() if loc.codec == codec.DELTA}


def commit_file(
    repo: Repository, work: Path, name: str, data: bytes, branch: str = "main"
) -> ObjectId:
    for old in work.glob("*"):
        old.unlink()
    (work / name).write_bytes(data)
    return commit_paths(repo, [work / name], name, branch=branch)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "repo")


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


def test_large_tensors_are_cut_in_fixed_blocks_from_their_first_byte(repo: Repository) -> None:
    data = model(0)
    layout = read_layout(io.BytesIO(data))
    assert layout is not None
    with WriteSession(repo) as s:
        manifest = FileIngester(s).ingest(io.BytesIO(data))
    ends = set(np.cumsum([n for _, n in manifest.chunks]).tolist())
    for t in layout.tensors:
        if t.nbytes >= repo.config.chunker.min:
            assert set(range(t.start + MiB, t.end, MiB)) | {t.end} <= ends, t.name


def test_unchanged_tensors_deduplicate_when_the_header_moves_them(repo: Repository) -> None:
    with WriteSession(repo) as s:
        first = FileIngester(s).ingest(io.BytesIO(model(0)))
        moved = FileIngester(s).ingest(io.BytesIO(model(0, extra={"note": "x" * 37})))
    new = {oid for oid, _ in moved.chunks} - {oid for oid, _ in first.chunks}
    assert sum(n for oid, n in moved.chunks if oid in new) < 128 << 10  # the header only


def test_changed_tensors_are_stored_as_deltas_and_read_back_exactly(
    repo: Repository, work: Path, tmp_path: Path
) -> None:
    versions = [model(step) for step in range(4)]
    commits = [commit_file(repo, work, "model.safetensors", v) for v in versions]
    found = deltas(repo)
    assert len(found) >= 6
    for loc in found.values():  # every base is a chunk stored on its own: reads stay short
        base = repo.index_entry(loc.base)  # type: ignore[arg-type]
        assert base is not None and base.kind == CHUNK and base.codec != codec.DELTA
    fresh = Repository.open(repo.url)
    for i, cid in enumerate(commits):
        checkout(fresh, cid, tmp_path / f"out{i}")
        assert (tmp_path / f"out{i}" / "model.safetensors").read_bytes() == versions[i]
    assert check(fresh).ok
    stored = sum(loc.stored_len for _, loc in fresh.iter_index() if loc.kind == CHUNK)
    standalone = Repository.init(tmp_path / "plain", config=repo.config.__class__(tensor_block=0))
    for v in versions:
        with WriteSession(standalone) as s:
            FileIngester(s).ingest(io.BytesIO(v))
    plain = sum(loc.stored_len for _, loc in standalone.iter_index() if loc.kind == CHUNK)
    assert stored < 0.8 * plain


def test_reading_one_tensor_decodes_at_most_one_base_per_chunk(
    repo: Repository, work: Path
) -> None:
    for step in range(5):
        cid = commit_file(repo, work, "model.safetensors", model(step))
    from mlvc_core.trees import find_entry

    entry = find_entry(repo, repo.read_commit(cid).tree, "model.safetensors")
    assert entry is not None and entry.oid is not None
    manifest: Manifest = repo.read_manifest(entry.oid)
    layout = read_layout(ChunkedReader(repo, manifest))
    assert layout is not None
    mlp = next(t for t in layout.tensors if t.name == "mlp")
    off, coded = 0, 0
    for chunk_id, n in manifest.chunks:
        if mlp.start <= off < mlp.end:
            fresh = Repository.open(repo.url)  # nothing decoded yet
            reads: list[tuple[str, int, int]] = []
            original = fresh.store.read_range

            def counting(
                key: str,
                offset: int,
                length: int,
                original: object = original,
                reads: list[tuple[str, int, int]] = reads,
            ) -> bytes:
                reads.append((key, offset, length))
                return original(key, offset, length)  # type: ignore[operator]

            fresh.store.read_range = counting  # type: ignore[method-assign]
            assert list(fresh.read_chunks([chunk_id])) == [model(4)[off : off + n]]
            assert len(reads) <= 2  # the chunk and its base at most, never a base's base
            coded += len(reads) - 1
        off += n
    assert coded >= 1


def test_a_renamed_checkpoint_file_is_coded_against_the_previous_one(
    repo: Repository, work: Path, tmp_path: Path
) -> None:
    commit_file(repo, work, "ckpt-100.safetensors", model(0))
    assert not deltas(repo)
    cid = commit_file(repo, work, "ckpt-200.safetensors", model(1))
    assert deltas(repo)
    checkout(Repository.open(repo.url), cid, tmp_path / "out")
    assert (tmp_path / "out" / "ckpt-200.safetensors").read_bytes() == model(1)


def test_a_large_update_is_never_stored_larger_than_on_its_own(
    repo: Repository, work: Path
) -> None:
    commit_file(repo, work, "model.safetensors", model(0))
    before = {oid for oid, _ in repo.iter_index()}
    commit_file(repo, work, "model.safetensors", model(1, noise=50.0))
    for oid, loc in repo.iter_index():
        if oid in before or loc.kind != CHUNK:
            continue
        if loc.codec == codec.DELTA:  # kept only where smaller than the chunk on its own
            raw = repo.read_raw(oid)
            assert loc.stored_len < len(codec.compress(raw, 1, True)[1])


def test_index_entries_carry_the_base_and_refuse_malformed_ones() -> None:
    from mlvc_core.errors import FormatError
    from mlvc_core.packs import (
        check_entry,
        decode_index,
        decode_index_file,
        encode_index,
        encode_index_file,
    )

    a, b = ObjectId(bytes(range(32))), ObjectId(bytes(range(1, 33)))
    entries = [
        (a, Location("a" * 32, 8, 100, 200, codec.PLANES, CHUNK)),
        (b, Location("a" * 32, 108, 50, 200, codec.DELTA, CHUNK, a)),
    ]
    assert decode_index_file(encode_index_file(entries), "i").entries == entries
    assert decode_index(encode_index("a" * 32, entries), "i")[1] == entries
    for bad in (
        [b, 0, 8, 50, 200, codec.DELTA],  # a delta naming no base
        [b, 0, 8, 50, 200, codec.DELTA, b],  # its own base
        [b, 0, 8, 50, 200, codec.DELTA, b"short"],
        [b, 1, 8, 50, 200, codec.DELTA, a],  # a manifest stored as a delta
        [b, 0, 8, 50, 200, codec.ZSTD, a],  # a base on a chunk stored on its own
    ):
        with pytest.raises(FormatError):
            check_entry("a" * 32, bad)


def test_a_delta_whose_base_is_itself_a_delta_is_refused(repo: Repository) -> None:
    from mlvc_core import delta
    from mlvc_core.errors import IntegrityError
    from mlvc_core.ids import hash_bytes

    rng = np.random.default_rng(3)
    x = [rng.normal(0, 1, 65536).astype(np.float32) for _ in range(3)]
    raw = [v.tobytes() for v in x]
    ids = [hash_bytes(r) for r in raw]
    with WriteSession(repo) as s:
        c, payload = codec.compress(raw[0], 1, True)
        s.add_payload(ids[0], CHUNK, c, payload, len(raw[0]))
        for i in (1, 2):  # 1 against 0 (allowed), 2 against 1 (a chain: never written so)
            diff = delta.encode_difference(raw[i], raw[i - 1], "F32")
            assert diff is not None
            s.add_payload(ids[i], CHUNK, codec.DELTA, diff, len(raw[i]), ids[i - 1])
    fresh = Repository.open(repo.url)
    assert fresh.read_raw(ids[1]) == raw[1]
    with pytest.raises(IntegrityError, match="stored on its own"):
        fresh.read_raw(ids[2])
    assert not check(fresh).ok


def test_the_previous_version_of_a_numbered_checkpoint_is_the_latest_one_named_alike(
    repo: Repository,
) -> None:
    from mlvc_core.trees import find_previous_version

    with WriteSession(repo) as s:
        m = s.add_object(Manifest(0, ()))
        sub = s.add_object(
            Tree(
                tuple(
                    TreeEntry(n, "file", m, 0)
                    for n in ("ckpt-100.pt", "ckpt-50.pt", "ckpt-99.bin", "notes-1.txt")
                )
            )
        )
        root = s.add_object(Tree((TreeEntry("out", "dir", sub, 0),)))
    found = find_previous_version(repo, root, "out/ckpt-200.pt")
    assert found is not None and found.name == "ckpt-100.pt"
    assert find_previous_version(repo, root, "out/ckpt-100.pt").name == "ckpt-100.pt"  # type: ignore[union-attr]
    assert find_previous_version(repo, root, "out/model.pt") is None
    assert find_previous_version(repo, root, "ckpt-200.pt") is None  # another directory
