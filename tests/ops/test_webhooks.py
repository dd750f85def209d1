"""Webhook delivery: Distribution-style envelopes, signed, in order, to a real HTTP receiver
on loopback, including after it was down (retries with backoff on a fake clock); per-namespace
endpoints through /api/v1; the delivery log."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from appliance.backup import BackupError
from appliance.backup.create import create_backup
from appliance.backup.target import DirTarget
from appliance.metadata.events import ACTIONS
from appliance.webhooks.delivery import ENVELOPE_MEDIA_TYPE, PRUNE_INTERVAL
from appliance.webhooks.endpoints import add_endpoint
from appliance.webhooks.records import deliveries
from tests.api import oci
from tests.api.conftest import FakeClock, api_client, make_config
from tests.ops.conftest import Receiver, add_user, operations, start_receiver


async def test_events_arrive_in_order_signed_and_after_an_outage(
    data_dir: Path, clock: FakeClock, receiver: Receiver
) -> None:
    settings = {
        # A dead endpoint next to the live one: it must not hold the other back.
        "webhooks.endpoints": f"{receiver.url} http://127.0.0.1:9/dead",
        "webhooks.secret": "hook-secret",
        "webhooks.timeout": 2.0,
    }
    async with operations(data_dir, clock, **settings) as (services, app):
        assert services.ops is not None
        deliverer = services.ops.deliverer
        async with api_client(app) as admin:
            receiver.failing = True
            first, _ = await oci.push_image(admin, "team/app", "v1", seed="one")
            assert (await admin.get("/v2/team/app/manifests/v1")).status_code == 200
            assert await services.ops.pulls.flush() == 1
            assert await deliverer.run_once() == 0  # the receiver answers 503
            assert receiver.requests == []
            second, _ = await oci.push_image(admin, "team/app", "v2", seed="two")
            assert (await admin.delete("/v2/team/app/manifests/v2")).status_code == 202
            receiver.failing = False
            assert await deliverer.run_once() == 0  # still backing off: nothing sent
            clock.advance(2.5)
            delivered = await deliverer.run_once()
        assert delivered == 4
        events = receiver.events()
        assert [(e["action"], e["target"].get("tag")) for e in events] == [
            ("push", "v1"),
            ("pull", "v1"),
            ("push", "v2"),
            ("delete", "v2"),
        ]
        assert events[0]["target"]["digest"] == first
        assert events[0]["target"]["repository"] == "team/app"
        assert events[0]["target"]["mediaType"] == oci.OCI_MANIFEST
        assert events[0]["actor"] == {"name": "admin"}
        assert events[0]["request"]["addr"] == "127.0.0.1"
        assert events[2]["target"]["digest"] == second
        assert len({e["id"] for e in events}) == 4
        headers, body = receiver.requests[0]
        assert headers["content-type"] == ENVELOPE_MEDIA_TYPE
        expected = hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest()
        assert headers["x-berth-signature-256"] == f"sha256={expected}"
        log = await services.db.read(deliveries)
        statuses = [d["status"] for d in reversed(log) if d["status"] is not None]
        assert statuses == [503, 200]
        assert any(d["error"] and d["status"] is None for d in log)  # the dead one
        # Acknowledged events are forgotten once every endpoint has them (the dead one has
        # not: they are kept for it until the retention), but for the newest, which keeps
        # the numbering going.
        clock.advance(8 * 86400)
        await deliverer.run_once()
        left = await services.db.read(lambda tx: tx.scalar("SELECT MIN(id) FROM webhook_events"))
        assert left == 4


async def test_namespace_endpoints_get_only_their_namespace(
    data_dir: Path, clock: FakeClock, receiver: Receiver
) -> None:
    allow = {"webhooks.allow_private_targets": True}  # the receiver is on loopback
    async with (
        operations(data_dir, clock, **allow) as (services, app),
        api_client(app) as admin,
    ):
        assert services.ops is not None
        await add_user(admin, "dana", "dana-password-1")
        async with api_client(app, auth=("dana", "dana-password-1")) as dana:
            resp = await dana.post(
                "/api/v1/namespaces/dana/webhooks",
                json={"url": receiver.url, "actions": "push,delete"},
            )
            assert resp.status_code == 201, resp.text
            hook = resp.json()
            assert len(hook["secret"]) >= 32
            refused = await dana.post(
                "/api/v1/namespaces/team/webhooks", json={"url": receiver.url}
            )
            assert refused.status_code == 403
            bad = await dana.post("/api/v1/namespaces/dana/webhooks", json={"url": "ftp://x"})
            assert bad.status_code == 400
            await oci.push_image(dana, "dana/app", "1")
            await oci.push_image(admin, "other/app", "1")  # not dana's namespace
            assert (await dana.get("/v2/dana/app/manifests/1")).status_code == 200
            await services.ops.pulls.refresh(False)
            await services.ops.pulls.flush()
            assert await services.ops.deliverer.run_once() == 1
            events = receiver.events()
            assert [(e["action"], e["target"]["repository"]) for e in events] == [
                ("push", "dana/app")
            ]
            body = receiver.requests[0][1]
            signature = hmac.new(hook["secret"].encode(), body, hashlib.sha256).hexdigest()
            assert receiver.requests[0][0]["x-berth-signature-256"] == f"sha256={signature}"
            listed = (await dana.get("/api/v1/namespaces/dana/webhooks")).json()
            assert listed[0]["id"] == hook["id"]
            assert listed[0]["failures"] == 0
            assert "secret" not in listed[0]
            log = await dana.get(f"/api/v1/namespaces/dana/webhooks/{hook['id']}/deliveries")
            assert [d["status"] for d in log.json()] == [200]
            # The id names the webhook however it is written (leading zeros included).
            padded = await dana.get(f"/api/v1/namespaces/dana/webhooks/0{hook['id']}/deliveries")
            assert padded.json() == log.json()
            gone = await dana.delete(f"/api/v1/namespaces/dana/webhooks/{hook['id']}")
            assert gone.status_code == 200
            assert (await dana.get("/api/v1/namespaces/dana/webhooks")).json() == []


async def test_namespace_webhooks_may_not_call_inward(
    data_dir: Path, clock: FakeClock, receiver: Receiver
) -> None:
    async with operations(data_dir, clock) as (services, app), api_client(app) as admin:
        assert services.ops is not None
        for url in (
            receiver.url,
            "http://169.254.169.254/latest",
            "http://[::1]:80/x",
            "http://10.1.2.3/x",
            "http://localhost/x",
        ):
            resp = await admin.post("/api/v1/namespaces/admin/webhooks", json={"url": url})
            assert resp.status_code == 400, url
            assert "internal address" in resp.json()["error"]
        # Registered while allowed (or its name re-pointed since): refused at delivery.
        await services.db.write(
            lambda tx: add_endpoint(tx, "admin", "admin", receiver.url, actions="push")
        )
        await oci.push_image(admin, "admin/app", "1")
        assert await services.ops.deliverer.run_once() == 0
        assert receiver.requests == []
        log = await services.db.read(deliveries)
        assert "refused" in log[0]["error"]


async def test_a_failed_backup_reaches_instance_endpoints_only(
    data_dir: Path, clock: FakeClock, receiver: Receiver, tmp_path: Path
) -> None:
    """A backup that fails is an instance event: the instance-wide endpoint gets a `backup`
    event with the backup's id and error; a namespace endpoint that asked for every action
    gets nothing, since no repository of its namespace is involved."""
    settings = {"webhooks.endpoints": receiver.url, "webhooks.allow_private_targets": True}
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the backup target should be")
    async with (
        operations(data_dir, clock, **settings) as (services, app),
        api_client(app) as admin,
    ):
        assert services.ops is not None
        await add_user(admin, "dana", "dana-password-1")
        async with api_client(app, auth=("dana", "dana-password-1")) as dana:
            resp = await dana.post(
                "/api/v1/namespaces/dana/webhooks",
                json={"url": receiver.url + "/dana", "actions": ",".join(ACTIONS)},
            )
            assert resp.status_code == 201, resp.text
        with pytest.raises(BackupError):
            await create_backup(
                make_config(data_dir, **settings),
                services.db,
                services.registry.store,
                DirTarget(blocked),
                passphrase=None,
                clock=clock,
            )
        assert await services.ops.deliverer.run_once() == 1
    assert receiver.paths == ["/hook"]
    (event,) = receiver.events()
    assert event["action"] == "backup"
    assert event["target"] == {}
    assert event["berth"]["status"] == "failed"
    assert event["berth"]["error"]
    assert event["berth"]["where"] == str(blocked)


async def test_a_pass_counts_every_endpoint_whatever_finishes_last(
    data_dir: Path, clock: FakeClock, receiver: Receiver
) -> None:
    """The cause of the ordering test's flake: each endpoint's task added its count with
    `done += await ...`, which reads `done` before the await; the dead endpoint, finishing
    after the live one, wrote back 0 + 0 over the live one's 4. A slow failing endpoint next
    to a quick live one makes that order certain."""
    with start_receiver() as slow:
        slow.failing, slow.delay = True, 0.5
        settings = {"webhooks.endpoints": f"{receiver.url} {slow.url}", "webhooks.timeout": 5.0}
        async with operations(data_dir, clock, **settings) as (services, app):
            assert services.ops is not None
            async with api_client(app) as admin:
                await oci.push_image(admin, "team/app", "v1", seed="one")
                await oci.push_image(admin, "team/app", "v2", seed="two")
            assert await services.ops.deliverer.run_once() == 2
            log = await services.db.read(deliveries)
    assert len(receiver.events()) == 2
    assert sorted(d["status"] for d in log) == [200, 503]


async def test_events_after_the_queue_was_emptied_are_delivered(
    data_dir: Path, clock: FakeClock, receiver: Receiver
) -> None:
    """Once every endpoint had every event, housekeeping emptied the queue; SQLite then
    numbered the next event 1 again, behind the endpoint's cursor, and it was never sent."""
    settings = {"webhooks.endpoints": receiver.url}
    async with operations(data_dir, clock, **settings) as (services, app):
        assert services.ops is not None
        deliverer = services.ops.deliverer
        async with api_client(app) as admin:
            for tag in ("1", "2", "3"):
                await oci.push_image(admin, "team/app", tag, seed=tag)
            assert await deliverer.run_once() == 3
            clock.advance(PRUNE_INTERVAL + 1)
            assert await deliverer.run_once() == 0  # housekeeping: the queue is pruned
            await oci.push_image(admin, "team/app", "4", seed="4")
            assert await deliverer.run_once() == 1
    assert [e["target"]["tag"] for e in receiver.events()] == ["1", "2", "3", "4"]
