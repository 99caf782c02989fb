"""``mlvc://``: snapshots read through fsspec, by the libraries people load data with."""

from __future__ import annotations

import io
import json
import struct
import sys
from pathlib import Path

import fsspec
import numpy as np
import pytest

from mlvc.errors import ReadOnlyError
from mlvc.filesystem import MlvcFileSystem
from mlvc_core.history import commit_paths
from mlvc_core.repository import Repository
from mlvc_core.storage import LocalStore
from tests.porcelain.stores import CountingStore


@pytest.fixture(autouse=True)
def _registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The entry point needs an installed package; the registration it performs is this one.
    fsspec.register_implementation("mlvc", MlvcFileSystem, clobber=True)
    monkeypatch.setenv("MLVC_CACHE_DIR", str(tmp_path / "cache"))
    MlvcFileSystem.clear_instance_cache()


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, Repository]:
    """A repository with two commits on main and a tag on the first."""
    src = tmp_path / "src"
    (src / "data" / "sub").mkdir(parents=True)
    (src / "data" / "a.csv").write_text("x,y\n1,2\n3,4\n")
    (src / "data" / "sub" / "b.txt").write_text("hello")
    (src / "README").write_text("v1")
    repo = Repository.init(str(tmp_path / "repo"), cache_dir=tmp_path / "cache" / "r")
    commit_paths(repo, src, "first")
    repo.refs.set("tags/v1", repo.head().target, None)  # type: ignore[union-attr]
    (src / "README").write_text("version two")
    (src / "link").symlink_to("data/sub/b.txt")
    commit_paths(repo, src, "second")
    return tmp_path, repo


def test_entry_point_is_declared() -> None:
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")

    doc = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    specs = doc["project"]["entry-points"]["fsspec.specs"]
    module, _, name = specs["mlvc"].partition(":")
    assert module == "mlvc.filesystem" and name == MlvcFileSystem.__name__
    assert fsspec.get_filesystem_class("mlvc") is MlvcFileSystem


def test_read_by_branch_tag_and_id(project: tuple[Path, Repository]) -> None:
    tmp, repo = project
    opts = {"repo": str(tmp / "repo")}
    with fsspec.open("mlvc://main/README", "rb", **opts) as f:
        assert f.read() == b"version two"
    with fsspec.open("mlvc://v1/README", "rb", **opts) as f:
        assert f.read() == b"v1"
    with fsspec.open("mlvc://tags/v1/README", "rt", **opts) as f:
        assert f.read() == "v1"
    head = repo.head().target.hex()  # type: ignore[union-attr]
    for ref in (head, head[:10]):
        with fsspec.open(f"mlvc://{ref}/data/sub/b.txt", **opts) as f:
            assert f.read() == b"hello"
    fs = MlvcFileSystem(repo=str(tmp / "repo"))
    assert fs.cat("mlvc://main/link") == b"hello"  # symlinks inside the snapshot are followed


def test_listing_info_glob_find_walk_du(project: tuple[Path, Repository]) -> None:
    tmp, _ = project
    fs = MlvcFileSystem(repo=str(tmp / "repo"))
    assert sorted(fs.ls("mlvc://main", detail=False)) == [
        "main/README",
        "main/data",
        "main/link",
    ]
    info = fs.info("mlvc://main/data/a.csv")
    assert info["type"] == "file" and info["size"] == 12 and len(info["oid"]) == 64
    assert fs.info("main/data")["type"] == "directory"
    assert fs.isdir("main/data/sub") and fs.isfile("main/README")
    assert fs.exists("main/data/a.csv") and not fs.exists("main/nope")
    assert not fs.exists("no-such-branch/x")
    assert fs.glob("mlvc://main/data/**/*.txt") == ["main/data/sub/b.txt"]
    assert fs.find("main/data") == ["main/data/a.csv", "main/data/sub/b.txt"]
    walked = {root: sorted(files) for root, _dirs, files in fs.walk("main/data")}
    assert walked == {"main/data": ["a.csv"], "main/data/sub": ["b.txt"]}
    assert fs.du("main/data") == 12 + 5
    assert set(fs.ls("", detail=False)) == {"main", "v1"}
    with pytest.raises(FileNotFoundError):
        fs.info("main/data/missing.bin")
    with pytest.raises(FileNotFoundError):
        fs.open("deadbeef00/README")


