"""Manifests: PUT, GET, HEAD and DELETE by tag and by digest, every supported media type, stored
byte-for-byte, and validated on PUT (JSON, schema, media type, referenced content, size)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.api.oci import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    EMPTY_JSON,
    EMPTY_JSON_DIGEST,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    assert_error,
    blob_data,
    call_asgi,
    descriptor,
    digest,
    image_manifest,
    index_manifest,
    push_blob,
    push_image,
    put_manifest,
    tags_of,
)

NAME = "team/app"
CONFIG = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
LAYER = blob_data("manifest-layer", 2048)
MAX_MANIFEST = 4 * 1024 * 1024


@pytest.fixture
async def blobs(client: httpx.AsyncClient) -> None:
    """CONFIG and LAYER are in NAME."""
    await push_blob(client, NAME, CONFIG)
    await push_blob(client, NAME, LAYER)


def manifest_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, CONFIG),
        "layers": [descriptor(OCI_LAYER, LAYER)],
    }
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def encode(doc: object) -> bytes:
    return json.dumps(doc).encode()


async def assert_no_manifest(client: httpx.AsyncClient, reference: str) -> None:
    assert_error(await client.get(f"/v2/{NAME}/manifests/{reference}"), 404, "MANIFEST_UNKNOWN")


# -- round trips -------------------------------------------------------------------------


async def test_put_and_get_by_tag_and_digest(client: httpx.AsyncClient, blobs: None) -> None:
    payload = image_manifest(CONFIG, [LAYER])
    d = digest(payload)
    resp = await put_manifest(client, NAME, "v1", payload)
    assert resp.status_code == 201
    assert resp.headers["docker-content-digest"] == d
    assert resp.headers["location"].endswith(f"/v2/{NAME}/manifests/{d}")
    assert "oci-subject" not in resp.headers

    for reference in ("v1", d):
        got = await client.get(
            f"/v2/{NAME}/manifests/{reference}", headers={"accept": OCI_MANIFEST}
        )
        assert got.status_code == 200
        assert got.content == payload
        assert got.headers["content-type"] == OCI_MANIFEST
        assert got.headers["docker-content-digest"] == d
        assert got.headers["content-length"] == str(len(payload))

    via_location = await client.get(resp.headers["location"])
    assert via_location.content == payload


async def test_head_by_tag_and_digest(client: httpx.AsyncClient, blobs: None) -> None:
    payload = image_manifest(CONFIG, [LAYER])
    assert (await put_manifest(client, NAME, "v1", payload)).status_code == 201
    for reference in ("v1", digest(payload)):
        resp = await client.head(f"/v2/{NAME}/manifests/{reference}")
        assert resp.status_code == 200
        assert resp.content == b""
        assert resp.headers["content-length"] == str(len(payload))
        assert resp.headers["content-type"] == OCI_MANIFEST
        assert resp.headers["docker-content-digest"] == digest(payload)


async def test_missing_manifest_is_404(client: httpx.AsyncClient, blobs: None) -> None:
    await assert_no_manifest(client, "nope")
    await assert_no_manifest(client, digest(b"nope"))
    assert_error(await client.head(f"/v2/{NAME}/manifests/nope"), 404, "MANIFEST_UNKNOWN")


async def test_manifest_in_unknown_repository_is_404(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v2/no/such/manifests/latest")
    assert resp.status_code == 404
    assert resp.json()["errors"][0]["code"] in {"MANIFEST_UNKNOWN", "NAME_UNKNOWN"}


async def test_put_by_digest_without_a_tag(client: httpx.AsyncClient, blobs: None) -> None:
    payload = image_manifest(CONFIG, [LAYER])
    d = digest(payload)
    resp = await put_manifest(client, NAME, d, payload)
    assert resp.status_code == 201
    assert resp.headers["docker-content-digest"] == d
    assert (await client.get(f"/v2/{NAME}/manifests/{d}")).content == payload
    assert await tags_of(client, NAME) == []


async def test_put_by_sha512_digest(client: httpx.AsyncClient, blobs: None) -> None:
    payload = image_manifest(CONFIG, [LAYER])
    d = digest(payload, "sha512")
    resp = await put_manifest(client, NAME, d, payload)
    assert resp.status_code == 201
    assert resp.headers["docker-content-digest"] == d
    got = await client.get(f"/v2/{NAME}/manifests/{d}")
    assert got.status_code == 200
    assert got.content == payload
    assert got.headers["docker-content-digest"] == d


async def test_manifest_naming_sha512_blobs(client: httpx.AsyncClient) -> None:
    config_digest = await push_blob(client, NAME, CONFIG, "sha512")
    layer_digest = await push_blob(client, NAME, LAYER, "sha512")
    doc = manifest_doc(
        config={"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(CONFIG)},
        layers=[{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(LAYER)}],
    )
    payload = encode(doc)
    assert (await put_manifest(client, NAME, "v512", payload)).status_code == 201
    assert (await client.get(f"/v2/{NAME}/manifests/v512")).content == payload


async def test_digest_that_does_not_match_the_body_is_400(
    client: httpx.AsyncClient, blobs: None
) -> None:
    payload = image_manifest(CONFIG, [LAYER])
    wrong = digest(payload + b" ")
    assert_error(await put_manifest(client, NAME, wrong, payload), 400, "DIGEST_INVALID")
    await assert_no_manifest(client, wrong)
    await assert_no_manifest(client, digest(payload))


@pytest.mark.parametrize("reference", ["sha256:totallywrong", "sha256:" + "0" * 63, "md5:abc"])
async def test_malformed_digest_reference_is_400_to_put_and_unknown_to_read(
    client: httpx.AsyncClient, blobs: None, reference: str
) -> None:
    payload = image_manifest(CONFIG, [LAYER])
    assert_error(await put_manifest(client, NAME, reference, payload), 400, "DIGEST_INVALID")
    # A read names something to look up: whatever its spelling, it names no manifest.
    assert_error(await client.get(f"/v2/{NAME}/manifests/{reference}"), 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize("reference", [".INVALID_MANIFEST_NAME", "-dash", "a" * 129, "bad!tag"])
async def test_reading_a_reference_that_is_no_tag_is_404(
    client: httpx.AsyncClient, blobs: None, reference: str
) -> None:
    """The OCI conformance suite (and every client probing for a tag) expects 404
    MANIFEST_UNKNOWN for a reference that does not exist, whatever its spelling."""
    payload = image_manifest(CONFIG, [LAYER])
    assert (await put_manifest(client, NAME, "v1", payload)).status_code == 201
    got = await client.get(f"/v2/{NAME}/manifests/{reference}")
    assert_error(got, 404, "MANIFEST_UNKNOWN")
    head = await client.head(f"/v2/{NAME}/manifests/{reference}")
    assert head.status_code == 404
    assert head.content == b""
    # A write with the same reference is still refused as malformed, and stores nothing.
    assert_error(await put_manifest(client, NAME, reference, payload), 400, "NAME_INVALID")
    assert await tags_of(client, NAME) == ["v1"]


async def test_stored_byte_for_byte(client: httpx.AsyncClient, blobs: None) -> None:
    """Odd whitespace, key order, escapes and a trailing newline all survive; the digest is the
    digest of these exact bytes."""
    config = json.dumps(descriptor(OCI_CONFIG, CONFIG), separators=(" ,", ":   "))
    layer = json.dumps(descriptor(OCI_LAYER, LAYER), indent=7)
    payload = (
        '{\n\t"layers":[ ' + layer + ' ] ,\r\n  "annotations" : {"caf\\u00e9":"cr\u00e8me",'
        ' "z":"1",  "a":"2"},\n"config"  :' + config + ',  "mediaType" :"' + OCI_MANIFEST + '",'
        '\n\n  "schemaVersion":2   }\n\n'
    ).encode()
    compact = encode(json.loads(payload))
    assert compact != payload
    resp = await put_manifest(client, NAME, "odd", payload)
    assert resp.status_code == 201, resp.text
    assert resp.headers["docker-content-digest"] == digest(payload)
    got = await client.get(f"/v2/{NAME}/manifests/odd")
    assert got.content == payload
    assert got.headers["docker-content-digest"] == digest(payload)

    # The same JSON written differently is a different manifest.
    assert (await put_manifest(client, NAME, "compact", compact)).status_code == 201
    assert (await client.get(f"/v2/{NAME}/manifests/compact")).content == compact
    assert (await client.get(f"/v2/{NAME}/manifests/{digest(payload)}")).content == payload


async def test_media_type_taken_from_content_type(client: httpx.AsyncClient, blobs: None) -> None:
    payload = image_manifest(CONFIG, [LAYER], media_type=None)
    assert b"mediaType" in payload  # the descriptors have one; the manifest itself does not
    assert "mediaType" not in json.loads(payload)
    resp = await put_manifest(client, NAME, "v1", payload, f"{OCI_MANIFEST}; charset=utf-8")
    assert resp.status_code == 201
    got = await client.get(f"/v2/{NAME}/manifests/v1")
    assert got.headers["content-type"] == OCI_MANIFEST
    assert got.content == payload


async def test_index_media_type_taken_from_content_type(
    client: httpx.AsyncClient, blobs: None
) -> None:
    child = image_manifest(CONFIG, [LAYER])
    assert (await put_manifest(client, NAME, digest(child), child)).status_code == 201
    payload = index_manifest([child], media_type=None)
    assert (await put_manifest(client, NAME, "multi", payload, OCI_INDEX)).status_code == 201
    got = await client.get(f"/v2/{NAME}/manifests/multi")
    assert got.headers["content-type"] == OCI_INDEX
    assert got.content == payload


async def test_manifest_with_no_layers_is_accepted(client: httpx.AsyncClient, blobs: None) -> None:
    payload = encode(manifest_doc(layers=[]))
    assert (await put_manifest(client, NAME, "nolayers", payload)).status_code == 201
    assert (await client.get(f"/v2/{NAME}/manifests/nolayers")).content == payload


async def test_non_distributable_layers_need_not_be_pushed(
    client: httpx.AsyncClient, blobs: None
) -> None:
    foreign = {
        "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "digest": digest(b"somewhere else"),
        "size": 14,
        "urls": ["https://example.com/layer"],
    }
    payload = encode(manifest_doc(layers=[foreign, descriptor(OCI_LAYER, LAYER)]))
    assert (await put_manifest(client, NAME, "foreign", payload)).status_code == 201


async def test_oci_index(client: httpx.AsyncClient) -> None:
    amd, amd_payload = await push_image(client, NAME, "amd64", seed="amd64")
    arm, arm_payload = await push_image(client, NAME, "arm64", seed="arm64")
    payload = index_manifest([amd_payload, arm_payload])
    resp = await put_manifest(client, NAME, "multi", payload, OCI_INDEX)
    assert resp.status_code == 201
    got = await client.get(f"/v2/{NAME}/manifests/multi")
    assert got.status_code == 200
    assert got.content == payload
    assert got.headers["content-type"] == OCI_INDEX
    listed = [m["digest"] for m in got.json()["manifests"]]
    assert listed == [amd, arm]
    for child in listed:
        assert (await client.get(f"/v2/{NAME}/manifests/{child}")).status_code == 200


async def test_docker_schema2_manifest_and_manifest_list(client: httpx.AsyncClient) -> None:
    one, one_payload = await push_image(
        client, NAME, "d1", seed="docker1", media_type=DOCKER_MANIFEST
    )
    two, two_payload = await push_image(
        client, NAME, "d2", seed="docker2", media_type=DOCKER_MANIFEST
    )
    got = await client.get(f"/v2/{NAME}/manifests/d1")
    assert got.headers["content-type"] == DOCKER_MANIFEST
    assert got.content == one_payload

    listing = index_manifest(
        [one_payload, two_payload], media_type=DOCKER_LIST, child_type=DOCKER_MANIFEST
    )
    resp = await put_manifest(client, NAME, "dlist", listing, DOCKER_LIST)
    assert resp.status_code == 201
    got = await client.get(f"/v2/{NAME}/manifests/dlist")
    assert got.headers["content-type"] == DOCKER_LIST
    assert got.content == listing
    assert got.headers["docker-content-digest"] == digest(listing)
    assert [m["digest"] for m in got.json()["manifests"]] == [one, two]


async def test_artifact_with_artifact_type_and_empty_config(client: httpx.AsyncClient) -> None:
    assert digest(EMPTY_JSON) == EMPTY_JSON_DIGEST
    assert await push_blob(client, NAME, EMPTY_JSON) == EMPTY_JSON_DIGEST
    sbom = b'{"spdxVersion": "SPDX-2.3"}'
    await push_blob(client, NAME, sbom)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/spdx+json",
        "config": {"mediaType": OCI_EMPTY, "digest": EMPTY_JSON_DIGEST, "size": 2},
        "layers": [descriptor("application/spdx+json", sbom)],
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }
    payload = encode(doc)
    resp = await put_manifest(client, NAME, "sbom", payload)
    assert resp.status_code == 201
    got = await client.get(f"/v2/{NAME}/manifests/sbom")
    assert got.content == payload
    assert got.headers["content-type"] == OCI_MANIFEST
    empty = await client.get(f"/v2/{NAME}/blobs/{EMPTY_JSON_DIGEST}")
    assert empty.content == b"{}"


async def test_artifact_whose_only_layer_is_the_empty_blob(client: httpx.AsyncClient) -> None:
    await push_blob(client, NAME, EMPTY_JSON)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.thing",
        "config": {"mediaType": OCI_EMPTY, "digest": EMPTY_JSON_DIGEST, "size": 2},
        "layers": [{"mediaType": OCI_EMPTY, "digest": EMPTY_JSON_DIGEST, "size": 2}],
    }
    assert (await put_manifest(client, NAME, "thing", encode(doc))).status_code == 201


async def test_pushing_the_same_manifest_again(client: httpx.AsyncClient, blobs: None) -> None:
    payload = image_manifest(CONFIG, [LAYER])
    first = await put_manifest(client, NAME, "v1", payload)
    second = await put_manifest(client, NAME, "v1", payload)
    assert first.status_code == second.status_code == 201
    assert first.headers["docker-content-digest"] == second.headers["docker-content-digest"]
    assert (await client.get(f"/v2/{NAME}/manifests/v1")).content == payload


async def test_retagging_moves_the_tag_only(client: httpx.AsyncClient) -> None:
    old, old_payload = await push_image(client, NAME, "latest", seed="old")
    new, new_payload = await push_image(client, NAME, "latest", seed="new")
    assert old != new
    assert (await client.get(f"/v2/{NAME}/manifests/latest")).content == new_payload
    assert (await client.get(f"/v2/{NAME}/manifests/{old}")).content == old_payload
    assert await tags_of(client, NAME) == ["latest"]


@pytest.mark.parametrize("tag", ["a", "A_b.c-d", "_x", "9" * 128])
async def test_valid_tags(client: httpx.AsyncClient, blobs: None, tag: str) -> None:
    payload = image_manifest(CONFIG, [LAYER])
    assert (await put_manifest(client, NAME, tag, payload)).status_code == 201
    assert (await client.get(f"/v2/{NAME}/manifests/{tag}")).content == payload


@pytest.mark.parametrize("tag", ["-dash", ".dot", "a" * 129, "bad!tag", "tag+plus"])
async def test_invalid_tags_are_400(client: httpx.AsyncClient, blobs: None, tag: str) -> None:
    payload = image_manifest(CONFIG, [LAYER])
    resp = await put_manifest(client, NAME, tag, payload)
    assert_error(resp, 400, {"NAME_INVALID", "MANIFEST_INVALID"})
    assert await tags_of(client, NAME) == []


# -- delete ------------------------------------------------------------------------------


async def test_delete_by_tag_removes_only_the_tag(client: httpx.AsyncClient, blobs: None) -> None:
    payload = image_manifest(CONFIG, [LAYER])
    d = digest(payload)
    for tag in ("v1", "stable"):
        assert (await put_manifest(client, NAME, tag, payload)).status_code == 201
    resp = await client.delete(f"/v2/{NAME}/manifests/v1")
    assert resp.status_code == 202
    await assert_no_manifest(client, "v1")
    assert (await client.get(f"/v2/{NAME}/manifests/{d}")).content == payload
    assert (await client.get(f"/v2/{NAME}/manifests/stable")).content == payload
    assert await tags_of(client, NAME) == ["stable"]
    assert (await client.get(f"/v2/{NAME}/blobs/{digest(LAYER)}")).status_code == 200
    assert_error(await client.delete(f"/v2/{NAME}/manifests/v1"), 404, "MANIFEST_UNKNOWN")


async def test_delete_by_digest_removes_manifest_and_its_tags(
    client: httpx.AsyncClient, blobs: None
) -> None:
    payload = image_manifest(CONFIG, [LAYER])
    d = digest(payload)
    for tag in ("v1", "stable"):
        assert (await put_manifest(client, NAME, tag, payload)).status_code == 201
    other, _ = await push_image(client, NAME, "other", seed="other")
    resp = await client.delete(f"/v2/{NAME}/manifests/{d}")
    assert resp.status_code == 202
    await assert_no_manifest(client, d)
    await assert_no_manifest(client, "v1")
    await assert_no_manifest(client, "stable")
    assert_error(await client.head(f"/v2/{NAME}/manifests/{d}"), 404, "MANIFEST_UNKNOWN")
    assert await tags_of(client, NAME) == ["other"]
    assert (await client.get(f"/v2/{NAME}/manifests/{other}")).status_code == 200
    assert_error(await client.delete(f"/v2/{NAME}/manifests/{d}"), 404, "MANIFEST_UNKNOWN")


async def test_deleted_manifest_can_be_pushed_again(client: httpx.AsyncClient, blobs: None) -> None:
    payload = image_manifest(CONFIG, [LAYER])
    d = digest(payload)
    assert (await put_manifest(client, NAME, "v1", payload)).status_code == 201
    assert (await client.delete(f"/v2/{NAME}/manifests/{d}")).status_code == 202
    assert (await put_manifest(client, NAME, "v1", payload)).status_code == 201
    assert (await client.get(f"/v2/{NAME}/manifests/v1")).content == payload


async def test_delete_unknown_manifest_is_404(client: httpx.AsyncClient, blobs: None) -> None:
    assert_error(await client.delete(f"/v2/{NAME}/manifests/nope"), 404, "MANIFEST_UNKNOWN")
    assert_error(
        await client.delete(f"/v2/{NAME}/manifests/{digest(b'x')}"), 404, "MANIFEST_UNKNOWN"
    )


async def test_delete_of_a_manifest_an_index_lists_is_refused_cleanly(
    client: httpx.AsyncClient,
) -> None:
    child, child_payload = await push_image(client, NAME, "child")
    index = index_manifest([child_payload])
    assert (await put_manifest(client, NAME, "multi", index, OCI_INDEX)).status_code == 201
    resp = await client.delete(f"/v2/{NAME}/manifests/{child}")
    assert 400 <= resp.status_code < 500
    assert resp.json()["errors"]
    assert (await client.get(f"/v2/{NAME}/manifests/{child}")).content == child_payload
    # Once the index is gone, the child may go.
    assert (await client.delete(f"/v2/{NAME}/manifests/{digest(index)}")).status_code == 202
    assert (await client.delete(f"/v2/{NAME}/manifests/{child}")).status_code == 202


# -- validation ----------------------------------------------------------------------------


async def test_missing_layer_is_manifest_blob_unknown_and_no_tag(
    client: httpx.AsyncClient, blobs: None
) -> None:
    missing = blob_data("missing", 100)
    payload = image_manifest(CONFIG, [LAYER, missing])
    resp = await put_manifest(client, NAME, "v1", payload)
    assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")
    await assert_no_manifest(client, "v1")
    await assert_no_manifest(client, digest(payload))
    assert await tags_of(client, NAME) == []


async def test_missing_config_blob_is_manifest_blob_unknown(client: httpx.AsyncClient) -> None:
    await push_blob(client, NAME, LAYER)
    payload = image_manifest(CONFIG, [LAYER])
    assert_error(await put_manifest(client, NAME, "v1", payload), 400, "MANIFEST_BLOB_UNKNOWN")
    await assert_no_manifest(client, "v1")


async def test_blob_held_only_by_another_repository_is_unknown(client: httpx.AsyncClient) -> None:
    await push_blob(client, "team/elsewhere", CONFIG)
    await push_blob(client, "team/elsewhere", LAYER)
    await push_blob(client, NAME, b"something")
    payload = image_manifest(CONFIG, [LAYER])
    assert_error(await put_manifest(client, NAME, "v1", payload), 400, "MANIFEST_BLOB_UNKNOWN")
    await assert_no_manifest(client, "v1")


async def test_deleted_blob_is_unknown_to_a_later_manifest(
    client: httpx.AsyncClient, blobs: None
) -> None:
    assert (await client.delete(f"/v2/{NAME}/blobs/{digest(LAYER)}")).status_code == 202
    payload = image_manifest(CONFIG, [LAYER])
    assert_error(await put_manifest(client, NAME, "v1", payload), 400, "MANIFEST_BLOB_UNKNOWN")


async def test_descriptor_size_that_disagrees_with_the_blob_is_refused(
    client: httpx.AsyncClient, blobs: None
) -> None:
    layer = descriptor(OCI_LAYER, LAYER)
    layer["size"] += 1
    resp = await put_manifest(client, NAME, "v1", encode(manifest_doc(layers=[layer])))
    assert_error(resp, 400, {"MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "SIZE_INVALID"})
    await assert_no_manifest(client, "v1")


async def test_index_with_a_missing_child_is_manifest_blob_unknown(
    client: httpx.AsyncClient,
) -> None:
    _, present = await push_image(client, NAME, "present")
    absent = image_manifest(CONFIG, [LAYER])
    payload = index_manifest([present, absent])
    resp = await put_manifest(client, NAME, "multi", payload, OCI_INDEX)
    assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")
    await assert_no_manifest(client, "multi")
    await assert_no_manifest(client, digest(payload))


async def test_index_child_in_another_repository_is_unknown(client: httpx.AsyncClient) -> None:
    _, elsewhere = await push_image(client, "team/elsewhere", "v1")
    await push_blob(client, NAME, b"x")
    payload = index_manifest([elsewhere])
    resp = await put_manifest(client, NAME, "multi", payload, OCI_INDEX)
    assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")


INVALID: dict[str, tuple[bytes, str | None]] = {
    "not json": (b"this is not json", OCI_MANIFEST),
    "truncated json": (encode(manifest_doc())[:-5], OCI_MANIFEST),
    "not utf-8": (b'{"schemaVersion": 2, "x": "\xff\xfe"}', OCI_MANIFEST),
    "json array": (b"[]", OCI_MANIFEST),
    "json string": (b'"manifest"', OCI_MANIFEST),
    "empty body": (b"", OCI_MANIFEST),
    "deeply nested arrays": (b"[" * 100_000 + b"]" * 100_000, OCI_MANIFEST),
    "deeply nested inside a manifest": (
        b'{"schemaVersion": 2, "annotations": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_001,
        OCI_MANIFEST,
    ),
    "schemaVersion 1": (encode(manifest_doc(schemaVersion=1)), OCI_MANIFEST),
    "schemaVersion 3": (encode(manifest_doc(schemaVersion=3)), OCI_MANIFEST),
    "schemaVersion string": (encode(manifest_doc(schemaVersion="2")), OCI_MANIFEST),
    "schemaVersion missing": (encode(manifest_doc(schemaVersion=None)), OCI_MANIFEST),
    "config missing": (encode(manifest_doc(config=None)), OCI_MANIFEST),
    "config not an object": (encode(manifest_doc(config="sha256:abc")), OCI_MANIFEST),
    "config digest malformed": (
        encode(manifest_doc(config={"mediaType": OCI_CONFIG, "digest": "sha256:xyz", "size": 2})),
        OCI_MANIFEST,
    ),
    "config without mediaType": (
        encode(manifest_doc(config={"digest": digest(CONFIG), "size": len(CONFIG)})),
        OCI_MANIFEST,
    ),
    "layer size negative": (
        encode(
            manifest_doc(layers=[{"mediaType": OCI_LAYER, "digest": digest(LAYER), "size": -1}])
        ),
        OCI_MANIFEST,
    ),
    "layer size a string": (
        encode(
            manifest_doc(layers=[{"mediaType": OCI_LAYER, "digest": digest(LAYER), "size": "9"}])
        ),
        OCI_MANIFEST,
    ),
    "layers not a list": (encode(manifest_doc(layers={"a": 1})), OCI_MANIFEST),
    "annotations not strings": (encode(manifest_doc(annotations={"a": 1})), OCI_MANIFEST),
    "unknown media type": (
        encode(manifest_doc(mediaType="application/vnd.example.manifest+json")),
        "application/vnd.example.manifest+json",
    ),
    "content-type disagrees with mediaType": (encode(manifest_doc()), OCI_INDEX),
    "docker schema 1": (
        encode(
            {
                "schemaVersion": 1,
                "name": NAME,
                "tag": "v1",
                "fsLayers": [{"blobSum": digest(LAYER)}],
                "history": [],
            }
        ),
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    ),
    "index without manifests": (
        encode({"schemaVersion": 2, "mediaType": OCI_INDEX}),
        OCI_INDEX,
    ),
    "index manifests not a list": (
        encode({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": "none"}),
        OCI_INDEX,
    ),
    "docker manifest without layers": (
        encode(manifest_doc(mediaType=DOCKER_MANIFEST, layers=None)),
        DOCKER_MANIFEST,
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
async def test_invalid_manifest_is_400_manifest_invalid(
    client: httpx.AsyncClient, blobs: None, case: str
) -> None:
    payload, content_type = INVALID[case]
    resp = await put_manifest(client, NAME, "bad", payload, content_type)
    assert_error(resp, 400, "MANIFEST_INVALID")
    await assert_no_manifest(client, "bad")
    await assert_no_manifest(client, digest(payload))
    assert await tags_of(client, NAME) == []


def padded(size: int) -> bytes:
    """A valid manifest of exactly `size` bytes."""
    base = encode(manifest_doc(annotations={"pad": ""}))
    payload = encode(manifest_doc(annotations={"pad": "x" * (size - len(base))}))
    assert len(payload) == size
    return payload


async def test_manifest_of_exactly_4_mib_is_accepted(
    client: httpx.AsyncClient, blobs: None
) -> None:
    payload = padded(MAX_MANIFEST)
    resp = await put_manifest(client, NAME, "big", payload)
    assert resp.status_code == 201, resp.text[:300]
    assert (await client.get(f"/v2/{NAME}/manifests/big")).content == payload


async def test_manifest_over_4_mib_is_413(client: httpx.AsyncClient, blobs: None) -> None:
    payload = padded(MAX_MANIFEST + 1)
    resp = await put_manifest(client, NAME, "big", payload)
    assert resp.status_code == 413
    assert resp.json()["errors"]
    await assert_no_manifest(client, "big")


async def test_streamed_manifest_over_4_mib_is_413(app: Any, blobs: None) -> None:
    """No Content-Length: the limit holds while the body streams in."""
    payload = padded(MAX_MANIFEST + 100_000)
    chunks = [payload[i : i + 65536] for i in range(0, len(payload), 65536)]
    status, _, body = await call_asgi(
        app,
        "PUT",
        f"/v2/{NAME}/manifests/big".encode(),
        body=chunks,
        headers=[(b"content-type", OCI_MANIFEST.encode())],
    )
    assert status == 413
    assert json.loads(body)["errors"]
    status, _, _ = await call_asgi(app, "GET", f"/v2/{NAME}/manifests/big".encode())
    assert status == 404
