"""The docker CLI and engine against the registry: load, push, remove, pull, run."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.clients import Docker, Skopeo
from tests.support.images import DOCKER_MANIFEST, ImageCache, sha256_bytes
from tests.support.servers import Server


def load_busybox(docker: Docker, skopeo: Skopeo, images: ImageCache, name: str, tmp: Path) -> str:
    """Put the busybox test image into the engine as `name` (via a docker-archive)."""
    archive = tmp / "busybox.tar"
    # docker-archive has no manifest of its own to preserve: skopeo writes a new one.
    skopeo.copy(images.busybox().ref, f"docker-archive:{archive}:{name}", preserve_digests=False)
    assert docker.load(archive) == name
    return name


def test_push_remove_pull_run(
    registry: Server,
    repo: str,
    images: ImageCache,
    docker: Docker,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    busybox = images.busybox()
    config_digest = busybox.config_digest
    local = load_busybox(docker, skopeo, images, f"berth-e2e-local/{repo}:1.35", tmp_path)
    assert docker.inspect(local)["Id"] == config_digest
    name = f"{registry.host}/{repo}:1.35"

    docker.tag(local, name)
    pushed = docker.push(name)

    served = skopeo.inspect_raw(f"docker://{name}")
    assert sha256_bytes(served) == pushed
    assert json.loads(served)["mediaType"] == DOCKER_MANIFEST
    assert json.loads(served)["config"]["digest"] == config_digest

    docker.rmi(name, local)
    assert not docker.has_image(config_digest)

    assert docker.pull(name) == pushed
    info = docker.inspect(name)
    assert info["RepoDigests"] == [f"{registry.host}/{repo}@{pushed}"]
    assert info["Id"] == config_digest
    assert info["RootFS"]["Layers"] == list(busybox.diff_ids)

    assert docker.run_container(name, "echo", "hi") == "hi\n"
    docker.rmi(name)


def test_pull_by_digest(
    registry: Server,
    repo: str,
    images: ImageCache,
    docker: Docker,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    """An image pushed by skopeo (OCI media types) pulls by digest into the docker engine."""
    busybox = images.busybox()
    skopeo.push(busybox, f"docker://{registry.host}/{repo}:1.35")
    by_digest = f"{registry.host}/{repo}@{busybox.manifest_digest}"

    assert docker.pull(by_digest) == busybox.manifest_digest
    info = docker.inspect(by_digest)
    assert info["Id"] == busybox.config_digest
    assert info["RootFS"]["Layers"] == list(busybox.diff_ids)
    assert info["RepoDigests"] == [by_digest]
    docker.rmi(by_digest)
