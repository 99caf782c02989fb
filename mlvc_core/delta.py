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
import threading
from typing import TYPE_CHECKING, Any

from mlvc_core import codec
from mlvc_core.errors import FormatError
from mlvc_core.tensorlayout import DTYPE_SIZES

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Words = NDArray[Any]

__all__ = ["MAX_RAW", "decode", "encode", "encode_difference"]

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
_SCRATCH_MAX = 4 << 20
"""Larger scratch buffers are not kept between decodes."""
_local = threading.local()


def _scratch(name: str, nbytes: int) -> NDArray[np.uint8]:
    """This thread's reusable buffer ``name`` of ``nbytes`` bytes (never handed out).

    Fresh memory of a chunk's size costs a page fault per page at its first write, which
    is more than the arithmetic done on it.
    """
    import numpy as np

    buf: NDArray[np.uint8] | None = getattr(_local, name, None)
    if buf is None or buf.size < nbytes:
        buf = np.empty(nbytes, dtype=np.uint8)
        if nbytes <= _SCRATCH_MAX:
            setattr(_local, name, buf)
    return buf[:nbytes]


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
    """The span's words from their codes ``z`` (overwritten) and the base."""
    import numpy as np

    old = _words(base, skip, len(z) * width, width)
    if transform == XOR:
        np.bitwise_xor(z, old, out=z)
        return z
    bits = 8 * width
    t = z.dtype.type
    top, msb = bits - 1, t(1 << (bits - 1))
    # In place with one temporary, twelve whole-array passes; an arithmetic shift of the
    # signed view spreads a word's top bit over the word.
    m = _scratch("temp", z.nbytes).view(z.dtype)
    ms, zs = m.view(_SINT[width]), z.view(_SINT[width])
    np.left_shift(z, t(top), out=m)
    np.right_shift(ms, top, out=ms)  # -(z & 1)
    np.right_shift(z, t(1), out=z)
    np.bitwise_xor(z, m, out=z)  # d = unzigzag(z), the difference mod 2**bits
    np.right_shift(old.view(_SINT[width]), top, out=ms)
    np.bitwise_or(m, msb, out=m)
    np.bitwise_xor(m, old, out=m)  # ordered(old)
    np.add(z, m, out=z)  # o = ordered(new)
    # The inverse of _ordered(o): o ^ msb, then flip the other bits too where that left
    # the top bit set.
    np.bitwise_xor(z, msb, out=z)
    np.right_shift(zs, top, out=ms)
    np.right_shift(m, t(1), out=m)
    np.bitwise_xor(z, m, out=z)
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
        The chunk; the caller checks it against the chunk's id.

    Raises:
        FormatError: A malformed payload, or a ``base`` shorter than it needs.
    """
    import numpy as np

    expected = raw_len
    view, base = memoryview(payload).cast("B"), memoryview(base).cast("B")
    if len(view) < 6:
        raise FormatError("delta payload is too short")
    if view[0] == STANDALONE:
        c, raw_len = view[1], struct.unpack_from("<I", view, 2)[0]
        if expected is not None and raw_len != expected:
            raise FormatError(f"delta payload declares {raw_len} bytes, its index {expected}")
        if raw_len > MAX_RAW:
            raise FormatError(f"delta payload declares {raw_len} bytes, more than {MAX_RAW}")
        return codec.decompress(view[6:], c, raw_len)
    if view[0] != DIFFERENCE or len(view) < _HEAD.size:
        raise FormatError(f"unknown delta payload kind {view[0]}")
    _, transform, width, skip, raw_len, span = _HEAD.unpack_from(view)
    if transform not in (XOR, ORDERED) or width not in _UINT or (transform, width) == (2, 1):
        raise FormatError(f"bad delta transform {transform} of width {width}")
    if expected is not None and raw_len != expected:
        raise FormatError(f"delta payload declares {raw_len} bytes, its index {expected}")
    if raw_len > MAX_RAW or skip >= width or span % width or skip + span > raw_len:
        raise FormatError("delta payload has inconsistent lengths")
    if skip + span > len(base):
        raise FormatError(f"delta payload needs {skip + span} bytes of base, has {len(base)}")
    off = _HEAD.size + 5 * width
    if len(view) < off:
        raise FormatError("truncated delta plane table")
    count = span // width
    planes: list[bytes | memoryview] = []
    for i in range(width):
        zstd, stored = struct.unpack_from("<BI", view, _HEAD.size + 5 * i)
        part = view[off : off + stored]
        if len(part) != stored:
            raise FormatError("truncated delta plane")
        off += stored
        plane = codec.decompress_frame(part, count) if zstd else part
        if len(plane) != count:
            raise FormatError(f"delta plane {i} has {len(plane)} bytes, expected {count}")
        planes.append(plane)
    if off >= len(view):
        raise FormatError("delta payload has no residual")
    residual = codec.decompress(view[off + 1 :], view[off], raw_len - span)
    out = _scratch("out", raw_len)  # copied out by tobytes()
    # Interleave the planes into little-endian words from the top plane down (whole-array
    # shifts and ors), straight into the output buffer.
    # (Widening each lower plane into a word array first makes the or one of equal types,
    # which numpy runs without its casting buffer.)
    z = out[skip : skip + span].view(_UINT[width])
    np.copyto(z, np.frombuffer(planes[-1], dtype=np.uint8))
    wide = _scratch("temp", z.nbytes).view(z.dtype)
    for plane in reversed(planes[:-1]):
        np.left_shift(z, z.dtype.type(8), out=z)
        np.copyto(wide, np.frombuffer(plane, dtype=np.uint8))
        np.bitwise_or(z, wide, out=z)
    _uncode(z, base, transform, width, skip)
    rest = np.frombuffer(residual, dtype=np.uint8)
    out[:skip] = rest[:skip]
    out[skip + span :] = rest[skip:]
    return out.tobytes()
