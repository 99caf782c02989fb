"""Step metrics: ``run.log`` is cheap, batched into few segments, and survives a crash."""

from __future__ import annotations

import logging
import math
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

import mlvc
from mlvc.repo import open_repo
from mlvc.settings import load_settings
from tests.porcelain.conftest import subprocess_env


def _segments(repo_dir: Path) -> list[str]:
    repo = open_repo(load_settings(repo_dir))
    return sorted(i.key for i in repo.store.list("series/"))


def test_log_many_points_in_few_segments(project: Path, tmp_path: Path) -> None:
    repo_dir = tmp_path / "repo"
    n = 10_000
    with mlvc.track(repository=repo_dir) as run:
        t0 = time.perf_counter()
        for step in range(n):
            run.log({"loss": 1.0 / (step + 1), "lr": 0.1}, step=step)
        per_call = (time.perf_counter() - t0) / n
        run.checkpoint(step=n, metrics={"loss": 0.0})
    assert per_call < 200e-6, f"run.log took {per_call * 1e6:.1f} us per call"
    keys = _segments(repo_dir)
    assert 1 <= len(keys) <= 5  # batched: never a file per point
    exp = mlvc.experiments.get(run.id, repository=repo_dir)
    loss = exp.metrics("loss")
    assert len(loss) == n + 1 and loss[0] == (0, 1.0) and loss[-1] == (n, 0.0)
    assert [s for s, _ in loss] == list(range(n + 1))
    assert len(exp.checkpoints) == 1  # no commit per point
    assert exp.metric_names() == ["loss", "lr"]
    pd = pytest.importorskip("pandas")
    frame = exp.metrics_frame(["loss", "lr"])
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == ["loss", "lr"]
    assert frame.loc[2, "loss"] == pytest.approx(1 / 3) and math.isnan(frame.loc[n, "lr"])


