"""A training script run as a child process by the porcelain tests.

Usage: python child_train.py TAG STEPS DELAY [--hang] [--slow-store] [--no-close]

Writes ``model.bin`` (300 kB, bytes determined by TAG and step) and a copy
``expected/model-<step>.bin`` at each step, checkpoints it, prints ``queued <step>``.
The repository comes from the environment (MLVC_REPOSITORY), the heartbeat interval from
MLVC_TEST_HEARTBEAT.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import mlvc


def weights(tag: str, step: int, size: int = 300_000) -> bytes:
    return random.Random(f"{tag}-{step}").randbytes(size)


def main() -> None:
    tag, steps, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    repository = None
    if "--slow-store" in sys.argv:
        from mlvc.settings import load_settings
        from mlvc_core.repository import Repository
        from mlvc_core.storage import LocalStore
        from tests.porcelain.stores import SlowStore

        settings = load_settings()
        repository = Repository.open(SlowStore(LocalStore(settings.repository_url), 0.5))
    run = mlvc.init(
        name=tag,
        params={"tag": tag, "steps": steps},
        repository=repository,
        heartbeat_interval=float(os.environ.get("MLVC_TEST_HEARTBEAT", "10")),
    )
    expected = Path("expected")
    expected.mkdir(exist_ok=True)
    for step in range(steps):
        data = weights(tag, step)
        Path("model.bin").write_bytes(data)
        (expected / f"model-{step}.bin").write_bytes(data)
        run.checkpoint(
            path="model.bin",
            step=step,
            metrics={"loss": 1.0 / (step + 1)},
            primary_metric=("loss", "minimize"),
        )
        print("queued", step, flush=True)
        time.sleep(delay)
    if "--hang" in sys.argv:
        time.sleep(600)
    if "--no-close" in sys.argv:
        print("exiting", flush=True)
        return  # the interpreter's exit must flush what is still pending
    run.close()
    print("done", flush=True)


if __name__ == "__main__":
    main()
