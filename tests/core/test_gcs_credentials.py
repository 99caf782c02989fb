"""The lookup of GCS credentials is bounded, and its failure is one line naming what to set.

Each test runs ``mlvc`` (or the lookup) in a child process: google.auth reads the metadata
server's address and ``NO_GCE_CHECK`` from the environment when it is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.stalling import FrozenServer

ROOT = Path(__file__).resolve().parents[2]
NON_ROUTABLE = "http://10.255.255.1:9"
"""An address no packet reaches: a connection to it waits until the client gives up."""
SHORT = "import mlvc_core.storage.gcs as g; g.CREDENTIALS_TIMEOUT = 2.0; "


def _env(tmp_path: Path, metadata: FrozenServer, **extra: str) -> dict[str, str]:
    """No credentials anywhere; the metadata server accepts connections and never answers."""
    drop = ("GOOGLE_", "GCE_", "NO_GCE_CHECK", "MLVC_", "STORAGE_EMULATOR_HOST", "CLOUDSDK_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    host = f"127.0.0.1:{metadata.port}"
    env.update(
        HOME=str(tmp_path),
        CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
        GCE_METADATA_HOST=host,
        GCE_METADATA_IP=host,
        STORAGE_EMULATOR_HOST=NON_ROUTABLE,
        MLVC_CACHE_DIR=str(tmp_path / "cache"),
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


def _run(code: str, args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, float]:
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.returncode, out.stdout + out.stderr, time.monotonic() - t0


def test_ls_without_network_or_credentials_fails_in_bounded_time_naming_what_to_set(
    tmp_path: Path,
) -> None:
    with FrozenServer() as metadata:
        code = SHORT + "from mlvc.cli import main; main()"
        rc, output, took = _run(
            code, ["-R", "gs://bucket/prefix", "ls"], _env(tmp_path, metadata), tmp_path
        )
    assert rc != 0
    assert took < 30, f"took {took:.0f} s"
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines[0].startswith("error: "), output
    assert "Traceback" not in output
    assert "no Google Cloud credentials found within 2 s" in lines[0]
    for what in ("GOOGLE_APPLICATION_CREDENTIALS", "NO_GCE_CHECK=true", "token=anon"):
        assert what in lines[0]


def test_credentials_whose_token_server_never_answers_fail_in_bounded_time(
    tmp_path: Path,
) -> None:
    with FrozenServer() as metadata, FrozenServer() as token_server:
        key = tmp_path / "user.json"
        key.write_text(
            json.dumps(
                {
                    "type": "authorized_user",
                    "client_id": "id",
                    "client_secret": "secret",
                    "refresh_token": "refresh",
                    "token_uri": f"{token_server.url}/token",
                }
            )
        )
        env = _env(tmp_path, metadata, GOOGLE_APPLICATION_CREDENTIALS=str(key))
        code = SHORT + "from mlvc.cli import main; main()"
        rc, output, took = _run(code, ["-R", "gs://bucket/prefix", "ls"], env, tmp_path)
    assert rc != 0 and took < 30, (rc, took, output)
    assert output.startswith("error: ") and "Traceback" not in output
    assert "GOOGLE_APPLICATION_CREDENTIALS" in output.splitlines()[0]


def test_without_credentials_off_google_cloud_access_is_anonymous_at_once(
    tmp_path: Path,
) -> None:
    with FrozenServer() as metadata:
        env = _env(tmp_path, metadata, NO_GCE_CHECK="true")
        code = "from mlvc_core.storage.gcs import default_token; print(default_token())"
        rc, output, took = _run(code, [], env, tmp_path)
    assert rc == 0, output
    assert output.strip() == "('anon', None)"
    assert took < 10
    assert metadata.connections == 0


@pytest.mark.parametrize("token", ["anon"])
def test_a_token_given_is_used_without_any_lookup(tmp_path: Path, token: str) -> None:
    with FrozenServer() as metadata:
        code = (
            "from mlvc_core.storage.timeouts import with_timeouts; "
            f"o = with_timeouts('gs', {{'token': {token!r}}}); "
            "print(o['token'], o['retry_timeout'])"
        )
        rc, output, _ = _run(code, [], _env(tmp_path, metadata), tmp_path)
    # The token as given; the extended filesystem's gRPC layout probe retries for 15 s, not 60.
    assert rc == 0 and output.split() == [token, "15.0"], output
    assert metadata.connections == 0
