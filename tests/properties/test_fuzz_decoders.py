"""Fuzzing every decoder of repository and cache bytes.

Random bytes, and valid encodings mutated byte by byte or field by field (a value of another
type put anywhere in the document), must only ever raise the documented error classes, in
bounded time and memory: never a ``TypeError``, ``KeyError``... that the CLI would report as
an internal error.
"""

from __future__ import annotations

import json
import resource
import sqlite3
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlvc.experiments.summary import checked_ref
from mlvc_core import codec
from mlvc_core.config import RepoConfig
from mlvc_core.errors import FormatError, IntegrityError, UnsafePath
from mlvc_core.ids import hash_bytes
from mlvc_core.objects import Commit, Manifest, Tree, TreeEntry, decode
from mlvc_core.packs import INDEX_MAGIC, Location, decode_index, encode_index
from mlvc_core.refs import Ref, decode_ref, encode_ref
from mlvc_core.statcache import StatCache

DOCUMENTED = (FormatError, IntegrityError, UnsafePath)
FUZZ = settings(
    max_examples=300,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

OID = bytes(range(32))
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=40)
)
values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=10,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=10,
)


def _slots(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a nested document a value can be replaced."""
    yield path
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _slots(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _slots(v, (*path, i))


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {**doc, head: _replace(doc[head], rest, value)}
    out = list(doc)
    out[head] = _replace(doc[head], rest, value)
    return out


@st.composite
def mutated(draw: st.DrawFn, doc: Any, leaf: st.SearchStrategy[Any]) -> Any:
    """``doc`` with one value (anywhere, the whole included) replaced by an arbitrary one."""
    slots = list(_slots(doc))
    return _replace(doc, draw(st.sampled_from(slots)), draw(leaf))


def _flip(data: bytes, draw: st.DrawFn) -> bytes:
    """``data`` truncated, or with some bytes overwritten."""
    if not data or draw(st.booleans()):
        return data[: draw(st.integers(0, len(data)))]
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
    return bytes(out)


@pytest.fixture(autouse=True)
def _bounded_memory() -> Iterator[None]:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 256 << 10, f"a decoder's peak memory grew by {grown >> 10} MiB"


def _only_documented(fn: Callable[[], object]) -> None:
    try:
        fn()
    except DOCUMENTED:
        pass


# ------------------------------------------------------------------ objects

_VALID_OBJECTS = [
    Manifest(7, ((OID, 3), (OID, 4))).encode(),
    Tree(
        (
            TreeEntry("a", "file", OID, 3, 0o644),
            TreeEntry("d", "dir", OID, 9, 0o755),
            TreeEntry("l", "link", None, 0, 0o777, "a"),
        )
    ).encode(),
    Commit(
        OID,
        (OID,),
        "u@h",
        1.5,
        "m",
        {
            "type": "checkpoint",
            "step": 3,
            "metrics": {"l": 1.0},
            "paths": ["a"],
            "experiment": "ab" * 32,
        },
    ).encode(),
    Commit(OID, (), "u@h", 1.5, "m", {"type": "experiment", "params": {"lr": 0.1}}).encode(),
]


@FUZZ
@given(st.binary(max_size=2000))
def test_objects_random_bytes(data: bytes) -> None:
    _only_documented(lambda: decode(data))


@FUZZ
@given(st.sampled_from(_VALID_OBJECTS), st.data())
def test_objects_mutated_bytes(valid: bytes, data: st.DataObject) -> None:
    _only_documented(lambda: decode(_flip(valid, data.draw)))


@FUZZ
@given(st.sampled_from(_VALID_OBJECTS), st.data())
def test_objects_mutated_fields(valid: bytes, data: st.DataObject) -> None:
    doc = data.draw(mutated(msgpack.unpackb(valid), values))
    try:
        encoded = msgpack.packb(doc, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return  # not msgpack-encodable (an int over 64 bits)
    _only_documented(lambda: decode(encoded))


def test_decoded_objects_are_well_typed_or_refused() -> None:
    for valid in _VALID_OBJECTS:
        assert decode(valid).encode() == valid
    loc = Location("p", 8, 10, 12, 1, 0)
    assert decode_index(encode_index("p", [(OID, loc)]), "i")[1] == [(OID, loc)]


# ------------------------------------------------------------------ indexes


def _index(doc: Any) -> bytes:
    body = codec.compress_blob(msgpack.packb(doc, use_bin_type=True))
    return INDEX_MAGIC + hash_bytes(body) + body


_INDEX_DOC = {"pack": "p", "entries": [[OID, 0, 8, 10, 12, 1], [bytes(32), 3, 18, 5, 5, 0]]}


@FUZZ
@given(st.binary(max_size=2000))
def test_index_random_bytes(data: bytes) -> None:
    _only_documented(lambda: decode_index(data, "i"))
    _only_documented(lambda: decode_index(INDEX_MAGIC + hash_bytes(data) + data, "i"))


@FUZZ
@given(st.data())
def test_index_mutated(data: st.DataObject) -> None:
    doc = data.draw(mutated(_INDEX_DOC, values))
    try:
        blob = _index(doc)
    except (TypeError, ValueError, OverflowError):
        return
    _only_documented(lambda: decode_index(blob, "i"))
    _only_documented(lambda: decode_index(_flip(blob, data.draw), "i"))


# ------------------------------------------------------------------ payloads and blobs


@FUZZ
@given(
    st.binary(max_size=3000),
    st.sampled_from([codec.RAW, codec.ZSTD, codec.PLANES, 7]),
    st.integers(0, 16 << 20),
)
def test_payload_random(payload: bytes, codec_id: int, raw_len: int) -> None:
    _only_documented(lambda: codec.decompress(payload, codec_id, raw_len))


@FUZZ
@given(st.binary(min_size=1, max_size=20_000), st.data())
def test_payload_mutated(raw: bytes, data: st.DataObject) -> None:
    c, payload = codec.compress(raw, 1, planes=True)
    bad = _flip(bytes(payload), data.draw)
    _only_documented(lambda: codec.decompress(bad, c, data.draw(st.integers(0, 2 * len(raw)))))
    _only_documented(lambda: codec.decompress_blob(bad, max_size=1 << 20))


@FUZZ
@given(st.binary(min_size=1, max_size=20_000), st.data())
def test_payload_mutated_into_a_buffer(raw: bytes, data: st.DataObject) -> None:
    import numpy as np

    c, payload = codec.compress(raw, 1, planes=True)
    bad = _flip(bytes(payload), data.draw)
    n = data.draw(st.integers(0, 2 * len(raw)))
    buf = np.full(n + 256, 0xA5, dtype=np.uint8)
    _only_documented(lambda: codec.decompress_into(bad, c, buf[:n]))
    assert bytes(buf[n:]) == b"\xa5" * 256  # never written past the buffer given


# ------------------------------------------------------------------ refs, summaries, config

_TAG = {
    "target": "ab" * 32,
    "type": "tag",
    "set_at": 1.0,
    "set_by": "u",
    "history": [{"target": "cd" * 32, "set_at": 0.5, "set_by": "u", "moved_at": 1.0}],
}
_EXPERIMENT = {
    "target": "ab" * 32,
    "type": "experiment",
    "name": "n",
    "created": 1.0,
    "status": "stopped",
    "checkpoints": 1,
    "latest": "cd" * 32,
    "latest_step": 3,
    "latest_metrics": {"loss": 0.5},
    "params": {"lr": 0.1},
    "removed": [],
    "primary_metric": {"name": "loss", "goal": "minimize"},
    "best": {"checkpoint": "cd" * 32, "step": 3, "value": 0.5},
}


def _read_ref(data: bytes) -> None:
    ref = decode_ref("experiments/x", data, None)
    checked_ref(ref)


@FUZZ
@given(st.binary(max_size=500))
def test_refs_random_bytes(data: bytes) -> None:
    _only_documented(lambda: _read_ref(data))


@FUZZ
@given(st.sampled_from([_TAG, _EXPERIMENT]), st.data())
def test_refs_mutated(valid: dict[str, Any], data: st.DataObject) -> None:
    doc = data.draw(mutated(valid, json_values))
    encoded = json.dumps(doc).encode()
    _only_documented(lambda: _read_ref(encoded))
    _only_documented(lambda: _read_ref(_flip(encoded, data.draw)))


def test_valid_refs_read_back() -> None:
    for valid in (_TAG, _EXPERIMENT):
        doc = dict(valid)
        ref = decode_ref("experiments/x", encode_ref(bytes.fromhex(doc.pop("target")), doc), None)
        assert isinstance(checked_ref(ref), Ref)


_CONFIG = json.loads(RepoConfig().encode())


@FUZZ
@given(st.data())
def test_config_mutated(data: st.DataObject) -> None:
    doc = data.draw(mutated(_CONFIG, json_values))
    encoded = json.dumps(doc).encode()
    _only_documented(lambda: RepoConfig.decode(encoded))
    _only_documented(lambda: RepoConfig.decode(_flip(encoded, data.draw)))


# ------------------------------------------------------------------ the stat cache


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=10_000), st.data())
def test_statcache_any_file(tmp_path: Path, garbage: bytes, data: st.DataObject) -> None:
    path = tmp_path / "sc.sqlite"
    path.unlink(missing_ok=True)
    good = StatCache(path)
    st_ = path.stat()
    good.record("/x", st_, OID)
    good.close()
    valid = path.read_bytes()
    path.write_bytes(data.draw(st.sampled_from([garbage, _flip(valid, data.draw)])))
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    try:
        cache = StatCache(path)
        cache.previous("/x", st_)
        cache.record("/y", st_, OID)
        cache.close()
    except sqlite3.Error as exc:  # pragma: no cover - the failure this test looks for
        pytest.fail(f"stat cache raised {exc!r}")


# ------------------------------------------------------------------ pack trailers


@FUZZ
@given(st.binary(max_size=300), st.data())
def test_pack_trailer_any_bytes(garbage: bytes, data: st.DataObject) -> None:
    from mlvc_core.packs import END_MAGIC, PACK_MAGIC, read_pack_trailer
    from mlvc_core.storage import MemoryStore

    blob = _index(_INDEX_DOC)
    valid = PACK_MAGIC + bytes(30) + blob + len(blob).to_bytes(8, "little") + END_MAGIC
    pack = data.draw(st.sampled_from([garbage, _flip(valid, data.draw), garbage + END_MAGIC]))
    store = MemoryStore()
    store.write("packs/pp/pp", pack)

    def rebuild() -> None:
        decode_index(read_pack_trailer(store, "pp", len(pack)), "pack pp", "p")

    _only_documented(rebuild)
