"""The operations console pages in a real browser: the status page, and a namespace's
webhooks added (secret shown once; an internal address refused), listed and removed, each
change in the audit log."""

from __future__ import annotations

import httpx

import appliance
from appliance.metadata.db import migrations
from tests.support.browser import console_signin, screenshot
from tests.support.servers import ADMIN, ADMIN_PASSWORD, Server

HOOK = "http://93.184.216.34/hook"  # a public address: namespace webhooks may not call inward


def test_status_and_webhook_pages(page, console_berth: Server) -> None:
    with httpx.Client(base_url=console_berth.url, auth=(ADMIN, ADMIN_PASSWORD)) as api:
        resp = api.post("/api/v1/namespaces", json={"name": "opsweb"})
        assert resp.status_code in (201, 409), resp.text
    console_signin(page, console_berth, ADMIN, ADMIN_PASSWORD)

    page.goto(console_berth.url + "/status")
    assert "ready" in page.inner_text("#health h2")
    checks = page.inner_text("#health table")
    assert "database" in checks
    assert "storage" in checks
    assert "pull" in page.inner_text("#limits")
    # The version the server runs (the same checkout as this test) and its schema.
    version = page.inner_text("#version")
    assert appliance.__version__ in version
    latest = migrations("sqlite")[-1].version
    assert f"{latest} (this Berth knows up to {latest})" in version
    assert f"Berth {appliance.__version__}" in page.inner_text("footer")
    screenshot(page, "ops-status")

    page.goto(console_berth.url + "/namespaces/opsweb/webhooks")
    assert "No webhooks yet." in page.inner_text("#webhooks")
    page.fill("#add-webhook input[name=url]", "http://127.0.0.1:5000/internal")
    page.click("#add-webhook button[type=submit]")
    assert "internal address" in page.content()
    page.goto(console_berth.url + "/namespaces/opsweb/webhooks")
    page.fill("#add-webhook input[name=url]", HOOK)
    page.click("#add-webhook button[type=submit]")
    secret = page.inner_text("#secret").strip()
    assert len(secret) >= 32
    screenshot(page, "ops-webhook-secret")
    page.click("text=Done")
    table = page.inner_text("#webhooks")
    assert HOOK in table
    assert "delete, push" in table
    assert secret not in page.content()  # shown once, never again
    screenshot(page, "ops-webhooks")

    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#webhooks button[type=submit]")
    page.wait_for_load_state()
    assert "No webhooks yet." in page.inner_text("#webhooks")

    page.goto(console_berth.url + "/audit?action=webhook.")
    audit = page.inner_text("#audit")
    assert "webhook.create" in audit
    assert "webhook.delete" in audit
    assert secret not in page.content()
