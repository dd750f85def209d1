"""`berth vulndb import|status` and `berth scan` argument handling, in process."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from appliance.cli import main
from appliance.cli.scan import split_image
from tests.scan.test_vulndb import osv_records


def test_vulndb_import_and_status(tmp_path: Path) -> None:
    data = tmp_path / "data"
    osv = tmp_path / "osv"
    osv.mkdir()
    for name, record in osv_records().items():
        (osv / f"{name}.json").write_text(json.dumps(record))
    (osv / "broken.json").write_text("{not json")
    runner = CliRunner()
    env = {"BERTH_ADMIN_PASSWORD": "cli-test-password-1"}
    done = runner.invoke(main, ["vulndb", "import", str(osv), "--data-dir", str(data)], env=env)
    assert done.exit_code == 1  # one file failed; the others are in
    assert f"{len(osv_records())} added" in done.output
    assert "broken.json: not JSON" in done.output
    done = runner.invoke(main, ["vulndb", "status", "--json", "--data-dir", str(data)], env=env)
    assert done.exit_code == 0, done.output
    state = json.loads(done.output)
    assert state["version"] == 1
    assert state["by_source"] == {"osv": len(osv_records())}
    assert state["imports"][0]["failed"] == 1
    done = runner.invoke(main, ["vulndb", "status", "--data-dir", str(data)], env=env)
    assert "version: 1" in done.output
    missing = runner.invoke(
        main, ["vulndb", "import", str(tmp_path / "nowhere"), "--data-dir", str(data)], env=env
    )
    assert missing.exit_code == 2
    assert "does not exist" in missing.output


def test_image_references() -> None:
    assert split_image("team/app:1") == ("team/app", "1")
    assert split_image("team/app") == ("team/app", "latest")
    assert split_image("team/app@sha256:" + "a" * 64) == ("team/app", "sha256:" + "a" * 64)
    runner = CliRunner()
    done = runner.invoke(main, ["scan", "team/app@notadigest"])
    assert done.exit_code == 2
    assert "is not a digest" in done.output
