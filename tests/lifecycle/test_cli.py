"""The lifecycle commands on a registry's data directory: usage, quota, immutable, policy, gc
and fsck, as an operator types them (click's runner, in-process)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from appliance.cli import main
from appliance.lifecycle.gc import GcSettings
from appliance.metadata.db import open_database
from appliance.storage.filesystem import FilesystemStore
from tests.lifecycle.world import build_world

REPO = "team/app"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data directory holding team/app:v1..v3 (one day apart) and one stray blob."""
    for name in list(__import__("os").environ):
        if name.startswith("BERTH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BERTH_GC_DELAY", "0")
    data = tmp_path / "data"
    data.mkdir()
    db = open_database(f"sqlite:///{data / 'berth.db'}")
    db.migrate()
    world = build_world(db, FilesystemStore(data / "storage"), GcSettings(delay=0.0))

    world.clock.now = time.time() - 4 * 86400  # the CLI runs on the wall clock

    async def fill() -> None:
        for i in (1, 2, 3):
            await world.image(REPO, [f"layer {i}".encode() * 100], f"v{i}")
            world.clock.advance(86400)
        await world.blob(REPO, b"stray")

    try:
        trio.run(fill)
    finally:
        db.close()
    return data


def berth(data_dir: Path, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, [*args, "--data-dir", str(data_dir)])
    assert result.exit_code == code, result.output + repr(result.exception)
    return result.output


def berth_json(data_dir: Path, *args: str) -> Any:
    return json.loads(berth(data_dir, *args, "--json"))


def test_usage_and_quotas(data_dir: Path) -> None:
    usage = berth_json(data_dir, "usage")
    assert [u["name"] for u in usage] == ["team"]
    assert usage[0]["total_bytes"] == 3 * 700 + 2 + 5
    assert "team/app" in berth(data_dir, "usage", "team")
    assert "quota of team: 5000 bytes" in berth(data_dir, "quota", "set", "team", "5000")
    assert berth(data_dir, "quota", "list").split() == ["team", "2107", "5000"]
    assert berth_json(data_dir, "usage", "team")[0]["quota_bytes"] == 5000
    berth(data_dir, "quota", "remove", "team")
    assert "has no quota" in berth(data_dir, "quota", "remove", "team", code=2)


def test_immutable_rules(data_dir: Path) -> None:
    assert "rule 1" in berth(data_dir, "immutable", "add", "team", r"v\d+")
    assert berth(data_dir, "immutable", "list").split() == ["1", "team", r"v\d+"]
    assert "not a valid regular expression" in berth(
        data_dir, "immutable", "add", "team", "(", code=2
    )
    # Syntax a backtracking engine needs is refused with a line saying so.
    said = berth(data_dir, "immutable", "add", "team", r"(?!latest).*", code=2)
    assert "lookahead and lookbehind" in said
    assert "Traceback" not in said
    assert berth(data_dir, "immutable", "list").split() == ["1", "team", r"v\d+"]
    berth(data_dir, "immutable", "remove", "team", "1")
    assert berth(data_dir, "immutable", "list") == ""


def test_policy_preview_run_then_gc_and_fsck(data_dir: Path) -> None:
    out = berth(data_dir, "policy", "create", REPO, "--keep-recent", "1")
    assert "preview it" in out
    assert "not been previewed" in berth(data_dir, "policy", "run", "1", code=2)
    preview = berth_json(data_dir, "policy", "preview", "1")
    assert sorted(t["tag"] for t in preview["tags"]) == ["v1", "v2"]
    assert preview["unique_bytes"] == 1400
    assert "previewed" in berth(data_dir, "policy", "list")
    berth(data_dir, "policy", "disable", "1")
    assert "disabled" in berth(data_dir, "policy", "list")
    berth(data_dir, "policy", "enable", "1")
    ran = berth_json(data_dir, "policy", "run", "1")
    assert ran["tags"] == preview["tags"]

    dry = berth_json(data_dir, "gc", "--dry-run")
    assert (dry["blobs"], dry["blob_bytes"]) == (3, 1405)
    assert "would remove now" in berth(data_dir, "gc", "--dry-run")
    done = berth_json(data_dir, "gc")
    assert (done["blobs"], done["bytes"]) == (3, 1405)
    assert berth_json(data_dir, "gc")["blobs"] == 0

    report = berth_json(data_dir, "fsck")
    assert report["clean"]
    assert report["checked"] == 2
    (data_dir / "storage" / "blobs" / "sha256" / "zz").mkdir(parents=True)
    (data_dir / "storage" / "blobs" / "sha256" / "zz" / "stray").write_bytes(b"?")
    assert "orphan: blobs/sha256/zz/stray" in berth(data_dir, "fsck")
    assert "removed: blobs/sha256/zz/stray" in berth(data_dir, "fsck", "--repair")
    assert berth(data_dir, "fsck", "--no-verify").strip().endswith("clean")
    berth(data_dir, "policy", "delete", "1")
    assert berth(data_dir, "policy", "list") == ""
