"""The referrers API: OCI-Subject on PUT, the referrers index, artifactType filtering."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.api.oci import (
    EMPTY_JSON,
    EMPTY_JSON_DIGEST,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    assert_error,
    descriptor,
    digest,
    push_blob,
    push_image,
    put_manifest,
)

NAME = "team/app"
SBOM = "application/spdx+json"
SIGNATURE = "application/vnd.example.signature"
ANNOTATION = "org.example.note"


def artifact(
    subject_digest: str,
    subject_size: int,
    *,
    artifact_type: str | None,
    note: str,
    config_type: str = OCI_EMPTY,
    config: bytes = EMPTY_JSON,
) -> bytes:
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
    if artifact_type is not None:
        doc["artifactType"] = artifact_type
    doc["config"] = {"mediaType": config_type, "digest": digest(config), "size": len(config)}
    doc["layers"] = [descriptor(OCI_EMPTY, EMPTY_JSON)]
    doc["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": subject_size}
    doc["annotations"] = {ANNOTATION: note}
    return json.dumps(doc).encode()


class World:
    subject: str
    subject_payload: bytes
    referrers: dict[str, bytes]


@pytest.fixture
async def world(client: httpx.AsyncClient) -> World:
    """A subject image and three referrers: two of type SBOM, one typed by its config."""
    w = World()
    w.subject, w.subject_payload = await push_image(client, NAME, "v1")
    assert await push_blob(client, NAME, EMPTY_JSON) == EMPTY_JSON_DIGEST
    sig_config = b'{"sig": true}'
    await push_blob(client, NAME, sig_config)
    size = len(w.subject_payload)
    payloads = [
        artifact(w.subject, size, artifact_type=SBOM, note="sbom-1"),
        artifact(w.subject, size, artifact_type=SBOM, note="sbom-2"),
        artifact(
            w.subject,
            size,
            artifact_type=None,
            note="signature",
            config_type=SIGNATURE,
            config=sig_config,
        ),
    ]
    w.referrers = {}
    for payload in payloads:
        d = digest(payload)
        resp = await put_manifest(client, NAME, d, payload)
        assert resp.status_code == 201, resp.text
        assert resp.headers["oci-subject"] == w.subject
        w.referrers[d] = payload
    return w


def check_index(resp: httpx.Response) -> list[dict[str, Any]]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == OCI_INDEX
    body = resp.json()
    assert body["schemaVersion"] == 2
    assert body["mediaType"] == OCI_INDEX
    manifests: list[dict[str, Any]] = body["manifests"]
    return manifests


async def test_lists_every_referrer_with_its_descriptor(
    client: httpx.AsyncClient, world: World
) -> None:
    listed = check_index(await client.get(f"/v2/{NAME}/referrers/{world.subject}"))
    assert sorted(m["digest"] for m in listed) == sorted(world.referrers)
    for entry in listed:
        payload = world.referrers[entry["digest"]]
        doc = json.loads(payload)
        assert entry["mediaType"] == OCI_MANIFEST
        assert entry["size"] == len(payload)
        assert entry["annotations"] == doc["annotations"]
        assert entry["artifactType"] == doc.get("artifactType", doc["config"]["mediaType"])


async def test_artifact_type_filter(client: httpx.AsyncClient, world: World) -> None:
    resp = await client.get(f"/v2/{NAME}/referrers/{world.subject}", params={"artifactType": SBOM})
    listed = check_index(resp)
    assert resp.headers["oci-filters-applied"] == "artifactType"
    assert len(listed) == 2
    assert {m["annotations"][ANNOTATION] for m in listed} == {"sbom-1", "sbom-2"}
    assert all(m["artifactType"] == SBOM for m in listed)


async def test_filter_by_the_config_media_type(client: httpx.AsyncClient, world: World) -> None:
    resp = await client.get(
        f"/v2/{NAME}/referrers/{world.subject}", params={"artifactType": SIGNATURE}
    )
    listed = check_index(resp)
    assert [m["annotations"][ANNOTATION] for m in listed] == ["signature"]


async def test_filter_matching_nothing(client: httpx.AsyncClient, world: World) -> None:
    resp = await client.get(
        f"/v2/{NAME}/referrers/{world.subject}", params={"artifactType": "application/none"}
    )
    assert check_index(resp) == []
    assert resp.headers["oci-filters-applied"] == "artifactType"


async def test_no_filter_header_without_a_filter(client: httpx.AsyncClient, world: World) -> None:
    resp = await client.get(f"/v2/{NAME}/referrers/{world.subject}")
    assert "oci-filters-applied" not in resp.headers


async def test_unknown_subject_gives_an_empty_index(
    client: httpx.AsyncClient, world: World
) -> None:
    resp = await client.get(f"/v2/{NAME}/referrers/{digest(b'unknown')}")
    assert check_index(resp) == []


async def test_unknown_repository_gives_an_empty_index_or_404(client: httpx.AsyncClient) -> None:
    resp = await client.get(f"/v2/never/pushed/referrers/{digest(b'unknown')}")
    if resp.status_code == 404:
        assert resp.json()["errors"][0]["code"] == "NAME_UNKNOWN"
    else:
        assert check_index(resp) == []


async def test_referrer_pushed_before_its_subject(client: httpx.AsyncClient) -> None:
    await push_blob(client, NAME, EMPTY_JSON)
    future = digest(b"subject that does not exist yet")
    payload = artifact(future, 100, artifact_type=SBOM, note="early")
    resp = await put_manifest(client, NAME, digest(payload), payload)
    assert resp.status_code == 201
    assert resp.headers["oci-subject"] == future
    listed = check_index(await client.get(f"/v2/{NAME}/referrers/{future}"))
    assert [m["digest"] for m in listed] == [digest(payload)]


async def test_referrers_are_per_repository(client: httpx.AsyncClient, world: World) -> None:
    await push_blob(client, "team/other", EMPTY_JSON)
    payload = artifact(world.subject, 10, artifact_type=SBOM, note="elsewhere")
    assert (await put_manifest(client, "team/other", "x", payload)).status_code == 201
    listed = check_index(await client.get(f"/v2/{NAME}/referrers/{world.subject}"))
    assert digest(payload) not in {m["digest"] for m in listed}
    other = check_index(await client.get(f"/v2/team/other/referrers/{world.subject}"))
    assert [m["digest"] for m in other] == [digest(payload)]


async def test_deleted_referrer_leaves_the_list(client: httpx.AsyncClient, world: World) -> None:
    gone = sorted(world.referrers)[0]
    assert (await client.delete(f"/v2/{NAME}/manifests/{gone}")).status_code == 202
    listed = check_index(await client.get(f"/v2/{NAME}/referrers/{world.subject}"))
    assert sorted(m["digest"] for m in listed) == sorted(set(world.referrers) - {gone})


async def test_index_with_a_subject(client: httpx.AsyncClient, world: World) -> None:
    child = next(iter(world.referrers.values()))
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "artifactType": "application/vnd.example.bundle",
        "manifests": [descriptor(OCI_MANIFEST, child)],
        "subject": {
            "mediaType": OCI_MANIFEST,
            "digest": world.subject,
            "size": len(world.subject_payload),
        },
        "annotations": {ANNOTATION: "bundle"},
    }
    payload = json.dumps(doc).encode()
    resp = await put_manifest(client, NAME, "bundle", payload, OCI_INDEX)
    assert resp.status_code == 201
    assert resp.headers["oci-subject"] == world.subject
    listed = check_index(
        await client.get(
            f"/v2/{NAME}/referrers/{world.subject}",
            params={"artifactType": "application/vnd.example.bundle"},
        )
    )
    assert listed == [
        {
            "mediaType": OCI_INDEX,
            "digest": digest(payload),
            "size": len(payload),
            "artifactType": "application/vnd.example.bundle",
            "annotations": {ANNOTATION: "bundle"},
        }
    ]


async def test_manifest_without_subject_has_no_oci_subject_header(
    client: httpx.AsyncClient,
) -> None:
    config, layer = b"{}", b"layer"
    await push_blob(client, NAME, config)
    await push_blob(client, NAME, layer)
    payload = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_EMPTY, config),
            "layers": [descriptor("application/octet-stream", layer)],
        }
    ).encode()
    resp = await put_manifest(client, NAME, "plain", payload)
    assert resp.status_code == 201
    assert "oci-subject" not in resp.headers


@pytest.mark.parametrize("reference", ["latest", "sha256:short", "sha256:" + "Z" * 64])
async def test_referrers_of_a_non_digest_is_400(client: httpx.AsyncClient, reference: str) -> None:
    assert_error(await client.get(f"/v2/{NAME}/referrers/{reference}"), 400, "DIGEST_INVALID")
