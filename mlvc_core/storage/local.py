"""A store in a local directory, with plain ``os`` calls.

Local repositories are the hot path (training jobs write checkpoints to local or network disk),
so this backend skips fsspec: whole writes go to a temporary name and are renamed into place;
create-if-absent is ``os.link`` of the temporary file (atomic, fails if the name exists);
compare-and-swap holds an ``fcntl`` lock on a per-key lock file while it compares and renames.
The kernel drops ``flock`` locks when their process dies, so a killed writer never leaves a
stale lock behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from mlvc_core.errors import FormatError, KeyNotFound, PreconditionFailed, StorageError
from mlvc_core.storage.base import KeyInfo, Store, Version, Writer, check_key, check_limit

_TMP_SUFFIX = ".tmp-"
_LOCK_DIR = ".cas-locks"


class _FileWriter(Writer):
    def __init__(self, final: Path, fsync: bool) -> None:
        self._final = final
        self._tmp = final.with_name(final.name + _TMP_SUFFIX + uuid.uuid4().hex[:12])
        final.parent.mkdir(parents=True, exist_ok=True)
        self._f: BinaryIO | None = open(self._tmp, "wb")  # noqa: SIM115 - closed in close/abort
        self._fsync = fsync

    def write(self, data: bytes | bytearray | memoryview) -> int:
        assert self._f is not None, "writer is closed"
        return self._f.write(data)

    def close(self) -> None:
        if self._f is None:
            return
        f, self._f = self._f, None
        try:
            if self._fsync:
                f.flush()
                os.fsync(f.fileno())
            f.close()
            os.replace(self._tmp, self._final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            raise StorageError(f"cannot write {self._final}: {exc}") from exc

    def abort(self) -> None:
        if self._f is None:
            return
        f, self._f = self._f, None
        f.close()
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)


class LocalStore(Store):
    """A store rooted at a local directory."""

    is_local = True

    def __init__(self, root: str | os.PathLike[str], fsync: bool = False) -> None:
        self.root = Path(root).absolute()
        self.url = str(self.root)
        self.fsync = fsync

    def _path(self, key: str) -> Path:
        check_key(key)
        return self.root / key

    def _open(self, key: str) -> tuple[int, int]:
        """Open ``key`` for reading: ``(fd, size)``; only a regular file is a value.

        Opened without blocking, so a FIFO planted in a repository cannot hang the reader.
        """
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_NONBLOCK)
        except (FileNotFoundError, IsADirectoryError):
            raise KeyNotFound(key) from None
        except OSError as exc:
            raise StorageError(f"cannot read {key}: {exc}") from exc
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise KeyNotFound(key)
            if not stat.S_ISREG(st.st_mode):
                raise FormatError(f"{key} is not a regular file; a repository holds only files")
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd, st.st_size

    def read(self, key: str, limit: int | None = None) -> bytes:
        fd, size = self._open(key)
        try:
            check_limit(key, size, limit)
            with open(fd, "rb", closefd=False) as f:
                data = f.read() if limit is None else f.read(limit + 1)
        except OSError as exc:
            raise StorageError(f"cannot read {key}: {exc}") from exc
        finally:
            os.close(fd)
        check_limit(key, len(data), limit)
        return data

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        fd, _ = self._open(key)
        try:
            return os.pread(fd, length, offset)
        except OSError as exc:
            raise StorageError(f"cannot read {key}: {exc}") from exc
        finally:
            os.close(fd)

    def read_ranges(self, key: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        fd, _ = self._open(key)
        try:
            return [os.pread(fd, n, o) for o, n in ranges]
        except OSError as exc:
            raise StorageError(f"cannot read {key}: {exc}") from exc
        finally:
            os.close(fd)

    def open_read(self, key: str) -> BinaryIO:
        fd, _ = self._open(key)
        return open(fd, "rb")  # noqa: SIM115 - caller closes

    def _write_tmp(self, path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + _TMP_SUFFIX + uuid.uuid4().hex[:12])
        with open(tmp, "wb") as f:
            f.write(data)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        return tmp

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            tmp = self._write_tmp(path, data)
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageError(f"cannot write {key}: {exc}") from exc

    def create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        try:
            tmp = self._write_tmp(path, data)
        except OSError as exc:
            raise StorageError(f"cannot write {key}: {exc}") from exc
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                # Filesystems without hard links: O_EXCL on the final name, then fill it.
                return self._create_excl(path, data)
            raise StorageError(f"cannot write {key}: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    @staticmethod
    def _create_excl(path: Path, data: bytes) -> bool:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def open_write(self, key: str) -> Writer:
        try:
            return _FileWriter(self._path(key), self.fsync)
        except OSError as exc:
            raise StorageError(f"cannot write {key}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> Iterator[KeyInfo]:
        base = self.root / prefix if prefix else self.root
        if prefix and not prefix.endswith("/"):
            base = base.parent  # a partial name ("refs/ab"): walk its directory, filter below
        if not base.is_dir():
            return
        root_len = len(str(self.root).rstrip(os.sep)) + 1
        for dirpath, dirs, files in os.walk(base):
            if dirpath == str(self.root):
                dirs[:] = [d for d in dirs if d != _LOCK_DIR]
            for name in files:
                if _TMP_SUFFIX in name:
                    continue
                full = os.path.join(dirpath, name)
                try:
                    st = os.stat(full)
                except FileNotFoundError:
                    continue
                key = full[root_len:].replace(os.sep, "/")
                if key.startswith(prefix):
                    yield KeyInfo(key, st.st_size, st.st_mtime)

    def list_temporary(self, prefix: str) -> Iterator[KeyInfo]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return
        for dirpath, dirs, files in os.walk(base):
            if dirpath == str(self.root):
                dirs[:] = [d for d in dirs if d != _LOCK_DIR]
            for name in files:
                if _TMP_SUFFIX not in name:
                    continue
                full = os.path.join(dirpath, name)
                try:
                    st = os.stat(full)
                except FileNotFoundError:
                    continue
                key = os.path.relpath(full, self.root).replace(os.sep, "/")
                yield KeyInfo(key, st.st_size, st.st_mtime)

    def delete_temporary(self, key: str) -> None:
        if _TMP_SUFFIX not in key.rsplit("/", 1)[-1]:
            raise ValueError(f"{key!r} is not a temporary file")
        self.delete(key)

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot delete {key}: {exc}") from exc

    def read_versioned(self, key: str, limit: int | None = None) -> tuple[bytes, Version]:
        data = self.read(key, limit)
        return data, Version(data)

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        # Lock files live apart from the keys (never listed, never mistaken for data) and are
        # never deleted: unlinking a file another process may hold a lock on is racy.
        lock = self.root / _LOCK_DIR / (key + ".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                # Unlocked explicitly: a process forked meanwhile (a DataLoader worker) holds a
                # copy of ``fd``, and a flock lives until every copy is closed, so closing ours
                # alone would keep the key locked for as long as that worker lives.
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def write_if(self, key: str, data: bytes, expected: Version | None) -> Version:
        path = self._path(key)
        try:
            with self._locked(key):
                try:
                    current: bytes | None = self.read(key)
                except KeyNotFound:
                    current = None
                if current != expected:  # type: ignore[comparison-overlap] # versions are bytes here
                    raise PreconditionFailed(key)
                tmp = self._write_tmp(path, data)
                os.replace(tmp, path)
        except PreconditionFailed:
            raise
        except OSError as exc:
            raise StorageError(f"cannot write {key}: {exc}") from exc
        return Version(data)

    def delete_if(self, key: str, expected: Version) -> None:
        path = self._path(key)
        try:
            with self._locked(key):
                try:
                    current = self.read(key)
                except KeyNotFound:
                    raise PreconditionFailed(key) from None
                if current != expected:  # type: ignore[comparison-overlap] # versions are bytes here
                    raise PreconditionFailed(key)
                os.unlink(path)
        except PreconditionFailed:
            raise
        except OSError as exc:
            raise StorageError(f"cannot delete {key}: {exc}") from exc
