"""Fixtures for the pull-through cache: a real upstream registry behind a counting proxy, test
images pushed to it, and Berth instances whose proxy namespace `up` mirrors that upstream."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.clients import Skopeo
from tests.support.faultproxy import FaultProxy
from tests.support.images import BuiltImage, ImageCache
from tests.support.servers import (
    Server,
    require_binary,
    start_berth,
    start_reference_registry,
)


@dataclass
class Upstream:
    """A registry Berth proxies, and the counting proxy Berth reaches it through."""

    registry: Server
    front: FaultProxy
    creds: str | None = None  # USER:PASSWORD for pushing to it

    @property
    def url(self) -> str:
        return self.front.url

    def blob_gets(self) -> dict[str, int]:
        """How many GETs of each blob reached the upstream."""
        counts: dict[str, int] = {}
        for method, path, _ in self.front.requests:
            if method == "GET" and "/blobs/sha256:" in path:
                digest = path.rsplit("/", 1)[1]
                counts[digest] = counts.get(digest, 0) + 1
        return counts

    def manifest_requests(self, method: str = "GET") -> int:
        return sum(1 for m, p, _ in self.front.requests if m == method and "/manifests/" in p)


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> ImageCache:
    require_binary("busybox", "busybox-static")
    return ImageCache(tmp_path_factory.mktemp("proxy-images"))


def push(tmp: Path, image: BuiltImage, dest: str, creds: str | None = None) -> str:
    """Push `image` to `dest` (`docker://…`) with skopeo; returns the pushed digest."""
    return Skopeo(tmp).push(image, dest, creds=creds)


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    """An anonymous reference registry (Distribution 2.8) behind a counting proxy."""
    registry = start_reference_registry(tmp_path / "upstream")
    front = FaultProxy(registry.url)
    try:
        yield Upstream(registry, front)
    finally:
        front.close()
        registry.stop()


@pytest.fixture
def make_berth(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start Berth with proxy namespace `up` mirroring `url`: `make_berth(url, **env)`."""
    started: list[Server] = []

    def make(url: str, name: str = "cache", **env: str) -> Server:
        full = {"BERTH_PROXY_UPSTREAMS": f"up={url}", "BERTH_LOG_LEVEL": "info"}
        full.update({f"BERTH_PROXY_{k.upper()}": v for k, v in env.items()})
        server = start_berth(tmp_path / name, env=full)
        started.append(server)
        return server

    yield make
    for server in started:
        code = server.stop()
        assert code == 0, f"berth exited {code}:\n{server.log()[-3000:]}"


@pytest.fixture
def skopeo(tmp_path: Path) -> Skopeo:
    return Skopeo(tmp_path / "skopeo")


def htpasswd(path: Path, user: str, password: str) -> Path:
    exe = require_binary("htpasswd", "apache2-utils")
    subprocess.run([exe, "-Bbc", str(path), user, password], check=True, capture_output=True)
    return path
