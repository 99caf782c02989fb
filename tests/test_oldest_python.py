"""The oldest Python the package declares installs it and passes the tracking and CLI tests.

The interpreter comes from ``MLVC_OLDEST_PYTHON``, ``pythonX.Y`` on PATH, or a pyenv install. A
virtual environment for it is kept under the user cache directory, keyed by the project's
``pyproject.toml``, so a second run only reinstalls the project itself. On CI (``CI`` set) a
missing interpreter fails the test instead of skipping it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the oldest Python reads it with the backport
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"


def _oldest_declared() -> tuple[int, int]:
    spec = tomllib.loads(PYPROJECT.read_text())["project"]["requires-python"]
    m = re.fullmatch(r"\s*>=\s*(\d+)\.(\d+)\s*", spec)
    assert m, f"requires-python {spec!r} is not of the form '>=X.Y'"
    return int(m.group(1)), int(m.group(2))


def _find_interpreter(version: tuple[int, int]) -> str | None:
    wanted = ".".join(map(str, version))
    candidates = [os.environ.get("MLVC_OLDEST_PYTHON", ""), shutil.which(f"python{wanted}") or ""]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += sorted(str(p) for p in pyenv_root.glob(f"versions/{wanted}.*/bin/python{wanted}"))
    for exe in filter(None, candidates):
        out = subprocess.run(
            [exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
        )
        if out.returncode == 0 and out.stdout.strip() == wanted:
            return exe
    return None


def _venv_for(python: str, version: tuple[int, int]) -> Path:
    key = hashlib.sha256(PYPROJECT.read_bytes() + str(ROOT).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    venv = cache / "mlvc-tests" / f"py{version[0]}{version[1]}-{key}"
    ready = venv / ".installed"
    if not ready.exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "install", "-e", f"{ROOT}[test]"], check=True)
        ready.touch()
    return venv


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_oldest_declared_python_installs_and_passes() -> None:
    version = _oldest_declared()
    if sys.version_info[:2] == version:
        pytest.skip("this suite already runs on the oldest declared Python")
    python = _find_interpreter(version)
    if python is None:
        msg = f"Python {version[0]}.{version[1]} (the oldest declared) not found"
        if os.environ.get("CI"):
            pytest.fail(msg + "; set MLVC_OLDEST_PYTHON")
        pytest.skip(msg)
    venv = _venv_for(python, version)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = str(ROOT)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    res = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/cli",
            "tests/porcelain",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    tail = "\n".join((res.stdout + res.stderr).splitlines()[-30:])
    assert res.returncode == 0, f"tests failed on Python {version[0]}.{version[1]}:\n{tail}"
    assert re.search(r"\d+ passed", res.stdout), tail
