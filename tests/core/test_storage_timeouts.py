"""Every request to remote storage has a timeout: a frozen server fails a call, never hangs it.

The servers here accept connections and never answer (:mod:`tests.stalling`), the worst case:
a refused connection fails at once, a frozen one waits for as long as the client lets it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from mlvc_core.errors import StorageError
from mlvc_core.storage import timeouts
from mlvc_core.storage.fsspec_store import FsspecStore
from tests.servers import MOTO_KEY, MOTO_SECRET
from tests.stalling import FrozenServer, StallingServer, TricklingServer


@pytest.fixture
def frozen() -> Iterator[FrozenServer]:
    with FrozenServer() as server:
        yield server


def _s3(endpoint: str, **config: object) -> FsspecStore:
    options: dict[str, object] = {
        "key": MOTO_KEY,
        "secret": MOTO_SECRET,
        "client_kwargs": {"endpoint_url": endpoint},
    }
    if config:
        options["config_kwargs"] = config
    return FsspecStore("s3://bucket/repo", **options)


def test_s3_client_defaults_are_finite(frozen: FrozenServer) -> None:
    store = _s3(frozen.url)
    config = store.fs.s3.meta.config  # creating the client sends nothing
    assert config.connect_timeout == timeouts.CONNECT_TIMEOUT
    assert config.read_timeout == timeouts.READ_TIMEOUT
    assert config.retries == {"mode": "standard", "total_max_attempts": 2}
    assert store.fs.retries == timeouts.S3_CALL_ATTEMPTS
    assert frozen.connections == 0


def test_s3_storage_options_override_each_default(frozen: FrozenServer) -> None:
    store = _s3(frozen.url, read_timeout=2.5, retries={"max_attempts": 7})
    config = store.fs.s3.meta.config
    assert config.read_timeout == 2.5
    assert config.connect_timeout == timeouts.CONNECT_TIMEOUT  # not given: still finite
    assert config.retries["total_max_attempts"] == 8  # botocore: 7 retries after the first
    assert store.storage_options["config_kwargs"] == {
        "read_timeout": 2.5,
        "retries": {"max_attempts": 7},
    }  # what the caller gave, for reopening; the defaults are applied again then


def test_s3_frozen_server_fails_each_call_after_bounded_attempts(frozen: FrozenServer) -> None:
    # Default retries, a short read timeout: 2 s3fs attempts x 2 botocore attempts. A write
    # once waited forever whatever the timeouts: botocore asked for "100 Continue" first.
    store = _s3(frozen.url, read_timeout=0.3, connect_timeout=0.3)
    for call in (
        lambda: store.write("refs/x", b"data"),
        lambda: store.read("config"),
    ):
        before = frozen.connections
        start = time.monotonic()
        with pytest.raises(StorageError, match="(?i)timeout"):
            call()
        assert time.monotonic() - start < 8
        assert frozen.connections - before <= 4


def test_s3_upload_the_server_stops_reading_fails_after_bounded_attempts() -> None:
    # The server takes the headers and 64 KiB, then reads nothing more and never answers: the
    # body fills the send buffers and the upload once waited for ever (no timeout covered
    # sending). Now each piece of the body must be taken within read_timeout.
    body = bytes(range(256)) * (64 * 1024)  # 16 MiB, more than the socket buffers hold
    with StallingServer() as server:
        store = _s3(server.url, read_timeout=0.5, connect_timeout=0.5)
        start = time.monotonic()
        with pytest.raises(StorageError, match="(?i)timeout"):
            store.write("packs/big", body)
        took = time.monotonic() - start
        assert took < 10, f"the stalled upload took {took:.1f} s to fail"
        assert 1 <= server.connections <= 4  # 2 s3fs attempts x 2 botocore attempts
        assert all(b"PUT /bucket/repo/packs/big" in head for head in server.headers)
        assert all(n < len(body) // 2 for n in server.body_received)


def test_s3_slow_upload_that_keeps_moving_is_not_cut_short() -> None:
    # 15 MiB of the body at 6 MiB/s: 2.5 s, 2.5 read timeouts; it moves all the time, so it
    # succeeds (a limit on the whole request would have cut it).
    body = b"m" * (20 << 20)
    with TricklingServer(rate=6 << 20, fast_tail=5 << 20) as server:
        store = _s3(server.url, read_timeout=1.0, connect_timeout=0.5)
        start = time.monotonic()
        store.write("packs/slow", body)
        assert time.monotonic() - start > 2
        assert server.received == [len(body)]


def test_s3_reopened_store_keeps_the_callers_timeouts(frozen: FrozenServer) -> None:
    import pickle

    store = pickle.loads(pickle.dumps(_s3(frozen.url, read_timeout=0.5)))
    assert store.fs.s3.meta.config.read_timeout == 0.5
    assert store.fs.s3.meta.config.connect_timeout == timeouts.CONNECT_TIMEOUT


def _gcs(endpoint: str, **options: object) -> FsspecStore:
    return FsspecStore(
        "gs://bucket/repo", endpoint_url=endpoint, token="anon", project="test", **options
    )


def test_gcs_requests_have_a_finite_default_timeout(frozen: FrozenServer) -> None:
    timeout = _gcs(frozen.url).fs.requests_timeout  # gcsfs's own default is None: no limit
    assert timeout.sock_connect == timeouts.CONNECT_TIMEOUT
    assert timeout.sock_read == timeouts.READ_TIMEOUT
    assert timeout.total is None  # a long transfer is not cut short, only a silent server


def test_gcs_request_to_a_frozen_server_times_out(frozen: FrozenServer) -> None:
    import aiohttp
    import fsspec.asyn
    import gcsfs

    store = _gcs(frozen.url, requests_timeout=aiohttp.ClientTimeout(sock_read=0.5))
    fs = store.fs
    # One attempt of gcsfs's request path (without its retry loop: 6 attempts, ~31 s of
    # backoff) with the timeout the store configured.
    one_attempt = gcsfs.GCSFileSystem._request.__wrapped__
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        fsspec.asyn.sync(fs.loop, one_attempt, fs, "GET", fs.url("bucket/repo/config"))
    assert time.monotonic() - start < 5
    assert frozen.connections == 1


def test_gcs_upload_the_server_stops_reading_times_out() -> None:
    import aiohttp
    import fsspec.asyn
    import gcsfs

    from mlvc_core.storage.send_deadline import DeadlineRequest

    body = b"g" * (16 << 20)
    with StallingServer() as server:
        store = _gcs(server.url, requests_timeout=aiohttp.ClientTimeout(sock_read=0.5))
        fs = store.fs
        assert fs.session_kwargs["request_class"] is DeadlineRequest
        one_attempt = gcsfs.GCSFileSystem._request.__wrapped__  # as above: no retry loop
        url = f"{fs._location}/upload/storage/v1/b/bucket/o"
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            fsspec.asyn.sync(
                fs.loop, one_attempt, fs, "POST", url, uploadType="media", name="x", data=body
            )
        assert time.monotonic() - start < 5
        assert server.connections == 1 and server.body_received[0] < len(body) // 2


def test_gcs_callers_session_options_are_kept(frozen: FrozenServer) -> None:
    fs = _gcs(frozen.url, session_kwargs={"trust_env": True}).fs
    assert fs.session_kwargs["trust_env"] is True
    assert fs.session_kwargs["timeout"].sock_read == timeouts.READ_TIMEOUT


def test_a_bare_timeout_is_described_in_words() -> None:
    import fsspec.exceptions

    assert "timed out" in timeouts.describe(fsspec.exceptions.FSTimeoutError())
    assert timeouts.describe(OSError("refused")) == "refused"


def test_config_kwargs_must_be_a_table() -> None:
    with pytest.raises(TypeError, match="config_kwargs"):
        FsspecStore("s3://bucket/repo", config_kwargs="read_timeout=1")
