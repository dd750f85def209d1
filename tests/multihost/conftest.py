"""The multihost tests use the end-to-end suite's image cache and private docker engine."""

from tests.e2e.conftest import dockerd, images

__all__ = ["dockerd", "images"]
