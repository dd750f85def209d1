"""podman against the registry: push from one storage, pull into another, nothing changes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.support.clients import Podman, Skopeo
from tests.support.images import ImageCache, compare_images, read_layout, sha256_bytes
from tests.support.servers import Server


def test_push_then_pull_into_empty_storage(
    registry: Server,
    repo: str,
    images: ImageCache,
    make_podman: Callable[[str], Podman],
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    busybox = images.busybox()
    config_digest = busybox.config_digest
    name = f"{registry.host}/{repo}:1.35"

    pusher = make_podman("pusher")
    image_id = pusher.pull(busybox.ref)
    assert f"sha256:{image_id}" == config_digest
    pusher.tag(image_id, name)
    pushed = pusher.push(name, f"docker://{name}")
    # podman recompresses layers on push, so the manifest is its own, not the layout's.
    served = skopeo.inspect_raw(f"docker://{name}")
    assert sha256_bytes(served) == pushed
    assert json.loads(served)["config"]["digest"] == config_digest

    puller = make_podman("puller")
    assert puller.images() == []
    assert puller.pull(name) == image_id

    info = puller.inspect(name)
    assert info["Digest"] == pushed
    assert f"{registry.host}/{repo}@{pushed}" in info["RepoDigests"]
    assert info["RootFS"]["Layers"] == list(busybox.diff_ids)
    assert info["Config"]["Entrypoint"] == ["/bin/busybox"]

    # What podman pulled, saved again, is what the registry holds, blob for blob.
    saved = puller.save(name, tmp_path / "saved", fmt="oci-dir")
    via_skopeo = skopeo.pull_to_layout(f"docker://{name}", tmp_path / "via-skopeo", "x")
    assert read_layout(saved, name).top.digest == pushed
    assert compare_images(via_skopeo, "x", saved, name) == []
