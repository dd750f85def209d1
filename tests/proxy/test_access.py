"""Who may pull through the cache (readers of the proxy namespace; anonymous when it is public),
and the wire details of uncached blobs: HEAD answered from upstream, Range served after a fetch,
errors in the OCI error JSON."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.proxy.conftest import Upstream, push
from tests.support.images import ImageCache, blob_path
from tests.support.servers import ADMIN, ADMIN_PASSWORD, Server

BOB = ("bob", "a-long-enough-password-1")


def test_readers_pull_anonymous_only_when_public(
    tmp_path: Path, upstream: Upstream, make_berth: Callable[..., Server], images: ImageCache
) -> None:
    push(tmp_path / "push", images.busybox(), f"docker://{upstream.registry.host}/lib/busybox:1")
    berth = make_berth(upstream.url)
    manifest = "/v2/up/lib/busybox/manifests/1"
    accept = {"accept": "application/vnd.oci.image.manifest.v1+json"}
    with httpx.Client(base_url=berth.url, auth=(ADMIN, ADMIN_PASSWORD)) as admin:
        r = admin.post("/api/v1/users", json={"name": BOB[0], "password": BOB[1]})
        assert r.status_code == 201, r.text
        with (
            httpx.Client(base_url=berth.url, auth=BOB) as bob,
            httpx.Client(base_url=berth.url) as anonymous,
        ):
            r = bob.get(manifest, headers=accept)
            assert r.status_code == 403
            assert r.json()["errors"][0]["code"] == "DENIED"
            assert anonymous.get(manifest, headers=accept).status_code == 401
            assert upstream.front.requests == []  # refused before anything was fetched

            r = admin.put("/api/v1/namespaces/up/members/bob", json={"role": "reader"})
            assert r.status_code in (200, 201, 204), r.text
            r = bob.get(manifest, headers=accept)
            assert r.status_code == 200, r.text
            # A reader may pull, not push: a push is refused before authorisation even runs.
            r = bob.post("/v2/up/lib/busybox/blobs/uploads/")
            assert r.status_code == 403
            assert "proxy namespace" in r.json()["errors"][0]["message"]

            r = admin.patch("/api/v1/namespaces/up", json={"public": True})
            assert r.status_code == 200, r.text
            assert anonymous.get(manifest, headers=accept).status_code == 200


def test_uncached_blob_head_range_and_errors(
    tmp_path: Path, upstream: Upstream, make_berth: Callable[..., Server], images: ImageCache
) -> None:
    image = images.busybox()
    push(tmp_path / "push", image, f"docker://{upstream.registry.host}/lib/busybox:1")
    berth = make_berth(upstream.url)
    layer = image.blob_digests[-1]
    data = blob_path(image.layout, layer).read_bytes()
    path = f"/v2/up/lib/busybox/blobs/{layer}"
    with httpx.Client(base_url=berth.url, auth=(ADMIN, ADMIN_PASSWORD)) as client:
        r = client.head(path)
        assert r.status_code == 200
        assert r.headers["content-length"] == str(len(data))
        assert r.headers["docker-content-digest"] == layer
        assert upstream.blob_gets() == {}  # a HEAD fetches nothing

        r = client.get(path, headers={"range": "bytes=10-99"})
        assert r.status_code == 206
        assert r.content == data[10:100]
        r = client.get(path)
        assert r.status_code == 200
        assert hashlib.sha256(r.content).hexdigest() == layer.split(":")[1]
        assert upstream.blob_gets() == {layer: 1}

        r = client.get("/v2/up/lib/busybox/manifests/no-such-tag")
        assert r.status_code == 404
        assert r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        r = client.get("/v2/up/lib/busybox/blobs/sha256:" + "0" * 64)
        assert r.status_code == 404
        assert r.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_an_upstream_cut_mid_blob_leaves_nothing_behind(
    tmp_path: Path, upstream: Upstream, make_berth: Callable[..., Server], images: ImageCache
) -> None:
    image = images.busybox()
    push(tmp_path / "push", image, f"docker://{upstream.registry.host}/lib/busybox:1")
    berth = make_berth(upstream.url)
    assert berth.data_dir is not None
    layer = image.blob_digests[-1]
    data = blob_path(image.layout, layer).read_bytes()
    path = f"/v2/up/lib/busybox/blobs/{layer}"
    with httpx.Client(base_url=berth.url, auth=(ADMIN, ADMIN_PASSWORD)) as client:
        upstream.front.cut(len(data) // 2)
        with pytest.raises(httpx.HTTPError):  # the client sees the cut too, never a short 200
            client.get(path).raise_for_status()
        uploads = berth.data_dir / "storage" / "uploads"
        assert not uploads.exists() or list(uploads.iterdir()) == []
        # Not cached: the next pull fetches it again, whole and verified.
        r = client.get(path)
        assert r.status_code == 200
        assert r.content == data
        assert upstream.blob_gets() == {layer: 2}
