"""End to end, as a user would: real ``python -m mlvc`` processes, a real training script.

Record two training runs (numpy weights, ``mlvc.track``), list, show and diff them, check the
best checkpoint out into a fresh directory and compare bytes, push to S3 (the loopback moto
server), clone back and verify the clone with ``fsck``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

TRAIN = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import numpy as np

    import mlvc

    lr = float(sys.argv[1])
    keep = Path(sys.argv[2])  # outside the project: what each step wrote, for the test
    keep.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(lr * 1000))
    w = rng.standard_normal((256, 256)).astype(np.float32)
    params = {"lr": lr, "epochs": 3}
    with mlvc.track(params=params, primary_metric=("loss", "minimize"), strict=True) as run:
        for epoch, loss in enumerate([0.9, 0.2, 0.5]):
            w -= lr * rng.standard_normal(w.shape).astype(np.float32)
            np.save("weights.npy", w)
            np.save(keep / f"step{epoch}.npy", w)
            run.checkpoint(path="weights.npy", step=epoch, metrics={"loss": loss * (1 + lr)})
    print(run.id)
    """
)


def _env(tmp_path: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLVC_")}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        MLVC_CACHE_DIR=str(tmp_path / "cache"),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


Proc = subprocess.CompletedProcess[str]


def run(args: list[str], cwd: Path, env: dict[str, str], code: int = 0) -> Proc:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, f"{args} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def mlvc(*args: Any, cwd: Path, env: dict[str, str], code: int = 0) -> Proc:
    return run([sys.executable, "-m", "mlvc", *map(str, args)], cwd, env, code)


@pytest.mark.slow
def test_record_inspect_checkout_push_clone(
    tmp_path: Path, s3_repo_url: tuple[str, dict[str, Any]]
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text(TRAIN)
    env = _env(tmp_path)

    mlvc("init", cwd=project, env=env)
    ids = {}
    for lr in (0.01, 0.1):
        out = run([sys.executable, "train.py", str(lr), str(tmp_path / f"kept-{lr}")], project, env)
        ids[lr] = out.stdout.strip().splitlines()[-1]
        assert "mlvc: saved experiment" in out.stderr

    listed = json.loads(mlvc("ls", "--json", cwd=project, env=env).stdout)
    assert {e["id"] for e in listed} == set(ids.values())
    assert all(e["status"] == "stopped" and e["checkpoints"] == 3 for e in listed)
    best = {e["id"]: e["best"]["step"] for e in listed}
    assert best == {ids[0.01]: 1, ids[0.1]: 1}

    a, b = ids[0.01][:8], ids[0.1][:8]
    shown = mlvc("show", a, cwd=project, env=env).stdout
    assert "weights.npy" in shown and "lr" in shown and "train.py" in shown
    diffed = mlvc("diff", a, b, cwd=project, env=env).stdout
    assert "lr" in diffed and "weights.npy" in diffed

    fresh = tmp_path / "fresh"
    done = mlvc("checkout", a, "-o", fresh, cwd=project, env=env)
    assert "wrote 1 files" in done.stderr
    expected = (tmp_path / "kept-0.01" / "step1.npy").read_bytes()
    assert (fresh / "weights.npy").read_bytes() == expected

    # Push to S3 (moto on loopback): the endpoint and keys come from the environment only.
    url, options = s3_repo_url
    s3_env = _env(
        tmp_path,
        {
            "AWS_ENDPOINT_URL": options["client_kwargs"]["endpoint_url"],
            "AWS_ACCESS_KEY_ID": options["key"],
            "AWS_SECRET_ACCESS_KEY": options["secret"],
        },
    )
    pushed = json.loads(mlvc("push", url, "--json", cwd=project, env=s3_env).stdout)
    assert pushed["created"] is True and pushed["bytes_sent"] > 2 * 256 * 256 * 4
    assert len(pushed["refs_updated"]) == 2
    again = json.loads(mlvc("push", url, "--json", cwd=project, env=s3_env).stdout)
    assert again["objects_sent"] == 0

    clone_dir = tmp_path / "clone"
    mlvc("clone", url, clone_dir, cwd=tmp_path, env=s3_env)
    assert mlvc("fsck", cwd=clone_dir, env=env).stdout.startswith("ok:")
    cloned = json.loads(mlvc("ls", "--json", cwd=clone_dir, env=env).stdout)
    assert {e["id"] for e in cloned} == set(ids.values())
    mlvc("checkout", f"{a}@best", "-o", tmp_path / "from-clone", cwd=clone_dir, env=env)
    assert (tmp_path / "from-clone" / "weights.npy").read_bytes() == expected
    assert "ok:" in mlvc("-R", url, "fsck", cwd=tmp_path, env=s3_env).stdout
