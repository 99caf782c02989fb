"""Per-chunk compression: zstd, or raw when zstd does not pay.

The only module that imports ``zstandard``. A stored chunk is ``(codec, payload)``; the codec
number is recorded in the pack index beside the chunk's raw length, so decompression is always
bounded by the recorded size and a payload that inflates to anything else is rejected.

Codecs:

* ``RAW`` (0): the bytes as they are.
* ``ZSTD`` (1): one zstd frame.
* ``PLANES`` (2): byte planes. Model weights are arrays of 2- or 4-byte numbers whose high
  bytes (sign and exponent) repeat a few values while their low bytes (mantissa) are noise.
  Splitting a chunk into planes (every 4th byte, ...) and compressing only the planes that
  compress stores float32 weights ~10% smaller and bf16 ~15% smaller than zstd on the plain
  bytes, and costs less CPU, because the noise planes are never fed to zstd. Layout:
  ``u8 width | u8 mask (bit i: plane i is a zstd frame) | u32le stored length per plane |
  planes | tail bytes (raw_len % width)``.

Which codec a chunk gets is decided from an 8 KiB sample by order-0 entropy (numpy, a few
tens of microseconds): low-entropy bytes (text, CSV) go to plain zstd, whose matches win there;
high-entropy samples whose planes have skewed byte histograms go to ``PLANES``; samples that
look random everywhere are stored raw without running zstd at all. Chunks under 64 KiB (a
dataset's small files) run zstd first and the check only when zstd's result leaves planes a
chance (:func:`_compress_small`): there the check would cost more than zstd itself.

Encoding a ``PLANES`` payload costs little besides zstd itself: plane ``i`` is read as the
low byte of the little-endian words starting at byte ``i`` (a truncating numpy cast, several
times faster than a byte-strided copy); the planes zstd compresses go through a per-thread
scratch buffer, and the payload is assembled in one fresh buffer (the raw planes extracted
straight into place) that the caller owns. Decoding interleaves the planes back by building
those words with whole-array shifts and ors.

zstd contexts are not thread-safe, so each thread keeps its own (``threading.local``), as it
does its scratch buffers, whose contents never leave this module.
"""

from __future__ import annotations

import math
import struct
import threading
from typing import TYPE_CHECKING

import zstandard

from mlvc_core.errors import FormatError

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

RAW = 0
ZSTD = 1
PLANES = 2
DELTA = 3
"""A chunk coded against a base chunk (:mod:`mlvc_core.delta`); decoded by the repository,
which has the base, never by :func:`decompress`."""
CODECS = {RAW: "raw", ZSTD: "zstd", PLANES: "planes", DELTA: "delta"}

DEFAULT_LEVEL = 1
MIN_SAVING = 0.04
"""Store raw unless zstd saves at least this fraction (decompressing costs time on every read)."""

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "cctx", None)
    if cache is None:
        cache = _local.cctx = {}
    cctx = cache.get(level)
    if cctx is None:
        cctx = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def compress(
    data: bytes | memoryview, level: int = DEFAULT_LEVEL, planes: bool = False
) -> tuple[int, bytes | memoryview]:
    """Compress one chunk.

    Args:
        data: The raw bytes.
        level: zstd level; 0 or less stores raw.
        planes: Consider the byte-plane codec (for file content; not for metadata objects).

    Returns:
        ``(codec, payload)``; raw (``data`` itself, not a copy: the caller must write it
        before reusing its buffer) unless compression saved at least :data:`MIN_SAVING`.
        A compressed payload is the caller's own (``bytes``, or for ``PLANES`` a memoryview
        of a fresh buffer): it stays valid after later calls, on any thread.
    """
    if level <= 0 or len(data) < 64:
        return RAW, data
    if planes and len(data) < _PLAN_MIN:
        return _compress_small(data, level)
    if planes:
        plan = _plan(data)
        if plan is not None:
            width, mask = plan
            if width == 0:
                return RAW, data
            payload = _compress_planes(data, width, mask)
            if payload is None:
                return RAW, data
            return PLANES, payload
    out = _compressor(level).compress(data)
    if len(out) <= len(data) * (1.0 - MIN_SAVING):
        return ZSTD, out
    return RAW, data


