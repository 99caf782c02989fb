"""What ``mlvc ls`` on S3 imports: nothing that only other commands or backends use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlvc_core.repository import Repository
from tests.servers import MOTO_KEY, MOTO_SECRET, make_s3_bucket, moto_options
from tests.synth import make_experiments

ROOT = Path(__file__).parents[2]
SCRIPT = """
import importlib.util, sys
installed = importlib.util.find_spec("httpx") is not None
from mlvc.cli import main
try:
    main(["-q", "-R", sys.argv[1], "ls"])
except SystemExit as exc:
    assert not exc.code, exc.code
loaded = sorted(sys.modules)
if installed:
    import httpx  # hidden only while s3fs was imported: importable as usual afterwards
    assert httpx.Client is not None
sys.stderr.write("\\nMODULES " + " ".join(loaded))
"""


def test_ls_on_s3_imports_no_http_client_or_terminal_library_it_does_not_use(
    moto_clean: str, tmp_path: Path
) -> None:
    options = moto_options(moto_clean)
    url = f"s3://{make_s3_bucket(options)}/repo"
    with Repository.init(url, **options) as repo:
        make_experiments(repo, 3, seed=1)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MLVC_CACHE_DIR": str(tmp_path / "cache"),
        "AWS_ENDPOINT_URL": moto_clean,
        "AWS_ACCESS_KEY_ID": MOTO_KEY,
        "AWS_SECRET_ACCESS_KEY": MOTO_SECRET,
    }
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, url],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 4  # the header and three experiments
    loaded = {m.split(".")[0] for m in r.stderr.rsplit("MODULES ", 1)[1].split()}
    assert "s3fs" in loaded and "aiobotocore" in loaded
    assert not loaded & {"httpx", "httpx2", "rich", "pygments"}, loaded
