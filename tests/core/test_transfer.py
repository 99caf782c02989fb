"""push / pull / clone move packs: requests per pack (counted at the server), verified, resumed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlvc_core.catalog import LocalCache, scan
from mlvc_core.check import check
from mlvc_core.errors import IntegrityError
from mlvc_core.gc import collect
from mlvc_core.history import commit_paths
from mlvc_core.packs import PACK_PREFIX
from mlvc_core.repository import Repository
from mlvc_core.transfer import transfer
from tests.s3_counter import CountingProxy
from tests.servers import make_s3_bucket, moto_options
from tests.synth import make_experiments

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = "refs/experiments/"


@pytest.fixture
def proxied_moto(moto_clean: str) -> Iterator[tuple[CountingProxy, str, dict[str, Any]]]:
    """A counting proxy in front of moto, a fresh bucket, and options pointing at the proxy."""
    proxy = CountingProxy(moto_clean)
    bucket = make_s3_bucket(moto_options(moto_clean))
    try:
        yield proxy, f"s3://{bucket}", moto_options(proxy.url)
    finally:
        proxy.close()


def _files(repo: Repository, ids: list[str]) -> dict[str, bytes]:
    """Every file of the latest checkpoint of each experiment, read back."""
    from mlvc_core.trees import walk_tree

    out = {}
    for exp_id in ids:
        ref = repo.refs.require(f"experiments/{exp_id}")
        tree = repo.read_commit(ref.target).tree
        for rel, entry in walk_tree(repo, tree):
            if entry.kind == "file":
                manifest = repo.read_manifest(entry.oid)
                out[f"{exp_id}/{rel}"] = b"".join(repo.read_chunks(c for c, _ in manifest.chunks))
    return out


def test_clone_requests_grow_with_packs_not_objects(
    proxied_moto: tuple[CountingProxy, str, dict[str, Any]], tmp_path: Path
) -> None:
    proxy, bucket_url, options = proxied_moto
    counts = []
    for n in (10, 30):
        url = f"{bucket_url}/repo{n}"
        with Repository.init(url, **options) as src:
            ids = make_experiments(src, n, seed=n)  # one write session: the same packs
            scan(src.store, EXPERIMENTS, LocalCache(None), 2.0, compact_threshold=0)
        proxy.reset()
        with Repository.open(url, **options) as src:
            dst = Repository.init(tmp_path / f"clone{n}")
            report = transfer(src, dst)
            packs = len({loc.pack for _, loc in src.iter_index()})
        counts.append(proxy.snapshot())
        assert report.packs_copied == packs and len(report.refs_updated) == n
        assert check(dst).ok
        with Repository.open(url, **options) as src:
            assert _files(dst, ids) == _files(src, ids)
    few, many = counts
    assert few == many  # three times the objects and experiments, the same requests
    # config, generation, index file, catalog, one GET per (small) pack; listings of index/,
    # packs/ and the three ref kinds.
    assert few == {"GET": 4 + packs, "LIST": 5}


def test_a_damaged_payload_stops_the_copy_of_its_pack(tmp_path: Path) -> None:
    src = Repository.init(tmp_path / "src")
    make_experiments(src, 3, seed=1, checkpoint_bytes=20_000)
    data_pack = max(
        (info for info in src.store.list(PACK_PREFIX)), key=lambda i: i.size
    )  # the data pack: the checkpoints' chunks
    path = tmp_path / "src" / data_pack.key
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    dst = Repository.init(tmp_path / "dst")
    with pytest.raises(IntegrityError):
        transfer(Repository.open(tmp_path / "src"), dst)
    assert not (tmp_path / "dst" / data_pack.key).exists()  # nothing half-copied is visible
    assert not dst.refs.list("experiments")  # refs never point at what was not sent


_KILLED_CLONE = """
import os, signal, sys
import mlvc_core.transfer as t
from mlvc_core.repository import Repository
t.PIECE_BYTES = 4096
t._PACK_WORKERS = 1
src = Repository.open(sys.argv[1])
dst = Repository.open(sys.argv[2])
published = 0
real_publish = dst.publish_index
def publish_index(entries):
    global published
    out = real_publish(entries)
    published += 1
    return out
dst.publish_index = publish_index
real_read = src.store.read_range
def read_range(key, offset, length):
    if key.startswith("packs/") and offset > 0 and published >= int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of a pack
    return real_read(key, offset, length)
