"""The writer of ``run.log`` points: segments read back exactly, and it lets the loop run."""

from __future__ import annotations

import json
import logging
import math
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mlvc
from mlvc.series import SLICE_POINTS, decode_segment, encode_segment
from mlvc.tracking.steplog import StepLog
from mlvc_core.repository import Repository


def _reference(points: list[tuple[int, float, dict[Any, Any]]]) -> Any:
    """The segment document as the format defines it (names ``str``, values floats)."""
    return {
        "v": 1,
        "points": [
            [s, t, {str(k): v if math.isfinite(v) else str(v) for k, v in _floats(m).items()}]
            for s, t, m in points
        ],
    }


def _floats(values: dict[Any, Any]) -> dict[Any, float]:
    out = {}
    for k, v in values.items():
        try:
            out[k] = float(v)
        except OverflowError:
            continue
    return out


def _bits(doc: Any) -> Any:
    """``doc`` with floats as their bit patterns (NaN, -0.0 and subnormals compare exactly)."""
    if isinstance(doc, float):
        return ("float", struct.pack("<d", doc))
    if isinstance(doc, list):
        return [_bits(x) for x in doc]
    if isinstance(doc, dict):
        return [(k, _bits(v)) for k, v in doc.items()]
    return (type(doc).__name__, doc)


values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([10**400, -(10**400)]),  # no float holds them: left out
)
names = st.one_of(
    st.sampled_from(["loss", "lr", "acc", "nullable", 'q"x:null', "é", "\ud800"]),
    st.integers(-5, 5),
    st.sampled_from([2.5, -0.0]),
    st.text(max_size=8),
)
points = st.lists(
    st.tuples(
        st.integers(0, 2**70),
        st.floats(1e9, 3e9),
        st.dictionaries(names, values, max_size=4),
    ),
    max_size=3 * SLICE_POINTS,
)


@settings(max_examples=150, deadline=None)
@given(points)
def test_a_segment_reads_back_as_the_format_defines_it(
    pts: list[tuple[int, float, dict[Any, Any]]],
) -> None:
    data = encode_segment(pts, pause=lambda: None)
    doc = json.loads(zlib.decompress(data))
    assert _bits(doc) == _bits(_reference(pts))
    assert _bits([list(p) for p in decode_segment(data)]) == _bits(
        [[s, t, {k: float(v) for k, v in m.items()}] for s, t, m in _reference(pts)["points"]]
    )


def test_plain_points_are_encoded_in_slices_with_a_pause_between() -> None:
    pts = [(i, 1.7e9 + i, {"loss": 1.0 / (i + 1), "lr": 1e-5}) for i in range(5 * SLICE_POINTS)]
    pauses: list[int] = []
    data = encode_segment(pts, pause=lambda: pauses.append(1))
    assert len(pauses) == 4
    assert decode_segment(data) == pts
    assert encode_segment([]) == zlib.compress(b'{"v":1,"points":[]}', 1)


def test_a_value_no_float_holds_is_left_out_with_a_warning(
    project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mlvc"):
        with mlvc.track(repository=tmp_path / "repo") as run:
            run.log({"huge": 10**400, "loss": 1.0})
            run.log({"loss": 0.5, "epoch": 3})
            run.checkpoint(step=2, metrics={"huge": 10**400, "loss": 0.25})
    exp = mlvc.experiments.get(run.id, repository=tmp_path / "repo")  # type: ignore[arg-type]
    assert exp.metrics("loss") == [(0, 1.0), (1, 0.5), (2, 0.25)]
    assert exp.metrics("epoch") == [(1, 3.0)]
    assert "huge" not in exp.metric_names()
    assert "metric 'huge' of step 0 not recorded" in caplog.text
    assert "metric 'huge' of a checkpoint not recorded" in caplog.text


def test_log_after_close_records_nothing_and_warns_once(
    project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = mlvc.init(repository=tmp_path / "repo")
    run.log({"loss": 1.0})
    run.close()
    with caplog.at_level(logging.WARNING, logger="mlvc"):
        run.log({"loss": 2.0})
        run.log({"loss": 3.0}, step=7)
    assert caplog.text.count("log() called after the run was closed") == 1
    exp = mlvc.experiments.get(run.id, repository=tmp_path / "repo")  # type: ignore[arg-type]
    assert exp.metrics("loss") == [(0, 1.0)]


def test_writing_a_large_segment_leaves_the_loop_the_interpreter(tmp_path: Path) -> None:
    """The writing thread hands the GIL back between slices: the loop never waits long."""
    repo = Repository.init(tmp_path / "repo")
    try:
        steplog = StepLog(lambda: (repo, "e" * 64), "w")
        n = 100_000
        steplog._points.extend(
            (i, 1.7e9 + i, {"loss": 1.0 / (i + 1), "lr": 1e-3}) for i in range(n)
        )
        done = threading.Event()

        def write() -> None:
            steplog._write(steplog._pause)
            done.set()

        writer = threading.Thread(target=write)
        longest = 0.0
        last = time.perf_counter()
        writer.start()
        while not done.is_set():
            time.sleep(20e-6)  # a step that releases the GIL, as a tensor operation does
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now
        writer.join()
        steplog.close()
        segment = decode_segment(repo.store.read(f"series/{'e' * 64}/w-000000"))
        assert [s for s, _, _ in segment] == list(range(n))
        assert longest < 0.1, f"the loop waited {longest * 1000:.0f} ms for the interpreter"
    finally:
        repo.close()
