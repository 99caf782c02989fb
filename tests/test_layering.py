"""The architecture holds: layers, one module per third-party dependency, a light `import mlvc`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold() -> None:
    exe = shutil.which("lint-imports")
    cmd = [exe] if exe else [sys.executable, "-m", "importlinter.cli"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "BROKEN" not in res.stdout


def test_import_mlvc_stays_light() -> None:
    code = (
        "import sys, mlvc, mlvc_core; "
        "heavy = sorted(m for m in ('typer', 'click', 'rich', 'fsspec', 's3fs', 'gcsfs', "
        "'torch', 'numpy') if m in sys.modules); "
        "print(','.join(heavy))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == ""


def test_tracking_modules_stay_small() -> None:
    """The tracking package keeps one concern per module: none grows past ~500 lines."""
    sizes = {
        p.name: len(p.read_text().splitlines()) for p in (ROOT / "mlvc" / "tracking").glob("*.py")
    }
    assert len(sizes) > 10
    assert {name: n for name, n in sizes.items() if n > 550} == {}


def test_architecture_page_names_every_module() -> None:
    """docs/architecture.md places every plumbing module and every experiments/tracking module."""
    import re

    page = (ROOT / "docs" / "architecture.md").read_text()
    words = set(re.findall(r"[A-Za-z_][A-Za-z_0-9]*", page))
    modules = [p.stem for p in (ROOT / "mlvc_core").glob("*.py") if p.stem != "__init__"]
    for package in ("experiments", "tracking", "commands"):
        modules += [p.stem for p in (ROOT / "mlvc" / package).glob("*.py") if p.stem != "__init__"]
    assert sorted(m for m in modules if m not in words) == []
