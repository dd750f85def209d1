"""The console's scanning pages in a real browser: an image's vulnerabilities (reached from its
manifest page), the advisory data, and a namespace's policy with an accepted advisory."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.oci import digest as digest_of
from tests.api.oci import image_manifest
from tests.scan import fixtures as fx
from tests.scan.test_vulndb import osv_records
from tests.support.browser import console_signin, screenshot
from tests.support.servers import ADMIN, ADMIN_PASSWORD, Server, berth_command, start_berth


def _push(api: httpx.Client, name: str, tag: str, layer: bytes) -> str:
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    for data in (config, layer):
        resp = api.post(
            f"/v2/{name}/blobs/uploads/", params={"digest": digest_of(data)}, content=data
        )
        assert resp.status_code == 201, resp.text
    payload = image_manifest(config, [layer])
    resp = api.put(
        f"/v2/{name}/manifests/{tag}",
        content=payload,
        headers={"content-type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert resp.status_code == 201, resp.text
    return resp.headers["docker-content-digest"]


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A Berth holding one scanned image with findings (advisories imported with the CLI)."""
    tmp = tmp_path_factory.mktemp("scan-console")
    server = start_berth(tmp / "data", env={"BERTH_SCAN_INTERVAL": "0.2"})
    try:
        with httpx.Client(
            base_url=f"http://{server.host}", auth=(ADMIN, ADMIN_PASSWORD), timeout=30
        ) as api:
            assert api.post("/api/v1/namespaces", json={"name": "team"}).status_code == 201
            layer = fx.gzip_layer(
                {
                    "etc/os-release": fx.OS_RELEASE_DEBIAN,
                    "var/lib/dpkg/status": fx.DPKG_STATUS,
                    "app/node_modules/lodash/package.json": fx.npm_package("lodash", "4.17.20"),
                }
            )
            digest = _push(api, "team/app", "1", layer)
            osv = tmp / "osv"
            osv.mkdir()
            for name, record in osv_records().items():
                (osv / f"{name}.json").write_text(json.dumps(record))
            deadline = time.monotonic() + 60
            report: dict[str, Any] = {}
            while time.monotonic() < deadline and report.get("status") != "ok":
                resp = api.get(
                    "/api/v1/scan/reports", params={"repository": "team/app", "digest": digest}
                )
                report = resp.json() if resp.status_code == 200 else {}
                if report.get("status") != "ok":
                    time.sleep(0.2)
            assert report.get("status") == "ok", server.log()[-2000:]
            subprocess.run(
                [*berth_command(), "vulndb", "import", str(osv), "--data-dir", str(tmp / "data")],
                check=True,
                capture_output=True,
            )
        yield server, digest
    finally:
        server.stop()


def test_vulnerabilities_and_policy_pages(page: Any, scanned: tuple[Server, str]) -> None:
    server, digest = scanned
    console_signin(page, server, ADMIN, ADMIN_PASSWORD)

    page.goto(f"{server.url}/r/team/app/-/manifest/{digest}")
    page.click("#vulnerabilities")
    page.wait_for_load_state()
    rows = page.locator("table.findings tbody tr")
    assert rows.count() == 4
    first = rows.nth(0).inner_text()
    assert "critical" in first
    assert "DEBIAN-CVE-2023-0002" in first
    assert "3.0.13-1~deb12u1" in first
    screenshot(page, "scan-vulnerabilities")

    page.goto(f"{server.url}/vulnerabilities")
    assert "11" in page.locator("#vulndb").inner_text()  # advisories imported
    screenshot(page, "scan-vulndb")

    page.goto(f"{server.url}/namespaces/team/scan-policy")
    assert "No policy" in page.locator("#policy").inner_text()
    page.select_option("select[name=block_severity]", "critical")
    page.click("#set-policy button[type=submit]")
    page.wait_for_load_state()
    assert "critical" in page.locator("#policy").inner_text()
    with httpx.Client(base_url=f"http://{server.host}", auth=(ADMIN, ADMIN_PASSWORD)) as api:
        assert api.get("/v2/team/app/manifests/1").status_code == 403
        page.fill("#add-exception input[name=advisory]", "DEBIAN-CVE-2023-0002")
        page.fill("#add-exception input[name=expires]", "30")
        page.fill("#add-exception input[name=reason]", "not reachable")
        page.click("#add-exception button[type=submit]")
        page.wait_for_load_state()
        assert "DEBIAN-CVE-2023-0002" in page.locator("#exceptions").inner_text()
        assert api.get("/v2/team/app/manifests/1").status_code == 200
    screenshot(page, "scan-policy")
