"""Delta coding of a chunk against the same bytes of a previous version (pure).

A full fine-tune changes every tensor at every checkpoint, so no chunk deduplicates; but two
consecutive checkpoints are close. :func:`encode` stores a chunk either on its own (the
regular per-chunk codecs of :mod:`mlvc_core.codec`) or as its difference from ``base``,
whichever payload is smaller; :func:`decode` undoes it given the same ``base``. The caller
verifies the result by its BLAKE3 id, as for any chunk.

The difference of float tensors (``BF16``, ``F16``, ``F32``, ``F64``) is taken on their
*ordered integers*: a float's bits ``u`` map to ``u ^ 0x80..`` when its sign is clear and to
``~u`` when set, an order-preserving bijection of bit patterns, so a small change of value is
a small integer difference, and NaN payloads, infinities, ``-0.0`` and subnormals come back
bit for bit. The difference (modulo ``2**bits``) is zigzag-coded (``-1 -> 1, 1 -> 2``), so
small changes of either sign have zero high bytes. Any other dtype uses XOR. The words are
then split into byte planes (low bytes first), each compressed by zstd alone when that saves
:data:`mlvc_core.codec.MIN_SAVING`.

``base[i]`` must be the previous version's byte at the position of ``chunk[i]``, and ``phase``
the position of ``chunk[0]`` within its element (chunks are cut at any byte): the first
``(width - phase) % width`` bytes, and whatever follows the last whole element both have, are
a *residual* stored with the regular codecs. Payload layout (all integers little-endian):

* standalone: ``u8 0 | u8 codec | u32 raw_len | codec payload``
* difference: ``u8 1 | u8 transform (1 xor, 2 ordered difference) | u8 width | u8 skip |
  u32 raw_len | u32 span | width x (u8 zstd?, u32 stored length) | planes | u8 codec |
  residual payload``. ``chunk[skip : skip + span]`` is the coded span (``span % width == 0``,
  ``skip + span <= min(raw_len, len(base))``); the residual is ``chunk[:skip] +
  chunk[skip + span:]``.

Decoding trusts nothing in the payload: every length is checked against :data:`MAX_RAW`,
the payload's size and ``base``, and every frame is bounded by the length it must yield.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from mlvc_core import codec
from mlvc_core.errors import FormatError
from mlvc_core.tensorlayout import DTYPE_SIZES

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Words = NDArray[Any]

__all__ = ["MAX_RAW", "decode", "decode_into", "encode", "encode_difference"]

MAX_RAW = 16 << 20
"""Largest chunk a payload may decode to (bytes): the format's chunk ceiling."""

STANDALONE = 0
DIFFERENCE = 1
XOR = 1
ORDERED = 2

_FLOATS = frozenset({"BF16", "F16", "F32", "F64"})
_UINT = {1: "<u1", 2: "<u2", 4: "<u4", 8: "<u8"}
_SINT = {1: "<i1", 2: "<i2", 4: "<i4", 8: "<i8"}
_HEAD = struct.Struct("<BBBBII")


def _transform(dtype: str | None) -> tuple[int, int]:
    """``(transform, width)`` for a dtype name (safetensors spelling); XOR bytes if unknown."""
    width = DTYPE_SIZES.get(dtype or "", 1)
    return (ORDERED if dtype in _FLOATS else XOR), width


def _ordered(u: Words, bits: int) -> Words:
    """Float bit patterns -> integers in the floats' order (a bijection)."""
    import numpy as np

    t = u.dtype.type
    neg = np.negative(u >> t(bits - 1))  # all ones where the sign is set
    out: Words = u ^ (neg | t(1 << (bits - 1)))
    return out


