"""Every backend keeps refs the same way: the shipped ref conformance suite on each of them.

Backends (``store_factory`` in ``tests/servers.py``): MemoryStore, LocalStore, FsspecStore over
``memory://``, over S3 (moto and SeaweedFS, a real S3 server whose conditional writes are
atomic under concurrency) and over GCS (fake-gcs-server).
"""

from __future__ import annotations

from typing import Any

import pytest

from mlvc_core.storage import Store
from mlvc_core.testing import RefStoreContract


class TestRefStores(RefStoreContract):
    @pytest.fixture
    def store(self, store_factory: Any) -> Store:
        return store_factory()  # type: ignore[no-any-return]
