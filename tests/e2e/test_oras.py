"""OCI artifacts attached to an image (a signature, an SBOM) with the ORAS SDK, and referrers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.clients import Oras, Skopeo
from tests.support.images import OCI_INDEX, OCI_MANIFEST, BuiltImage, Descriptor, ImageCache
from tests.support.servers import Server

SIGNATURE_TYPE = "application/vnd.berth.e2e.signature.v1+json"
SBOM_TYPE = "application/vnd.berth.e2e.sbom.v1+json"


def subject_of(image: BuiltImage) -> Descriptor:
    data = image.content().manifests[image.manifest_digest]
    return Descriptor(image.media_type, image.manifest_digest, len(data))


def push_signature(oras: Oras, repo: str, subject: Descriptor, tmp: Path) -> tuple[str, bytes]:
    """The SDK's own push: the artifact type is the config's media type (pre-OCI-1.1 style)."""
    signature = tmp / "signature.json"
    signature.write_bytes(json.dumps({"signed": subject.digest}).encode())
    digest = oras.push(
        repo,
        "signature",
        [(signature, "application/vnd.berth.e2e.signature.payload")],
        config_media_type=SIGNATURE_TYPE,
        subject=subject,
    )
    return digest, signature.read_bytes()


@pytest.fixture
def busybox_subject(registry: Server, repo: str, images: ImageCache, skopeo: Skopeo) -> Descriptor:
    busybox = images.busybox()
    skopeo.push(busybox, f"docker://{registry.host}/{repo}:{busybox.tag}")
    return subject_of(busybox)


def test_push_and_pull_artifact_with_subject(
    repo: str, oras: Oras, busybox_subject: Descriptor, tmp_path: Path
) -> None:
    digest, payload = push_signature(oras, repo, busybox_subject, tmp_path)

    manifest = oras.manifest(repo, digest)
    assert manifest["subject"] == busybox_subject.to_json()
    assert manifest["config"]["mediaType"] == SIGNATURE_TYPE
    assert oras.manifest(repo, "signature") == manifest

    files = oras.pull(repo, "signature", tmp_path / "pulled")
    assert [f.name for f in files] == ["signature.json"]
    assert files[0].read_bytes() == payload


@pytest.mark.berth_only
def test_referrers_list_attached_artifacts(
    repo: str, oras: Oras, busybox_subject: Descriptor, tmp_path: Path
) -> None:
    signature, _ = push_signature(oras, repo, busybox_subject, tmp_path)
    sbom_file = tmp_path / "sbom.spdx.json"
    sbom_file.write_bytes(b'{"spdxVersion": "SPDX-2.3"}')
    sbom, sbom_bytes = oras.push_artifact(
        repo,
        "sbom",
        [(sbom_file, "application/spdx+json")],
        artifact_type=SBOM_TYPE,
        subject=busybox_subject,
    )

    response = oras.referrers(repo, busybox_subject.digest)

    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == OCI_INDEX
    index = response.json()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == OCI_INDEX
    listed = {d["digest"]: d for d in index["manifests"]}
    assert set(listed) == {signature, sbom}
    # artifactType is the manifest's own, or else its config's media type.
    assert listed[signature]["artifactType"] == SIGNATURE_TYPE
    assert listed[sbom]["artifactType"] == SBOM_TYPE
    assert listed[sbom]["mediaType"] == OCI_MANIFEST
    assert listed[sbom]["size"] == len(sbom_bytes)

    filtered = oras.referrers(repo, busybox_subject.digest, artifact_type=SBOM_TYPE)
    assert filtered.status_code == 200
    if "artifactType" in filtered.headers.get("OCI-Filters-Applied", ""):
        assert [d["digest"] for d in filtered.json()["manifests"]] == [sbom]
    else:
        assert {d["digest"] for d in filtered.json()["manifests"]} == {signature, sbom}


@pytest.mark.berth_only
def test_referrers_of_a_digest_without_any(
    repo: str, oras: Oras, busybox_subject: Descriptor
) -> None:
    """No referrers (even for an unknown subject) is an empty index, not an error."""
    response = oras.referrers(repo, "sha256:" + "0" * 64)

    assert response.status_code == 200
    assert response.json()["manifests"] == []
