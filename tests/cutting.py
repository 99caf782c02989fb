"""Counting what the chunker is asked to cut (guided ingest must skip the cutter)."""

from __future__ import annotations

import pytest


class _CountingCutter:
    """Wraps a FastCDC cutter and records the length of every buffer it is asked to cut."""

    def __init__(self, inner: object, counts: list[int]) -> None:
        self.inner, self.counts = inner, counts

    def cut_buf(self, buf: memoryview) -> object:
        self.counts.append(len(buf))
        return self.inner.cut_buf(buf)  # type: ignore[attr-defined]


def count_cuts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on (for this test), every cutter ingest makes appends the bytes it cuts here."""
    from mlvc_core import manifests

    cut: list[int] = []
    real = manifests.make_fastcdc
    monkeypatch.setattr(manifests, "make_fastcdc", lambda p: _CountingCutter(real(p), cut))
    return cut