src.store.read_range = read_range
t.transfer(src, dst)
"""


@pytest.mark.parametrize("kill_at", [1, 3])
def test_a_clone_killed_mid_pack_resumes_pack_by_pack(tmp_path: Path, kill_at: int) -> None:
    src = Repository.init(tmp_path / "src")
    ids = make_experiments(src, 12, seed=2, checkpoint_bytes=9000, per_session=2)
    packs = len({loc.pack for _, loc in src.iter_index()})
    Repository.init(tmp_path / "dst")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILLED_CLONE), str(tmp_path / "src"),
         str(tmp_path / "dst"), str(kill_at)],
        env=env, capture_output=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr.decode()
    dst = Repository.open(tmp_path / "dst")
    done = len({loc.pack for _, loc in dst.iter_index()})
    assert 0 < done < packs  # some packs arrived whole, with their index; no ref yet
    assert not dst.refs.list("experiments")
    report = transfer(Repository.open(tmp_path / "src"), dst)
    assert report.packs_copied == packs - done  # resumed: the copied packs were not sent again
    assert check(dst).ok
    assert _files(dst, ids) == _files(src, ids)
    gc = collect(dst, dry_run=False, grace_seconds=0.0)
    assert gc.temp_files_deleted + gc.orphans_deleted >= 1  # the pack cut short is removed
    assert check(dst).ok and _files(dst, ids) == _files(src, ids)


_KILLED_PUSH = """
import os, signal, sys, json
import s3fs.core
from mlvc_core.repository import Repository
from mlvc_core.transfer import transfer
real = s3fs.core.S3File._upload_chunk
def upload_chunk(self, final=False):
    out = real(self, final)
    if getattr(self, "mpu", None) and self.parts:
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 once a part of a pack is uploaded
    return out
s3fs.core.S3File._upload_chunk = upload_chunk
options = json.loads(sys.argv[3])
src = Repository.open(sys.argv[1])
dst = Repository.open(sys.argv[2], **options)
transfer(src, dst)
"""


def test_gc_aborts_the_multipart_upload_of_a_killed_push(moto_clean: str, tmp_path: Path) -> None:
    import json

    options = moto_options(moto_clean)
    url = f"s3://{make_s3_bucket(options)}/repo"
    small_blocks = dict(options, default_block_size=5 << 20)
    Repository.init(url, **small_blocks)
    src = Repository.init(tmp_path / "src")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 << 20))
    commit_paths(src, big, "big")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILLED_PUSH), str(tmp_path / "src"), url,
         json.dumps(small_blocks)],
        env=env, capture_output=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr.decode()
    dst = Repository.open(url, **options)
    left = list(dst.store.list_temporary(PACK_PREFIX))
    assert len(left) == 1 and "#upload=" in left[0].key  # invisible, but billed
    assert left[0].key.partition("#")[0] not in {i.key for i in dst.store.list(PACK_PREFIX)}
    dry = collect(dst, dry_run=True, grace_seconds=0.0)
    assert dry.temp_files_deleted == 1 and list(dst.store.list_temporary(PACK_PREFIX))
    collect(dst, dry_run=False, grace_seconds=0.0)
    assert list(dst.store.list_temporary(PACK_PREFIX)) == []
    report = transfer(src, dst)  # and the push, run again, completes
    assert report.packs_copied >= 1 and check(dst).ok


def test_a_walk_of_every_ref_reads_each_small_pack_once(
    proxied_moto: tuple[CountingProxy, str, dict[str, Any]],
) -> None:
    from mlvc_core.caches import LRU
    from mlvc_core.walk import all_roots, reachable

    proxy, bucket_url, options = proxied_moto
    url = f"{bucket_url}/walk"
    with Repository.init(url, **options) as repo:
        make_experiments(repo, 24, seed=5, per_session=3)  # 8 packs, experiments interleaved
    with Repository.open(url, **options) as repo:
        packs = {loc.pack for _, loc in repo.iter_index()}
        biggest = max(i.size for i in repo.store.list(PACK_PREFIX))
        repo._packs = LRU(2 * biggest, len)  # room for two packs at a time
        roots = all_roots(repo)
        proxy.reset()
        reachable(repo, roots)
    reads = [p for op, p in proxy.paths if op == "GET" and "/packs/" in p]
    # Each pack once (the one holding the objects all experiments share perhaps twice),
    # although only two fit the cache.
    assert len(packs) == 8 and len(reads) <= len(packs) + 1