def _words(data: bytes | memoryview, offset: int, span: int, width: int) -> Words:
    import numpy as np

    return np.frombuffer(data, dtype=_UINT[width], count=span // width, offset=offset)


def _code(
    chunk: memoryview, base: memoryview, transform: int, width: int, skip: int, span: int
) -> Words:
    """The zigzag-coded (or XORed) words of the span."""
    new, old = _words(chunk, skip, span, width), _words(base, skip, span, width)
    if transform == XOR:
        return new ^ old
    bits = 8 * width
    d = _ordered(new, bits) - _ordered(old, bits)
    s = d.view(_SINT[width])
    return ((s << 1) ^ (s >> (bits - 1))).view(_UINT[width])


def _uncode(z: Words, base: memoryview, transform: int, width: int, skip: int) -> Words:
    """The span's words from their codes ``z`` (overwritten) and the base.

    With ``S(u) = u ^ ((u >>a (bits-1)) >> 1)`` (sign-magnitude bits to two's-complement
    order; its own inverse), the ordered integer is ``S(u) ^ msb``, and an xor with the msb
    is an addition of it modulo ``2**bits``, so ``new = S(unzigzag(z) + S(old))``: eleven
    whole-array passes with one temporary, in place.
    """
    import numpy as np

    old = _words(base, skip, len(z) * width, width)
    if transform == XOR:
        np.bitwise_xor(z, old, out=z)
        return z
    top = 8 * width - 1
    t = z.dtype.type
    m = codec.scratch("delta_temp", z.nbytes).view(z.dtype)
    ms, zs = m.view(_SINT[width]), z.view(_SINT[width])
    # An arithmetic shift of the signed view spreads a word's top bit over the word; a
    # multiply by a power of two is numpy's faster left shift.
    np.multiply(z, t(1 << top), out=m)
    np.right_shift(ms, top, out=ms)  # -(z & 1)
    np.right_shift(z, t(1), out=z)
    np.bitwise_xor(z, m, out=z)  # d = unzigzag(z), the difference mod 2**bits
    np.right_shift(old.view(_SINT[width]), top, out=ms)
    np.right_shift(m, t(1), out=m)
    np.bitwise_xor(m, old, out=m)  # S(old)
    np.add(z, m, out=z)
    np.right_shift(zs, top, out=ms)
    np.right_shift(m, t(1), out=m)
    np.bitwise_xor(z, m, out=z)  # S(d + S(old))
    return z


def _standalone(chunk: memoryview) -> bytes:
    c, payload = codec.compress(chunk, planes=True)
    return struct.pack("<BBI", STANDALONE, c, len(chunk)) + bytes(payload)


def encode_difference(
    chunk: bytes | memoryview, base: bytes | memoryview, dtype: str | None, phase: int = 0
) -> bytes | None:
    """The difference payload of ``chunk`` against ``base`` (None: they share no element).

    Args:
        chunk: The new bytes (at most :data:`MAX_RAW`).
        base: The previous version's bytes at the same positions (may be shorter or longer).
        dtype: The tensor's dtype, safetensors spelling (``BF16``, ``F32``...); None for bytes.
        phase: Position of ``chunk[0]`` within its element (``0 <= phase < width``).

    Returns:
        The difference form of the module docstring (a pack's codec-3 payload); :func:`decode`
        with the same ``base`` gives ``chunk`` back.

    Raises:
        ValueError: ``chunk`` larger than :data:`MAX_RAW`, or ``phase`` out of range.
    """
    import numpy as np

    chunk, base = memoryview(chunk).cast("B"), memoryview(base).cast("B")
    if len(chunk) > MAX_RAW:
        raise ValueError(f"chunk of {len(chunk)} bytes is larger than {MAX_RAW}")
    transform, width = _transform(dtype)
    if not 0 <= phase < width:
        raise ValueError(f"phase {phase} is out of range for {width}-byte elements")
    skip = min((width - phase) % width, len(chunk))
    span = max(0, min(len(chunk), len(base)) - skip) // width * width
    if span == 0:
        return None
    z = np.ascontiguousarray(_code(chunk, base, transform, width, skip, span))
    grid = z.view(np.uint8).reshape(-1, width)
    table: list[tuple[int, int]] = []
    planes: list[bytes] = []
    for i in range(width):
        plane = np.ascontiguousarray(grid[:, i]).tobytes()
        frame = codec.compress_plane(plane)
        if len(frame) <= len(plane) * (1.0 - codec.MIN_SAVING):
            table.append((1, len(frame)))
            planes.append(frame)
        else:
            table.append((0, len(plane)))
            planes.append(plane)
    residual = bytes(chunk[:skip]) + bytes(chunk[skip + span :])
    rc, rpayload = codec.compress(residual, planes=True)
    parts = [
        _HEAD.pack(DIFFERENCE, transform, width, skip, len(chunk), span),
        b"".join(struct.pack("<BI", *entry) for entry in table),
        *planes,
        bytes([rc]),
        bytes(rpayload),
    ]
    return b"".join(parts)


def encode(
    chunk: bytes | memoryview, base: bytes | memoryview, dtype: str | None, phase: int = 0
) -> bytes:
    """A payload for ``chunk``: the smaller of its standalone and its difference from ``base``.

    Arguments and errors as for :func:`encode_difference`.

    Returns:
        The payload (see the module docstring); :func:`decode` with the same ``base`` gives
        ``chunk`` back.
    """
    chunk = memoryview(chunk).cast("B")
    diff = encode_difference(chunk, base, dtype, phase)
    alone = _standalone(chunk)
    return diff if diff is not None and len(diff) < len(alone) else alone


def decode(
    payload: bytes | memoryview, base: bytes | memoryview, raw_len: int | None = None
) -> bytes:
    """Undo :func:`encode` (or :func:`encode_difference`), given the same ``base``.

    Args:
        payload: What :func:`encode` returned (untrusted).
        base: The bytes it was encoded against.
        raw_len: The length the chunk must have (from an index entry), checked before
            anything is decoded; None to take the payload's word.

    Returns:
        The chunk (new ``bytes``, the caller's to keep); the caller checks it against the
        chunk's id.

    Raises:
        FormatError: A malformed payload, or a ``base`` shorter than it needs.
    """
    view = memoryview(payload).cast("B")
    if raw_len is None:
        at = 2 if len(view) and view[0] == STANDALONE else 4
        if len(view) < at + 4:
            raise FormatError("delta payload is too short")
        raw_len = struct.unpack_from("<I", view, at)[0]
        if raw_len > MAX_RAW:
            raise FormatError(f"delta payload declares {raw_len} bytes, more than {MAX_RAW}")
    out = codec.scratch("delta_out", raw_len)
    return bytes(decode_into(view, base, out))


def decode_into(
    payload: bytes | memoryview, base: bytes | memoryview, out: NDArray[np.uint8]
) -> memoryview:
    """Undo :func:`encode` into ``out``, given the same ``base``: :func:`decode` without a copy.

    Args:
        payload: What :func:`encode` returned (untrusted).
        base: The bytes it was encoded against.
        out: A writable uint8 array of the length the chunk must have (from an index entry),
            checked before anything is decoded.

    Returns:
        Where the chunk is: a view of ``out``, or of a raw standalone payload's own
        bytes. Intermediate planes go to this thread's scratch buffers
        (:func:`mlvc_core.codec.scratch`), so a decode allocates no memory of the chunk's
        size.

    Raises:
        FormatError: A malformed payload, or a ``base`` shorter than it needs.
    """
    import numpy as np

    expected = len(out)
    view, base = memoryview(payload).cast("B"), memoryview(base).cast("B")
    if len(view) < 6:
        raise FormatError("delta payload is too short")
    if view[0] == STANDALONE:
        c, raw_len = view[1], struct.unpack_from("<I", view, 2)[0]
        if raw_len != expected:
            raise FormatError(f"delta payload declares {raw_len} bytes, its index {expected}")
        return codec.decompress_into(view[6:], c, out)
    if view[0] != DIFFERENCE or len(view) < _HEAD.size:
        raise FormatError(f"unknown delta payload kind {view[0]}")
    _, transform, width, skip, raw_len, span = _HEAD.unpack_from(view)
    if transform not in (XOR, ORDERED) or width not in _UINT or (transform, width) == (2, 1):
        raise FormatError(f"bad delta transform {transform} of width {width}")
    if raw_len != expected:
        raise FormatError(f"delta payload declares {raw_len} bytes, its index {expected}")
    if raw_len > MAX_RAW or skip >= width or span % width or skip + span > raw_len:
        raise FormatError("delta payload has inconsistent lengths")
    if skip + span > len(base):
        raise FormatError(f"delta payload needs {skip + span} bytes of base, has {len(base)}")
    off = _HEAD.size + 5 * width
    if len(view) < off:
        raise FormatError("truncated delta plane table")
    count = span // width
    decoded = codec.scratch("delta_planes", span)
    planes: list[NDArray[np.uint8]] = []
    for i in range(width):
        zstd, stored = struct.unpack_from("<BI", view, _HEAD.size + 5 * i)
        part = view[off : off + stored]
        if len(part) != stored:
            raise FormatError("truncated delta plane")
        off += stored
        if zstd:
            plane = decoded[i * count : (i + 1) * count]
            codec.decompress_frame_into(part, plane)
        elif stored != count:
            raise FormatError(f"delta plane {i} has {stored} bytes, expected {count}")
        else:
            plane = np.frombuffer(part, dtype=np.uint8)
        planes.append(plane)
    if off >= len(view):
        raise FormatError("delta payload has no residual")
    residual = codec.decompress(view[off + 1 :], view[off], raw_len - span)
    # Interleave the planes into little-endian words from the top plane down (whole-array
    # shifts and ors), straight into the output buffer.
    # (Widening each lower plane into a word array first makes the or one of equal types,
    # which numpy runs without its casting buffer.)
    z = out[skip : skip + span].view(_UINT[width])
    np.copyto(z, planes[-1])
    wide = codec.scratch("delta_temp", z.nbytes).view(z.dtype)
    for plane in reversed(planes[:-1]):
        np.multiply(z, z.dtype.type(256), out=z)  # << 8
        np.copyto(wide, plane)
        np.bitwise_or(z, wide, out=z)
    _uncode(z, base, transform, width, skip)
    rest = np.frombuffer(residual, dtype=np.uint8)
    out[:skip] = rest[:skip]
    out[skip + span :] = rest[skip:]
    return out.data
