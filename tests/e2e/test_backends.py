"""A smoke test with real clients on every backend profile other than the default.

`make test` runs the whole e2e suite on `sqlite-fs` and this smaller test on every other
profile in tests/support/backends.py (PostgreSQL metadata, S3 or Azure storage...): a skopeo
round trip of an image and of a multi-arch index, and a docker push and pull. `make test-slow`
runs the whole e2e suite on every profile (`BERTH_E2E_BACKENDS=all`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_docker import load_busybox
from tests.support.backends import PROFILES, profile_env
from tests.support.clients import Docker, Skopeo
from tests.support.images import OCI_INDEX, ImageCache, compare_images, read_layout
from tests.support.servers import Server, start_berth

# Backend profiles are Berth's: the reference-registry development target leaves this module out.
pytestmark = pytest.mark.berth_only

SMOKE_PROFILES = [name for name in PROFILES if name != "sqlite-fs"]
ENVIRONMENTS: dict[str, dict[str, str]] = {}  # backend URL -> the environment it runs with


@pytest.fixture(scope="module", params=SMOKE_PROFILES)
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Berth on one backend profile, for this module."""
    env = profile_env(request, request.param)
    server = start_berth(tmp_path_factory.mktemp("backend") / "data", env=env)
    ENVIRONMENTS[server.url] = env
    try:
        yield server
    finally:
        code = server.stop()
    assert code == 0, f"berth exited {code} on SIGTERM:\n{server.log()[-4000:]}"


def test_skopeo_round_trip(
    backend: Server, images: ImageCache, skopeo: Skopeo, tmp_path: Path
) -> None:
    image = images.busybox()
    dest = f"docker://{backend.host}/smoke/busybox:{image.tag}"
    assert skopeo.push(image, dest) == image.manifest_digest
    pulled = skopeo.pull_to_layout(dest, tmp_path / "pulled", image.tag)
    assert compare_images(image.layout, image.tag, pulled, image.tag) == []
    assert skopeo.list_tags(f"docker://{backend.host}/smoke/busybox") == [image.tag]


def test_multi_arch_round_trip(
    backend: Server, images: ImageCache, skopeo: Skopeo, tmp_path: Path
) -> None:
    image = images.multi_arch()
    dest = f"docker://{backend.host}/smoke/multi:{image.tag}"
    assert skopeo.push(image, dest) == image.manifest_digest
    pulled = skopeo.pull_to_layout(dest, tmp_path / "all", image.tag, all=True)
    assert compare_images(image.layout, image.tag, pulled, image.tag) == []
    content = read_layout(pulled, image.tag)
    assert content.top.media_type == OCI_INDEX
    assert content.children == list(image.child_manifests)


def test_docker_push_and_pull(
    backend: Server, images: ImageCache, docker: Docker, skopeo: Skopeo, tmp_path: Path
) -> None:
    local = load_busybox(docker, skopeo, images, "berth-smoke-local/busybox:1", tmp_path)
    name = f"{backend.host}/smoke/docker:1"
    docker.tag(local, name)
    pushed = docker.push(name)
    docker.rmi(name, local)
    assert docker.pull(name) == pushed
    assert docker.inspect(name)["Id"] == images.busybox().config_digest
    docker.rmi(name)


def test_a_second_process_serves_the_same_registry(
    backend: Server, images: ImageCache, skopeo: Skopeo, tmp_path: Path
) -> None:
    """Another Berth on the same database, storage and data directory: what one process
    took in, the other serves, both ways."""
    assert backend.data_dir is not None
    other = start_berth(
        backend.data_dir, env=ENVIRONMENTS[backend.url], log_path=tmp_path / "second.log"
    )
    try:
        assert other.credentials is not None
        skopeo.login(other.host, *other.credentials)
        busybox, multi = images.busybox(), images.multi_arch()
        skopeo.push(busybox, f"docker://{backend.host}/smoke/shared:{busybox.tag}")
        skopeo.push(multi, f"docker://{other.host}/smoke/shared:{multi.tag}")
        pulled = skopeo.pull_to_layout(
            f"docker://{other.host}/smoke/shared:{busybox.tag}", tmp_path / "a", busybox.tag
        )
        assert compare_images(busybox.layout, busybox.tag, pulled, busybox.tag) == []
        pulled = skopeo.pull_to_layout(
            f"docker://{backend.host}/smoke/shared:{multi.tag}", tmp_path / "b", multi.tag, all=True
        )
        assert compare_images(multi.layout, multi.tag, pulled, multi.tag) == []
        for server in (backend, other):
            tags = skopeo.list_tags(f"docker://{server.host}/smoke/shared")
            assert sorted(tags) == sorted([busybox.tag, multi.tag])
    finally:
        assert other.stop() == 0, other.log()[-4000:]
