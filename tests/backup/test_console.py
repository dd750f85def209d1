"""The backups console page in a real browser: settings and last result, the list with
verification, and the back-up, verify and prune buttons."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.browser import console_signin, screenshot
from tests.support.servers import ADMIN, ADMIN_PASSWORD, Server, start_berth


@pytest.fixture(scope="module")
def backup_berth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("backup-console")
    server = start_berth(
        tmp / "data",
        env={"BERTH_BACKUP_TARGET": str(tmp / "backups"), "BERTH_BACKUP_SCHEDULE": "0 3 * * *"},
    )
    try:
        yield server
    finally:
        server.stop()


def test_backups_page(page, backup_berth: Server) -> None:
    with httpx.Client(base_url=backup_berth.url, auth=(ADMIN, ADMIN_PASSWORD), timeout=120) as api:
        taken = api.post("/api/v1/backups", params={"wait": "true"})
        assert taken.status_code == 201, taken.text
        backup_id = taken.json()["id"]
        verified = api.post(f"/api/v1/backups/{backup_id}/verify", params={"wait": "true"})
        assert verified.json()["ok"] is True
    console_signin(page, backup_berth, ADMIN, ADMIN_PASSWORD)
    page.goto(backup_berth.url + "/backups")
    settings = page.inner_text("#backup-settings")
    assert "0 3 * * *" in settings
    assert str(Path(backup_berth.data_dir or "").parent / "backups") in settings
    assert "succeeded" in page.inner_text("#last-result")
    row = page.inner_text(f"#backups tr:has-text('{backup_id}')")
    assert "succeeded" in row
    assert "ok" in row  # verified
    screenshot(page, "backups")

    page.click(f"#backups tr:has-text('{backup_id}') button:has-text('Verify')")
    page.wait_for_load_state()
    assert f"Verifying backup {backup_id}." in page.inner_text(".notice")

    page.click("button:has-text('Back up now')")
    page.wait_for_load_state()
    assert "Backup " in page.inner_text(".notice")
    assert "started." in page.inner_text(".notice")
    screenshot(page, "backups-started")

    page.goto(backup_berth.url + "/audit?action=backup.")
    assert "backup.create" in page.inner_text("#audit")
