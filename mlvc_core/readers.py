"""Reader processes: small files read, hashed and compressed on every core.

A commit of many small files is bound by the Python work around each file, which holds the
GIL: worker threads do not scale it (see benchmarks/README.md "Many small files"). A
:class:`ReaderPool` runs that work in separate interpreters instead: each worker process
reads a batch of files whole, hashes each one (BLAKE3, one chunk: the files are below the
chunker's minimum, so never cut) and compresses it (zstd, :func:`mlvc_core.codec.compress`),
and sends back per file its stat, its chunk id, codec and payload. The parent keeps all the
rest (dedup, pack writing, manifests, trees, the stat cache), so what a commit records is the
same whichever path read a file.

The workers are plain Python processes running :func:`serve`, speaking pickles over their
standard input and output (no ``multiprocessing``: it would import the caller's ``__main__``,
a training script, in every worker). Each starts in a session of its own, so a Ctrl-C at the
terminal reaches only the parent, which then stops them; a worker whose parent dies (even by
``kill -9``) reads the end of its input and exits. A worker that dies (killed, out of memory)
fails its batch and the pool (:class:`ReaderDied`): nothing of those batches was stored, and
the walk reads their files itself and the rest on its threads, with one warning.

A file a worker cannot read cleanly (it changed during the read, vanished, grew, or any
``OSError``) comes back as :data:`AGAIN`: the parent reads it itself, with the full
patience and error reporting of the threaded path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from typing import IO, TYPE_CHECKING, Any

from mlvc_core import codec
from mlvc_core.errors import MlvcError
from mlvc_core.ids import ObjectId, hash_bytes
from mlvc_core.objects import CHUNK, MANIFEST, Manifest

if TYPE_CHECKING:
    from mlvc_core.session import WriteSession  # not in a worker: it imports the repository

log = logging.getLogger(__name__)

POOL_FILES = 2000
"""Small files a walk queues for reading before it starts reader processes: their start-up
(an interpreter each, overlapped with the walk) would cost a smaller commit more than it saves."""

AGAIN = None
"""A worker's answer for a file the parent must read itself."""

Stamp = tuple[int, int, int, int, int]
"""``(size, mtime_ns, ctime_ns, ino, dev)``: what changes when a file's content does."""

Read = tuple[os.stat_result, bytes, ObjectId, ObjectId, int, "bytes | None"]
"""A worker's answer for one file: its stat as read, its manifest's encoding and id, its chunk's
id, codec and payload (None: an empty file, no chunk)."""

_SETTLE_NS = 20_000_000
"""How long after its last change a file is read: longer than a kernel timestamp tick
(at most 10 ms), so any write during the read moves its mtime or ctime."""
_COARSE_SETTLE_NS = 2_100_000_000


class ReaderDied(MlvcError):
    """A reader process ended before answering (killed, or out of memory)."""


