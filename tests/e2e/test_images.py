"""The test images themselves: deterministic, readable by other tools, and checked for real.

If these fail, a green end-to-end run would prove nothing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.images import (
    BUSYBOX,
    DOCKER_MANIFEST,
    OCI_INDEX,
    ImageCache,
    blob_path,
    build_busybox,
    build_multi_arch,
    compare_images,
    layer_members,
    read_layout,
    sha256_file,
)
from tests.support.servers import require_binary


def test_builds_are_deterministic(images: ImageCache, tmp_path: Path) -> None:
    again = build_busybox(tmp_path / "busybox")
    assert again.manifest_digest == images.busybox().manifest_digest
    assert (
        build_multi_arch(tmp_path / "multi").manifest_digest == images.multi_arch().manifest_digest
    )


def test_busybox_holds_the_real_binary(images: ImageCache) -> None:
    busybox = images.busybox()
    members = layer_members(busybox.layout, busybox.blob_digests[1])
    assert members["bin/busybox"].size == BUSYBOX.stat().st_size
    assert members["bin/busybox"].mode == 0o755
    assert members["bin/sh"].issym()
    assert members["bin/sh"].linkname == "busybox"
    config = busybox.content().configs[0]
    assert config["config"]["Entrypoint"] == ["/bin/busybox"]
    assert len(config["rootfs"]["diff_ids"]) == 2


def test_image_shapes(images: ImageCache) -> None:
    multi = images.multi_arch()
    assert multi.media_type == OCI_INDEX
    archs = [c["architecture"] for c in multi.content().configs]
    assert archs == ["amd64", "arm64"]
    assert len(images.many_layers().diff_ids) == 50
    assert images.docker_schema2().media_type == DOCKER_MANIFEST
    assert images.docker_schema2().transport == "dir"
    large = images.large_layer(1 << 20)
    assert blob_path(large.layout, large.blob_digests[1]).stat().st_size > 1 << 20


def test_umoci_reads_the_layout(images: ImageCache, tmp_path: Path) -> None:
    """An independent OCI implementation unpacks the image to the same busybox binary."""
    umoci = require_binary("umoci", "umoci")
    busybox = images.busybox()
    layout = shutil.copytree(busybox.layout, tmp_path / "layout")
    bundle = tmp_path / "bundle"
    subprocess.run(
        [umoci, "unpack", "--image", f"{layout}:{busybox.tag}", str(bundle)],
        check=True,
        capture_output=True,
    )
    assert sha256_file(bundle / "rootfs" / "bin" / "busybox") == sha256_file(BUSYBOX)
    assert (bundle / "rootfs" / "bin" / "sh").readlink() == Path("busybox")


@pytest.mark.parametrize("damage", ["blob", "manifest", "missing"])
def test_compare_images_sees_damage(images: ImageCache, tmp_path: Path, damage: str) -> None:
    source = images.multi_arch()
    copy = shutil.copytree(source.layout, tmp_path / "copy")
    assert compare_images(source.layout, source.tag, copy, source.tag) == []

    content = read_layout(copy, source.tag)
    if damage == "blob":
        path = blob_path(copy, content.blobs[-1])
        data = bytearray(path.read_bytes())
        data[-1] ^= 1
        path.write_bytes(bytes(data))
    elif damage == "manifest":
        index = copy / "index.json"
        index.write_text(index.read_text().replace(source.manifest_digest, content.children[0]))
    else:
        blob_path(copy, content.blobs[0]).unlink()

    assert compare_images(source.layout, source.tag, copy, source.tag) != []
