"""A script that changes directory before ``track()`` (Hydra) still finds its project."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import mlvc
from mlvc.settings import write_project_config
from tests.porcelain.conftest import subprocess_env

HYDRA_SCRIPT = """
import os
import hydra
import mlvc

@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg):
    print("cwd", os.getcwd(), flush=True)
    with mlvc.track(params=cfg) as run:
        run.checkpoint(metrics={"loss": 0.5})
    print("EXP", run.id, flush=True)

main()
"""

CHDIR_SCRIPT = """
import os, sys
import mlvc
os.makedirs("outputs/run-1", exist_ok=True)
os.chdir("outputs/run-1")
with mlvc.track(params={"lr": 0.1}) as run:
    run.checkpoint(metrics={"loss": 1.0})
print("EXP", run.id, flush=True)
"""


def _launch(script: Path, cwd: Path, tmp_path: Path, *args: str) -> str:
    env = subprocess_env(tmp_path)
    done = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("EXP"))


def _code_files(repo: Path, exp_id: str) -> set[str]:
    exp = mlvc.experiments.get(exp_id, repository=repo)
    return {p for p, _ in exp.latest().files(all=True)}  # type: ignore[union-attr]


def test_hydra_output_directory_is_not_the_project(tmp_path: Path) -> None:
    pytest.importorskip("hydra")
    project = tmp_path / "proj"
    (project / "conf").mkdir(parents=True)
    (project / "conf" / "config.yaml").write_text("lr: 0.1\nmodel:\n  depth: 4\n")
    (project / "train.py").write_text(HYDRA_SCRIPT)
    exp_id = _launch(project / "train.py", project, tmp_path, "hydra.job.chdir=True")
    assert list(project.glob("outputs/**/.mlvc")) == []  # no repository in the output dir
    exp = mlvc.experiments.get(exp_id, repository=project / ".mlvc")
    assert exp.params == {"lr": 0.1, "model.depth": 4}
    assert {"train.py", "conf/config.yaml"} <= _code_files(project / ".mlvc", exp_id)


def test_chdir_below_the_script_finds_the_project(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "train.py").write_text(CHDIR_SCRIPT)
    exp_id = _launch(project / "train.py", project, tmp_path)
    assert not (project / "outputs" / "run-1" / ".mlvc").exists()
    assert "train.py" in _code_files(project / ".mlvc", exp_id)


def test_script_launched_from_elsewhere_uses_its_project_config(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "train.py").write_text(CHDIR_SCRIPT)
    write_project_config(project, str(tmp_path / "shared-repo"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    exp_id = _launch(project / "train.py", elsewhere, tmp_path)
    assert not list(elsewhere.rglob(".mlvc"))
    assert "train.py" in _code_files(tmp_path / "shared-repo", exp_id)
