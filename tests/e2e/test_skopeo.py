"""skopeo against the registry: images go up and come back byte for byte."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.clients import BLOB_INFO_CACHE_FILE, Skopeo, ToolError
from tests.support.images import (
    DOCKER_MANIFEST,
    MULTI_ARCH_PLATFORMS,
    OCI_INDEX,
    OCI_MANIFEST,
    BuiltImage,
    ImageCache,
    compare_images,
    read_layout,
    sha256_bytes,
)
from tests.support.servers import Server

Build = Callable[[ImageCache], BuiltImage]

LARGE_LAYER = 64 << 20  # the `slow` suite adds a 1 GiB layer

ROUND_TRIP: list[object] = [
    pytest.param(ImageCache.busybox, id="busybox"),
    pytest.param(ImageCache.docker_schema2, id="docker-schema2"),
    pytest.param(ImageCache.many_layers, id="50-layers"),
    pytest.param(lambda c: c.large_layer(LARGE_LAYER), id="large-layer-64m"),
    pytest.param(lambda c: c.large_layer(1 << 30), id="large-layer-1g", marks=pytest.mark.slow),
]


def remote(registry: Server, repo: str, ref: str) -> str:
    """`docker://host/repo:tag`, or `...@digest` when `ref` is a digest."""
    sep = "@" if ref.startswith("sha256:") else ":"
    return f"docker://{registry.host}/{repo}{sep}{ref}"


@pytest.mark.parametrize("build", ROUND_TRIP)
def test_round_trip_is_byte_identical(
    registry: Server, repo: str, images: ImageCache, skopeo: Skopeo, tmp_path: Path, build: Build
) -> None:
    image = build(images)
    dest = remote(registry, repo, image.tag)

    assert skopeo.push(image, dest) == image.manifest_digest

    pulled = skopeo.pull_to_layout(dest, tmp_path / "pulled", image.tag)
    assert compare_images(image.layout, image.tag, pulled, image.tag) == []
    assert read_layout(pulled, image.tag).top.media_type == image.media_type


def test_docker_schema2_keeps_its_media_type(
    registry: Server, repo: str, images: ImageCache, skopeo: Skopeo
) -> None:
    image = images.docker_schema2()
    dest = remote(registry, repo, image.tag)
    skopeo.push(image, dest)

    served = json.loads(skopeo.inspect_raw(dest))
    assert served["mediaType"] == DOCKER_MANIFEST
    assert served["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"


def test_multi_arch_index_round_trip(
    registry: Server, repo: str, images: ImageCache, skopeo: Skopeo, tmp_path: Path
) -> None:
    image = images.multi_arch()
    dest = remote(registry, repo, image.tag)

    assert skopeo.push(image, dest) == image.manifest_digest

    pulled = skopeo.pull_to_layout(dest, tmp_path / "all", image.tag, all=True)
    assert compare_images(image.layout, image.tag, pulled, image.tag) == []
    content = read_layout(pulled, image.tag)
    assert content.top.media_type == OCI_INDEX
    assert content.children == list(image.child_manifests)
    assert len(set(image.child_manifests)) == len(MULTI_ARCH_PLATFORMS)


@pytest.mark.parametrize(("arch", "variant"), MULTI_ARCH_PLATFORMS)
def test_multi_arch_pull_of_one_platform(
    registry: Server,
    repo: str,
    images: ImageCache,
    skopeo: Skopeo,
    tmp_path: Path,
    arch: str,
    variant: str | None,
) -> None:
    """Without `--all` a client picks its platform's child from the index, then fetches it."""
    image = images.multi_arch()
    dest = remote(registry, repo, image.tag)
    skopeo.push(image, dest)

    platform = ["--override-os", "linux", "--override-arch", arch]
    platform += ["--override-variant", variant] if variant else []
    layout = tmp_path / "one"
    skopeo.copy(dest, f"oci:{layout}:{arch}", extra=platform)

    content = read_layout(layout, arch)
    assert content.top.media_type == OCI_MANIFEST
    index = json.loads(image.content().manifests[image.manifest_digest])
    wanted = [d["digest"] for d in index["manifests"] if d["platform"]["architecture"] == arch]
    assert [content.top.digest] == wanted
    assert content.configs[0]["architecture"] == arch


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(ImageCache.busybox, id="oci-manifest"),
        pytest.param(ImageCache.docker_schema2, id="docker-schema2"),
        pytest.param(ImageCache.multi_arch, id="oci-index"),
    ],
)
def test_inspect_raw_returns_the_pushed_bytes(
    registry: Server, repo: str, images: ImageCache, skopeo: Skopeo, build: Build
) -> None:
    image = build(images)
    pushed = skopeo.push(image, remote(registry, repo, image.tag))
    expected = image.content().manifests[image.manifest_digest]

    by_tag = skopeo.inspect_raw(remote(registry, repo, image.tag))
    by_digest = skopeo.inspect_raw(remote(registry, repo, pushed))

    assert sha256_bytes(by_tag) == pushed == image.manifest_digest
    assert by_tag == by_digest == expected


