"""`berth mirror sync`: copies tags ahead of time, resumes after an interruption without
fetching again what it had, and is idempotent; the mirrored content serves with upstream gone."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tests.proxy.conftest import Upstream, push
from tests.support.clients import Skopeo
from tests.support.images import ImageCache, read_layout
from tests.support.servers import ADMIN, ADMIN_PASSWORD, berth_command, start_berth


def mirror(data_dir: Path, upstream: str, *refs: str) -> subprocess.CompletedProcess[str]:
    env = {"BERTH_PROXY_UPSTREAMS": f"up={upstream}", "BERTH_ADMIN_PASSWORD": ADMIN_PASSWORD}
    return subprocess.run(
        [*berth_command(), "mirror", "sync", "--data-dir", str(data_dir), *refs],
        capture_output=True,
        text=True,
        env={**_base_env(), **env},
        timeout=300,
        check=False,
    )


def _base_env() -> dict[str, str]:
    import os  # noqa: PLC0415

    return {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}


def upstream_blob(upstream: Upstream, digest: str) -> Path:
    assert upstream.registry.data_dir is not None
    hexpart = digest.split(":", 1)[1]
    root = upstream.registry.data_dir / "docker" / "registry" / "v2" / "blobs" / "sha256"
    return root / hexpart[:2] / hexpart / "data"


def test_mirror_sync_interrupted_then_resumed(
    tmp_path: Path, upstream: Upstream, images: ImageCache
) -> None:
    image = images.many_layers(6)
    host = upstream.registry.host
    digest = push(tmp_path / "push", image, f"docker://{host}/lib/layers:1")
    push(tmp_path / "push", images.busybox(), f"docker://{host}/lib/busybox:1.35")
    data = tmp_path / "data"

    # Interrupted: the upstream loses one layer half-way through the image.
    manifest = json.loads(Skopeo(tmp_path / "s").inspect_raw(f"docker://{host}/lib/layers:1"))
    missing = manifest["layers"][3]["digest"]
    aside = tmp_path / "aside"
    shutil.move(upstream_blob(upstream, missing), aside)
    first = mirror(data, upstream.url, "up/lib/layers:1")
    assert first.returncode != 0
    assert missing in first.stderr, first.stderr
    fetched_before = upstream.blob_gets()
    assert 0 < len(fetched_before) < len(image.blob_digests)

    # Resumed: only what was missing is fetched.
    shutil.move(aside, upstream_blob(upstream, missing))
    second = mirror(data, upstream.url, "up/lib/layers:1", "up/lib/busybox")
    assert second.returncode == 0, second.stderr
    assert "synced 2 tag(s)" in second.stdout
    fetched = upstream.blob_gets()
    for d in image.blob_digests:
        assert fetched[d] == (2 if d == missing else 1), (d, fetched)

    # Idempotent: a third run fetches no blob.
    third = mirror(data, upstream.url, "up/lib/layers:1", "up/lib/busybox")
    assert third.returncode == 0, third.stderr
    assert "0 blob(s) fetched" in third.stdout
    assert upstream.blob_gets() == fetched

    # The mirror serves with the upstream gone (an air-gapped site).
    upstream.front.down = True
    berth = start_berth(data, env={"BERTH_PROXY_UPSTREAMS": f"up={upstream.url}"})
    try:
        skopeo = Skopeo(tmp_path / "skopeo")
        creds = f"{ADMIN}:{ADMIN_PASSWORD}"
        skopeo.copy(
            f"docker://{berth.host}/up/lib/layers:1", f"oci:{tmp_path / 'out'}:t", creds=creds
        )
        assert read_layout(tmp_path / "out", "t").top.digest == digest
        tags = skopeo.list_tags(f"docker://{berth.host}/up/lib/busybox", creds=creds)
        assert tags == ["1.35"]
    finally:
        assert berth.stop() == 0


def test_mirror_sync_refuses_what_is_not_a_proxy_namespace(
    tmp_path: Path, upstream: Upstream
) -> None:
    result = mirror(tmp_path / "data", upstream.url, "team/app:1")
    assert result.returncode == 2
    assert "not in a proxy namespace" in result.stderr
