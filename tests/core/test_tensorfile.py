"""Tensor files: parsing safetensors and torch zip checkpoints, and chunking at tensor edges."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlvc_core import tensorfile
from mlvc_core.errors import FormatError
from mlvc_core.ingest import ingest_paths
from mlvc_core.repository import Repository
from mlvc_core.session import WriteSession
from mlvc_core.tensorfile import parse_safetensors, read_layout
from mlvc_core.torchzip import parse_torch_zip

safetensors_numpy = pytest.importorskip("safetensors.numpy")


def _tensors(seed: int, names: list[str], rows: int = 256) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for i, name in enumerate(names):
        shape = (rows, 1024) if i % 3 else (1024,)
        out[name] = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    return out


def _st_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    return bytes(safetensors_numpy.save(tensors, metadata=metadata))


def test_safetensors_layout_matches_the_library(tmp_path: Path) -> None:
    ts = _tensors(0, ["a", "b", "c", "d"])
    data = _st_bytes(ts, {"step": "1"})
    layout = parse_safetensors(io.BytesIO(data))
    assert layout.kind == "safetensors"
    assert {t.name for t in layout.tensors} == set(ts)
    for t in layout.tensors:
        assert t.dtype == "F32" and t.shape == ts[t.name].shape
        assert data[t.start : t.end] == ts[t.name].tobytes()
    assert layout.regions == tuple((t.start, t.end) for t in layout.tensors)


def _raw_st(header: object, body: bytes, declared: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    n = len(text) if declared is None else declared
    return struct.pack("<Q", n) + text + body


@pytest.mark.parametrize(
    ("header", "body", "declared"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, 1 << 40),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None),
        ({"a": {"dtype": "XX", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, None),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, None),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            None,
        ),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, None),
        ({"__metadata__": {"k": 1}}, b"", None),
        ([1, 2], b"", None),
    ],
)
def test_malformed_safetensors_are_refused(header: object, body: bytes, declared: int) -> None:
    data = _raw_st(header, body, declared)
    with pytest.raises(FormatError):
        parse_safetensors(io.BytesIO(data))
    assert read_layout(io.BytesIO(data)) is None


def test_duplicate_keys_are_refused() -> None:
    entry = '{"dtype":"U8","shape":[1],"data_offsets":[0,1]}'
    text = f'{{"a":{entry},"a":{entry}}}'.encode()
    with pytest.raises(FormatError, match="repeats"):
        parse_safetensors(io.BytesIO(struct.pack("<Q", len(text)) + text + b"x"))


def test_plain_files_have_no_layout() -> None:
    for data in (b"", b"hello", b"PK\x03\x04 not a zip at all", b"\x10" + b"\0" * 7 + b"{}"):
        assert read_layout(io.BytesIO(data)) is None


def _torch() -> object:
    return pytest.importorskip("torch")


def test_torch_zip_layout_matches_the_saved_tensors(tmp_path: Path) -> None:
    torch = _torch()
    g = torch.Generator().manual_seed(0)
    state = {
        "model": {
            "w": torch.randn(64, 32, generator=g),
            "h": torch.randn(16, generator=g).to(torch.bfloat16),
            "view": torch.randn(8, 8, generator=g).t(),
        },
        "step": 3,
        "opt": [torch.arange(5)],
    }
    path = tmp_path / "ckpt.pt"
    torch.save(state, path)
    data = path.read_bytes()
    layout = parse_torch_zip(io.BytesIO(data))
    by_name = {t.name: t for t in layout.tensors}
    assert set(by_name) == {"model.w", "model.h", "opt.0"}  # the transposed view is strided
    for name, t in by_name.items():
        want = state["model"][name[6:]] if name.startswith("model.") else state["opt"][0]
        assert t.shape == tuple(want.shape)
        raw = want.contiguous().view(torch.uint8).numpy().tobytes()
        assert data[t.start : t.end] == raw
    assert by_name["model.h"].dtype == "BF16" and by_name["opt.0"].dtype == "I64"
    assert len(layout.regions) == 4
    assert read_layout(io.BytesIO(data)) == layout


def test_torch_pickle_runs_no_code(tmp_path: Path) -> None:
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))  # a harmless stand-in for os.system

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"x": Evil()}))
    layout = parse_torch_zip(io.BytesIO(buf.getvalue()))
    assert layout.tensors == ()


# ------------------------------------------------------------------------------ chunking


def _commit(repo: Repository, path: Path) -> int:
    with WriteSession(repo) as s:
        ingest_paths(s, [path])
        return s.new_bytes


def _new_bytes_between(tmp_path: Path, first: bytes, second: bytes) -> int:
    repo = Repository.init(tmp_path / "repo")
    path = tmp_path / "model.bin"
    path.write_bytes(first)
    _commit(repo, path)
    path.write_bytes(second)
    return _commit(repo, path)


def _weights(seed: int, n: int, rows: int = 512) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for i in range(n):
        out[f"layer{i}.weight"] = (rng.standard_normal((rows, 1024)) * 0.02).astype(np.float32)
        out[f"layer{i}.bias"] = rng.standard_normal(64).astype(np.float32)
    return out


@pytest.mark.parametrize("rows", [64, 512])  # one small file (read whole), one large
def test_an_inserted_tensor_leaves_every_other_tensor_deduplicated(
    tmp_path: Path, rows: int
) -> None:
    ts = _weights(1, 6, rows)
    # A new tensor sorting first moves every other tensor in the file; the header grows.
    noise = np.random.default_rng(9).standard_normal((rows, 1024)).astype(np.float32)
    grown = {"aaa.new": noise, **ts}
    first, second = _st_bytes(ts), _st_bytes(grown, {"note": "x" * 37})
    new = _new_bytes_between(tmp_path, first, second)
    inserted = grown["aaa.new"].nbytes
    # What is new: the inserted tensor, the header, and the small biases sharing its chunks.
    assert inserted <= new <= inserted + 64 * 1024 + 8192


def test_a_changed_tensor_costs_only_its_own_bytes(tmp_path: Path) -> None:
    ts = _weights(2, 6)
    changed = dict(ts)
    changed["layer3.weight"] = ts["layer3.weight"] + 1
    new = _new_bytes_between(tmp_path, _st_bytes(ts), _st_bytes(changed, {"v": "2"}))
    assert ts["layer3.weight"].nbytes <= new <= ts["layer3.weight"].nbytes + 64 * 1024


def test_a_torch_checkpoint_with_a_new_entry_shares_its_unchanged_tensors(
    tmp_path: Path,
) -> None:
    torch = _torch()
    g = torch.Generator().manual_seed(3)
    state = {f"l{i}.weight": torch.randn(512, 512, generator=g) for i in range(6)}
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(state, a)
    torch.save({"epoch": 2, "extra": torch.randn(300, 512, generator=g), **state}, b)
    new = _new_bytes_between(tmp_path, a.read_bytes(), b.read_bytes())
    assert 300 * 512 * 4 <= new <= 300 * 512 * 4 + 128 * 1024


def test_plain_cdc_would_not_have_deduplicated_the_insertion() -> None:
    # The case the tensor boundaries exist for: with plain content-defined chunking, the chunk
    # holding the end of the inserted tensor and the start of the next one is new as well.
    ts = _weights(1, 6, 512)
    layout = read_layout(io.BytesIO(_st_bytes(ts)))
    assert layout is not None
    bounds = tensorfile.forced_boundaries(layout, 64 * 1024).boundaries
    big = [t for t in layout.tensors if t.nbytes >= 64 * 1024]
    assert bounds == sorted({e for t in big for e in (t.start, t.end)})


def test_ring_buffer_reads_cut_a_tensor_file_as_one_pass_over_it_would(tmp_path: Path) -> None:
    from mlvc_core.chunker import cut_between, make_fastcdc
    from mlvc_core.manifests import ingest_bytes

    data = _st_bytes(_weights(4, 9, 700))  # ~25 MiB: many ring buffers, tensors across them
    repo = Repository.init(tmp_path / "repo")
    with WriteSession(repo) as s:
        manifest = ingest_bytes(s, data)
    layout = read_layout(io.BytesIO(data))
    assert layout is not None
    params = repo.config.chunker
    plan = tensorfile.forced_boundaries(layout, params.min, repo.config.tensor_block)
    whole = cut_between(make_fastcdc(params), memoryview(data), 0, plan.boundaries, plan.blocks)
    assert [n for _, n in manifest.chunks] == [n for _, n in whole]
    ends = set(np.cumsum([n for _, n in manifest.chunks]).tolist())
    assert set(plan.boundaries) <= ends


def test_a_self_referencing_pickle_is_read_in_bounded_time() -> None:
    import pickle
    import zipfile

    nest: list[object] = []
    nest.extend([nest, nest])  # exponential if walked as a tree
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"a": nest, "b": [[[[nest]]]]}))
    assert parse_torch_zip(io.BytesIO(buf.getvalue())).tensors == ()


@pytest.fixture(scope="module")
def torch_file() -> bytes:
    torch = _torch()
    buf = io.BytesIO()
    g = torch.Generator().manual_seed(0)
    torch.save({"w": torch.randn(8, 4, generator=g), "n": {"b": torch.arange(3)}}, buf)
    return buf.getvalue()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_damaged_tensor_files_are_refused_or_parsed_never_crash(
    torch_file: bytes, data: st.DataObject
) -> None:
    st_file = _st_bytes({"a": np.ones((4, 4), np.float32), "b": np.zeros(3, np.int64)})
    raw = bytearray(data.draw(st.sampled_from([torch_file, st_file])))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del raw[data.draw(st.integers(0, len(raw) - 1)) :]
    layout = read_layout(io.BytesIO(bytes(raw)))
    if layout is not None:
        for t in layout.tensors:
            assert 0 <= t.start <= t.end <= len(raw)
        for start, end in layout.regions:
            assert 0 <= start <= end <= len(raw)


@pytest.mark.parametrize("first_plain", [False, True])
def test_a_guided_read_of_a_tensor_file_gives_the_manifest_cutting_gives(
    tmp_path: Path, first_plain: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlvc_core import manifests

    ts = _weights(6, 8, 600)
    moved = {"aaa": np.random.default_rng(1).standard_normal((300, 1024)).astype(np.float32)}
    moved.update(ts)
    moved["layer5.weight"] = ts["layer5.weight"] * 2
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_bytes(_st_bytes(ts))
    new.write_bytes(_st_bytes(moved, {"grown": "y" * 21}))
    repo = Repository.init(tmp_path / "repo")

    def read(path: Path, guide: object = None) -> object:
        with WriteSession(repo) as s, open(path, "rb", buffering=0) as f:
            return manifests.FileIngester(s).ingest(f, guide=guide)  # type: ignore[arg-type]

    with monkeypatch.context() as m:
        if first_plain:  # a version committed before tensor files were recognised
            m.setattr(manifests, "chunk_boundaries", lambda f, n, b=0: tensorfile.CutPlan())
        guide = read(old)
    assert read(new, guide) == read(new)
