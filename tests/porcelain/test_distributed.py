"""A torchrun job of several ranks records one experiment: rank 0's; other ranks' calls do
nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import mlvc
from tests.porcelain.conftest import subprocess_env

SCRIPT = """
import torch
import torch.distributed as dist
import mlvc

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = torch.nn.Linear(4, 2)
ddp = torch.nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
with mlvc.track(params={"world": dist.get_world_size()}, heartbeat_interval=0.2) as run:
    for step in range(3):
        opt.zero_grad()
        loss = ddp(torch.ones(8, 4) * (rank + 1)).pow(2).mean()
        loss.backward()
        opt.step()
        if rank == 0:
            torch.save(model.state_dict(), "model.pt")
        dist.barrier()
        run.checkpoint(path="model.pt", step=step, metrics={"loss": float(loss)})
        run.log({"loss": float(loss)}, step=step)
print("RANK", rank, "RUNRANK", run.rank, "ID", run.id, flush=True)
dist.destroy_process_group()
"""


def test_torchrun_job_records_one_experiment(tmp_path: Path) -> None:
    pytest.importorskip("torch.distributed")
    (tmp_path / "train.py").write_text(SCRIPT)
    repo = tmp_path / "repo"
    env = subprocess_env(tmp_path, MLVC_REPOSITORY=str(repo), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "train.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = sorted(line for line in done.stdout.splitlines() if line.startswith("RANK"))
    assert len(lines) == 2
    rank0, rank1 = (line.split() for line in lines)
    assert rank0[3] == "0" and rank0[5] != "None"
    assert rank1[3] == "1" and rank1[5] == "None"  # a no-op run on rank 1
    assert done.stderr.count("mlvc: saved experiment") == 1
    (exp,) = mlvc.experiments.list(repository=repo)
    assert exp.id == rank0[5] and exp.params == {"world": 2} and exp.status == "stopped"
    assert [c.step for c in exp.checkpoints] == [0, 1, 2]
    assert [s for s, _ in exp.metrics("loss")] == [0, 1, 2]
