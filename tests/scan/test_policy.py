"""Scanning through a running registry (in-process): the queue filled at push, the SBOM as a
referrer, findings in the management API and metrics, re-matching after an import, and the
pull policy with an expiring exception (injected clock); a malformed layer does not stop the
other scans."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from appliance.oci import manifest as manifests
from appliance.runtime.metrics import REGISTRY
from appliance.scan import vulndb
from appliance.scan.service import rematch_all
from appliance.server import Services
from tests.api.conftest import FakeClock
from tests.api.oci import assert_error, image_manifest, push_blob, put_manifest
from tests.api.oci import digest as digest_of
from tests.scan import fixtures as fx
from tests.scan.test_vulndb import osv_records

CYCLONEDX = "application/vnd.cyclonedx+json"


async def push_layers(client: httpx.AsyncClient, name: str, tag: str, layers: list[bytes]) -> str:
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}})
    for data in (config.encode(), *layers):
        await push_blob(client, name, data)
    payload = image_manifest(config.encode(), layers)
    resp = await put_manifest(client, name, tag, payload)
    assert resp.status_code == 201, resp.text
    return resp.headers["docker-content-digest"]


def debian_layer() -> bytes:
    return fx.gzip_layer(
        {
            "etc/os-release": fx.OS_RELEASE_DEBIAN,
            "var/lib/dpkg/status": fx.DPKG_STATUS,
            "app/node_modules/lodash/package.json": fx.npm_package("lodash", "4.17.20"),
        }
    )


async def import_advisories(services: Services, folder: Path, clock: FakeClock) -> None:
    db = services.db

    def run() -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, record in osv_records().items():
            (folder / f"{name}.json").write_text(json.dumps(record))
        vulndb.import_path(db.run_sync_write, folder, clock(), "test")
        rematch_all(db.run_sync_read, db.run_sync_write, clock())

    await trio.to_thread.run_sync(run)


def metric(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_push_scan_referrer_findings_and_policy(
    client: httpx.AsyncClient, services: Services, clock: FakeClock, tmp_path: Path
) -> None:
    resp = await client.post("/api/v1/namespaces", json={"name": "team"})
    assert resp.status_code == 201, resp.text
    digest = await push_layers(client, "team/app", "1", [debian_layer()])
    assert services.scanner is not None
    assert await services.scanner.run_queue() == 1
    assert await services.scanner.run_queue() == 0  # the queue is empty now

    # The SBOM is a referrer of the image, visible through the referrers API.
    resp = await client.get(f"/v2/team/app/referrers/{digest}")
    assert resp.status_code == 200
    (ref,) = resp.json()["manifests"]
    assert ref["artifactType"] == CYCLONEDX
    artifact = (await client.get(f"/v2/team/app/manifests/{ref['digest']}")).json()
    assert artifact["subject"]["digest"] == digest
    document = (await client.get(f"/v2/team/app/blobs/{artifact['layers'][0]['digest']}")).json()
    assert document["bomFormat"] == "CycloneDX"
    purls = {c.get("purl") for c in document["components"]}
    assert "pkg:npm/lodash@4.17.20" in purls
    assert "pkg:deb/debian/libssl3@3.0.11-1~deb12u2?arch=amd64&distro=debian-12" in purls

    # No advisories yet: no findings. Then an import re-matches the stored SBOM.
    query = {"repository": "team/app", "digest": digest}
    report = (await client.get("/api/v1/scan/reports", params=query)).json()
    assert (report["status"], report["findings"]) == ("ok", [])
    await import_advisories(services, tmp_path / "osv", clock)
    report = (await client.get("/api/v1/scan/reports", params=query)).json()
    assert [(f["advisory"], f["severity"]) for f in report["findings"]] == [
        ("DEBIAN-CVE-2023-0002", "critical"),
        ("GHSA-35jh-r3h4-6jhm", "high"),
        ("DEBIAN-CVE-2023-0004", "medium"),
        ("DEBIAN-CVE-2023-0005", "unknown"),
    ]
    # The new critical finding is queued as a webhook event for the repository.
    queued = await services.db.read(
        lambda tx: tx.execute(
            "SELECT repository, payload FROM webhook_events WHERE action = 'vulnerability'"
        )
    )
    assert [
        (r[0], [f["advisory"] for f in json.loads(r[1])["berth"]["findings"]]) for r in queued
    ] == [("team/app", ["DEBIAN-CVE-2023-0002"])]
    await services.scanner.run_queue()
    assert metric("berth_scan_findings", severity="critical") == 1
    assert metric("berth_scan_findings", severity="high") == 1
    status = (await client.get("/api/v1/vulndb")).json()
    assert status["advisories"] == len(osv_records())

    # Without a policy the image is served; a policy refusing critical findings stops it.
    assert (await client.get("/v2/team/app/manifests/1")).status_code == 200
    resp = await client.put(
        "/api/v1/namespaces/team/scan-policy", json={"block_severity": "critical"}
    )
    assert resp.status_code == 200, resp.text
    resp = await client.get("/v2/team/app/manifests/1")
    assert_error(resp, 403, "DENIED")
    message = resp.json()["errors"][0]["message"]
    assert "DEBIAN-CVE-2023-0002 (critical) in libssl3 3.0.11-1~deb12u2" in message
    assert "fixed in 3.0.13-1~deb12u1" in message
    assert (await client.head("/v2/team/app/manifests/1")).status_code == 200

    # An exception lets it through until it expires.
    resp = await client.put(
        "/api/v1/namespaces/team/scan-policy/exceptions/DEBIAN-CVE-2023-0002",
        json={"expires_at": clock() + 3600, "reason": "not reachable in this service"},
    )
    assert resp.status_code == 200, resp.text
    assert (await client.get("/v2/team/app/manifests/1")).status_code == 200
    clock.advance(3601)
    assert_error(await client.get("/v2/team/app/manifests/1"), 403, "DENIED")

    # A lower threshold names the worst finding that is not excepted.
    await client.put("/api/v1/namespaces/team/scan-policy", json={"block_severity": "medium"})
    await client.put(
        "/api/v1/namespaces/team/scan-policy/exceptions/DEBIAN-CVE-2023-0002",
        json={"expires_at": None},
    )
    resp = await client.get(f"/v2/team/app/manifests/{digest}")
    assert_error(resp, 403, "DENIED")
    assert "GHSA-35jh-r3h4-6jhm (high) in lodash" in resp.json()["errors"][0]["message"]

    # Every change was audited.
    actions = await services.db.read(
        lambda tx: [r[0] for r in tx.execute("SELECT action FROM audit_events ORDER BY id")]
    )
    assert actions.count("scan.policy.set") == 2
    assert actions.count("scan.exception.set") == 2
    assert "vulndb.import" in actions


async def test_unscanned_images_follow_the_policy(
    client: httpx.AsyncClient, services: Services
) -> None:
    await client.post("/api/v1/namespaces", json={"name": "team"})
    await push_layers(client, "team/new", "1", [debian_layer()])
    await client.put(
        "/api/v1/namespaces/team/scan-policy",
        json={"block_severity": "critical", "unscanned": "deny"},
    )
    resp = await client.get("/v2/team/new/manifests/1")
    assert_error(resp, 403, "DENIED")
    assert "has not been scanned" in resp.json()["errors"][0]["message"]
    await client.put(
        "/api/v1/namespaces/team/scan-policy",
        json={"block_severity": "critical", "unscanned": "default"},
    )
    assert (await client.get("/v2/team/new/manifests/1")).status_code == 200  # scan.unscanned
    resp = await client.put(
        "/api/v1/namespaces/team/scan-policy", json={"block_severity": "severe"}
    )
    assert resp.status_code == 400
    assert "block_severity must be one of" in resp.json()["error"]


async def test_a_malformed_layer_does_not_stop_other_scans(
    client: httpx.AsyncClient, services: Services
) -> None:
    bad = await push_layers(client, "team/bad", "1", [b"\x1f\x8b\x08\x00 not really gzip"])
    good = await push_layers(client, "team/good", "1", [debian_layer()])
    assert services.scanner is not None
    assert await services.scanner.run_queue() == 2
    reports: dict[str, Any] = {}
    for name, digest in (("team/bad", bad), ("team/good", good)):
        resp = await client.get(
            "/api/v1/scan/reports", params={"repository": name, "digest": digest}
        )
        reports[name] = resp.json()
    assert reports["team/bad"]["status"] == "error"
    assert "is not a readable tar archive" in reports["team/bad"]["error"]
    assert reports["team/good"]["status"] == "ok"
    assert reports["team/good"]["packages"] == 4


async def test_the_pull_gate_reads_the_database_only_after_a_change(
    client: httpx.AsyncClient, services: Services, clock: FakeClock, monkeypatch: Any
) -> None:
    """A manifest GET costs no query of its own: the gate reads the change counter only when
    the `scan` change stamp moved (a policy, an import or a scan, by any process)."""
    from appliance.scan import policy  # noqa: PLC0415

    calls: list[int] = []
    real = policy.generation

    def counting(tx: Any) -> int:
        calls.append(1)
        return real(tx)

    monkeypatch.setattr(policy, "generation", counting)
    await push_layers(client, "team/app", "1", [debian_layer()])
    async with trio.open_nursery() as nursery:
        # As a server does: on PostgreSQL the stamps are trusted while it listens.
        await nursery.start(services.db.watch_changes)
        with trio.fail_after(10):
            while not services.db.changes.trusted:  # noqa: ASYNC110 (a thread sets it)
                await trio.sleep(0.01)
        await _gate_reads_after_changes(client, services, clock, calls, vulndb)
        nursery.cancel_scope.cancel()


async def _gate_reads_after_changes(
    client: httpx.AsyncClient, services: Services, clock: FakeClock, calls: list[int], vulndb: Any
) -> None:
    for _ in range(20):
        assert (await client.get("/v2/team/app/manifests/1")).status_code == 200
    assert len(calls) == 1
    clock.advance(3600)  # time alone changes nothing
    for _ in range(5):
        assert (await client.get("/v2/team/app/manifests/1")).status_code == 200
    assert len(calls) == 1
    # Another process (the CLI, another worker) changes a policy: the next pull reads again.
    await services.db.write(vulndb.bump_generation)
    for _ in range(5):
        assert (await client.get("/v2/team/app/manifests/1")).status_code == 200
    assert len(calls) == 2


async def test_the_sbom_goes_with_its_image_and_frees_its_blobs(
    client: httpx.AsyncClient, services: Services
) -> None:
    """Deleting an image deletes the SBOM Berth attached to it in the same transaction, so the
    client can then delete every blob it pushed: what it sees does not depend on whether the
    scanner ran first (the OCI conformance suite's teardown)."""
    assert (await client.post("/api/v1/namespaces", json={"name": "team"})).status_code == 201
    layer = debian_layer()
    digest = await push_layers(client, "team/app", "1", [layer])
    assert services.scanner is not None
    assert await services.scanner.run_queue() == 1
    (ref,) = (await client.get(f"/v2/team/app/referrers/{digest}")).json()["manifests"]
    artifact = (await client.get(f"/v2/team/app/manifests/{ref['digest']}")).json()
    empty = artifact["config"]["digest"]

    # While the image stands, its blobs (and the SBOM's) are needed: 405, naming a manifest.
    refused = await client.delete(f"/v2/team/app/blobs/{empty}")
    assert_error(refused, 405, "UNSUPPORTED")
    assert refused.json()["errors"][0]["detail"] == {"manifest": ref["digest"]}

    assert (await client.delete(f"/v2/team/app/manifests/{digest}")).status_code == 202
    assert (await client.get(f"/v2/team/app/manifests/{ref['digest']}")).status_code == 404
    assert (await client.get(f"/v2/team/app/referrers/{digest}")).json()["manifests"] == []
    for blob in (empty, artifact["layers"][0]["digest"], digest_of(layer)):
        assert (await client.delete(f"/v2/team/app/blobs/{blob}")).status_code == 202, blob


async def test_a_scan_finishing_after_its_image_was_deleted_attaches_nothing(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await client.post("/api/v1/namespaces", json={"name": "team"})).status_code == 201
    digest = await push_layers(client, "team/app", "1", [debian_layer()])
    scanner = services.scanner
    assert scanner is not None
    extract = scanner._extract

    async def image_deleted_meanwhile(*args: Any) -> Any:
        contents = await extract(*args)  # the layers read (by the scan worker)
        deleted = await client.delete(f"/v2/team/app/manifests/{digest}")
        assert deleted.status_code == 202
        return contents

    monkeypatch.setattr(scanner, "_extract", image_deleted_meanwhile)
    record = await services.registry.manifest("team/app", digest)
    parsed = manifests.parse(record.payload, record.media_type)
    report = await scanner.scan_image("team/app", digest, parsed, len(record.payload))
    assert report.status == "ok"
    assert report.packages > 0
    stored = await services.db.read(
        lambda tx: tx.execute("SELECT digest, subject_digest FROM manifests")
    )
    assert stored == []  # no SBOM left behind for an image that is gone


async def test_an_image_without_packages_gets_a_report_and_no_referrer(
    client: httpx.AsyncClient, services: Services
) -> None:
    """An SBOM listing nothing is not attached: as a referrer it would tell a client nothing
    the report does not."""
    assert (await client.post("/api/v1/namespaces", json={"name": "team"})).status_code == 201
    layer = fx.gzip_layer({"test.txt": b"only a text file\n"})
    digest = await push_layers(client, "team/app", "1", [layer])
    assert services.scanner is not None
    assert await services.scanner.run_queue() == 1
    assert (await client.get(f"/v2/team/app/referrers/{digest}")).json()["manifests"] == []
    query = {"repository": "team/app", "digest": digest}
    report = (await client.get("/api/v1/scan/reports", params=query)).json()
    assert (report["status"], report["packages"], report["findings"]) == ("ok", 0, [])
