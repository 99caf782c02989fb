"""Integration tests use the porcelain tests' isolated project fixture."""

from tests.porcelain.conftest import project

__all__ = ["project"]
