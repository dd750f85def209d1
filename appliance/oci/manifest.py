"""Parse and validate manifest payloads without changing a byte of them.

A manifest is stored exactly as pushed; this module only reads it to learn its media type and
what it refers to: the blobs an image manifest needs, the children of an index, and the subject
of a referrer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import InvalidDigest, ManifestInvalid
from appliance.oci import mediatypes as mt
from appliance.oci.digest import Digest


@dataclass(frozen=True)
class Descriptor:
    """A reference to content: what it is, its digest and size, and optional extras."""

    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: Mapping[str, str] | None = None
    urls: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class Manifest:
    """What Berth needs to know of a manifest; the payload itself stays as pushed."""

    media_type: str
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    children: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: Mapping[str, str] | None = field(default=None)

    @property
    def is_index(self) -> bool:
        return self.media_type in mt.INDEXES

    @property
    def required_blobs(self) -> tuple[Descriptor, ...]:
        """Blobs the repository must hold for this manifest: config and distributable layers."""
        blobs = (self.config,) if self.config is not None else ()
        return blobs + tuple(d for d in self.layers if not _external(d))

    @property
    def referrer_type(self) -> str | None:
        """The artifact type the referrers API reports: `artifactType`, else the config's."""
        if self.artifact_type:
            return self.artifact_type
        return self.config.media_type if self.config is not None else None


def _external(d: Descriptor) -> bool:
    return d.media_type in mt.NON_DISTRIBUTABLE


def _invalid(message: str) -> ManifestInvalid:
    return ManifestInvalid(f"invalid manifest: {message}")


def _string_map(value: object, where: str) -> Mapping[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _invalid(f"{where} must be an object of strings")
    return value


def _descriptor(value: object, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise _invalid(f"{where} must be a descriptor object")
    media_type = value.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise _invalid(f"{where}.mediaType is missing")
    raw_digest = value.get("digest")
    if not isinstance(raw_digest, str):
        raise _invalid(f"{where}.digest is missing")
    try:
        digest = Digest.parse(raw_digest)
    except InvalidDigest as e:
        raise _invalid(f"{where}.digest: {e.message}") from None
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{where}.size must be a non-negative integer")
    artifact_type = value.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid(f"{where}.artifactType must be a string")
    urls = value.get("urls", [])
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise _invalid(f"{where}.urls must be a list of strings")
    return Descriptor(
        media_type,
        digest,
        size,
        artifact_type,
        _string_map(value.get("annotations"), f"{where}.annotations"),
        tuple(urls),
    )


def _descriptors(value: object, where: str) -> tuple[Descriptor, ...]:
    if not isinstance(value, list):
        raise _invalid(f"{where} must be a list")
    return tuple(_descriptor(v, f"{where}[{i}]") for i, v in enumerate(value))


def parse(payload: bytes, content_type: str | None) -> Manifest:
    """Validate `payload` as a manifest and return what it refers to.

    The media type is the payload's `mediaType`, or the request's Content-Type when the payload
    has none (older OCI clients omit it). Raises ManifestInvalid with a message that says what
    is wrong.
    """
    try:
        doc = json.loads(payload)
    except UnicodeDecodeError:
        raise _invalid("not JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        # Where, in our words: the decoder's own message is Python's, not the client's.
        raise _invalid(f"not JSON (at line {e.lineno}, column {e.colno})") from None
    except ValueError:
        raise _invalid("not JSON (a number too long to read)") from None
    except RecursionError:
        # A few hundred KiB of "[[[[..." exhaust the decoder's stack: refuse, never a 500.
        raise _invalid("JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise _invalid("not a JSON object")
    header_type = mt.base(content_type)
    body_type = doc.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        raise _invalid("mediaType must be a string")
    if body_type in (mt.DOCKER_SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED) or (
        body_type is None and header_type in (mt.DOCKER_SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED)
    ):
        raise _invalid("Docker schema 1 manifests are not supported; push schema 2 or OCI")
    version = doc.get("schemaVersion")
    if type(version) is not int or version != 2:
        raise _invalid("schemaVersion must be 2")
    if body_type and header_type in mt.MANIFESTS and header_type != body_type:
        raise _invalid(f"Content-Type {header_type} does not match mediaType {body_type}")
    media_type = body_type or header_type
    if not media_type:
        # Neither says: an OCI manifest or index is recognised by its fields.
        media_type = mt.OCI_INDEX if "manifests" in doc else mt.OCI_MANIFEST
    if media_type not in mt.MANIFESTS:
        raise _invalid(f"unsupported manifest media type {media_type!r}")

    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid("artifactType must be a string")
    subject = _descriptor(doc["subject"], "subject") if doc.get("subject") is not None else None
    annotations = _string_map(doc.get("annotations"), "annotations")

    if media_type in mt.INDEXES:
        if "manifests" not in doc:
            raise _invalid("an index needs a manifests list")
        return Manifest(
            media_type,
            children=_descriptors(doc["manifests"], "manifests"),
            subject=subject,
            artifact_type=artifact_type,
            annotations=annotations,
        )
    if "config" not in doc:
        raise _invalid("an image manifest needs a config descriptor")
    config = _descriptor(doc["config"], "config")
    layers = _descriptors(doc.get("layers", []), "layers")
    if media_type == mt.DOCKER_MANIFEST and "layers" not in doc:
        raise _invalid("a Docker image manifest needs a layers list")
    return Manifest(
        media_type,
        config=config,
        layers=layers,
        subject=subject,
        artifact_type=artifact_type,
        annotations=annotations,
    )
