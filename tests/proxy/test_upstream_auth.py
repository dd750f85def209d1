"""Upstream authentication: HTTP Basic against Distribution with htpasswd, and the Docker token
flow against a second Berth; Docker Hub's `library/` naming."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

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
