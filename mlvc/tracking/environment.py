"""What a run records about where it runs: Python, packages, git state, user, host, command.

Also the machine (CPU count, memory) and accelerators (NVIDIA devices and driver through NVML,
torch's CUDA/MPS facts when torch is already imported; never initialising CUDA). Never
environment variables: they hold secrets. The command line is recorded with the values of
secret-looking options and URL passwords redacted (:mod:`mlvc.tracking.redaction`).
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import importlib.metadata
import os
import platform
import shlex
import socket
import sys
from pathlib import Path
from typing import Any

from mlvc.tracking._children import run_output
from mlvc.tracking.redaction import redact_argv

GIT_DIFF_LIMIT = 1 << 20
GIT_TIMEOUT = 15.0
"""Seconds one ``git`` command may run."""
OWN_DIRS = (".mlvc", ".mlvc-staging")
"""mlvc's own directories (a local repository, checkpoint copies): they never make a git work
tree dirty."""


def _git(args: list[str], cwd: Path, limit: int | None = None) -> str | None:
    """``git ARGS`` in ``cwd``: its output, or None if it failed (fork-safe, see _children)."""
    result = run_output(["git", *args], cwd, timeout=GIT_TIMEOUT, limit=limit)
    if result is None or result[0] != 0:
        return None
    return result[1].decode("utf-8", errors="replace")


def git_info(directory: Path) -> dict[str, Any] | None:
    """Commit, branch, dirty flag, diff against HEAD (capped), untracked files; None outside git."""
    if (_git(["rev-parse", "--is-inside-work-tree"], directory) or "").strip() != "true":
        return None
    status = _git(["status", "--porcelain", "--untracked-files=normal"], directory) or ""
    # mlvc's own directories (a local repository, copies) do not make the work tree dirty.
    changes = [
        line
        for line in status.splitlines()
        if not any(part in OWN_DIRS for part in line[3:].strip('"').split("/"))
    ]
    diff_full = (
        _git(["diff", "HEAD", "--no-color", "--no-ext-diff"], directory, GIT_DIFF_LIMIT + 1) or ""
    )
    untracked = [line[3:] for line in changes if line.startswith("??")]
    return {
        "commit": (_git(["rev-parse", "HEAD"], directory) or "").strip() or None,
        "branch": (_git(["rev-parse", "--abbrev-ref", "HEAD"], directory) or "").strip() or None,
        "root": (_git(["rev-parse", "--show-toplevel"], directory) or "").strip() or None,
        "dirty": bool(changes),
        "diff": diff_full[:GIT_DIFF_LIMIT],
        "diff_truncated": len(diff_full) > GIT_DIFF_LIMIT,
        "untracked": untracked[:1000],
    }


def packages() -> dict[str, str]:
    """Installed distributions and their versions.

    Cached per ``sys.path``: scanning them takes about a quarter of a second.
    """
    return dict(_packages(tuple(sys.path)))


@functools.lru_cache(maxsize=4)
def _packages(_path: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        try:
            name = dist.metadata["Name"]
        except (KeyError, TypeError):
            continue
        if name and name not in out:
            out[name] = dist.version
    return dict(sorted(out.items(), key=lambda kv: kv[0].lower()))


def platform_name() -> str:
    """Like :func:`platform.platform` (``Linux-6.8.0-x86_64-with-glibc2.35``), without a process.

    :func:`platform.platform` runs ``uname -p`` through a pipe the first time, which a fork of
    the training process could keep open (see :mod:`mlvc.tracking._children`).
    """
    u = os.uname() if hasattr(os, "uname") else None
    system, release, machine = (
        (u.sysname, u.release, u.machine)
        if u is not None
        else (platform.system(), platform.release(), platform.machine())
    )
    parts = [system, release, machine]
    if system == "Linux":
        lib, version = platform.libc_ver()
        if lib:
            parts += ["with", lib + version]
    elif system == "Darwin":
        mac = platform.mac_ver()[0]
        if mac:
            parts = ["macOS", mac, machine]
    return "-".join(p for p in parts if p)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def machine() -> dict[str, Any]:
    """CPU count (all, and usable by this process) and physical memory in bytes."""
    out: dict[str, Any] = {"cpu_count": os.cpu_count()}
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        with contextlib.suppress(OSError):
            out["cpus_usable"] = len(affinity(0))
    try:
        out["memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        out["memory_bytes"] = None
    return out


def _nvml() -> dict[str, Any] | None:
    """NVIDIA driver facts through NVML (``libnvidia-ml``, loaded with ctypes), else None.

    NVML does not initialise CUDA: nothing here takes GPU memory or makes a later fork unsafe.
    """
    import ctypes

    names = ("libnvidia-ml.so.1", "libnvidia-ml.so", "nvml.dll")
    lib = None
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return None
    try:
        init = getattr(lib, "nvmlInit_v2", None) or lib.nvmlInit
        if init() != 0:
            return None
    except (AttributeError, OSError):
        return None
    try:
        buf = ctypes.create_string_buffer(96)
        out: dict[str, Any] = {"driver": None, "cuda_driver": None, "devices": []}
        if lib.nvmlSystemGetDriverVersion(buf, 96) == 0:
            out["driver"] = buf.value.decode(errors="replace")
        version = ctypes.c_int()
        get_cuda = getattr(lib, "nvmlSystemGetCudaDriverVersion_v2", None) or getattr(
            lib, "nvmlSystemGetCudaDriverVersion", None
        )
        if get_cuda is not None and get_cuda(ctypes.byref(version)) == 0:
            out["cuda_driver"] = f"{version.value // 1000}.{version.value % 1000 // 10}"
        count = ctypes.c_uint()
        get_count = getattr(lib, "nvmlDeviceGetCount_v2", None) or lib.nvmlDeviceGetCount
        if get_count(ctypes.byref(count)) == 0:
            get_handle = (
                getattr(lib, "nvmlDeviceGetHandleByIndex_v2", None)
                or lib.nvmlDeviceGetHandleByIndex
            )
            for i in range(min(count.value, 64)):
                handle = ctypes.c_void_p()
                if get_handle(i, ctypes.byref(handle)) != 0:
                    continue
                device: dict[str, Any] = {"index": i, "name": None, "memory_bytes": None}
                if lib.nvmlDeviceGetName(handle, buf, 96) == 0:
                    device["name"] = buf.value.decode(errors="replace")
                memory = (ctypes.c_ulonglong * 3)()  # total, free, used
                if lib.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)) == 0:
                    device["memory_bytes"] = int(memory[0])
                out["devices"].append(device)
        return out
    except (AttributeError, OSError, ValueError):
        return None
    finally:
        with contextlib.suppress(AttributeError, OSError):
            lib.nvmlShutdown()


def _torch_facts(torch: Any) -> dict[str, Any]:
    """What an already imported torch says, without initialising CUDA."""
    out: dict[str, Any] = {"torch": str(getattr(torch, "__version__", "")) or None}
    version = getattr(torch, "version", None)
    out["cuda_build"] = getattr(version, "cuda", None)
    mps = getattr(getattr(torch, "backends", None), "mps", None)
    try:
        out["mps_available"] = bool(mps.is_available()) if mps is not None else False
    except Exception:  # noqa: BLE001 - any torch trouble: fact unknown
        out["mps_available"] = None
    cuda = getattr(torch, "cuda", None)
    try:
        if cuda is not None and cuda.is_initialized():  # the script set CUDA up: ask it
            out["cuda_available"] = bool(cuda.is_available())
            out["cuda_devices"] = [
                {
                    "index": i,
                    "name": props.name,
                    "memory_bytes": int(props.total_memory),
                    "capability": f"{props.major}.{props.minor}",
                }
                for i in range(cuda.device_count())
                for props in [cuda.get_device_properties(i)]
            ]
    except Exception:  # noqa: BLE001 - any torch trouble: fact unknown
        pass
    return out


def accelerators() -> dict[str, Any] | None:
    """Accelerator facts: NVIDIA devices and driver, and what torch says if already imported.

    Never imports torch and never initialises CUDA (that would take GPU memory on every rank
    and make later forks of the training process unsafe): device names and memory come from
    NVML, or from torch when the script has already initialised CUDA.

    Returns:
        ``{"cuda_available", "cuda_devices": [{"index", "name", "memory_bytes"}...],
        "driver", "cuda_driver", "cuda_build", "torch", "mps_available"}`` (keys present when
        known), or None when there is neither an NVIDIA driver nor torch.
    """
    torch = sys.modules.get("torch")
    out: dict[str, Any] = _torch_facts(torch) if torch is not None else {}
    nv = _nvml()
    if nv is not None:
        out["driver"] = nv["driver"]
        out["cuda_driver"] = nv["cuda_driver"]
        out.setdefault("cuda_devices", nv["devices"])
    if "cuda_available" not in out and (nv is not None or torch is not None):
        out["cuda_available"] = bool(out.get("cuda_devices")) and (
            torch is None or out.get("cuda_build") is not None
        )
    return out or None


def environment(code_dir: Path, argv: list[str]) -> dict[str, Any]:
    """What a run records about where it runs (never environment variables)."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform_name(),
        "executable": sys.executable,
        "packages": packages(),
        "git": git_info(code_dir),
        "user": _user(),
        "host": socket.gethostname(),
        "command": redact_argv(argv),
        "command_line": shlex.join(redact_argv(argv)),
        "cwd": os.getcwd(),
        "pid": os.getpid(),
        "machine": machine(),
        "accelerators": accelerators(),
    }
