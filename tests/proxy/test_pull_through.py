"""Pull through the cache with real clients against a real upstream registry (Distribution 2.8
behind a counting proxy): digests preserved, each blob fetched once, the cache serving when the
upstream is down (also with its bytes in Azure Blob Storage), pushes refused."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.proxy.conftest import Upstream, push
from tests.support.azurite import Azurite
from tests.support.clients import Podman, Skopeo, ToolError
from tests.support.images import ImageCache, read_layout
from tests.support.servers import (
    ADMIN,
    ADMIN_PASSWORD,
    Server,
    start_berth,
    start_reference_registry,
)

CREDS = f"{ADMIN}:{ADMIN_PASSWORD}"


def test_skopeo_pulls_through_then_from_the_cache_when_upstream_is_down(
    tmp_path: Path,
    upstream: Upstream,
    make_berth: Callable[..., Server],
    skopeo: Skopeo,
    images: ImageCache,
) -> None:
    image = images.busybox()
    digest = push(tmp_path / "push", image, f"docker://{upstream.registry.host}/lib/busybox:1.35")
    berth = make_berth(upstream.url, tag_ttl="0")  # every tag pull re-validates upstream
    ref = f"docker://{berth.host}/up/lib/busybox:1.35"

    # Byte for byte: the manifest through the cache is the upstream's.
    raw = skopeo.inspect_raw(ref, creds=CREDS)
    assert raw == skopeo.inspect_raw(f"docker://{upstream.registry.host}/lib/busybox:1.35")
    skopeo.copy(ref, f"oci:{tmp_path / 'first'}:t", creds=CREDS)
    first = read_layout(tmp_path / "first", "t")
    assert first.top.digest == digest
    fetched = upstream.blob_gets()
    assert set(fetched) == set(image.blob_digests)
    assert all(n == 1 for n in fetched.values()), fetched

    # Warm: the blobs come from the cache; the tag is re-validated with a HEAD only.
    gets_before = upstream.manifest_requests("GET")
    skopeo.copy(ref, f"oci:{tmp_path / 'second'}:t", creds=CREDS)
    assert upstream.blob_gets() == fetched
    assert upstream.manifest_requests("GET") == gets_before
    assert upstream.manifest_requests("HEAD") >= 1

    # Upstream unreachable: the cached copy is served, by tag and by digest.
    upstream.front.down = True
    skopeo.copy(ref, f"oci:{tmp_path / 'offline'}:t", creds=CREDS)
    assert read_layout(tmp_path / "offline", "t").top.digest == digest
    by_digest = f"docker://{berth.host}/up/lib/busybox@{digest}"
    assert skopeo.inspect_raw(by_digest, creds=CREDS) == raw
    # What was never cached cannot be served: a clear 503, not a hang.
    with pytest.raises(ToolError) as e:
        skopeo.inspect_raw(f"docker://{berth.host}/up/lib/other:1", creds=CREDS)
    assert "unavailable" in str(e.value).lower() or "503" in str(e.value)


def test_podman_pulls_through_the_cache(
    tmp_path: Path, upstream: Upstream, make_berth: Callable[..., Server], images: ImageCache
) -> None:
    image = images.busybox()
    push(tmp_path / "push", image, f"docker://{upstream.registry.host}/lib/busybox:1.35")
    berth = make_berth(upstream.url)
    podman = Podman(tmp_path / "podman")
    podman.login(berth.host, ADMIN, ADMIN_PASSWORD)
    image_id = podman.pull(f"{berth.host}/up/lib/busybox:1.35")
    assert image_id
    inspected = podman.inspect(image_id)
    assert inspected["RepoDigests"], inspected
    assert all(n == 1 for n in upstream.blob_gets().values())
    # A second client pulls from the cache alone.
    upstream.front.down = True
    again = Podman(tmp_path / "podman2")
    again.login(berth.host, ADMIN, ADMIN_PASSWORD)
    assert again.pull(f"{berth.host}/up/lib/busybox:1.35") == image_id


def test_multi_arch_index_pulls_through_with_every_platform(
    tmp_path: Path,
    upstream: Upstream,
    make_berth: Callable[..., Server],
    skopeo: Skopeo,
    images: ImageCache,
) -> None:
    image = images.multi_arch()
    digest = push(tmp_path / "push", image, f"docker://{upstream.registry.host}/lib/multi:1")
    berth = make_berth(upstream.url)
    skopeo.copy(
        f"docker://{berth.host}/up/lib/multi:1", f"oci:{tmp_path / 'all'}:t", all=True, creds=CREDS
    )
    assert read_layout(tmp_path / "all", "t").top.digest == digest
    upstream.front.down = True
    skopeo.copy(
        f"docker://{berth.host}/up/lib/multi:1",
        f"oci:{tmp_path / 'again'}:t",
        all=True,
        creds=CREDS,
    )
    # Every platform's blobs were cached, so the index is a stored manifest now: it is listed.
    tags = skopeo.list_tags(f"docker://{berth.host}/up/lib/multi", creds=CREDS)
    assert tags == ["1"]


def test_concurrent_pulls_fetch_each_blob_from_upstream_once(
    tmp_path: Path,
    upstream: Upstream,
    make_berth: Callable[..., Server],
    images: ImageCache,
) -> None:
    image = images.large_layer(24 << 20)
    push(tmp_path / "push", image, f"docker://{upstream.registry.host}/lib/large:1")
    berth = make_berth(upstream.url)
    errors: list[BaseException] = []

    def pull(i: int) -> None:
        try:
            Skopeo(tmp_path / f"client-{i}").copy(
                f"docker://{berth.host}/up/lib/large:1",
                f"oci:{tmp_path / f'out-{i}'}:t",
                creds=CREDS,
            )
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=pull, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []
    fetched = upstream.blob_gets()
    assert set(fetched) == set(image.blob_digests)
    assert all(n == 1 for n in fetched.values()), fetched
    for i in range(4):
        assert read_layout(tmp_path / f"out-{i}", "t").top.digest == image.manifest_digest


def test_pushes_to_a_proxy_namespace_are_denied(
    tmp_path: Path,
    upstream: Upstream,
    make_berth: Callable[..., Server],
    skopeo: Skopeo,
    images: ImageCache,
) -> None:
    berth = make_berth(upstream.url)
    with pytest.raises(ToolError) as e:
        skopeo.push(images.busybox(), f"docker://{berth.host}/up/mine:1", creds=CREDS)
    assert "denied" in str(e.value).lower()
    # Checking whether blobs exist may ask upstream; nothing is ever written there.
    assert {method for method, _, _ in upstream.front.requests} <= {"HEAD", "GET"}
    # Another namespace of the same Berth takes pushes as usual.
    skopeo.push(images.busybox(), f"docker://{berth.host}/admin/mine:1", creds=CREDS)
    assert json.loads(skopeo.inspect_raw(f"docker://{berth.host}/admin/mine:1", creds=CREDS))


def test_the_cache_keeps_its_bytes_in_azure(
    tmp_path: Path, upstream: Upstream, skopeo: Skopeo, images: ImageCache, azurite: Azurite
) -> None:
    """The pull-through cache on Azure Blob Storage (Azurite): blobs fetched once land in the
    container and are served from there when the upstream is down."""
    image = images.busybox()
    digest = push(tmp_path / "push", image, f"docker://{upstream.registry.host}/lib/busybox:az")
    container = azurite.new_container("proxy")
    env = azurite.env(container) | {"BERTH_PROXY_UPSTREAMS": f"up={upstream.url}"}
    berth = start_berth(tmp_path / "cache", env=env)
    try:
        ref = f"docker://{berth.host}/up/lib/busybox:az"
        skopeo.copy(ref, f"oci:{tmp_path / 'first'}:t", creds=CREDS)
        assert read_layout(tmp_path / "first", "t").top.digest == digest
        # The client has every byte a moment before the cache has committed the last blob.
        wanted = {d.split(":")[1] for d in image.blob_digests}
        deadline = time.monotonic() + 30
        while not wanted <= {n.split("/")[3] for n in azurite.listing(container, "blobs/")}:
            assert time.monotonic() < deadline, azurite.listing(container)
            time.sleep(0.1)
        fetched = upstream.blob_gets()
        upstream.front.down = True
        skopeo.copy(ref, f"oci:{tmp_path / 'offline'}:t", creds=CREDS)
        assert read_layout(tmp_path / "offline", "t").top.digest == digest
        assert upstream.blob_gets() == fetched
    finally:
        assert berth.stop() == 0, berth.log()[-3000:]


async def test_a_blob_from_upstream_reaches_the_store_in_chunks_of_the_batch_size(
    tmp_path: Path,
) -> None:
    """The socket hands a blob over in pieces of whatever each receive found; the store and the
    client get them joined into chunks of about CHUNK bytes (only the last may be shorter),
    every byte once and in order."""
    from appliance.proxy.settings import ProxyNamespace  # noqa: PLC0415
    from appliance.proxy.upstream import CHUNK  # noqa: PLC0415
    from appliance.proxy.upstream import Upstream as UpstreamClient  # noqa: PLC0415

    registry = start_reference_registry(tmp_path / "upstream")
    try:
        data = os.urandom(2 * CHUNK + CHUNK // 3)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        async with httpx.AsyncClient(base_url=registry.url) as direct:
            r = await direct.post("/v2/lib/app/blobs/uploads/")
            assert r.status_code == 202, r.text
            location = r.headers["location"]
            sep = "&" if "?" in location else "?"
            r = await direct.put(f"{location}{sep}digest={digest}", content=data)
            assert r.status_code == 201, r.text
        upstream = UpstreamClient(ProxyNamespace("up", registry.url))
        try:
            async with upstream.blob("lib/app", digest) as stream:
                assert stream.size == len(data)
                chunks = [chunk async for chunk in stream.chunks]
        finally:
            await upstream.aclose()
        assert b"".join(chunks) == data
        # At least CHUNK each but the last, and at most one receive (<= CHUNK) over it.
        assert len(chunks) >= 2
        assert all(CHUNK <= len(c) < 2 * CHUNK for c in chunks[:-1])
        assert 0 < len(chunks[-1]) < 2 * CHUNK
    finally:
        registry.stop()
