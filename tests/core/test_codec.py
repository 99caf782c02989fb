"""The per-chunk codec: right choice per kind of data, exact round trips, bounded decoding."""

from __future__ import annotations

import os

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
