"""Manifest parsing and validation (`appliance.oci.manifest`): media types, what a manifest
refers to, and every way a payload can be refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from appliance.errors import ManifestInvalid
from appliance.oci import mediatypes as mt
from appliance.oci.digest import Digest
from appliance.oci.manifest import Descriptor, Manifest, parse

CONFIG = Digest.of(b"config")
LAYER_A = Digest.of(b"layer a")
LAYER_B = Digest.of(b"layer b")
CHILD = Digest.of(b"child manifest")
SUBJECT = Digest.of(b"subject manifest")
FOREIGN = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"


def desc(media_type: str, d: Digest, size: object = 10, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": str(d), "size": size, **extra}


def image(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": desc("application/vnd.oci.image.config.v1+json", CONFIG, 6),
        "layers": [
            desc("application/vnd.oci.image.layer.v1.tar+gzip", LAYER_A, 7),
            desc("application/vnd.oci.image.layer.v1.tar+gzip", LAYER_B, 7),
        ],
    }
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def index(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [desc(mt.OCI_MANIFEST, CHILD, 500, platform={"os": "linux"})],
    }
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def raw(doc: object) -> bytes:
    return json.dumps(doc).encode()


# -- what a manifest refers to -----------------------------------------------------------


def test_oci_image_manifest() -> None:
    m = parse(raw(image()), mt.OCI_MANIFEST)
    assert m.media_type == mt.OCI_MANIFEST
    assert not m.is_index
    assert m.config is not None
    assert m.config.digest == CONFIG
    assert m.config.size == 6
    assert [d.digest for d in m.layers] == [LAYER_A, LAYER_B]
    assert [d.digest for d in m.required_blobs] == [CONFIG, LAYER_A, LAYER_B]
    assert m.children == ()
    assert m.subject is None
    assert m.referrer_type == "application/vnd.oci.image.config.v1+json"


def test_oci_index() -> None:
    m = parse(raw(index()), mt.OCI_INDEX)
    assert m.is_index
    assert m.config is None
    assert m.required_blobs == ()
    assert [c.digest for c in m.children] == [CHILD]
    assert m.children[0].size == 500
    assert m.referrer_type is None


def test_docker_schema2_manifest() -> None:
    doc = image(
        mediaType=mt.DOCKER_MANIFEST,
        config=desc("application/vnd.docker.container.image.v1+json", CONFIG),
        layers=[desc("application/vnd.docker.image.rootfs.diff.tar.gzip", LAYER_A)],
    )
    m = parse(raw(doc), mt.DOCKER_MANIFEST)
    assert m.media_type == mt.DOCKER_MANIFEST
    assert [d.digest for d in m.required_blobs] == [CONFIG, LAYER_A]


def test_docker_manifest_list() -> None:
    doc = index(
        mediaType=mt.DOCKER_MANIFEST_LIST,
        manifests=[desc(mt.DOCKER_MANIFEST, CHILD), desc(mt.DOCKER_MANIFEST, LAYER_B)],
    )
    m = parse(raw(doc), mt.DOCKER_MANIFEST_LIST)
    assert m.is_index
    assert [c.digest for c in m.children] == [CHILD, LAYER_B]


def test_artifact_with_artifact_type_and_empty_config() -> None:
    empty = Digest.of(b"{}")
    doc = image(
        artifactType="application/spdx+json",
        config=desc(mt.OCI_EMPTY, empty, 2),
        layers=[desc("application/spdx+json", LAYER_A)],
        subject=desc(mt.OCI_MANIFEST, SUBJECT, 123),
        annotations={"org.example": "yes"},
    )
    m = parse(raw(doc), None)
    assert m.artifact_type == "application/spdx+json"
    assert m.referrer_type == "application/spdx+json"
    assert m.config is not None
    assert m.config.media_type == mt.OCI_EMPTY
    assert m.subject == Descriptor(mt.OCI_MANIFEST, SUBJECT, 123)
    assert m.annotations == {"org.example": "yes"}


def test_referrer_type_falls_back_to_the_config_media_type() -> None:
    doc = image(
        config=desc("application/vnd.example.sig", CONFIG), subject=desc(mt.OCI_MANIFEST, SUBJECT)
    )
    assert parse(raw(doc), None).referrer_type == "application/vnd.example.sig"


def test_index_with_subject_and_artifact_type() -> None:
    doc = index(
        artifactType="application/vnd.example.bundle", subject=desc(mt.OCI_MANIFEST, SUBJECT)
    )
    m = parse(raw(doc), mt.OCI_INDEX)
    assert m.referrer_type == "application/vnd.example.bundle"
    assert m.subject is not None
    assert m.subject.digest == SUBJECT


def test_empty_layers_are_allowed_for_oci() -> None:
    m = parse(raw(image(layers=[])), mt.OCI_MANIFEST)
    assert [d.digest for d in m.required_blobs] == [CONFIG]


def test_oci_layers_may_be_absent() -> None:
    assert parse(raw(image(layers=None)), mt.OCI_MANIFEST).layers == ()


def test_non_distributable_layers_are_not_required() -> None:
    doc = image(
        layers=[
            desc(FOREIGN, LAYER_A, urls=["https://example.com/a"]),
            desc("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", LAYER_B),
            desc("application/vnd.oci.image.layer.v1.tar", CHILD),
        ]
    )
    m = parse(raw(doc), None)
    assert len(m.layers) == 3
    assert m.layers[0].urls == ("https://example.com/a",)
    assert [d.digest for d in m.required_blobs] == [CONFIG, CHILD]


def test_descriptor_extras() -> None:
    layer = desc(
        "application/vnd.oci.image.layer.v1.tar",
        LAYER_A,
        artifactType="application/x",
        annotations={"k": "v"},
    )
    m = parse(raw(image(layers=[layer])), None)
    assert m.layers[0].as_json() == {
        "mediaType": "application/vnd.oci.image.layer.v1.tar",
        "digest": str(LAYER_A),
        "size": 10,
        "artifactType": "application/x",
        "annotations": {"k": "v"},
    }


def test_sha512_descriptors() -> None:
    config = Digest.of(b"config", "sha512")
    m = parse(raw(image(config=desc("application/vnd.oci.image.config.v1+json", config))), None)
    assert m.config is not None
    assert m.config.digest == config


def test_unknown_fields_are_ignored() -> None:
    doc = image(extra={"anything": [1, 2, 3]}, **{"x-custom": True})
    assert parse(raw(doc), None).media_type == mt.OCI_MANIFEST


def test_parse_never_changes_the_payload() -> None:
    payload = b'  {"schemaVersion":2, "config": ' + raw(desc("a/b", CONFIG)) + b"}  \n"
    before = bytes(payload)
    parse(payload, mt.OCI_MANIFEST)
    assert payload == before


# -- where the media type comes from -----------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (mt.OCI_MANIFEST, mt.OCI_MANIFEST),
        (f"{mt.OCI_MANIFEST}; charset=utf-8", mt.OCI_MANIFEST),
        (mt.OCI_MANIFEST.upper(), mt.OCI_MANIFEST),
        (mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST),
        (None, mt.OCI_MANIFEST),
        ("", mt.OCI_MANIFEST),
    ],
)
def test_media_type_from_content_type_when_the_body_has_none(
    content_type: str | None, expected: str
) -> None:
    assert parse(raw(image(mediaType=None)), content_type).media_type == expected


@pytest.mark.parametrize("content_type", [None, "", mt.OCI_INDEX])
def test_index_media_type_inferred_or_from_content_type(content_type: str | None) -> None:
    assert parse(raw(index(mediaType=None)), content_type).media_type == mt.OCI_INDEX


@pytest.mark.parametrize(
    "content_type", [None, "application/json", "application/octet-stream", mt.OCI_MANIFEST]
)
def test_body_media_type_wins_over_a_generic_content_type(content_type: str | None) -> None:
    assert parse(raw(image()), content_type).media_type == mt.OCI_MANIFEST


def test_media_type_is_a_frozen_record() -> None:
    m = parse(raw(image()), None)
    assert isinstance(m, Manifest)
    with pytest.raises(AttributeError):
        m.media_type = "x"  # type: ignore[misc]


# -- refused -----------------------------------------------------------------------------

INVALID: dict[str, tuple[bytes, str | None]] = {
    "not json": (b"{nope", mt.OCI_MANIFEST),
    "not utf-8": (b"\xff\xfe{}", mt.OCI_MANIFEST),
    "empty": (b"", mt.OCI_MANIFEST),
    "array": (b"[1, 2]", mt.OCI_MANIFEST),
    "number": (b"2", mt.OCI_MANIFEST),
    "null": (b"null", mt.OCI_MANIFEST),
    "schemaVersion 1": (raw(image(schemaVersion=1)), None),
    "schemaVersion missing": (raw(image(schemaVersion=None)), None),
    "schemaVersion string": (raw(image(schemaVersion="2")), None),
    "schemaVersion true": (raw(image(schemaVersion=True)), None),
    "schemaVersion float": (raw(image(schemaVersion=2.0)), None),
    "mediaType not a string": (raw(image(mediaType=5)), None),
    "mediaType unknown": (raw(image(mediaType="application/vnd.example+json")), None),
    "content-type unknown, body none": (raw(image(mediaType=None)), "application/json"),
    "content-type and body disagree": (raw(image()), mt.DOCKER_MANIFEST),
    "index content-type on an image": (raw(image()), mt.OCI_INDEX),
    "schema 1 body": (
        raw({"schemaVersion": 1, "mediaType": mt.DOCKER_SCHEMA1, "fsLayers": []}),
        None,
    ),
    "schema 1 signed by content-type": (
        raw({"schemaVersion": 1, "fsLayers": [], "signatures": []}),
        mt.DOCKER_SCHEMA1_SIGNED,
    ),
    "config missing": (raw(image(config=None)), None),
    "config null": (raw({**image(), "config": None}), None),
    "config a string": (raw(image(config=str(CONFIG))), None),
    "config without digest": (raw(image(config={"mediaType": "a/b", "size": 1})), None),
    "config digest not a string": (
        raw(image(config={"mediaType": "a/b", "digest": 1, "size": 1})),
        None,
    ),
    "config digest malformed": (
        raw(image(config={"mediaType": "a/b", "digest": "sha256:xyz", "size": 1})),
        None,
    ),
    "config digest unknown algorithm": (
        raw(image(config={"mediaType": "a/b", "digest": "md5:" + "a" * 32, "size": 1})),
        None,
    ),
    "config without size": (
        raw(image(config={"mediaType": "a/b", "digest": str(CONFIG)})),
        None,
    ),
    "config without mediaType": (raw(image(config={"digest": str(CONFIG), "size": 1})), None),
    "config empty mediaType": (raw(image(config=desc("", CONFIG))), None),
    "size negative": (raw(image(layers=[desc("a/b", LAYER_A, -1)])), None),
    "size float": (raw(image(layers=[desc("a/b", LAYER_A, 1.5)])), None),
    "size bool": (raw(image(layers=[desc("a/b", LAYER_A, True)])), None),
    "size string": (raw(image(layers=[desc("a/b", LAYER_A, "7")])), None),
    "layers an object": (raw(image(layers={"0": desc("a/b", LAYER_A)})), None),
    "layer not an object": (raw(image(layers=["sha256:abc"])), None),
    "urls not a list": (raw(image(layers=[desc(FOREIGN, LAYER_A, urls="https://x")])), None),
    "urls not strings": (raw(image(layers=[desc(FOREIGN, LAYER_A, urls=[1])])), None),
    "artifactType not a string": (raw(image(artifactType=["a"])), None),
    "descriptor artifactType not a string": (
        raw(image(layers=[desc("a/b", LAYER_A, artifactType=1)])),
        None,
    ),
    "annotations not an object": (raw(image(annotations=["a"])), None),
    "annotation value not a string": (raw(image(annotations={"a": 1})), None),
    "descriptor annotations not strings": (
        raw(image(layers=[desc("a/b", LAYER_A, annotations={"a": None})])),
        None,
    ),
    "subject not a descriptor": (raw(image(subject="sha256:abc")), None),
    "subject without digest": (raw(image(subject={"mediaType": "a/b", "size": 1})), None),
    "index without manifests": (raw(index(manifests=None)), mt.OCI_INDEX),
    "index manifests an object": (raw(index(manifests={})), mt.OCI_INDEX),
    "index child malformed": (raw(index(manifests=[{"digest": str(CHILD)}])), mt.OCI_INDEX),
    "docker manifest without layers": (
        raw(image(mediaType=mt.DOCKER_MANIFEST, layers=None)),
        mt.DOCKER_MANIFEST,
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_manifests_are_refused(case: str) -> None:
    payload, content_type = INVALID[case]
    with pytest.raises(ManifestInvalid) as info:
        parse(payload, content_type)
    message = info.value.message
    assert message.startswith("invalid manifest")
    assert len(message) < 1000


def test_error_messages_say_where() -> None:
    with pytest.raises(ManifestInvalid, match=r"layers\[1\]\.size"):
        parse(raw(image(layers=[desc("a/b", LAYER_A), desc("a/b", LAYER_B, -5)])), None)
    with pytest.raises(ManifestInvalid, match=r"config\.digest"):
        parse(raw(image(config={"mediaType": "a/b", "digest": "x", "size": 1})), None)
    with pytest.raises(ManifestInvalid, match="schemaVersion"):
        parse(raw(image(schemaVersion=1)), None)


def test_deeply_nested_json_is_refused_not_crashed() -> None:
    payload = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ManifestInvalid):
        parse(payload, mt.OCI_MANIFEST)