def _compress_small(data: bytes | memoryview, level: int) -> tuple[int, bytes | memoryview]:
    """A chunk below :data:`_PLAN_MIN`: zstd first, the entropy check only where it may win.

    Measured here, the check costs 25-70 us whatever the chunk's size (an 8 KiB sample),
    as much as or more than zstd-1 on a whole chunk this small (text 2-9 us, noise 10-45 us).
    zstd's own result says what the data is: text saves far more than planes would
    (:data:`_TEXT_SAVING`), noise (images, compressed files) saves nothing and has no skewed
    plane either; only what lies between (numbers: float weights save 7-22%) is checked.
    A chunk of at least two samples whose first :data:`_SAMPLE` bytes zstd cannot shrink is
    noise and stored raw without compressing the rest.
    """
    cctx = _compressor(level)
    if len(data) >= 2 * _SAMPLE and len(cctx.compress(data[:_SAMPLE])) > _SAMPLE * (
        1.0 - MIN_SAVING
    ):
        # Noise from the start (an image, an archive): stored raw, decided from a sample as
        # the entropy check decides (zstd-1 on 8 KiB of noise: a third of a 24 KiB chunk).
        return RAW, data
    out = cctx.compress(data)
    saved = 1.0 - len(out) / len(data)
    if saved >= _TEXT_SAVING:
        return ZSTD, out
    if saved >= MIN_SAVING and len(data) >= _MIN_PLANES_INPUT:
        plan = _plan(data)
        if plan is not None and plan[0] != 0:
            payload = _compress_planes(data, *plan)
            if payload is not None and len(payload) < len(out):
                return PLANES, payload
        return ZSTD, out
    return RAW, data


_PLAN_MIN = 64 << 10
"""Chunks smaller than this try zstd before the entropy check (:func:`_compress_small`)."""
_TEXT_SAVING = 0.4
_SAMPLE = 8192
_MIN_PLANES_INPUT = 4096
_TEXT_ENTROPY = 6.0
"""Samples below this many bits per byte are text-like: plain zstd (matches) wins."""
_NOISE_ENTROPY = 7.6
"""Planes above this many bits per byte are noise: stored raw, never fed to zstd."""
_WORD = {2: "<u2", 4: "<u4"}
"""Little-endian words whose truncating cast to ``uint8`` keeps their first byte."""

_tables: tuple[NDArray[np.uint16], NDArray[np.float64]] | None = None


def _plan_tables() -> tuple[NDArray[np.uint16], NDArray[np.float64]]:
    """``(plane offsets, c * log2(c) for every count c a sample can hold)``, built once."""
    global _tables
    if _tables is None:
        import numpy as np

        offsets = np.array([0, 256, 512, 768], dtype=np.uint16).reshape(4, 1)
        nlogn = np.arange(_SAMPLE + 1, dtype=np.float64)
        nlogn[1:] *= np.log2(nlogn[1:])
        _tables = offsets, nlogn
    return _tables


