"""SBOMs as CycloneDX 1.5 JSON, and reading them back for matching.

The document is deterministic for an image (no timestamp, a serial number derived from the
image digest), so scanning the same image again attaches the same referrer, not another one.
Berth's own facts ride in `properties` named `berth:*`: the source package a binary package
was built from, the file that listed it, and the image's distribution release. A scan cut
short by a bound says so the CycloneDX way (a composition whose aggregate is `incomplete`) and
names the bounds in `berth:incomplete`.
"""

from __future__ import annotations

import functools
import json
import uuid
from dataclasses import dataclass
from typing import Any

from packageurl import PackageURL

from appliance import __version__
from appliance.scan.layers import ImageContents
from appliance.scan.matching import normalize_name
from appliance.scan.packages import OsRelease

MEDIA_TYPE = "application/vnd.cyclonedx+json"
_NS = uuid.UUID("6f1c4f8e-3f57-4c1e-9a55-2f8e1f0c5b7a")


def build(image_digest: str, repository: str, contents: ImageContents) -> bytes:
    """The CycloneDX document of an image's packages (canonical JSON bytes)."""
    os = contents.os
    components: list[dict[str, Any]] = []
    seen: set[str] = set()
    for p in contents.packages():
        purl = p.purl(os)
        ref = f"{purl}#{p.path}"
        if ref in seen:
            continue
        seen.add(ref)
        props = [{"name": "berth:path", "value": p.path}]
        if p.source and p.source != p.name:
            props.append({"name": "berth:source", "value": p.source})
        if p.source_version and p.source_version != p.version:
            props.append({"name": "berth:source-version", "value": p.source_version})
        components.append(
            {
                "type": "library",
                "bom-ref": ref,
                "name": f"{p.namespace}/{p.name}"
                if p.type in ("npm", "golang") and p.namespace
                else p.name,
                "version": p.version,
                "purl": purl,
                "properties": props,
            }
        )
    image_props = [
        {"name": f"berth:os:{key}", "value": value}
        for key, value in (
            ("id", os.id),
            ("version_id", os.version_id),
            ("codename", os.codename),
            ("pretty_name", os.pretty_name),
        )
        if value
    ]
    image_props += [{"name": "berth:incomplete", "value": cut} for cut in contents.cuts]
    if os.id:
        components.insert(
            0,
            {
                "type": "operating-system",
                "bom-ref": f"os:{os.id}-{os.version_id}",
                "name": os.id,
                "version": os.version_id,
                "description": os.pretty_name,
            },
        )
    doc = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid5(_NS, image_digest)}",
        "version": 1,
        "metadata": {
            "tools": {
                "components": [{"type": "application", "name": "berth", "version": __version__}]
            },
            "component": {
                "type": "container",
                "bom-ref": image_digest,
                "name": repository,
                "version": image_digest,
                "properties": image_props,
            },
        },
        "components": components,
    }
    if contents.cuts:
        doc["compositions"] = [{"aggregate": "incomplete", "assemblies": [image_digest]}]
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class SbomPackage:
    """A package as matching needs it."""

    ecosystem: str
    # The (name, version) pairs advisories may use: the package's own, and its source
    # package's (Debian's advisories name source packages); versions in the form the
    # ecosystem's ordering reads (rpm: with its epoch).
    candidates: tuple[tuple[str, str], ...]
    version: str
    display: str
    purl: str


@functools.lru_cache(maxsize=100_000)
def _parse_purl(text: str) -> PackageURL:
    """Parsed once per distinct Package URL: images share most of their packages."""
    return PackageURL.from_string(text)


def read(document: str | bytes) -> tuple[OsRelease, list[SbomPackage]]:
    """The distribution and packages of an SBOM made by `build`."""
    doc = json.loads(document)
    props = {
        p["name"]: p["value"]
        for p in doc.get("metadata", {}).get("component", {}).get("properties", [])
    }
    os = OsRelease(
        props.get("berth:os:id", ""),
        props.get("berth:os:version_id", ""),
        props.get("berth:os:codename", ""),
        props.get("berth:os:pretty_name", ""),
    )
    out: list[SbomPackage] = []
    for comp in doc.get("components", []):
        text = comp.get("purl")
        if not text:
            continue
        purl = _parse_purl(text)
        extra = {p["name"]: p["value"] for p in comp.get("properties", [])}
        name = (
            f"{purl.namespace}/{purl.name}"
            if purl.type in ("npm", "golang") and (purl.namespace)
            else purl.name
        )
        version = purl.version or ""
        if purl.type == "rpm":
            epoch = (purl.qualifiers or {}).get("epoch")
            if epoch:
                version = f"{epoch}:{version}"
        candidates = [(normalize_name(purl.type, name), version)]
        source = extra.get("berth:source")
        if source and source != name:
            candidates.append((source, extra.get("berth:source-version", version)))
        out.append(SbomPackage(purl.type, tuple(candidates), version, name, text))
    return os, out
