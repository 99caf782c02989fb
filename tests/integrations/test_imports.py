"""``import mlvc`` imports no training framework; each integration imports only its own."""

from __future__ import annotations

import subprocess
import sys

from tests.porcelain.conftest import ROOT

FRAMEWORKS = ("lightning", "pytorch_lightning", "transformers", "keras")


def test_import_mlvc_imports_no_framework() -> None:
    code = (
        "import sys, mlvc, mlvc.integrations\n"
        f"print([m for m in {FRAMEWORKS!r} if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
