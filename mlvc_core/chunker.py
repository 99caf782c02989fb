"""Content-defined chunking (FastCDC 2020, through ``pyfastcdc``'s compiled implementation).

Chunk boundaries depend on content, not offsets, so inserting bytes (a safetensors header that
grows by 8 bytes) moves only the chunks around the insertion; everything after re-synchronises
and deduplicates. The parameters are part of the repository config: changing them would change
every boundary and silently destroy dedup, so a repository keeps the ones it was created with.

pyfastcdc ships a pure-Python fallback that runs ~400x slower; :func:`make_fastcdc` refuses to
run on it rather than fall back silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlvc_core.errors import FormatError

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class ChunkerParams:
    """FastCDC parameters. ``avg`` is pyfastcdc's ``avg_size`` argument."""

    min: int = 64 * KiB
    avg: int = 256 * KiB
    max: int = 1 * MiB
    algorithm: str = "fastcdc2020"
    normalization: int = 1
    seed: int = 0

    def to_dict(self) -> dict[str, object]:
        """Form stored in the repository config."""
        return {
            "algorithm": self.algorithm,
            "min": self.min,
            "avg": self.avg,
            "max": self.max,
            "normalization": self.normalization,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> ChunkerParams:
        """Parse the stored form.

        Raises:
            FormatError: Unknown algorithm or malformed values.
        """
        if d.get("algorithm") != "fastcdc2020":
            raise FormatError(f"unknown chunking algorithm {d.get('algorithm')!r}")
        try:
            return cls(
                min=int(d["min"]),  # type: ignore[call-overload]
                avg=int(d["avg"]),  # type: ignore[call-overload]
                max=int(d["max"]),  # type: ignore[call-overload]
                normalization=int(d.get("normalization", 1)),  # type: ignore[call-overload]
                seed=int(d.get("seed", 0)),  # type: ignore[call-overload]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"bad chunker parameters {d!r}") from exc

    def validate(self) -> None:
        """Check the parameters are within what FastCDC accepts.

        Raises:
            ValueError: Out of range or not ordered min <= avg <= max.
        """
        if not (64 <= self.min <= self.avg <= self.max <= 16 * MiB):
            raise ValueError(f"chunk sizes must satisfy 64 <= min <= avg <= max <= 16 MiB: {self}")


def make_fastcdc(params: ChunkerParams) -> Any:
    """A pyfastcdc ``FastCDC`` cutter for ``params`` (its ``cut_buf`` releases the GIL).

    Not thread-safe: make one per thread.

    Raises:
        ValueError: Parameters out of range.
        RuntimeError: Only pyfastcdc's slow pure-Python fallback is available.
    """
    params.validate()
    try:
        from pyfastcdc.cy.fastcdc import FastCDC
    except ImportError as exc:  # pragma: no cover - depends on the wheel
        raise RuntimeError(
            "pyfastcdc's compiled extension is not available; refusing to chunk at the "
            "pure-Python fallback's ~10 MB/s (reinstall pyfastcdc from a wheel)"
        ) from exc
    return FastCDC(
        params.avg,
        min_size=params.min,
        max_size=params.max,
        normalized_chunking=params.normalization,
        seed=params.seed,
    )


def cut_between(
    cutter: Any,
    data: memoryview,
    at: int,
    boundaries: list[int],
    blocks: frozenset[int] = frozenset(),
) -> list[tuple[int, int]]:
    """Content-defined cuts of ``data`` that also end at every forced boundary inside it.

    FastCDC keeps no state across a boundary, so cutting each stretch between two forced
    boundaries on its own gives the same chunks wherever that stretch sits in a file. A
    stretch that starts at an offset in ``blocks`` is a fixed block: one chunk, not cut.

    Args:
        cutter: A :func:`make_fastcdc` cutter.
        data: The bytes to cut.
        at: Offset of ``data``'s first byte in its file.
        boundaries: Sorted file offsets where a chunk must end (from
            :func:`mlvc_core.tensorfile.forced_boundaries`); those outside ``data`` are ignored.
        blocks: File offsets where a fixed block starts (see
            :class:`mlvc_core.tensorfile.CutPlan`).

    Returns:
        ``(offset in data, length)`` of each chunk, in order, covering ``data``.
    """
    import bisect

    out: list[tuple[int, int]] = []

    def cut(start: int, end: int) -> None:
        if at + start in blocks:
            if end > start:
                out.append((start, end - start))
            return
        out.extend((start + c.offset, c.length) for c in cutter.cut_buf(data[start:end]))

    start = 0
    for b in boundaries[bisect.bisect_right(boundaries, at) :]:
        end = b - at
        if end >= len(data):
            break
        cut(start, end)
        start = end
    cut(start, len(data))
    return out
