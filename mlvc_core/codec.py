"""Per-chunk compression: zstd, or raw when zstd does not pay.

The only module that imports ``zstandard``. A stored chunk is ``(codec, payload)``; the codec
number is recorded in the pack index beside the chunk's raw length, so decompression is always
bounded by the recorded size and a payload that inflates to anything else is rejected.

Codecs:

* ``RAW`` (0): the bytes as they are.
* ``ZSTD`` (1): one zstd frame.

zstd contexts are not thread-safe, so each thread keeps its own (``threading.local``).
"""

from __future__ import annotations

import threading

import zstandard

from mlvc_core.errors import FormatError

RAW = 0
ZSTD = 1
CODECS = {RAW: "raw", ZSTD: "zstd"}

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


def compress(data: bytes | memoryview, level: int = DEFAULT_LEVEL) -> tuple[int, bytes | memoryview]:
    """Compress one chunk.

    Args:
        data: The raw bytes.
        level: zstd level; 0 or less stores raw.

    Returns:
        ``(codec, payload)``: zstd if it saved at least :data:`MIN_SAVING`, else raw - then
        ``data`` itself, not a copy (the caller must write it before reusing its buffer).
    """
    if level <= 0 or len(data) < 64:
        return RAW, data
    out = _compressor(level).compress(data)
    if len(out) <= len(data) * (1.0 - MIN_SAVING):
        return ZSTD, out
    return RAW, data


def decompress(payload: bytes, codec: int, raw_len: int) -> bytes:
    """Undo :func:`compress`, never producing more than ``raw_len`` bytes.

    Raises:
        FormatError: Unknown codec, undecodable payload, or a length other than ``raw_len``.
    """
    if codec == RAW:
        out = payload
    elif codec == ZSTD:
        try:
            # A frame that declares its size is decoded to that size whatever max_output_size
            # says, so check the declared size first.
            declared = zstandard.frame_content_size(payload)
            if declared not in (-1, raw_len):
                raise FormatError(f"payload declares {declared} bytes, expected {raw_len}")
            out = _decompressor().decompress(payload, max_output_size=raw_len)
        except zstandard.ZstdError as exc:
            raise FormatError(f"undecodable zstd payload: {exc}") from exc
    else:
        raise FormatError(f"unknown codec {codec}")
    if len(out) != raw_len:
        raise FormatError(f"payload decodes to {len(out)} bytes, expected {raw_len}")
    return out


def compress_blob(data: bytes, level: int = 3) -> bytes:
    """Compress a metadata blob (indexes, caches) as one zstd frame."""
    return _compressor(level).compress(data)


def decompress_blob(data: bytes, max_size: int = 1 << 30) -> bytes:
    """Undo :func:`compress_blob`, bounded by ``max_size``.

    Raises:
        FormatError: Not a zstd frame, or larger than ``max_size``.
    """
    try:
        declared = zstandard.frame_content_size(data)
        if declared > max_size:
            raise FormatError(f"blob declares {declared} bytes, more than {max_size}")
        return _decompressor().decompress(data, max_output_size=max_size)
    except zstandard.ZstdError as exc:
        raise FormatError(f"undecodable zstd blob: {exc}") from exc
