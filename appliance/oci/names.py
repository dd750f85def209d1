"""The repository-name and tag grammar of the OCI Distribution spec."""

from __future__ import annotations

import re

from appliance.errors import InvalidDigest, InvalidName, ManifestNotFound
from appliance.oci.digest import Digest, is_digest

MAX_NAME_LENGTH = 255
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")


def validate_name(name: str) -> str:
    """Return `name` if it is a valid repository name; raise InvalidName otherwise."""
    if not name:
        raise InvalidName("repository name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"repository name is longer than {MAX_NAME_LENGTH} characters")
    if not _NAME.fullmatch(name):  # fullmatch: `$` alone would let a trailing newline in
        raise InvalidName(
            f"invalid repository name {name[:100]!r}: lowercase letters, digits and "
            "separators (. _ __ -) in path components joined by /"
        )
    return name


def validate_tag(tag: str) -> str:
    """Return `tag` if it is a valid tag; raise InvalidName otherwise."""
    if not _TAG.fullmatch(tag):
        raise InvalidName(f"invalid tag {tag[:150]!r}")
    return tag


def readable_reference(reference: str) -> str:
    """The tag, or the canonical digest, that a manifest read (GET, HEAD) looks up.

    A reference that is neither a valid tag nor a valid digest names no manifest, so a read
    of it is ManifestNotFound (a 404 `MANIFEST_UNKNOWN`) whatever its spelling, as clients
    probing for a tag expect; a write (PUT) with such a reference stays a 400.
    """
    try:
        if is_digest(reference):
            return str(Digest.parse(reference))
        return validate_tag(reference)
    except (InvalidDigest, InvalidName):
        raise ManifestNotFound(
            f"no manifest {reference[:150]!r}: not a valid tag or digest",
            {"reference": reference[:150]},
        ) from None


def namespace_of(name: str) -> str:
    """The namespace a repository belongs to: its first path component."""
    return name.split("/", 1)[0]


def validate_component(name: str) -> str:
    """Return `name` if it is one path component (a namespace, user or robot name)."""
    if "/" in name or len(name) > 64:
        raise InvalidName(f"invalid name {name[:100]!r}: one path component, at most 64 characters")
    return validate_name(name)


def normalize_component(name: str) -> str:
    """A user or group name from LDAP or SAML, made a valid path component: lowercase, other
    characters turned into `-`, separators trimmed (`John.Smith@Corp` → `john.smith-corp`)."""
    lowered = re.sub(r"[^a-z0-9._-]+", "-", name.lower())
    lowered = re.sub(r"[._-]*([._-])[._-]*", r"\1", lowered).strip("._-")
    return validate_component(lowered[:64].strip("._-") or "user")