def test_ranges_and_seek(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    blob = rng.bytes(9 << 20)  # several runs of chunks
    src = tmp_path / "src"
    src.mkdir()
    (src / "blob.bin").write_bytes(blob)
    repo = Repository.init(str(tmp_path / "repo"))
    commit_paths(repo, src, "blob")
    fs = MlvcFileSystem(repo=repo)
    assert fs.cat_file("main/blob.bin", 1000, 2_000_000) == blob[1000:2_000_000]
    assert fs.cat_file("main/blob.bin", -10) == blob[-10:]
    assert fs.cat_file("main/blob.bin", 5, None) == blob[5:]
    assert fs.cat_file("main/blob.bin", len(blob) + 5) == b""
    with fs.open("main/blob.bin") as f:
        assert f.size == len(blob)
        f.seek(2_500_000)
        assert f.read(100) == blob[2_500_000:2_500_100]
        f.seek(-50, io.SEEK_END)
        assert f.read() == blob[-50:]
        f.seek(0)
        assert f.read() == blob
    with fs.open("main/blob.bin", block_size=1 << 16) as f:  # streaming: runs read ahead
        pieces = iter(lambda: f.read(100_000), b"")
        assert b"".join(pieces) == blob


def test_writes_are_refused_clearly(project: tuple[Path, Repository]) -> None:
    tmp, _ = project
    fs = MlvcFileSystem(repo=str(tmp / "repo"))
    for attempt in (
        lambda: fs.open("main/new.txt", "wb"),
        lambda: fs.pipe("main/new.txt", b"x"),
        lambda: fs.rm("main/README"),
        lambda: fs.mkdir("main/d"),
        lambda: fs.mv("main/README", "main/R2"),
        lambda: fs.put(str(tmp / "src" / "README"), "main/R"),
        lambda: fsspec.open("mlvc://main/x", "w", repo=str(tmp / "repo")).open(),
    ):
        with pytest.raises(ReadOnlyError, match="read-only"):
            attempt()
    assert issubclass(ReadOnlyError, PermissionError)


def test_repository_from_project_config(project: tuple[Path, Repository]) -> None:
    tmp, _ = project
    work = tmp / "work" / "deeper"
    work.mkdir(parents=True)
    (tmp / "work" / "mlvc.toml").write_text('[repository]\nurl = "../repo"\n')
    fs = MlvcFileSystem(cwd=work)
    assert fs.cat("main/README") == b"version two"


def test_moving_names_are_read_again(project: tuple[Path, Repository]) -> None:
    tmp, repo = project
    fs = MlvcFileSystem(repo=repo, ref_ttl=3600)
    assert fs.cat("main/README") == b"version two"
    (tmp / "src" / "README").write_text("three")
    commit_paths(repo, tmp / "src", "third")
    assert fs.cat("main/README") == b"version two"  # within ref_ttl
    fs.invalidate_cache()
    assert fs.cat("main/README") == b"three"
    assert MlvcFileSystem(repo=repo, ref_ttl=0).cat("main/README") == b"three"


def test_pandas_csv_and_parquet(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    src = tmp_path / "src"
    src.mkdir()
    frame = pd.DataFrame({"a": np.arange(50_000), "b": np.arange(50_000) * 0.5})
    frame.to_csv(src / "t.csv", index=False)
    frame.to_parquet(src / "t.parquet")
    commit_paths(Repository.init(str(tmp_path / "repo")), src, "tables")
    opts = {"repo": str(tmp_path / "repo")}
    pd.testing.assert_frame_equal(pd.read_csv("mlvc://main/t.csv", storage_options=opts), frame)
    pd.testing.assert_frame_equal(
        pd.read_parquet("mlvc://main/t.parquet", storage_options=opts), frame
    )
    pd.testing.assert_frame_equal(
        pd.read_parquet("mlvc://main/t.parquet", columns=["b"], storage_options=opts),
        frame[["b"]],
    )


def test_torch_load_and_safetensors(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    src = tmp_path / "src"
    src.mkdir()
    weights = {"w": torch.arange(100_000, dtype=torch.float32), "b": torch.ones(7)}
    torch.save(weights, src / "model.pt")
    st.save_file(weights, str(src / "model.safetensors"))
    commit_paths(Repository.init(str(tmp_path / "repo")), src, "weights")
    opts = {"repo": str(tmp_path / "repo")}
    with fsspec.open("mlvc://main/model.pt", **opts) as f:
        loaded = torch.load(f, weights_only=True)
    assert torch.equal(loaded["w"], weights["w"]) and torch.equal(loaded["b"], weights["b"])
    with fsspec.open("mlvc://main/model.safetensors", **opts) as f:
        tensors = st.load(f.read())
    assert torch.equal(tensors["w"], weights["w"])


def _safetensors_header(f: io.RawIOBase | object) -> tuple[int, dict[str, dict[str, object]]]:
    n = struct.unpack("<Q", f.read(8))[0]  # type: ignore[attr-defined]
    return 8 + n, json.loads(f.read(n))  # type: ignore[attr-defined]


def test_one_tensor_of_a_large_checkpoint_fetches_only_its_chunks(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    gen = torch.Generator().manual_seed(0)
    weights = {f"layer{i:02d}": torch.randn(1 << 20, generator=gen) for i in range(16)}  # 64 MiB
    weights["small"] = torch.randn(4096, generator=gen)
    src = tmp_path / "src"
    src.mkdir()
    st.save_file(weights, str(src / "big.safetensors"))
    commit_paths(Repository.init(str(tmp_path / "repo")), src, "checkpoint")

    counting = CountingStore(LocalStore(tmp_path / "repo"))
    fetched: list[int] = []
    inner_read_range = counting.read_range

    def read_range(key: str, offset: int, length: int) -> bytes:
        if key.startswith("packs/"):
            fetched.append(length)
        return inner_read_range(key, offset, length)

    counting.read_range = read_range  # type: ignore[method-assign]
    repo = Repository.open(counting, cache_dir=tmp_path / "cache2")
    fs = MlvcFileSystem(repo=repo)
    with fs.open("main/big.safetensors") as f:
        base, header = _safetensors_header(f)
        fetched.clear()
        counting.reset()
        lo, hi = header["layer09"]["data_offsets"]  # type: ignore[misc]
        f.seek(base + lo)
        raw = f.read(hi - lo)
    tensor = torch.frombuffer(bytearray(raw), dtype=torch.float32)
    assert torch.equal(tensor, weights["layer09"])
    # 4 MiB of tensor: its chunks (max 1 MiB each) plus at most one chunk either side.
    assert sum(fetched) <= (hi - lo) + 2 * (1 << 20), (sum(fetched), hi - lo)
    assert 1 <= counting.reads("packs") <= 4
    assert sum(fetched) < (64 << 20) // 8
    repo.close()


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_forked_child_reopens(project: tuple[Path, Repository]) -> None:
    import multiprocessing

    tmp, _ = project
    fs = MlvcFileSystem(repo=str(tmp / "repo"))
    assert fs.cat("main/README") == b"version two"
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        assert pool.apply(fs.cat, ("main/data/sub/b.txt",)) == b"hello"


def test_experiment_ids_and_selectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    import mlvc

    monkeypatch.chdir(tmp_path)
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("pass\n")
    repo_url = str(tmp_path / "repo")
    with mlvc.track(
        path=code, repository=repo_url, strict=True, primary_metric=("loss", "minimize")
    ) as run:
        for step, loss in enumerate([0.5, 0.1, 0.3]):
            (code / "model.bin").write_bytes(f"weights {step}".encode())
            run.checkpoint(path=code / "model.bin", step=step, metrics={"loss": loss})
    exp = str(run.id)[:10]
    fs = MlvcFileSystem(repo=repo_url)
    assert fs.cat(f"{exp}@best/model.bin") == b"weights 1"
    assert fs.cat(f"{exp}@latest/model.bin") == b"weights 2"
    assert fs.cat(f"{exp}@step=0/model.bin") == b"weights 0"
    assert fs.cat(f"{exp}/train.py") == b"pass\n"
    with fsspec.open(f"mlvc://{exp}@best/model.bin", repo=repo_url) as f:
        assert f.read() == b"weights 1"
    # DataLoader workers get the filesystem pickled (spawn) or forked.
    clone = pickle.loads(pickle.dumps(fs))
    assert clone.cat(f"{exp}@best/model.bin") == b"weights 1"
    with pytest.raises(FileNotFoundError):
        fs.cat(f"{exp}@step=9/model.bin")


def test_repository_on_s3_from_storage_options(
    tmp_path: Path, s3_repo_url: tuple[str, dict[str, object]]
) -> None:
    url, options = s3_repo_url
    blob = np.random.default_rng(2).bytes(3 << 20)
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "blob.bin").write_bytes(blob)
    with Repository.init(url, **options) as repo:
        commit_paths(repo, src, "on s3")
    with fsspec.open("mlvc://main/d/blob.bin", repo=url, repo_options=options) as f:
        f.seek(1_000_000)
        assert f.read(50_000) == blob[1_000_000:1_050_000]
    fs = fsspec.filesystem("mlvc", repo=url, repo_options=options)
    assert fs.find("main") == ["main/d/blob.bin"]
    assert fs.cat_file("main/d/blob.bin", -100) == blob[-100:]