def test_list_tags(registry: Server, repo: str, images: ImageCache, skopeo: Skopeo) -> None:
    busybox, multi = images.busybox(), images.multi_arch()
    for tag in ("1.35", "latest", "v1.0.0-rc.1"):
        skopeo.push(busybox, remote(registry, repo, tag))
    skopeo.push(multi, remote(registry, repo, "multi"))

    tags = skopeo.list_tags(f"docker://{registry.host}/{repo}")

    assert sorted(tags) == ["1.35", "latest", "multi", "v1.0.0-rc.1"]


def test_delete_by_digest(
    registry: Server, repo: str, images: ImageCache, skopeo: Skopeo, tmp_path: Path
) -> None:
    """Deleting one manifest leaves the other image (which shares its layers) whole."""
    doomed, kept = images.busybox(), images.docker_schema2()
    assert set(kept.blob_digests) & set(doomed.blob_digests), "the images should share layers"
    digest = skopeo.push(doomed, remote(registry, repo, "doomed"))
    skopeo.push(kept, remote(registry, repo, "kept"))

    skopeo.delete(remote(registry, repo, digest))

    for ref in (digest, "doomed"):
        with pytest.raises(ToolError) as failed:
            skopeo.copy(remote(registry, repo, ref), f"oci:{tmp_path / 'gone'}:x")
        assert "manifest unknown" in failed.value.stderr.lower()
    assert skopeo.list_tags(f"docker://{registry.host}/{repo}") == ["kept"]
    pulled = skopeo.pull_to_layout(remote(registry, repo, "kept"), tmp_path / "kept", "kept")
    assert compare_images(kept.layout, kept.tag, pulled, "kept") == []


def test_blob_info_cache_is_private(
    registry: Server, repo: str, images: ImageCache, skopeo: Skopeo
) -> None:
    """Each skopeo call gets an empty blob info cache, so it uploads instead of mounting.

    A shared cache (the control) makes skopeo mount the layers from the repository it pushed
    them to before; the default, one cache per call, does not.
    """
    image = images.busybox()
    shared = skopeo.new_cache()
    skopeo.copy(image.ref, remote(registry, repo + "/first", "1"), cache=shared)
    assert (shared / BLOB_INFO_CACHE_FILE).stat().st_size > 0

    reused = skopeo.copy(
        image.ref, remote(registry, repo + "/shared", "1"), cache=shared, debug=True
    )
    private = skopeo.copy(image.ref, remote(registry, repo + "/private", "1"), debug=True)

    cross_mount = f"from={repo.replace('/', '%2F')}%2Ffirst&mount="
    assert cross_mount in reused.stderr
    assert "Trying to reuse cached location" in reused.stderr
    assert "Trying to reuse cached location" not in private.stderr
    assert "mount=" not in private.stderr
