"""The storage pages in a real browser: usage and a quota (admin), an immutable tag rule, and
a cleanup policy previewed, then run, in one namespace."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx

from tests.support.browser import console_signin, screenshot
from tests.support.servers import ADMIN, ADMIN_PASSWORD, Server

NS = "storage-ui"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push(server: Server, repo: str, tag: str, layer: bytes) -> None:
    config = json.dumps({"tag": tag}).encode()
    with httpx.Client(base_url=server.url, auth=(ADMIN, ADMIN_PASSWORD), timeout=30) as client:
        for data in (config, layer):
            r = client.post(f"/v2/{repo}/blobs/uploads/?digest={sha(data)}", content=data)
            assert r.status_code == 201, r.text
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha(layer),
                    "size": len(layer),
                }
            ],
        }
        r = client.put(
            f"/v2/{repo}/manifests/{tag}",
            content=json.dumps(manifest).encode(),
            headers={"content-type": OCI_MANIFEST},
        )
        assert r.status_code == 201, r.text


def test_storage_pages(page: Any, console_berth: Server) -> None:
    for i, tag in enumerate(["one", "two", "three"]):
        push(console_berth, f"{NS}/app", tag, bytes([i]) * 2048)
    page.on("dialog", lambda dialog: dialog.accept())
    console_signin(page, console_berth, ADMIN, ADMIN_PASSWORD)

    page.goto(console_berth.url + "/storage")
    row = page.locator("#usage tr", has_text=NS)
    assert "6.0 KiB" in row.inner_text() or "6.1 KiB" in row.inner_text()
    page.fill("#quota-form input[name=namespace]", NS)
    page.fill("#quota-form input[name=limit]", "1000000")
    page.click("#quota-form button[type=submit]")
    assert f"Quota of {NS} set" in page.locator(".notice").inner_text()
    assert "% used" in page.locator("#usage tr", has_text=NS).inner_text()
    assert page.locator("#collector").is_visible()
    screenshot(page, "storage-usage")

    page.goto(console_berth.url + f"/storage/{NS}")
    assert f"{NS}/app" in page.locator("#repository-usage").inner_text()
    page.fill("#rule-form input[name=pattern]", "one")
    page.click("#rule-form button[type=submit]")
    assert "one" in page.locator("#rules").inner_text()

    page.fill("#policy-form input[name=repository]", f"{NS}/app")
    page.fill("#policy-form input[name=keep_recent]", "1")
    page.click("#policy-form button[type=submit]")
    assert "preview it" in page.locator(".notice").inner_text()
    page.click("#policies button:text('Preview')")
    preview = page.locator("#preview-tags").inner_text()
    assert "two" in preview
    assert "kept: immutable" in preview  # `one` matches the rule
    assert "three" not in preview
    assert "2.0 KiB" in page.locator("#preview-summary").inner_text()
    screenshot(page, "storage-policy-preview")

    page.click("#policies button:text('Run now')")
    assert "removed 1 tag(s)" in page.locator(".notice").inner_text()
    screenshot(page, "storage-namespace")
    with httpx.Client(base_url=console_berth.url, auth=(ADMIN, ADMIN_PASSWORD)) as client:
        tags = client.get(f"/v2/{NS}/app/tags/list").json()["tags"]
    assert sorted(tags) == ["one", "three"]
