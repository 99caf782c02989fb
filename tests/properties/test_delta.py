"""Delta coding: exact round trips of any bytes against any base, and sizes that pay."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlvc_core import delta
from mlvc_core.errors import FormatError

DTYPES = ["BF16", "F16", "F32", "F64", "I64", "U8", "BOOL", None]
SPECIAL32 = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1.17e-38, 3.4e38, -3.4e38]


def _width(dtype: str | None) -> int:
    return {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8}.get(dtype or "", 1)


@settings(max_examples=100, deadline=None)
@given(
    chunk=st.binary(max_size=1200),
    base=st.binary(max_size=1200),
    dtype=st.sampled_from(DTYPES),
    phase=st.integers(0, 7),
)
def test_any_bytes_round_trip_against_any_base(
    chunk: bytes, base: bytes, dtype: str | None, phase: int
) -> None:
    phase %= _width(dtype)
    payload = delta.encode(chunk, base, dtype, phase)
    assert delta.decode(payload, base) == chunk


@st.composite
def _close_versions(draw: st.DrawFn) -> tuple[bytes, bytes, str]:
    """A float tensor and a slightly changed copy (with NaN, inf, -0.0, subnormals, bit flips)."""
    n = draw(st.integers(1, 600))
    dtype = draw(st.sampled_from(["BF16", "F16", "F32"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32)))
    scale = draw(st.sampled_from([1e-30, 0.02, 1.0, 1e30]))
    old = (rng.standard_normal(n) * scale).astype(np.float32)
    for i in draw(st.lists(st.integers(0, n - 1), max_size=8)):
        old[i] = draw(st.sampled_from(SPECIAL32))
    step = draw(st.sampled_from([0.0, 1e-4, 1e-2, 1.0]))
    with np.errstate(all="ignore"):
        new = (old * (1 + rng.standard_normal(n) * step)).astype(np.float32)
    if dtype == "F16":
        with np.errstate(all="ignore"):
            a, b = old.astype("<f2").tobytes(), new.astype("<f2").tobytes()
    elif dtype == "BF16":
        a = (old.view(np.uint32) >> 16).astype("<u2").tobytes()
        b = (new.view(np.uint32) >> 16).astype("<u2").tobytes()
    else:
        a, b = old.tobytes(), new.tobytes()
    flips = draw(st.lists(st.integers(0, len(b) - 1), max_size=5))
    mb = bytearray(b)
    for i in flips:
        mb[i] ^= 0xFF
    return a, bytes(mb), dtype


@settings(max_examples=100, deadline=None)
@given(versions=_close_versions(), cut=st.integers(0, 7), trim=st.integers(0, 9))
def test_float_tensors_round_trip_bit_for_bit(
    versions: tuple[bytes, bytes, str], cut: int, trim: int
) -> None:
    old, new, dtype = versions
    # A chunk cut at any byte (odd lengths, a phase inside an element), against a base that
    # may be shorter than it.
    chunk, base = new[cut:], old[cut : max(cut, len(old) - trim)]
    phase = cut % _width(dtype)
    assert delta.decode(delta.encode(chunk, base, dtype, phase), base) == chunk


def test_special_values_survive_the_ordered_difference() -> None:
    rng = np.random.default_rng(0)
    old = np.array(SPECIAL32 * 50, dtype=np.float32)
    bits = rng.integers(0, 1 << 32, 500, dtype=np.uint64).astype(np.uint32)
    new = np.concatenate([old[::-1], bits.view(np.float32)])
    old = np.concatenate([old, old])
    # NaNs with payloads and both signs
    new[:4] = np.array([0x7FC00001, 0xFFC00000, 0x7F800001, 0x80000001], np.uint32).view("<f4")
    payload = delta.encode(new.tobytes(), old.tobytes(), "F32")
    assert delta.decode(payload, old.tobytes()) == new.tobytes()


def test_a_small_update_is_much_smaller_as_a_difference() -> None:
    rng = np.random.default_rng(1)
    w = (rng.standard_normal(1 << 17) * 0.02).astype(np.float32)
    step = w + (rng.standard_normal(w.size) * 0.0002).astype(np.float32)

    def bf16(x: np.ndarray) -> bytes:
        return (x.view(np.uint32) >> 16).astype("<u2").tobytes()

    a, b = bf16(w), bf16(step)
    payload = delta.encode(b, a, "BF16")
    alone = delta.encode(b, b"", "BF16")
    assert payload[0] == delta.DIFFERENCE and alone[0] == delta.STANDALONE
    assert len(payload) * 2 < len(alone)
    assert delta.decode(payload, a) == b


def test_unrelated_bytes_fall_back_to_standalone() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.bytes(100_000), rng.bytes(100_000)
    payload = delta.encode(b, a, "F32")
    assert payload[0] == delta.STANDALONE
    assert delta.decode(payload, b"") == b


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="phase"):
        delta.encode(b"abcd", b"abcd", "F32", 4)


def _difference(n: int = 4000) -> tuple[bytes, bytes, bytes]:
    rng = np.random.default_rng(3)
    a = rng.standard_normal(n).astype(np.float32)
    b = a + np.float32(1e-4)
    payload = delta.encode(b.tobytes(), a.tobytes(), "F32")
    assert payload[0] == delta.DIFFERENCE
    return payload, a.tobytes(), b.tobytes()


def test_a_short_base_is_an_error() -> None:
    payload, a, _ = _difference()
    with pytest.raises(FormatError, match="base"):
        delta.decode(payload, a[:100])


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_damaged_payloads_raise_format_errors_only(data: st.DataObject) -> None:
    payload, a, b = _difference()
    mutated = bytearray(payload)
    kind = data.draw(st.sampled_from(["flip", "cut", "length"]))
    if kind == "flip":
        i = data.draw(st.integers(0, len(mutated) - 1))
        mutated[i] ^= data.draw(st.integers(1, 255))
    elif kind == "cut":
        del mutated[data.draw(st.integers(0, len(mutated) - 1)) :]
    else:
        struct.pack_into("<I", mutated, data.draw(st.sampled_from([4, 8])), 1 << 31)
    try:
        out = delta.decode(bytes(mutated), a)
    except FormatError:
        return
    assert len(out) <= delta.MAX_RAW  # a flip in plane bytes decodes to other bytes, bounded
