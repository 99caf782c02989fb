"""Everything follows deltas: gc keeps their bases, fsck names what a lost base breaks,
transfers carry bases first, and kill -9 of a commit writing deltas leaves a clean repository."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mlvc_core import codec, transfer
from mlvc_core.check import check
from mlvc_core.config import RepoConfig
from mlvc_core.gc import collect
from mlvc_core.ids import ObjectId
from mlvc_core.manifests import FileIngester
from mlvc_core.objects import Commit, Tree, TreeEntry
from mlvc_core.packs import pack_key
from mlvc_core.repository import Repository
from mlvc_core.restore import checkout
from mlvc_core.session import WriteSession
from tests.core.killpoints import run_killed
from tests.core.test_deltas import commit_file, deltas, model


def _commit(
    repo: Repository, data: bytes, guide: ObjectId | None, ref: str, junk: int = 0
) -> ObjectId:
    """A commit (no parents) of ``data`` as ``model.safetensors``, coded against ``guide``."""
    with WriteSession(repo) as s:
        files = FileIngester(s)
        g = repo.read_manifest(guide) if guide is not None else None
        manifest = files.ingest(io.BytesIO(data), guide=g)
        if junk:  # unreferenced bytes in the same pack: dead once written
            files.ingest(io.BytesIO(os.urandom(junk)))
        mid = s.add_object(manifest)
        tree = s.add_object(Tree((TreeEntry("model.safetensors", "file", mid, manifest.size),)))
        cid = s.add_object(Commit(tree, (), "t", 0.0, ref))
        s.flush()
        repo.refs.set(ref, cid, None)
    return cid


def _manifest_of(repo: Repository, cid: ObjectId) -> ObjectId:
    entry = repo.read_tree(repo.read_commit(cid).tree).get("model.safetensors")
    assert entry is not None and entry.oid is not None
    return entry.oid


def _read(repo: Repository, cid: ObjectId, out: Path) -> bytes:
    checkout(repo, cid, out)
    return (out / "model.safetensors").read_bytes()


def test_gc_keeps_the_bases_of_live_deltas_and_repacks_them_intact(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r")
    old = _commit(repo, model(0), None, "heads/old")
    new = _commit(repo, model(1), _manifest_of(repo, old), "heads/new", junk=3 << 20)
    assert deltas(repo)
    repo.refs.delete("heads/old")  # nothing reaches the first version but the deltas' bases
    report = collect(Repository.open(repo.url), dry_run=False, grace_seconds=0)
    assert report.packs_repacked >= 1  # the second pack was mostly junk: its deltas moved
    after = Repository.open(repo.url)
    kept = deltas(after)
    assert kept and all(after.has(loc.base) for loc in kept.values())  # type: ignore[arg-type]
    assert check(after).ok
    assert _read(after, new, tmp_path / "out") == model(1)
    assert not after.has(old)  # what no ref or delta needs went
    # Once no delta needs them either, the bases go too.
    after.refs.delete("heads/new")
    collect(after, dry_run=False, grace_seconds=0)
    assert not any(True for _ in Repository.open(repo.url).iter_index())


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_fsck_names_a_lost_base_and_every_commit_it_breaks(tmp_path: Path, damage: str) -> None:
    repo = Repository.init(tmp_path / "r")
    old = _commit(repo, model(0), None, "heads/old")
    new = _commit(repo, model(1), _manifest_of(repo, old), "heads/new")
    third = _commit(repo, model(2), _manifest_of(repo, new), "heads/third")
    base = next(iter(deltas(repo).values()))
    assert base.base is not None
    loc = repo.index_entry(base.base)
    assert loc is not None
    path = Path(repo.url) / pack_key(loc.pack)
    blob = bytearray(path.read_bytes())
    if damage == "corrupt":
        blob[loc.offset + loc.stored_len // 2] ^= 0xFF
        path.write_bytes(bytes(blob))
    else:  # the base's pack is gone (and with it the first version)
        path.unlink()
    report = check(Repository.open(repo.url))
    assert not report.ok
    about = [p for p in report.problems if p.key == base.base.hex() and "delta base" in p.message]
    assert len(about) == 1 and about[0].kind == damage
    for cid in (new, third):  # both later versions were coded against it
        assert cid.hex()[:12] in about[0].message
    from mlvc_core.errors import MlvcError

    with pytest.raises(MlvcError, match="delta base" if damage == "corrupt" else None):
        _read(Repository.open(repo.url), third, tmp_path / "out")


def test_push_of_one_ref_carries_the_bases_its_deltas_need(tmp_path: Path) -> None:
    src = Repository.init(tmp_path / "src")
    old = _commit(src, model(0), None, "heads/old")
    new = _commit(src, model(1), _manifest_of(src, old), "heads/new")
    dst = Repository.init(tmp_path / "dst")
    transfer.transfer(src, dst, refs=["heads/new"])
    fresh = Repository.open(dst.url)
    assert deltas(fresh) and not fresh.has(old)
    assert check(fresh).ok
    assert _read(fresh, new, tmp_path / "out") == model(1)


def test_an_interrupted_clone_never_leaves_a_delta_without_its_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = Repository.init(tmp_path / "src")
    work = tmp_path / "work"
    work.mkdir()
    for step in range(3):
        commit_file(src, work, "model.safetensors", model(step))
    assert deltas(src)
    copied: list[str] = []
    real = transfer.copy_pack

    def failing(*args: object, **kwargs: object) -> None:
        if copied:
            raise OSError("connection lost")
        real(*args, **kwargs)  # type: ignore[arg-type]
        copied.append(str(args[2]))

    monkeypatch.setattr(transfer, "copy_pack", failing)
    dst = Repository.init(tmp_path / "dst")
    with pytest.raises(OSError):
        transfer.transfer(src, dst)
    partial = Repository.open(dst.url)
    assert all(partial.has(loc.base) for loc in deltas(partial).values())  # type: ignore[arg-type]
    assert check(partial).ok
    monkeypatch.setattr(transfer, "copy_pack", real)
    transfer.transfer(src, Repository.open(dst.url))  # resumes
    done = Repository.open(dst.url)
    assert len(deltas(done)) == len(deltas(src)) and check(done).ok
    assert _read(done, src.resolve("heads/main"), tmp_path / "out") == model(2)


def _child(repo: Path, path: Path, kill_at: int) -> subprocess.CompletedProcess[str]:
    return run_killed("commit", repo, str(path), kill_at)


def test_kill_9_while_committing_deltas_leaves_a_clean_repository(tmp_path: Path) -> None:
    config = RepoConfig(tensor_block=64 << 10, pack_size=256 << 10)  # many packs and blocks
    base = tmp_path / "base"
    repo = Repository.init(base, config)
    work = tmp_path / "work"
    work.mkdir()
    commit_file(repo, work, "model.safetensors", model(0))
    repo.close()
    (work / "model.safetensors").write_bytes(model(1))
    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    full = _child(probe, work / "model.safetensors", 0)
    assert full.returncode == 0, full.stderr
    assert deltas(Repository.open(probe))
    total = int(full.stdout.strip())
    assert total >= 8
    for n in sorted({1, 2, total // 3, total // 2, 2 * total // 3, total - 1, total}):
        target = tmp_path / f"r{n}"
        shutil.copytree(base, target)
        r = _child(target, work / "model.safetensors", n)
        assert r.returncode == -9, (n, r.stderr)
        repo = Repository.open(target)
        collect(repo, dry_run=False, grace_seconds=0)  # the killed writer is dead: no wait
        report = check(Repository.open(target))
        assert report.ok and not report.warnings, (n, report.problems, report.warnings)
        data = _read(
            Repository.open(target),
            Repository.open(target).resolve("heads/main"),
            tmp_path / f"o{n}",
        )
        assert data in (model(0), model(1)), n
        # and the next commit (deltas against what survived) completes
        commit_file(Repository.open(target), work, "model.safetensors", model(2))
        final = Repository.open(target)
        assert check(final).ok
        assert _read(final, final.resolve("heads/main"), tmp_path / f"p{n}") == model(2)
    assert codec.DELTA == 3


def test_fsck_says_when_the_commits_a_lost_base_breaks_could_not_all_be_read(
    tmp_path: Path,
) -> None:
    repo = Repository.init(tmp_path / "r")
    old = _commit(repo, model(0), None, "heads/old")
    new = _commit(repo, model(1), _manifest_of(repo, old), "heads/new")
    third = _commit(repo, model(2), _manifest_of(repo, new), "heads/third")
    base = next(iter(deltas(repo).values())).base
    assert base is not None
    loc = repo.index_entry(base)
    third_loc = repo.index_entry(third)
    assert loc is not None and third_loc is not None and third_loc.pack != loc.pack
    path = Path(repo.url) / pack_key(loc.pack)
    blob = bytearray(path.read_bytes())
    blob[loc.offset + loc.stored_len // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    (Path(repo.url) / pack_key(third_loc.pack)).unlink()  # the third commit is unreadable too
    report = check(Repository.open(repo.url))
    (about,) = [p for p in report.problems if p.key == base.hex() and "delta base" in p.message]
    assert new.hex()[:12] in about.message
    assert "could not be read" in about.message  # the list of commits is not the whole story
