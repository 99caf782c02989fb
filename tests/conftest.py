"""Shared pytest configuration; fixtures for object-store servers live in ``tests/servers.py``."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Before anything imports gcsfs (see tests/servers.py and docs on fake-gcs-server).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

pytest_plugins = ["tests.servers"]

# The shipped conformance suites assert in mlvc_core.testing: show their values on failure.
pytest.register_assert_rewrite("mlvc_core.testing")

from hypothesis import settings as _hypothesis_settings  # noqa: E402

# Deterministic property tests: the same examples on every run and machine, no flaky deadlines.
_hypothesis_settings.register_profile("mlvc", derandomize=True, deadline=None, print_blob=True)
_hypothesis_settings.load_profile("mlvc")


@pytest.fixture(autouse=True)
def _scrub_mlvc_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests never see the developer's MLVC_* settings."""
    for name in list(os.environ):
        if name.startswith("MLVC_"):
            monkeypatch.delenv(name)
    yield
