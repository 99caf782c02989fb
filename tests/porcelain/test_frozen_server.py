"""A real S3 server that stops answering, or stops reading uploads, never hangs mlvc.

It accepts connections and sends nothing, or takes small requests and stops reading the body
of any upload part way. Commands fail within a bounded time with one line; a tracked run keeps
training, ends within its ``exit_timeout`` and keeps what the server did not take in the
outbox for ``mlvc sync``.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import mlvc
from mlvc.settings import Settings, load_settings
from mlvc_core.repository import Repository
from tests.porcelain.conftest import subprocess_env
from tests.servers import MOTO_KEY, MOTO_SECRET, make_s3_bucket, moto_options
from tests.stalling import FreezableProxy, FrozenServer


def _mlvc(args: list[str], cwd: Path, env: dict[str, str], limit: float = 60) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "mlvc", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=limit,
    )
    return proc.returncode, proc.stderr


def test_commands_against_a_frozen_server_fail_in_bounded_time_with_one_line(
    tmp_path: Path,
) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "data.txt").write_text("some data\n")
    env = subprocess_env(tmp_path, AWS_ACCESS_KEY_ID=MOTO_KEY, AWS_SECRET_ACCESS_KEY=MOTO_SECRET)
    with FrozenServer() as frozen:
        # Short timeouts from the project's mlvc.toml: storage options override the defaults.
        (project / "mlvc.toml").write_text(
            textwrap.dedent(f"""\
                [repository]
                url = "s3://bucket/repo"

                [repository.storage_options]
                client_kwargs = {{ endpoint_url = "{frozen.url}" }}
                config_kwargs = {{ connect_timeout = 0.5, read_timeout = 0.5 }}
            """)
        )
        for args in (["ls"], ["commit", "data.txt", "-m", "data"]):
            start = time.monotonic()
            code, err = _mlvc(args, project, env)
            took = time.monotonic() - start
            assert code == 5, err
            assert took < 30, f"mlvc {args[0]} took {took:.0f} s"
            lines = err.strip().splitlines()
            assert "Traceback" not in err
            assert lines[0].startswith("error: storage error:") and "timeout" in lines[0].lower()
        assert frozen.connections > 0  # it did try the server


def test_commit_to_a_server_that_stops_reading_uploads_fails_in_bounded_time(
    tmp_path: Path, moto_clean: str
) -> None:
    options = moto_options(moto_clean)
    url = f"s3://{make_s3_bucket(options)}/repo"
    Repository.init(url, **options)
    project = tmp_path / "proj"
    project.mkdir()
    (project / "big.bin").write_bytes(random.Random(7).randbytes(16 << 20))  # incompressible
    env = subprocess_env(tmp_path, AWS_ACCESS_KEY_ID=MOTO_KEY, AWS_SECRET_ACCESS_KEY=MOTO_SECRET)
    with FreezableProxy(moto_clean) as proxy:
        proxy.stall_uploads(1 << 20)  # the config and listings pass; the pack's PUT stalls
        (project / "mlvc.toml").write_text(
            textwrap.dedent(f"""\
                [repository]
                url = "{url}"

                [repository.storage_options]
                client_kwargs = {{ endpoint_url = "{proxy.url}" }}
                config_kwargs = {{ connect_timeout = 0.5, read_timeout = 0.5 }}
            """)
        )
        start = time.monotonic()
        code, err = _mlvc(["commit", "big.bin", "-m", "big"], project, env)
        took = time.monotonic() - start
    assert code == 5, err
    assert took < 30, f"mlvc commit took {took:.0f} s"
    assert "Traceback" not in err
    line = err.strip().splitlines()[0]
    assert line.startswith("error: storage error:") and "timeout" in line.lower(), err


CHILD = """\
import json, os, random, sys, time
import mlvc

url, options, exit_timeout = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
frozen, thawed, size = sys.argv[4], sys.argv[5], int(sys.argv[6])
run = mlvc.init(repository=url, storage_options=options, exit_timeout=exit_timeout,
                params={"lr": 0.1})
run.flush()  # the experiment is recorded; now the server freezes
print(json.dumps({"id": run.id}), flush=True)
while not os.path.exists(frozen):
    time.sleep(0.02)
