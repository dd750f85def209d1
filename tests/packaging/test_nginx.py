"""The nginx front ([nginx] enabled): TLS, HTTP -> HTTPS, and blob downloads that nginx sends
itself (X-Accel-Redirect) after Berth has authorised them, with Docker-Content-Digest and Range.

nginx runs with the config `berth ctl reconfigure` renders (as root here: see TESTBED.md)."""

from __future__ import annotations

import hashlib
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from appliance import config as settings
from appliance.omnibus import checks, ctl
from tests.support.clients import Skopeo
from tests.support.images import blob_path
from tests.support.servers import ADMIN, ADMIN_PASSWORD, free_port, require_binary, start_berth


@dataclass
class Front:
    url: str  # https://127.0.0.1:PORT
    http_url: str
    ca: Path
    cert_dir: Path
    log_dir: Path


@pytest.fixture
def front(tmp_path: Path) -> Iterator[Front]:
    nginx = require_binary("nginx", "nginx")
    https_port, http_port = free_port(), free_port()
    public = f"https://127.0.0.1:{https_port}"
    data = tmp_path / "data"
    server = start_berth(data, env={"BERTH_SERVER_PUBLIC_URL": public})
    try:
        config = settings.load(
            None,
            environ={},
            overrides={
                "server.listen": server.host,
                "server.data_dir": str(data),
                "server.public_url": public,
                "log.dir": str(tmp_path / "log"),
                "nginx.enabled": True,
                "nginx.listen": f"127.0.0.1:{https_port}",
                "nginx.redirect_listen": f"127.0.0.1:{http_port}",
            },
        )
        cert, key = checks.tls_paths(config)
        ctl.make_self_signed(cert, key, "127.0.0.1")
        cert_dir = tmp_path / "certs"
        cert_dir.mkdir()
        (cert_dir / "ca.crt").write_bytes(cert.read_bytes())
        prefix = ctl.nginx_prefix(config)
        prefix.mkdir(parents=True)
        (tmp_path / "log").mkdir()
        conf = prefix / "nginx.conf"
        conf.write_text(ctl.render_nginx(config, user="root"))
        with (tmp_path / "nginx.out").open("wb") as out:
            proc = subprocess.Popen(
                [nginx, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
                stdout=out,
                stderr=out,
            )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    httpx.get(
                        public + "/v2/", verify=ssl.create_default_context(cafile=cert), timeout=2
                    )
                    break
                except httpx.TransportError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            yield Front(public, f"http://127.0.0.1:{http_port}", cert, cert_dir, tmp_path / "log")
        finally:
            proc.send_signal(signal.SIGQUIT)
            proc.wait(20)
    finally:
        assert server.stop() == 0, server.log()[-4000:]


def test_nginx_front_tls_push_pull_and_x_accel(front: Front, tmp_path: Path, images):
    skopeo = Skopeo(tmp_path / "skopeo")
    creds = f"{ADMIN}:{ADMIN_PASSWORD}"
    image = images.busybox()
    host = front.url.removeprefix("https://")
    skopeo.run(
        "copy",
        "--retry-times",
        "0",
        "--preserve-digests",
        "--dest-cert-dir",
        str(front.cert_dir),
        "--dest-creds",
        creds,
        image.ref,
        f"docker://{host}/front/busybox:1",
    )
    skopeo.run(
        "copy",
        "--retry-times",
        "0",
        "--src-cert-dir",
        str(front.cert_dir),
        "--src-creds",
        creds,
        f"docker://{host}/front/busybox:1",
        f"oci:{tmp_path / 'pulled'}:1",
    )

    layer = image.blob_digests[-1]
    data = blob_path(image.layout, layer).read_bytes()
    with httpx.Client(
        base_url=front.url,
        verify=ssl.create_default_context(cafile=front.ca),
        auth=(ADMIN, ADMIN_PASSWORD),
    ) as c:
        whole = c.get(f"/v2/front/busybox/blobs/{layer}")
        assert whole.status_code == 200
        assert whole.headers["x-berth-sent-by"] == "nginx"  # sent from disk by nginx
        assert whole.headers["docker-content-digest"] == layer
        assert "x-accel-redirect" not in whole.headers
        assert "sha256:" + hashlib.sha256(whole.content).hexdigest() == layer
        part = c.get(f"/v2/front/busybox/blobs/{layer}", headers={"Range": "bytes=10-99"})
        assert part.status_code == 206
        assert part.content == data[10:100]
        assert part.headers["docker-content-digest"] == layer
        # Berth authorises first: no credentials, no bytes.
        denied = httpx.get(
            front.url + f"/v2/front/busybox/blobs/{layer}",
            verify=ssl.create_default_context(cafile=front.ca),
        )
        assert denied.status_code == 401
    access = (front.log_dir / "nginx-access.log").read_text()
    assert f'GET /v2/front/busybox/blobs/{layer} HTTP/1.1" 200 {len(data)}' in access

    redirect = httpx.get(front.http_url + "/v2/", follow_redirects=False)
    assert redirect.status_code == 301
    assert redirect.headers["location"].startswith(front.url + "/v2/")
