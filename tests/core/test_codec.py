"""The per-chunk codec: right choice per kind of data, exact round trips, bounded decoding."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mlvc_core import codec
from mlvc_core.errors import FormatError

rng = np.random.default_rng(0)
F32 = (rng.standard_normal(80_000, dtype=np.float32) * 0.02).tobytes()
BF16 = (np.frombuffer(F32, np.uint32) >> 16).astype(np.uint16).tobytes()
CSV = "".join(f"{i},{i * 0.37:.4f},cat{i % 17},{i % 2}\n" for i in range(12_000)).encode()
RANDOM = os.urandom(300_000)


@pytest.mark.parametrize(
    ("data", "expected", "min_ratio"),
    [
        (F32, codec.PLANES, 1.12),
        (BF16, codec.PLANES, 1.35),
        (CSV, codec.ZSTD, 3.0),
        (RANDOM, codec.RAW, 1.0),
    ],
    ids=["float32-weights", "bf16-weights", "csv", "random"],
)
def test_codec_choice_and_ratio(data: bytes, expected: int, min_ratio: float) -> None:
    kind, payload = codec.compress(data, 1, planes=True)
    assert kind == expected
    assert len(data) / len(payload) >= min_ratio
    assert codec.decompress(bytes(payload), kind, len(data)) == data


def test_planes_beat_plain_zstd_on_weights() -> None:
    for data in (F32, BF16):
        _, plain = codec.compress(data, 1, planes=False)
        _, planes = codec.compress(data, 1, planes=True)
        assert len(planes) < 0.93 * len(plain)


@settings(max_examples=60)
@given(
    hnp.arrays(
        st.sampled_from([np.float32, np.float16, np.int16, np.uint32]),
        st.integers(1100, 6000),
        elements=st.integers(0, 3),
    ),
    st.integers(0, 3),
)
def test_planes_round_trip_any_numeric_array(arr: np.ndarray, cut: int) -> None:
    noisy = arr.tobytes()[cut:] + os.urandom(cut)  # misaligned and with a ragged tail
    kind, payload = codec.compress(noisy, 1, planes=True)
    assert codec.decompress(bytes(payload), kind, len(noisy)) == noisy


def test_decoding_is_bounded_and_checked() -> None:
    kind, payload = codec.compress(F32, 1, planes=True)
    assert kind == codec.PLANES
    with pytest.raises(FormatError):
        codec.decompress(bytes(payload), kind, len(F32) + 4)  # the index lies about the size
    damaged = bytearray(payload)
    damaged[0] = 3  # an impossible plane width
    with pytest.raises(FormatError):
        codec.decompress(bytes(damaged), kind, len(F32))
    _, z = codec.compress(CSV, 1)
    with pytest.raises(FormatError, match="declares"):
        codec.decompress(bytes(z), codec.ZSTD, 10)  # a frame declaring more than recorded
    with pytest.raises(FormatError):
        codec.decompress(b"x", 9, 1)


# The byte-plane codec against independent reference implementations: a byte-strided
# transpose and plain zstd frames, the straightforward reading of the payload layout.


def _reference_planes_payload(data: bytes, width: int, mask: int) -> bytes:
    """A ``PLANES`` payload built by transposing the bytes and zstd-compressing masked planes."""
    a = np.frombuffer(data, dtype=np.uint8)
    n = len(a) // width * width
    planes = a[:n].reshape(-1, width).T.copy()
    parts: list[bytes] = []
    stored = 0
    for i in range(width):
        plane = planes[i].tobytes()
        frame = codec.compress_blob(plane, 1)
        if mask >> i & 1 and len(frame) < len(plane):
            parts.append(frame)
            stored |= 1 << i
        else:
            parts.append(plane)
    header = struct.pack(f"<BB{width}I", width, stored, *(len(p) for p in parts))
    return b"".join([header, *parts, a[n:].tobytes()])


def _reference_decode(payload: bytes, raw_len: int) -> bytes:
    """Undo a ``PLANES`` payload with a byte-strided scatter per plane."""
    width, mask = payload[0], payload[1]
    lengths = struct.unpack_from(f"<{width}I", payload, 2)
    plane_len = raw_len // width
    out = np.empty(raw_len, dtype=np.uint8)
    grid = out[: plane_len * width].reshape(-1, width)
    off = 2 + 4 * width
    for i, n in enumerate(lengths):
        part = payload[off : off + n]
        off += n
        if mask >> i & 1:
            part = codec.decompress_blob(part)
        grid[:, i] = np.frombuffer(part, dtype=np.uint8)
    out[plane_len * width :] = np.frombuffer(payload, dtype=np.uint8, offset=off)
    return out.tobytes()


def _planes_data(width: int, low_entropy: int, words: int, tail: int) -> bytes:
    """``words`` words of ``width`` bytes: plane i takes 4 values if bit i is set, else 256."""
    gen = np.random.default_rng(width * 100 + low_entropy)
    cols = [
        gen.integers(0, 4 if low_entropy >> i & 1 else 256, words, dtype=np.uint8)
        for i in range(width)
    ]
    return np.stack(cols, axis=1).tobytes() + gen.bytes(tail)


def _header(payload: bytes) -> tuple[int, int, tuple[int, ...]]:
    width, mask = payload[0], payload[1]
    return width, mask, struct.unpack_from(f"<{width}I", payload, 2)


@pytest.mark.parametrize("width", [2, 4])
def test_planes_payload_matches_the_layout_for_every_mask(width: int) -> None:
    low_entropy = 0b0101  # planes 0 and 2 compress; the others are noise
    for tail in range(width):
        data = _planes_data(width, low_entropy, 3001, tail)
        plane_len = len(data) // width
        for mask in range(1, 1 << width):
            payload = codec._compress_planes(data, width, mask)
            if mask & low_entropy == 0:
                assert payload is None  # only noise planes asked for: saves nothing
                continue
            assert payload is not None
            raw = bytes(payload)
            got_width, stored, lengths = _header(raw)
            assert (got_width, stored) == (width, mask & low_entropy)
            for i, n in enumerate(lengths):
                assert (n < plane_len) if stored >> i & 1 else (n == plane_len)
            assert len(raw) == 2 + 4 * width + sum(lengths) + tail
            assert _reference_decode(raw, len(data)) == data
            assert codec.decompress(raw, codec.PLANES, len(data)) == data


@pytest.mark.parametrize("width", [2, 4])
def test_payloads_built_by_the_reference_encoder_still_decode(width: int) -> None:
    for tail in range(width):
        data = _planes_data(width, 0b0011, 2500, tail)
        for mask in range(1 << width):
            payload = _reference_planes_payload(data, width, mask)
            assert codec.decompress(payload, codec.PLANES, len(data)) == data


@pytest.mark.parametrize("skip", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("data", [F32, BF16], ids=["float32", "bf16"])
def test_weights_at_any_alignment_decode_bit_identically(data: bytes, skip: int) -> None:
    for cut in (len(data), len(data) - 1, len(data) - 3):
        # A view into a larger buffer at an odd offset, as the ingest ring hands them out.
        chunk = memoryview(bytearray(data))[skip:cut]
        kind, payload = codec.compress(chunk, 1, planes=True)
        assert kind == codec.PLANES
        raw = bytes(payload)
        assert raw[0] == (4 if data is F32 else 2)
        assert _reference_decode(raw, len(chunk)) == chunk
        assert codec.decompress(raw, kind, len(chunk)) == chunk


def test_planes_payloads_stay_valid_after_later_calls() -> None:
    kept = [codec.compress(data, 1, planes=True) for data in (F32, BF16, F32[1:], BF16[3:])]
    for _ in range(3):
        codec.compress(F32[2:], 1, planes=True)
        codec.decompress(bytes(kept[0][1]), codec.PLANES, len(F32))
    for (kind, payload), data in zip(kept, (F32, BF16, F32[1:], BF16[3:]), strict=True):
        assert kind == codec.PLANES
        assert codec.decompress(bytes(payload), kind, len(data)) == data


@pytest.mark.parametrize("width", [2, 4])
def test_take_plane_is_every_width_th_byte(width: int) -> None:
    source = bytearray(os.urandom(1000))
    for start in range(4):
        for length in range(start, start + 2 * width + 40):
            chunk = memoryview(source)[start : start + length]
            plane_len = len(chunk) // width
            for i in range(width):
                out = np.full(plane_len, 7, dtype=np.uint8)
                codec._take_plane(chunk, i, width, out)
                assert out.tobytes() == bytes(chunk[i : plane_len * width : width])


def _reference_plan(data: bytes) -> tuple[int, int] | None:
    """The planner's decision computed with float histograms, one plane at a time."""
    sample = np.frombuffer(data, dtype=np.uint8, count=min(len(data), 8192) // 4 * 4)

    def bits(b: np.ndarray) -> float:
        p = np.bincount(b, minlength=256) / len(b)
        p = p[p > 0]
        return float(-(p * np.log2(p)).sum())

    if bits(sample) < 6.0:
        return None
    best = (0.0, 0, 0)
    for width in (2, 4):
        hs = [bits(sample[i::width]) for i in range(width)]
        saving = sum(max(8.0 - h, 0.0) for h in hs) / (8.0 * width)
        mask = sum(1 << i for i, h in enumerate(hs) if h < 7.6)
        if saving > best[0] + 0.01:
            best = (saving, width, mask)
    if best[0] < codec.MIN_SAVING or best[2] == 0:
        return (0, 0)
    return best[1], best[2]


def test_plan_matches_reference_entropies() -> None:
    half = (np.frombuffer(F32, np.float32)[:4000].astype(np.float16)).tobytes()
    for data in (F32, BF16, CSV, RANDOM, half, _planes_data(4, 0b1000, 3000, 0)):
        for skip in range(4):
            piece = data[skip : skip + 20_000]
            assert codec._plan(piece) == _reference_plan(piece)
    assert codec._plan(F32) == (4, 0b1000)  # the sign and exponent byte
    assert codec._plan(BF16) == (2, 0b10)
    assert codec._plan(CSV) is None
    assert codec._plan(RANDOM) == (0, 0)


def test_damaged_planes_payloads_are_rejected() -> None:
    kind, payload = codec.compress(F32[:-3], 1, planes=True)
    raw = bytes(payload)
    assert kind == codec.PLANES
    for bad in (raw[:-1], raw + b"x", raw[:30], raw[:9]):
        with pytest.raises(FormatError):
            codec.decompress(bad, kind, len(F32) - 3)
    _, stored, lengths = _header(raw)
    assert stored == 0b1000
    frame_start = 2 + 16 + sum(lengths[:3])
    flipped = bytearray(raw)
    flipped[frame_start : frame_start + 4] = b"\0\0\0\0"  # not a zstd frame any more
    with pytest.raises(FormatError):
        codec.decompress(bytes(flipped), kind, len(F32) - 3)