def _plan(data: bytes | memoryview) -> tuple[int, int] | None:
    """``(width, plane mask)`` for the planes codec, ``(0, 0)`` for raw, None for plain zstd."""
    import numpy as np

    offsets, nlogn = _plan_tables()
    n = min(len(data), _SAMPLE) // 4 * 4
    grid = np.frombuffer(data, dtype=np.uint8, count=n).reshape(-1, 4)
    # One histogram per plane of width 4 in a single bincount (plane i's bytes shifted to
    # i * 256 ..); the transposed add keeps numpy's inner loop long. Width 2's planes are sums
    # of two of them, and the plain bytes' histogram is the sum of all four.
    index = np.empty((4, n // 4), dtype=np.uint16)
    np.add(grid.T, offsets, out=index)
    h4 = np.bincount(index.ravel(), minlength=1024).reshape(4, 256)
    hists = np.empty((7, 256), dtype=h4.dtype)
    np.add(h4[:2], h4[2:], out=hists[1:3])
    np.add(hists[1], hists[2], out=hists[0])
    hists[3:] = h4
    # Order-0 entropy of a histogram of N counts c: log2(N) - sum(c * log2(c)) / N.
    # A sum, not a product with a ones vector: numpy hands products to BLAS, whose threads
    # then spin on every core for a while after each call.
    sums: list[float] = nlogn[hists].sum(axis=1).tolist()
    bits = [
        math.log2(size) - s / size
        for s, size in zip(sums, (n, n / 2, n / 2, n / 4, n / 4, n / 4, n / 4), strict=True)
    ]  # bits per byte: plain, w2 x2, w4 x4
    if bits[0] < _TEXT_ENTROPY:
        return None
    best: tuple[float, int, int] = (0.0, 0, 0)
    for width, hs in ((2, bits[1:3]), (4, bits[3:7])):
        saving = sum(8.0 - h for h in hs if h < 8.0) / (8.0 * width)
        mask = sum(1 << i for i, h in enumerate(hs) if h < _NOISE_ENTROPY)
        if saving > best[0] + 0.01:
            best = (saving, width, mask)
    if best[0] < MIN_SAVING or best[2] == 0:
        return (0, 0)
    return best[1], best[2]


def _plane_compressor() -> zstandard.ZstdCompressor:
    cctx: zstandard.ZstdCompressor | None = getattr(_local, "plane_cctx", None)
    if cctx is None:
        # Planes gain from entropy coding, hardly from matches: the smallest match finder
        # zstd has is both the fastest and (fewer short matches) the smallest on weights.
        params = zstandard.ZstdCompressionParameters(
            window_log=17,
            hash_log=6,
            chain_log=6,
            search_log=1,
            min_match=7,
            target_length=0,
            strategy=zstandard.STRATEGY_FAST,
            write_content_size=True,
        )
        cctx = _local.plane_cctx = zstandard.ZstdCompressor(compression_params=params)
    return cctx


_SCRATCH_MAX = 4 << 20
"""Larger scratch buffers are not kept between calls."""


def scratch(name: str, size: int) -> NDArray[np.uint8]:
    """This thread's reusable buffer ``name``, ``size`` bytes long (contents undefined).

    Fresh memory of a chunk's size costs a page fault per page at its first write (on this
    machine about as much as decoding it), so the read and write paths decode into buffers
    kept per thread. A buffer is valid until the next call with the same ``name`` on the
    same thread; callers never hand one out. Buffers above :data:`_SCRATCH_MAX` are not kept.
    """
    import numpy as np

    buf: NDArray[np.uint8] | None = getattr(_local, name, None)
    if buf is None or buf.size < size:
        buf = np.empty(max(size, 1 << 16), dtype=np.uint8)
        if size <= _SCRATCH_MAX:
            setattr(_local, name, buf)
    return buf[:size]


def _take_plane(data: bytes | memoryview, i: int, width: int, out: NDArray[np.uint8]) -> None:
    """Write plane ``i`` (bytes ``i``, ``i + width``, ...) of ``data`` into ``out``, whole.

    Plane ``i`` is the first byte of each ``width``-byte little-endian word read from offset
    ``i``: a truncating cast of those words, which numpy vectorises (several times faster than
    a byte-strided copy). The last word may run past the end; that byte is copied alone.
    """
    import numpy as np

    count = len(out)
    if count == 0:
        return
    whole = count if i + width * count <= len(data) else count - 1
    words = np.frombuffer(data, dtype=_WORD[width], count=whole, offset=i)
    np.copyto(out[:whole], words, casting="unsafe")
    if whole < count:
        out[whole] = data[i + width * whole]


def _compress_planes(data: bytes | memoryview, width: int, mask: int) -> memoryview | None:
    """The ``PLANES`` payload; None when it would not save :data:`MIN_SAVING`.

    Planes in ``mask`` are extracted into a per-thread scratch buffer and compressed first;
    once the sizes are known, one fresh buffer receives the header, the frames, the raw planes
    (extracted straight into place) and the tail.
    """
    import numpy as np

    plane_len, tail_len = divmod(len(data), width)
    cctx = _plane_compressor()
    frames: list[bytes | None] = []
    for i in range(width):
        frame = None
        if mask >> i & 1:
            plane = scratch("plane_in", plane_len)
            _take_plane(data, i, width, plane)
            z: bytes = cctx.compress(plane.data)
            if len(z) <= plane_len * (1.0 - MIN_SAVING):
                frame = z
        frames.append(frame)
    sizes = [plane_len if f is None else len(f) for f in frames]
    head = 2 + 4 * width
    total = head + sum(sizes) + tail_len
    if total > len(data) * (1.0 - MIN_SAVING):
        return None
    stored_mask = sum(1 << i for i, f in enumerate(frames) if f is not None)
    out = np.empty(total, dtype=np.uint8)
    struct.pack_into(f"<BB{width}I", out.data, 0, width, stored_mask, *sizes)
    off = head
    for i, (frame, size) in enumerate(zip(frames, sizes, strict=True)):
        if frame is None:
            _take_plane(data, i, width, out[off : off + size])
        else:
            out[off : off + size] = np.frombuffer(frame, dtype=np.uint8)
        off += size
    out[off:] = np.frombuffer(data, dtype=np.uint8, offset=plane_len * width)
    return out.data


def _decompress_planes(payload: bytes | memoryview, raw_len: int, out: NDArray[np.uint8]) -> None:
    """Decode a ``PLANES`` payload into ``out`` (``raw_len`` bytes).

    Its zstd planes are decoded into this thread's scratch buffer, not into new memory.
    """
    import numpy as np

    if len(payload) < 2 or payload[0] not in (2, 4):
        raise FormatError("bad byte-plane header")
    width, mask = payload[0], payload[1]
    head = 2 + 4 * width
    if len(payload) < head:
        raise FormatError("truncated byte-plane header")
    lengths = struct.unpack_from(f"<{width}I", payload, 2)
    plane_len, tail_len = divmod(raw_len, width)
    view = memoryview(payload).cast("B")
    decoded = scratch("planes", plane_len * width)
    planes = []
    off = head
    for i, n in enumerate(lengths):
        part = view[off : off + n]
        off += n
        if mask >> i & 1:
            plane = decoded[i * plane_len : (i + 1) * plane_len]
            _zstd_frame_into(part, plane)
        elif len(part) != plane_len:
            raise FormatError(f"byte plane {i} has {len(part)} bytes, expected {plane_len}")
        else:
            plane = np.frombuffer(part, dtype=np.uint8)
        planes.append(plane)
    if len(payload) - off != tail_len:
        raise FormatError("byte-plane payload has a wrong tail length")
    # Interleave by building little-endian words from the top plane down: whole-array shifts
    # and ors, which numpy vectorises, instead of a byte-strided scatter per plane. (Each
    # lower plane is widened into a word array first: an or of equal types runs without
    # numpy's casting buffer.)
    words = out[: plane_len * width].view(_WORD[width])
    np.copyto(words, planes[-1])
    wide = scratch("plane_wide", words.nbytes).view(words.dtype)
    for plane in reversed(planes[:-1]):
        np.multiply(words, words.dtype.type(256), out=words)  # << 8, faster in numpy
        np.copyto(wide, plane)
        np.bitwise_or(words, wide, out=words)
    out[plane_len * width :] = np.frombuffer(view, dtype=np.uint8, offset=off)


_DIRECT_MAX = 4 << 20
"""Frames expected to decode to at most this many bytes are decoded in one call."""


def _bounded(payload: bytes | memoryview, limit: int) -> bytes:
    """Decode one zstd frame, failing once it yields more than ``limit`` bytes.

    Output is gathered as the frame yields it, so memory follows what the frame really
    holds, never a size it (or an index) declares.

    Raises:
        FormatError: Undecodable, or more than ``limit`` bytes.
    """
    out = bytearray()
    try:
        for piece in _decompressor().read_to_iter(payload, write_size=1 << 20):
            out += piece
            if len(out) > limit:
                raise FormatError(f"zstd frame yields more than {limit} bytes")
    except zstandard.ZstdError as exc:
        raise FormatError(f"undecodable zstd payload: {exc}") from exc
    return bytes(out)


def _zstd_frame(payload: bytes | memoryview, raw_len: int) -> bytes:
    try:
        # A frame that declares its size is decoded to that size whatever max_output_size
        # says, so check the declared size first.
        declared = zstandard.frame_content_size(payload)
        if declared not in (-1, raw_len):
            raise FormatError(f"payload declares {declared} bytes, expected {raw_len}")
        if raw_len > _DIRECT_MAX:
            return _bounded(payload, raw_len)
        out: bytes = _decompressor().decompress(payload, max_output_size=raw_len)
    except zstandard.ZstdError as exc:
        raise FormatError(f"undecodable zstd payload: {exc}") from exc
    return out


def _zstd_frame_into(payload: bytes | memoryview, out: NDArray[np.uint8]) -> None:
    """Decode one zstd frame into ``out``, which it must fill exactly (never written past).

    Raises:
        FormatError: Undecodable, or a size other than ``len(out)``.
    """
    raw_len = len(out)
    try:
        declared = zstandard.frame_content_size(payload)
        if declared not in (-1, raw_len):
            raise FormatError(f"payload declares {declared} bytes, expected {raw_len}")
        reader = _decompressor().stream_reader(payload, read_across_frames=False)
        target = out.data
        filled = 0
        while filled < raw_len:
            n = reader.readinto(target[filled:])
            if n == 0:
                break
            filled += n
        if filled != raw_len or reader.read(1):
            raise FormatError(f"zstd frame does not yield {raw_len} bytes")
    except zstandard.ZstdError as exc:
        raise FormatError(f"undecodable zstd payload: {exc}") from exc


def decompress(payload: bytes | memoryview, codec: int, raw_len: int) -> bytes:
    """Undo :func:`compress`, never producing more than ``raw_len`` bytes.

    Raises:
        FormatError: Unknown codec, undecodable payload, or a length other than ``raw_len``.
    """
    if codec == RAW:
        out = payload if isinstance(payload, bytes) else bytes(payload)
    elif codec == ZSTD:
        out = _zstd_frame(payload, raw_len)
    elif codec == PLANES:
        buf = scratch("plane_out", raw_len)
        _decompress_planes(payload, raw_len, buf)
        out = buf.tobytes()
    elif codec == DELTA:
        raise FormatError("a delta payload is decoded against its base, not on its own")
    else:
        raise FormatError(f"unknown codec {codec}")
    if len(out) != raw_len:
        raise FormatError(f"payload decodes to {len(out)} bytes, expected {raw_len}")
    return out


def decompress_into(payload: bytes | memoryview, codec: int, out: NDArray[np.uint8]) -> memoryview:
    """Undo :func:`compress` into ``out`` (a writable uint8 array of the raw length).

    Returns:
        Where the bytes are: ``out``, or for a ``RAW`` payload the payload itself (not
        copied).

    Raises:
        FormatError: As :func:`decompress`.
    """
    raw_len = len(out)
    if codec == RAW:
        if len(payload) != raw_len:
            raise FormatError(f"payload decodes to {len(payload)} bytes, expected {raw_len}")
        return memoryview(payload)
    if codec == ZSTD:
        _zstd_frame_into(payload, out)
    elif codec == PLANES:
        _decompress_planes(payload, raw_len, out)
    elif codec == DELTA:
        raise FormatError("a delta payload is decoded against its base, not on its own")
    else:
        raise FormatError(f"unknown codec {codec}")
    return out.data


def compress_blob(data: bytes, level: int = 3) -> bytes:
    """Compress a metadata blob (indexes, caches) as one zstd frame."""
    return _compressor(level).compress(data)


def decompress_blob(data: bytes, max_size: int = 1 << 30) -> bytes:
    """Undo :func:`compress_blob`, bounded by ``max_size``.

    Memory follows the bytes the frame really yields (at most ``max_size``), never the size
    its header declares.

    Raises:
        FormatError: Not a zstd frame, or larger than ``max_size``.
    """
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise FormatError(f"undecodable zstd blob: {exc}") from exc
    if declared > max_size:
        raise FormatError(f"blob declares {declared} bytes, more than {max_size}")
    return _bounded(data, max_size)


def compress_plane(data: bytes | memoryview) -> bytes:
    """One zstd frame of ``data`` made for entropy coding (the byte-plane codec's settings).

    For byte planes and similar streams whose gain is in their byte histogram, not in
    matches (:mod:`mlvc_core.delta`).
    """
    out: bytes = _plane_compressor().compress(data)
    return out


def decompress_frame(payload: bytes | memoryview, raw_len: int) -> bytes:
    """Decode one zstd frame that must yield exactly ``raw_len`` bytes, never more.

    Raises:
        FormatError: Undecodable, or a size other than ``raw_len``.
    """
    out = _zstd_frame(payload, raw_len)
    if len(out) != raw_len:
        raise FormatError(f"zstd frame yields {len(out)} bytes, expected {raw_len}")
    return out


def decompress_frame_into(payload: bytes | memoryview, out: NDArray[np.uint8]) -> None:
    """Decode one zstd frame into ``out``, which it must fill exactly, never more.

    Raises:
        FormatError: Undecodable, or a size other than ``len(out)``.
    """
    _zstd_frame_into(payload, out)
