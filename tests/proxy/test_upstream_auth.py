"""Upstream authentication: HTTP Basic against Distribution with htpasswd, and the Docker token
flow against a second Berth; Docker Hub's `library/` naming."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio

from tests.proxy.conftest import Upstream, htpasswd, push
from tests.support.clients import Skopeo, ToolError
from tests.support.faultproxy import FaultProxy
from tests.support.images import ImageCache, read_layout
from tests.support.servers import (
    ADMIN,
    ADMIN_PASSWORD,
    Server,
    start_berth,
    start_reference_registry,
)

CREDS = f"{ADMIN}:{ADMIN_PASSWORD}"


def test_basic_auth_upstream_with_htpasswd(
    tmp_path: Path,
    make_berth: Callable[..., Server],
    skopeo: Skopeo,
    images: ImageCache,
) -> None:
    users = htpasswd(tmp_path / "htpasswd", "mirror", "s3cret-pass")
    registry = start_reference_registry(tmp_path / "upstream", htpasswd=users)
    try:
        digest = push(
            tmp_path / "push",
            images.busybox(),
            f"docker://{registry.host}/lib/busybox:1",
            creds="mirror:s3cret-pass",
        )
        creds_file = tmp_path / "upstream-credentials"
        creds_file.write_text("up=mirror:s3cret-pass\n")
        berth = make_berth(registry.url, credentials_file=str(creds_file))
        skopeo.copy(
            f"docker://{berth.host}/up/lib/busybox:1", f"oci:{tmp_path / 'out'}:t", creds=CREDS
        )
        assert read_layout(tmp_path / "out", "t").top.digest == digest
        assert "s3cret-pass" not in berth.log()

        # Without credentials the upstream refuses, and the client hears "unknown", not a 500.
        anonymous = make_berth(registry.url, name="anonymous")
        with pytest.raises(ToolError) as e:
            skopeo.inspect_raw(f"docker://{anonymous.host}/up/lib/busybox:1", creds=CREDS)
        assert "manifest unknown" in str(e.value).lower()
    finally:
        registry.stop()


def test_bearer_token_upstream_is_another_berth(
    tmp_path: Path,
    make_berth: Callable[..., Server],
    skopeo: Skopeo,
    images: ImageCache,
) -> None:
    other = start_berth(tmp_path / "upstream-berth")
    front = FaultProxy(other.url)
    try:
        digest = push(
            tmp_path / "push",
            images.busybox(),
            f"docker://{other.host}/admin/busybox:1",
            creds=CREDS,
        )
        berth = make_berth(front.url, credentials=f"up={CREDS}")
        skopeo.copy(
            f"docker://{berth.host}/up/admin/busybox:1", f"oci:{tmp_path / 'out'}:t", creds=CREDS
        )
        assert read_layout(tmp_path / "out", "t").top.digest == digest
        token_requests = [p for m, p, _ in front.requests if p.startswith("/token")]
        assert token_requests, front.requests
        assert "scope=repository%3Aadmin%2Fbusybox%3Apull" in token_requests[0]
        # One token serves the whole pull: no token request per blob.
        assert len(token_requests) <= 2
    finally:
        front.close()
        assert other.stop() == 0


def test_docker_hub_library_convention(
    tmp_path: Path,
    upstream: Upstream,
    make_berth: Callable[..., Server],
    skopeo: Skopeo,
    images: ImageCache,
) -> None:
    digest = push(
        tmp_path / "push", images.busybox(), f"docker://{upstream.registry.host}/library/busybox:1"
    )
    berth = make_berth(upstream.url, library="up")
    for name in ("up/busybox", "up/library/busybox"):
        out = tmp_path / name.replace("/", "-")
        skopeo.copy(f"docker://{berth.host}/{name}:1", f"oci:{out}:t", creds=CREDS)
        assert read_layout(out, "t").top.digest == digest
    # Both names are one cached repository: each blob was fetched once.
    assert all(n == 1 for n in upstream.blob_gets().values())
    # And listing tags answers the same under either spelling.
    for name in ("up/busybox", "up/library/busybox"):
        assert skopeo.list_tags(f"docker://{berth.host}/{name}", creds=CREDS) == ["1"]


async def test_concurrent_first_requests_all_sign_in_to_a_basic_upstream(tmp_path: Path) -> None:
    """Several blob fetches as a worker's first contact with the upstream: each gets 401, and
    each must retry with the credentials (one of them setting them first is no refusal)."""
    from appliance.proxy.settings import ProxyNamespace  # noqa: PLC0415
    from appliance.proxy.upstream import Upstream as UpstreamClient  # noqa: PLC0415

    users = htpasswd(tmp_path / "htpasswd", "mirror", "s3cret-pass")
    registry = start_reference_registry(tmp_path / "upstream", htpasswd=users)
    try:
        ns = ProxyNamespace("up", registry.url, "mirror", "s3cret-pass")
        blobs = []
        async with httpx.AsyncClient(
            base_url=registry.url, auth=("mirror", "s3cret-pass")
        ) as direct:
            for i in range(6):
                data = f"layer {i}".encode()
                digest = "sha256:" + hashlib.sha256(data).hexdigest()
                r = await direct.post("/v2/lib/app/blobs/uploads/")
                assert r.status_code == 202, r.text
                location = r.headers["location"]  # keeps its own query (Distribution's _state)
                sep = "&" if "?" in location else "?"
                r = await direct.put(f"{location}{sep}digest={digest}", content=data)
                assert r.status_code == 201, r.text
                blobs.append(digest)
        upstream = UpstreamClient(ns)
        sizes: dict[str, int] = {}
        try:

            async def fetch(digest: str) -> None:
                sizes[digest] = await upstream.blob_size("lib/app", digest)

            async with trio.open_nursery() as nursery:
                for digest in blobs:
                    nursery.start_soon(fetch, digest)
        finally:
            await upstream.aclose()
        assert sizes == {d: len(f"layer {i}".encode()) for i, d in enumerate(blobs)}
    finally:
        registry.stop()