def test_every_kind_of_value_is_recorded_or_refused_clearly(
    project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch = pytest.importorskip("torch")
    w = torch.ones(3, requires_grad=True)
    values = {
        "py_float": 0.5,
        "py_int": 3,
        "bool": True,
        "decimal": Decimal("0.25"),
        "np_float32": np.float32(0.75),
        "np_0d": np.array(1.5),
        "np_int": np.int64(7),
        "tensor_grad": (w * 2).sum(),
        "tensor_bf16": torch.tensor(0.5, dtype=torch.bfloat16),
        "nan": float("nan"),
        "inf": float("inf"),
        "text": "high",
        "vector": torch.ones(2),
    }
    with caplog.at_level(logging.WARNING, logger="mlvc"):
        with mlvc.track(repository=tmp_path / "repo") as run:
            run.log(values)  # step 0
            run.log({"py_float": 0.25})  # step 1
            run.checkpoint(metrics=values)
    exp = mlvc.experiments.get(run.id, repository=tmp_path / "repo")
    got = {name: exp.metrics(name)[0][1] for name in exp.metric_names()}
    assert got["py_float"] == 0.5 and got["py_int"] == 3.0 and got["bool"] == 1.0
    assert got["decimal"] == 0.25 and got["np_float32"] == 0.75 and got["np_0d"] == 1.5
    assert got["np_int"] == 7.0 and got["tensor_grad"] == 6.0 and got["tensor_bf16"] == 0.5
    assert math.isnan(got["nan"]) and got["inf"] == math.inf
    assert "text" not in got and "vector" not in got
    assert exp.metrics("py_float") == [(0, 0.5), (1, 0.25)]
    for name in ("text", "vector"):
        assert f"metric '{name}' of step 0 not recorded" in caplog.text
        assert f"metric '{name}' of a checkpoint not recorded" in caplog.text
    assert exp.latest().metrics["tensor_grad"] == 6.0  # type: ignore[union-attr]


def test_resumed_run_logs_on_from_the_last_step(project: Path, tmp_path: Path) -> None:
    with mlvc.track(repository=tmp_path / "repo") as run:
        for _ in range(5):
            run.log({"loss": 1.0})
    with mlvc.track(repository=tmp_path / "repo", resume=run.id) as again:  # type: ignore[arg-type]
        again.log({"loss": 0.5})
    exp = mlvc.experiments.get(run.id, repository=tmp_path / "repo")  # type: ignore[arg-type]
    assert [s for s, _ in exp.metrics("loss")] == [0, 1, 2, 3, 4, 5]
    exp.remove()
    assert _segments(tmp_path / "repo") == []  # removing the experiment removes its series


CRASHING = """
import sys, time
import mlvc, mlvc.series
mlvc.series.SEGMENT_SECONDS = 0.2
run = mlvc.init(heartbeat_interval=0.2)
for step in range(100):
    run.log({"loss": 1.0 / (step + 1)})
time.sleep(1.0)  # a segment is written meanwhile
print("logged", flush=True)
time.sleep(60)
"""


def test_flushed_points_survive_a_kill(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(CRASHING)
    repo_dir = tmp_path / "repo"
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=subprocess_env(tmp_path, MLVC_REPOSITORY=str(repo_dir)),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "logged"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    (exp,) = mlvc.experiments.list(repository=repo_dir)
    loss = exp.metrics("loss")
    assert len(loss) == 100 and loss[-1] == (99, 0.01)


def test_mlvc_plot_overlays_runs(project: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from typer.testing import CliRunner

    from mlvc.cli import app

    ids = []
    for scale in (1.0, 2.0):
        with mlvc.track() as run:
            for step in range(50):
                run.log({"loss": scale / (step + 1)})
        ids.append(run.id[:10])  # type: ignore[index]
    out = tmp_path / "loss.png"
    runner = CliRunner()
    result = runner.invoke(app, ["plot", *ids, "-m", "loss", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "2 lines" in result.output
    missing = runner.invoke(app, ["plot", ids[0], "-m", "nope", "-o", str(out)])
    assert missing.exit_code == 2 and "none of the experiments has metric 'nope'" in missing.output


def test_push_and_clone_carry_the_step_metrics(project: Path, tmp_path: Path) -> None:
    from mlvc.commands.remote import clone, push

    repo_dir = tmp_path / "repo"
    with mlvc.track(repository=repo_dir) as run:
        for step in range(50):
            run.log({"loss": 1.0 / (step + 1)}, step=step)
    expected = mlvc.experiments.get(run.id, repository=repo_dir).metrics("loss")
    assert len(expected) == 50
    remote = tmp_path / "remote"
    push(open_repo(load_settings(repo_dir)), str(remote))
    assert mlvc.experiments.get(run.id, repository=remote).metrics("loss") == expected
    clone(str(remote), tmp_path / "copy")
    copied = tmp_path / "copy" / ".mlvc"
    assert mlvc.experiments.get(run.id, repository=copied).metrics("loss") == expected
    assert _segments(copied) == _segments(repo_dir)
    push(open_repo(load_settings(repo_dir)), str(remote))  # nothing new: nothing copied twice
    assert _segments(remote) == _segments(repo_dir)


@pytest.mark.parametrize("n", [3, 40])
def test_copying_the_series_of_many_experiments_lists_each_side_once(
    tmp_path: Path, n: int
) -> None:
    from mlvc.series import PER_EXPERIMENT_LISTING, copy_series, segment_key
    from tests.porcelain.stores import CountingStore, wrap_repo

    src, src_store = wrap_repo(CountingStore, tmp_path / "src", tmp_path / "c1")
    dst, dst_store = wrap_repo(CountingStore, tmp_path / "dst", tmp_path / "c2")
    ids = [f"{i:064x}" for i in range(1, n + 1)]
    for exp_id in ids:
        for seq in range(2):
            src.store.write(segment_key(exp_id, "w1", seq), f"{exp_id}:{seq}".encode())
    src.store.write(segment_key(f"{999:064x}", "w1", 0), b"not asked for")
    dst.store.write(segment_key(ids[0], "w1", 0), b"already there")  # never written twice
    src_store.reset()
    dst_store.reset()

    copied = copy_series(src, dst, ids)

    assert copied == 2 * n - 1
    for exp_id in ids:
        for seq in range(2):
            if (exp_id, seq) != (ids[0], 0):
                assert dst.store.read(segment_key(exp_id, "w1", seq)) == f"{exp_id}:{seq}".encode()
    assert dst.store.read(segment_key(ids[0], "w1", 0)) == b"already there"
    listings = src_store.counts[("list", "series")] + dst_store.counts[("list", "series")]
    assert listings == (2 * n if n <= PER_EXPERIMENT_LISTING else 2)
    assert not any(dst.store.list(f"series/{999:064x}/"))
