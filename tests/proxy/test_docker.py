"""The docker CLI pulls through the cache (a private engine; see tests/support/clients.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.proxy.conftest import Upstream, push
from tests.support.clients import DockerDaemon, start_dockerd
from tests.support.images import ImageCache
from tests.support.servers import ADMIN, ADMIN_PASSWORD, Server, require_binary


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerDaemon]:
    require_binary("dockerd", "docker.io")
    # A short path: the engine's unix sockets live under it (at most 108 bytes).
    daemon = start_dockerd(tmp_path_factory.mktemp("dockerd"))
    try:
        yield daemon
    finally:
        daemon.stop()


def test_docker_pulls_through_the_cache_and_runs_it(
    tmp_path: Path,
    upstream: Upstream,
    make_berth: Callable[..., Server],
    images: ImageCache,
    dockerd: DockerDaemon,
) -> None:
    digest = push(
        tmp_path / "push", images.busybox(), f"docker://{upstream.registry.host}/lib/busybox:1"
    )
    berth = make_berth(upstream.url)
    docker = dockerd.client(tmp_path / "docker-config")
    docker.login(berth.host, ADMIN, ADMIN_PASSWORD)
    ref = f"{berth.host}/up/lib/busybox:1"
    assert docker.pull(ref) == digest
    assert docker.run_container(ref, "echo", "through the cache").strip() == "through the cache"
    assert all(n == 1 for n in upstream.blob_gets().values())
