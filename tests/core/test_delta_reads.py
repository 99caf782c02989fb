"""Reading deltas: each result is verified, a base is hashed only to blame it, and a damaged
base or difference is named whichever way the damage shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlvc_core import codec, delta, reads
from mlvc_core.errors import IntegrityError
from mlvc_core.ids import ObjectId, hash_bytes
from mlvc_core.packs import Location, pack_key
from mlvc_core.repository import Repository
from tests.core.test_deltas import commit_file, deltas, model


@pytest.fixture
def versions(tmp_path: Path) -> tuple[Repository, ObjectId]:
    """A repository of three versions of a model; the latest commit's id."""
    repo = Repository.init(tmp_path / "r")
    work = tmp_path / "w"
    work.mkdir()
    for step in range(3):
        cid = commit_file(repo, work, "model.safetensors", model(step))
    assert deltas(repo)
    return repo, cid


def _file_chunks(repo: Repository, cid: ObjectId) -> list[ObjectId]:
    entry = repo.read_tree(repo.read_commit(cid).tree).get("model.safetensors")
    assert entry is not None and entry.oid is not None
    return [c for c, _ in repo.read_manifest(entry.oid).chunks]


def _flip_decodable(repo: Repository, oid: ObjectId, loc: Location) -> None:
    """Flip one byte of ``oid``'s payload such that it still decodes, to other bytes."""
    path = Path(repo.url) / pack_key(loc.pack)
    blob = bytearray(path.read_bytes())
    for i in reversed(range(loc.offset, loc.offset + loc.stored_len)):
        blob[i] ^= 0x55
        payload = bytes(blob[loc.offset : loc.offset + loc.stored_len])
        try:
            if loc.codec == codec.DELTA:
                assert loc.base is not None
                raw = delta.decode(payload, repo.read_base(loc.base), loc.raw_len)
            else:
                raw = codec.decompress(payload, loc.codec, loc.raw_len)
        except Exception:  # noqa: BLE001 - any undecodable flip: try another byte
            raw = None
        if raw is not None and hash_bytes(raw) != oid:
            path.write_bytes(bytes(blob))
            return
        blob[i] ^= 0x55
    raise AssertionError("no decodable flip")


def damage_a_base(repo: Repository, chunks: list[ObjectId]) -> tuple[ObjectId, ObjectId]:
    """Damage the base of the first delta among ``chunks``; the delta's id and its base's.

    The base still decodes, to other bytes.
    """
    coded = deltas(repo)
    oid = next(c for c in chunks if c in coded)
    base = coded[oid].base
    assert base is not None
    loc = repo.index_entry(base)
    assert loc is not None
    _flip_decodable(repo, base, loc)
    return oid, base


def test_a_clean_read_hashes_each_chunk_once_and_no_base(
    versions: tuple[Repository, ObjectId], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, cid = versions
    chunks = _file_chunks(repo, cid)
    coded = deltas(repo)
    assert any(c in coded for c in chunks)
    hashed: list[bytes] = []

    def counting(data: bytes) -> ObjectId:
        hashed.append(bytes(data[:16]))
        return hash_bytes(data)

    fresh = Repository.open(repo.url)
    monkeypatch.setattr(reads, "hash_bytes", counting)
    got = b"".join(fresh.read_chunks(chunks))
    assert got == model(2)
    assert len(hashed) == len(chunks)  # every result verified; no base hashed on the way


def test_a_damaged_base_that_still_decodes_is_named(versions: tuple[Repository, ObjectId]) -> None:
    repo, cid = versions
    oid, base = damage_a_base(repo, _file_chunks(repo, cid))
    fresh = Repository.open(repo.url)
    for _ in range(2):  # and again, with the decoded base cached by the first read
        with pytest.raises(IntegrityError, match=f"delta base is unreadable.*{base.hex()}") as e:
            list(fresh.read_chunks([oid]))
        assert e.value.oid == oid.hex()
    with pytest.raises(IntegrityError) as e:
        fresh.read_base(base)
    assert e.value.oid == base.hex()


def test_a_damaged_difference_is_named_not_its_base(
    versions: tuple[Repository, ObjectId],
) -> None:
    repo, cid = versions
    chunks = _file_chunks(repo, cid)
    coded = deltas(repo)
    oid = next(c for c in chunks if c in coded)
    _flip_decodable(repo, oid, coded[oid])
    fresh = Repository.open(repo.url)
    with pytest.raises(IntegrityError, match="does not match its id") as e:
        list(fresh.read_chunks([oid]))
    assert e.value.oid == oid.hex() and "base" not in str(e.value)
    other = [c for c in chunks if c != oid]
    assert b"".join(fresh.read_chunks(other))  # the base is sound: the rest reads