def stamp(st: os.stat_result) -> Stamp:
    """What changes when a file's content does."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def settled(fd: int) -> os.stat_result | None:
    """The file's stat once its last change is more than a timestamp tick old, or None.

    None if it kept changing meanwhile. A file system that keeps whole seconds only (both
    stamps whole: FAT, some network file systems) has a tick of up to two seconds.
    """
    st = os.fstat(fd)
    for _ in range(4):
        coarse = st.st_mtime_ns % 1_000_000_000 == 0 and st.st_ctime_ns % 1_000_000_000 == 0
        settle = _COARSE_SETTLE_NS if coarse else _SETTLE_NS
        wait = max(st.st_mtime_ns, st.st_ctime_ns) + settle - time.time_ns()
        if not 0 < wait <= settle:  # old enough, or stamped in the future (not ours)
            return st
        time.sleep(wait / 1e9)
        st = os.fstat(fd)
    return None


_STOP_S = 5.0
"""How long :meth:`ReaderPool.close` waits for a worker to exit before killing it."""

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)


def read_one(path: str, limit: int, level: int, planes: bool) -> Read | None:
    """Read, hash and compress one file of fewer than ``limit`` bytes; :data:`AGAIN` if not clean.

    The file is one chunk (below the chunker's minimum, never cut); its manifest is encoded
    here too, so the parent only stores.

    The file is read once settled (:func:`settled`); its stamp before and after the read must
    agree and the bytes read be its size, else (or on any ``OSError``, or once it has grown
    to ``limit``) it is :data:`AGAIN`.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return AGAIN
    try:
        before = settled(fd)
        if before is None or before.st_size >= limit:
            return AGAIN
        data = os.read(fd, before.st_size + 1)
        after = os.fstat(fd)
    except OSError:
        return AGAIN
    finally:
        os.close(fd)
    if stamp(after) != stamp(before) or len(data) != after.st_size:
        return AGAIN
    if not data:
        manifest = Manifest(0, ()).encode()
        return after, manifest, hash_bytes(manifest), hash_bytes(b""), codec.RAW, None
    oid = hash_bytes(data)
    manifest = Manifest(len(data), ((oid, len(data)),)).encode()
    c, payload = codec.compress(data, level, planes)
    stored = bytes(payload) if c != codec.RAW else data
    return after, manifest, hash_bytes(manifest), oid, c, stored


def read_batch(paths: list[str], limit: int, level: int, planes: bool) -> list[Read | None]:
    """:func:`read_one` of each path, in order."""
    return [read_one(p, limit, level, planes) for p in paths]


def _serve(inp: IO[bytes], out: IO[bytes]) -> None:
    """A worker: answer each request (a pickled ``read_batch`` argument tuple) until EOF.

    Ends quietly once the parent is gone (the end of its input, or a broken pipe).
    """
    try:
        pickle.dump(os.getpid(), out)  # ready: imports done
        out.flush()
        while True:
            try:
                args = pickle.load(inp)
            except EOFError:
                return
            pickle.dump(read_batch(*args), out, protocol=pickle.HIGHEST_PROTOCOL)
            out.flush()
    except BrokenPipeError:
        return


class ReaderPool:
    """Worker processes that run :func:`read_batch`, fed by one parent thread each.

    Start-up costs one interpreter per worker (0.12-0.14 s here); submit batches once
    :attr:`ready` says one has started (until then the caller reads on its threads, so it
    never waits for a start-up). :meth:`close` ends them (closing their input): use it as
    a context manager.
    """

    def __init__(self, workers: int) -> None:
        """Start ``workers`` processes.

        Raises:
            OSError: A process could not be started.
        """
        self._jobs: queue.Queue[tuple[Future[list[Read | None]], tuple[Any, ...]] | None] = (
            queue.Queue()
        )
        self._procs: list[subprocess.Popen[bytes]] = []
        self._threads: list[threading.Thread] = []
        self._broken: BaseException | None = None
        self._ready = 0
        try:
            for _ in range(workers):
                self._procs.append(
                    subprocess.Popen(
                        [sys.executable, "-I", "-c", _WORKER, _PACKAGE, *map(str, sys.path)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,  # one that fails says so by ending
                        start_new_session=True,  # a terminal's Ctrl-C reaches the parent only
                    )
                )
        except BaseException:
            self.close()
            raise
        for proc in self._procs:
            t = threading.Thread(target=self._feed, args=(proc,), name="mlvc-reader", daemon=True)
            t.start()
            self._threads.append(t)

    @property
    def ready(self) -> bool:
        """Whether a worker has started (imports done) and takes batches."""
        return self._ready > 0 and self._broken is None

    def submit(
        self, paths: list[str], limit: int, level: int, planes: bool
    ) -> Future[list[Read | None]]:
        """Queue :func:`read_batch` of ``paths`` for the next free worker."""
        future: Future[list[Read | None]] = Future()
        if self._broken is not None:
            future.set_exception(ReaderDied(str(self._broken)))
        else:
            self._jobs.put((future, (paths, limit, level, planes)))
        return future

    def _feed(self, proc: subprocess.Popen[bytes]) -> None:
        """A parent thread: hand one worker its requests, one at a time, and take its answers."""
        assert proc.stdin is not None and proc.stdout is not None
        try:
            pickle.load(proc.stdout)  # it started
        except (OSError, EOFError, pickle.UnpicklingError):
            return  # never ready, never given a batch: the walk goes on without it
        self._ready += 1
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, args = job
            if not future.set_running_or_notify_cancel():
                continue
            if self._broken is not None:
                future.set_exception(ReaderDied(str(self._broken)))
                continue
            try:
                pickle.dump(args, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                proc.stdin.flush()
                result = pickle.load(proc.stdout)
            except (OSError, EOFError, pickle.UnpicklingError) as exc:
                code = proc.poll()
                why = f"exit status {code}" if code is not None else type(exc).__name__
                self._broken = ReaderDied(
                    f"a reader process (pid {proc.pid}) ended before answering ({why})"
                )
                future.set_exception(self._broken)
                continue
            future.set_result(result)

    def close(self) -> None:
        """Stop the workers: their input closed, then a kill for any that does not exit.

        Batches still queued fail with :class:`ReaderDied` (nobody waits forever).
        """
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + _STOP_S
        for t in self._threads:  # each ends at its sentinel, once its worker answered
            t.join(max(0.0, deadline - time.monotonic()))
        for proc in self._procs:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        for proc in self._procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for t in self._threads:  # a worker gone: its thread read the end of its output
            t.join()
        for proc in self._procs:
            if proc.stdout is not None:
                proc.stdout.close()
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None and job[0].set_running_or_notify_cancel():
                job[0].set_exception(ReaderDied("the reader processes were stopped"))
        self._procs = []
        self._threads = []

    @property
    def pids(self) -> list[int]:
        """The workers' process ids."""
        return [p.pid for p in self._procs]

    def __enter__(self) -> ReaderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_workers() -> int:
    """Reader processes for a large walk: one per core.

    None on one core (nothing to gain), nor where this interpreter cannot be started again
    (embedded: no ``sys.executable``).
    """
    cores = os.cpu_count() or 1
    return cores if cores > 1 and sys.executable else 0


class Readers:
    """The reader processes of one walk, started once it has queued :data:`POOL_FILES` files.

    A context manager; nested walks share one set, which the outermost one stops. A commit of
    fewer files never starts them; if they cannot be started, the walk reads on threads.
    """

    def __init__(self, workers: int) -> None:
        """Set up, starting nothing (``workers``: how many processes to start; 0: none)."""
        self.workers = workers
        self.pool: ReaderPool | None = None
        self._queued = 0
        self._depth = 0

    def queued(self) -> bool:
        """Count one more file queued to be read; whether :attr:`pool` takes files now."""
        self._queued += 1
        if self.pool is None and self.workers and self._queued >= POOL_FILES:
            try:
                self.pool = ReaderPool(self.workers)
            except OSError as exc:
                log.debug("mlvc: no reader processes (%s): reading on threads", exc)
                self.workers = 0
        return self.pool is not None and self.pool.ready

    def __enter__(self) -> Readers:
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._queued = 0
            pool, self.pool = self.pool, None
            if pool is not None:
                pool.close()


def store(session: WriteSession, answer: Read) -> ObjectId:
    """Store what a reader process sent for one file in ``session``; its manifest's id.

    The chunk first, then its manifest, encoded and hashed by the reader and stored raw as
    :meth:`~mlvc_core.session.WriteSession.add_object` stores one this small.
    """
    st, manifest, manifest_id, oid, codec_id, payload = answer
    if payload is not None:
        session.add_payload(oid, CHUNK, codec_id, payload, st.st_size)
    session.add_payload(manifest_id, MANIFEST, codec.RAW, manifest, len(manifest))
    return manifest_id


_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def serve() -> None:
    """A worker process's main: answer requests on standard input until it ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (closing our input)
    _serve(sys.stdin.buffer, sys.stdout.buffer)


_WORKER = """
import importlib.util, os, sys
here, sys.path[:] = sys.argv[1], [p for p in sys.argv[2:] if p]
spec = importlib.util.spec_from_file_location(
    "mlvc_core", os.path.join(here, "__init__.py"), submodule_search_locations=[here]
)
sys.modules["mlvc_core"] = package = importlib.util.module_from_spec(spec)
spec.loader.exec_module(package)
from mlvc_core.readers import serve
serve()
"""
"""A worker's program: the very package the parent runs (whatever the working directory
holds), its other imports found as the parent's are (its ``sys.path``, less the working
directory's ``''``)."""
