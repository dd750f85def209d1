"""The audit trail: each audited action appears once, with the right actor, source address and
request id; it is readable through /api/v1 with filters and exported by `berth audit export`."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from appliance.cli import main
from appliance.metadata import audit
from tests.api import oci
from tests.api.conftest import FakeClock, api_client
from tests.console.test_sessions import sign_in
from tests.ops.conftest import add_user, operations


async def test_each_change_is_audited_once_with_its_actor(data_dir: Path, clock: FakeClock) -> None:
    async with operations(data_dir, clock) as (services, app), api_client(app) as admin:
        await add_user(admin, "alice", "alice-password-1")
        async with api_client(app, auth=("alice", "alice-password-1")) as alice:
            first, _ = await oci.push_image(alice, "alice/app", "v1", seed="one")
            second, _ = await oci.push_image(alice, "alice/app", "v1", seed="two")  # moves v1
            resp = await alice.post("/api/v1/tokens", json={"name": "ci", "scopes": ["api"]})
            assert resp.status_code == 201
            token_id = resp.json()["id"]
            assert (await alice.delete(f"/api/v1/tokens/{token_id}")).status_code == 200
            hook = await alice.post(
                "/api/v1/namespaces/alice/webhooks", json={"url": "http://93.184.216.34/h"}
            )
            assert hook.status_code == 201, hook.text
            resp = await alice.delete("/v2/alice/app/manifests/v1")
            assert resp.status_code == 202
            resp = await alice.delete(f"/v2/alice/app/manifests/{first}")
            assert resp.status_code == 202
        async with api_client(app, auth=("alice", "wrong-password")) as wrong:
            assert (await wrong.get("/token", params={"service": "berth"})).status_code == 401
        request_id = "audit-check-1"
        resp = await admin.put(
            "/api/v1/namespaces/alice/members/admin",
            json={"role": "reader"},
            headers={"x-request-id": request_id},
        )
        assert resp.status_code == 200, resp.text
        events = await services.db.read(lambda tx: audit.query(tx, limit=1000))
    by_action = Counter((e["action"], e["actor"], e["target"]) for e in events)
    expected = {
        ("user.create", "admin", "alice"),
        ("manifest.push", "alice", f"alice/app@{first}"),
        ("manifest.push", "alice", f"alice/app@{second}"),
        ("tag.move", "alice", "alice/app:v1"),
        ("token.create", "alice", f"alice/{token_id}"),
        ("token.revoke", "alice", str(token_id)),
        ("tag.delete", "alice", "alice/app:v1"),
        ("manifest.delete", "alice", f"alice/app@{first}"),
        ("signin.failure", "alice", "alice"),
        ("member.set", "admin", "alice/admin"),
    }
    for key in expected:
        assert by_action[key] == 1, (key, by_action)
    webhook = [e for e in events if e["action"] == "webhook.create"]
    assert len(webhook) == 1
    assert webhook[0]["actor"] == "alice"
    move = next(e for e in events if e["action"] == "tag.move")
    assert move["details"] == {"from": first, "to": second}
    push = next(e for e in events if e["action"] == "manifest.push")
    assert push["source"] == "127.0.0.1"
    assert len(push["request_id"]) == 32
    member = next(e for e in events if e["action"] == "member.set")
    assert member["request_id"] == request_id


async def _seed(app: Any) -> None:
    async with api_client(app) as admin:
        await add_user(admin, "bob", "bob-password-1")
        await add_user(admin, "carol", "carol-password-1")
        await oci.push_image(admin, "bob/tool", "1.0")


async def test_audit_api_filters_and_pages(data_dir: Path, clock: FakeClock) -> None:
    async with operations(data_dir, clock) as (_, app), api_client(app) as admin:
        await _seed(app)
        resp = await admin.get("/api/v1/audit", params={"action": "user.create"})
        assert resp.status_code == 200
        names = [e["target"] for e in resp.json()["events"]]
        assert names == ["carol", "bob", "admin"]  # newest first
        resp = await admin.get("/api/v1/audit", params={"action": "user.*", "limit": 2})
        page = resp.json()
        assert [e["target"] for e in page["events"]] == ["carol", "bob"]
        resp = await admin.get(
            "/api/v1/audit", params={"action": "user.*", "limit": 2, "before": page["next"]}
        )
        assert [e["target"] for e in resp.json()["events"]] == ["admin"]
        resp = await admin.get("/api/v1/audit", params={"target": "bob/", "actor": "admin"})
        assert {e["action"] for e in resp.json()["events"]} == {"manifest.push"}
        resp = await admin.get("/api/v1/audit", params={"since": "2999-01-01"})
        assert resp.json()["events"] == []
        resp = await admin.get("/api/v1/audit", params={"since": "yesterday-ish"})
        assert resp.status_code == 400
        assert "not a time" in resp.json()["error"]
        async with api_client(app, auth=("bob", "bob-password-1")) as bob:
            assert (await bob.get("/api/v1/audit")).status_code == 403


async def test_audit_export_writes_jsonl_and_csv(data_dir: Path, clock: FakeClock) -> None:
    async with operations(data_dir, clock) as (_, app):
        await _seed(app)
    runner = CliRunner()
    env = {"BERTH_ADMIN_PASSWORD": "x"}
    result = runner.invoke(
        main,
        ["audit", "export", "--data-dir", str(data_dir), "--since", "1h", "--format", "jsonl"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["action"] for e in lines if e["action"] == "user.create"] == ["user.create"] * 3
    assert [e["id"] for e in lines] == sorted(e["id"] for e in lines)  # oldest first
    assert all(e["time"].endswith("Z") for e in lines)
    result = runner.invoke(
        main,
        [
            "audit",
            "export",
            "--data-dir",
            str(data_dir),
            "--action",
            "user.create",
            "--format",
            "csv",
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()
    assert rows[0].startswith("id,time,actor,action,target")
    assert len(rows) == 4
    result = runner.invoke(
        main, ["audit", "export", "--data-dir", str(data_dir), "--since", "later"], env=env
    )
    assert result.exit_code != 0
    assert "not a time" in result.output


async def test_retention_prunes_old_events(data_dir: Path, clock: FakeClock) -> None:
    async with operations(data_dir, clock) as (services, app):
        await _seed(app)
        db = services.db
        await db.write(lambda tx: audit.record(tx, "system", "old.thing", "x", at=1000.0))
        removed = await db.write(lambda tx: audit.prune(tx, 2000.0))
        left = await db.read(lambda tx: audit.query(tx, limit=1000))
    assert removed == 1
    assert "old.thing" not in {e["action"] for e in left}
    assert "user.create" in {e["action"] for e in left}


async def test_the_target_filter_is_one_prefix_match_in_the_api_cli_and_console(
    data_dir: Path, clock: FakeClock
) -> None:
    """`target=bob/` is everything under bob, and nothing that merely contains `bob/`
    (`carol/bob/...`), whichever of the three asks; `_` and `%` are plain characters."""
    async with operations(data_dir, clock) as (_, app), api_client(app) as admin:
        await _seed(app)
        await oci.push_image(admin, "carol/bob/tool", "1.0")
        resp = await admin.get("/api/v1/audit", params={"target": "bob/", "limit": 1000})
        assert resp.status_code == 200, resp.text
        api_targets = sorted(e["target"] for e in resp.json()["events"])
        resp = await admin.get("/api/v1/audit", params={"target": "b_b/", "limit": 1000})
        assert resp.json()["events"] == []
        async with api_client(app, auth=None) as browser:
            signed_in = await sign_in(browser)
            cookie = {"cookie": f"berth_session={signed_in.cookies['berth_session']}"}
            page = await browser.get("/audit", params={"repository": "bob/"}, headers=cookie)
            assert page.status_code == 200, page.text[:300]
            table = page.text.split('<table id="audit">', 1)[1].split("</table>", 1)[0]
            rows = re.findall(r"<tr><td>.*?</td><td>.*?</td><td>.*?</td><td>(.*?)</td>", table)
            console_targets = sorted(rows)
            page = await browser.get("/audit", params={"repository": "b%b/"}, headers=cookie)
            assert "No events match." in page.text
    result = CliRunner().invoke(
        main,
        ["audit", "export", "--data-dir", str(data_dir), "--target", "bob/"],
        env={"BERTH_ADMIN_PASSWORD": "x"},
    )
    assert result.exit_code == 0, result.output
    cli_targets = sorted(json.loads(line)["target"] for line in result.stdout.splitlines())
    assert api_targets
    assert all(t.startswith("bob/") for t in api_targets), api_targets
    assert api_targets == console_targets == cli_targets
