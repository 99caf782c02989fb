"""Chunks decoded into reused buffers: exact, never overwritten while a caller still uses
them, and damage still named."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from mlvc_core import codec, delta
from mlvc_core.errors import FormatError, IntegrityError
from mlvc_core.ids import ObjectId
from mlvc_core.packs import Location
from mlvc_core.reader import ChunkedReader
from mlvc_core.repository import Repository
from mlvc_core.restore import checkout
from tests.core.test_delta_reads import _flip_decodable, damage_a_base
from tests.core.test_deltas import commit_file, deltas, model

LATEST = 3


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ObjectId, list[ObjectId]]:
    """A repository of four versions of a model (a few runs of deltas and plain chunks)."""
    root = tmp_path_factory.mktemp("buffers")
    repo = Repository.init(root / "r")
    work = root / "w"
    work.mkdir()
    for step in range(LATEST + 1):
        cid = commit_file(repo, work, "model.safetensors", model(step))
    entry = repo.read_tree(repo.read_commit(cid).tree).get("model.safetensors")
    assert entry is not None and entry.oid is not None
    chunks = [c for c, _ in repo.read_manifest(entry.oid).chunks]
    coded = deltas(repo)
    assert sum(c in coded for c in chunks) >= 4 and any(c not in coded for c in chunks)
    repo.close()
    return root / "r", cid, chunks


def _runs(repo: Repository, chunks: list[ObjectId]) -> list[list[tuple[ObjectId, Location]]]:
    runs = list(repo.chunk_runs(chunks))
    assert len(runs) >= 2
    return runs


def test_a_stream_yields_the_file_exactly_when_each_chunk_is_used_at_once(
    versions: tuple[Path, ObjectId, list[ObjectId]],
) -> None:
    path, _, chunks = versions
    with Repository.open(path) as repo:
        for prefetch in (1, 4):
            out = bytearray()
            for data in repo.stream_chunks(chunks, prefetch=prefetch):
                out += data
            assert bytes(out) == model(LATEST)
        assert b"".join(repo.read_chunks(chunks)) == model(LATEST)  # the owned form


def test_runs_decoded_on_one_thread_keep_their_bytes_until_their_arena_is_reused(
    versions: tuple[Path, ObjectId, list[ObjectId]],
) -> None:
    path, _, chunks = versions
    with Repository.open(path) as repo:
        first, second = _runs(repo, chunks)[:2]
        arena1, arena2 = repo.take_arena(first), repo.take_arena(second)
        assert arena1 is not arena2
        views1 = repo.read_run_into(first, arena1)
        kept = [bytes(v) for v in views1]
        views2 = repo.read_run_into(second, arena2)
        # Decoding the second run (its bases, planes and temporaries in this thread's
        # scratch buffers) left every chunk of the first one as it was.
        assert [bytes(v) for v in views1] == kept
        assert kept == repo.read_run(first)
        assert [bytes(v) for v in views2] == repo.read_run(second)


def test_owned_results_are_never_overwritten_by_later_reads_on_the_same_thread(
    versions: tuple[Path, ObjectId, list[ObjectId]],
) -> None:
    path, _, chunks = versions
    with Repository.open(path) as repo:
        coded = [c for c in chunks if c in deltas(repo)]
        a = repo.read_raw(coded[0])
        b = repo.read_raw(coded[1])
        kept = bytes(a)
        for oid in coded[2:]:
            repo.read_raw(oid)
        assert a == kept and a != b
        loc = repo.index_entry(coded[0])
        assert loc is not None and loc.base is not None
        base = repo.read_base(loc.base)
        payload = repo._payload(coded[0])[1]
        one, two = delta.decode(payload, base), delta.decode(payload, base)
        assert one == two == kept and one is not two


def test_a_stream_closed_early_leaves_no_arena_to_a_running_decode(
    versions: tuple[Path, ObjectId, list[ObjectId]],
) -> None:
    path, _, chunks = versions
    with Repository.open(path) as repo:
        for _ in range(3):
            stream = repo.stream_chunks(chunks, prefetch=4)
            held = next(stream)
            kept = bytes(held)
            stream.close()  # runs still in flight: waited for before their arenas go back
            assert b"".join(bytes(d) for d in repo.stream_chunks(chunks)) == model(LATEST)
            assert bytes(held) == kept  # the chunk held when it stopped was not reused


def test_a_chunked_reader_reads_deltas_exactly_in_any_order(
    versions: tuple[Path, ObjectId, list[ObjectId]],
) -> None:
    path, cid, _ = versions
    want = model(LATEST)
    with Repository.open(path) as repo:
        entry = repo.read_tree(repo.read_commit(cid).tree).get("model.safetensors")
        assert entry is not None and entry.oid is not None
        manifest = repo.read_manifest(entry.oid)
        with ChunkedReader(repo, manifest) as f:
            assert f.read() == want
            rng = np.random.default_rng(0)
            for _ in range(40):
                start = int(rng.integers(0, len(want)))
                n = int(rng.integers(1, 3 << 20))
                f.seek(start)
                got = f.read(n)  # a raw read: up to the end of one chunk
                assert got and got == want[start : start + len(got)]
                f.seek(start)
                buffered = io.BufferedReader(f, 1 << 16)
                assert buffered.read(n) == want[start : start + n]
                buffered.detach()
            f.seek(-100, io.SEEK_END)
            assert f.read() == want[-100:]


def test_a_checkout_writes_the_latest_version_byte_for_byte(
    versions: tuple[Path, ObjectId, list[ObjectId]], tmp_path: Path
) -> None:
    path, cid, _ = versions
    with Repository.open(path) as repo:
        checkout(repo, cid, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == model(LATEST)


def _damaged_copy(versions: tuple[Path, ObjectId, list[ObjectId]], tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(versions[0], tmp_path / "r")
    return tmp_path / "r"


def test_a_streamed_read_names_a_damaged_base(
    versions: tuple[Path, ObjectId, list[ObjectId]], tmp_path: Path
) -> None:
    path = _damaged_copy(versions, tmp_path)
    chunks = versions[2]
    with Repository.open(path) as repo:
        oid, base = damage_a_base(repo, chunks)
    with Repository.open(path) as fresh:
        with pytest.raises(IntegrityError, match=f"delta base is unreadable.*{base.hex()}") as e:
            for _ in fresh.stream_chunks(chunks):
                pass
        assert e.value.oid == oid.hex()
        entry = fresh.read_tree(fresh.read_commit(versions[1]).tree).get("model.safetensors")
        assert entry is not None and entry.oid is not None
        manifest = fresh.read_manifest(entry.oid)
        with pytest.raises(IntegrityError), ChunkedReader(fresh, manifest) as f:
            f.read()


def test_a_streamed_read_names_a_damaged_difference_not_its_base(
    versions: tuple[Path, ObjectId, list[ObjectId]], tmp_path: Path
) -> None:
    path = _damaged_copy(versions, tmp_path)
    chunks = versions[2]
    with Repository.open(path) as repo:
        coded = deltas(repo)
        oid = next(c for c in chunks if c in coded)
        _flip_decodable(repo, oid, coded[oid])
    with Repository.open(path) as fresh:
        with pytest.raises(IntegrityError, match="does not match its id") as e:
            for _ in fresh.stream_chunks(chunks):
                pass
        assert e.value.oid == oid.hex() and "base" not in str(e.value)


@pytest.mark.parametrize("raw", [bytes(range(256)) * 700, np.arange(50_000, dtype="<f4").tobytes()])
def test_decoding_into_a_buffer_fills_exactly_it_and_refuses_another_length(raw: bytes) -> None:
    c, payload = codec.compress(raw, 1, planes=True)
    assert c != codec.RAW
    guard = np.full(len(raw) + 64, 0xA5, dtype=np.uint8)
    got = codec.decompress_into(payload, c, guard[: len(raw)])
    assert bytes(got) == raw and bytes(guard[len(raw) :]) == b"\xa5" * 64
    for n in (len(raw) - 1, len(raw) + 1):
        short = np.full(n + 64, 0xA5, dtype=np.uint8)
        with pytest.raises(FormatError):
            codec.decompress_into(payload, c, short[:n])
        assert bytes(short[n:]) == b"\xa5" * 64  # never written past the buffer