longest = 0.0
for step in range(3):
    with open("model.bin", "wb") as f:
        f.write(random.Random(step).randbytes(size))
    t0 = time.monotonic()
    run.checkpoint(path="model.bin", step=step, metrics={"loss": 1.0 / (step + 1)})
    run.log({"loss": 1.0 / (step + 1)}, step=step)
    longest = max(longest, time.monotonic() - t0)
print(json.dumps({"longest": longest}), flush=True)
while thawed and not os.path.exists(thawed):
    time.sleep(0.02)
"""


def _train_through_a_freeze(
    tmp_path: Path,
    moto: str,
    exit_timeout: float,
    thaw_before_exit: bool,
    stall: bool = False,
    size: int = 200_000,
) -> tuple[str, str, float, Settings, FreezableProxy]:
    """Run CHILD against moto behind a proxy that freezes after the run started.

    With ``stall`` the proxy stalls uploads instead (small requests still pass); each
    checkpoint holds ``size`` random bytes.

    Returns:
        The experiment id, the child's stderr, seconds from the freeze (or the thaw) to its
        end, settings for the repository and the proxy (thawed, still running).
    """
    options = moto_options(moto)
    url = f"s3://{make_s3_bucket(options)}/repo"
    project = tmp_path / "proj"
    project.mkdir()
    (project / "train.py").write_text(CHILD)
    frozen, thawed = tmp_path / "frozen", tmp_path / "thawed"
    env = subprocess_env(tmp_path, AWS_ACCESS_KEY_ID=MOTO_KEY, AWS_SECRET_ACCESS_KEY=MOTO_SECRET)
    proxy = FreezableProxy(moto)
    # The library's default timeouts: nothing here shortens them.
    child_options = {**options, "client_kwargs": {"endpoint_url": proxy.url}}
    argv = [url, json.dumps(child_options), str(exit_timeout), str(frozen)]
    argv += [str(thawed) if thaw_before_exit else "", str(size)]
    proc = subprocess.Popen(
        [sys.executable, "train.py", *argv],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        exp_id = json.loads(proc.stdout.readline())["id"]
        assert exp_id
        if stall:
            proxy.stall_uploads(1 << 20)
        else:
            proxy.freeze()
        since = time.monotonic()
        frozen.write_text("")
        longest = json.loads(proc.stdout.readline())["longest"]
        assert longest < 1.6, f"checkpoint() blocked the loop {longest:.1f} s"
        if thaw_before_exit:
            proxy.thaw()
            since = time.monotonic()
            thawed.write_text("")
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    settings = load_settings(url, cwd=tmp_path, storage_options=options)
    return exp_id, err, time.monotonic() - since, settings, proxy


def _check_recorded(exp_id: str, settings: Settings, size: int = 200_000) -> None:
    exp = mlvc.experiments.get(exp_id, repository=settings)
    assert [c.step for c in exp.checkpoints] == [0, 1, 2]
    for ckpt in exp.checkpoints:
        with ckpt.open("model.bin") as f:
            assert f.read() == random.Random(ckpt.step).randbytes(size)
    assert exp.params == {"lr": 0.1}
    assert exp.status == "stopped"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stall", "size"), [(False, 200_000), (True, 8 << 20)], ids=["froze", "stopped-reading"]
)
def test_a_run_whose_server_froze_ends_in_time_and_sync_sends_the_rest(
    tmp_path: Path, moto_clean: str, stall: bool, size: int
) -> None:
    exp_id, err, ended, settings, proxy = _train_through_a_freeze(
        tmp_path, moto_clean, exit_timeout=2.0, thaw_before_exit=False, stall=stall, size=size
    )
    try:
        assert ended < 20, f"the run took {ended:.0f} s to end after the server froze"
        assert "mlvc sync" in err.strip().splitlines()[-1], err
        # What the server did not take waits in the outbox; sent once the server answers.
        proxy.thaw()
        env = subprocess_env(
            tmp_path,
            AWS_ACCESS_KEY_ID=MOTO_KEY,
            AWS_SECRET_ACCESS_KEY=MOTO_SECRET,
            AWS_ENDPOINT_URL=proxy.url,
        )
        code, sync_err = _mlvc(["sync"], tmp_path, env, limit=120)
        assert code == 0, sync_err
    finally:
        proxy.close()
    _check_recorded(exp_id, settings, size)
