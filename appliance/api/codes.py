"""The wire error catalogue: each OCI/Docker error code declared once, as data.

`_MAPPING` is the one table from domain exceptions to a code and an HTTP status, read by every
surface: `error_for(exc)` for `/v2` (anything the table does not name becomes UNKNOWN, logged
with its traceback), `status_for(exc)` for `/api/v1` and the console (a `BerthError` the table
does not name is a refusal whose message is the answer: 400).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from appliance import errors


@dataclass(frozen=True)
class ErrorCode:
    value: str
    message: str
    status: int
    description: str


_CATALOGUE = (
    ErrorCode(
        "BLOB_UNKNOWN", "blob unknown to registry", 404, "The blob is not in the repository."
    ),
    ErrorCode(
        "BLOB_UPLOAD_INVALID",
        "blob upload invalid",
        400,
        "The upload failed; the client may restart it.",
    ),
    ErrorCode(
        "BLOB_UPLOAD_UNKNOWN",
        "blob upload unknown to registry",
        404,
        "The upload session does not exist, was cancelled or expired.",
    ),
    ErrorCode(
        "DIGEST_INVALID",
        "provided digest did not match uploaded content",
        400,
        "The digest is malformed or does not match the content.",
    ),
    ErrorCode(
        "MANIFEST_BLOB_UNKNOWN",
        "manifest references a manifest or blob unknown to registry",
        400,
        "A blob or child manifest named by the manifest is missing.",
    ),
    ErrorCode(
        "MANIFEST_INVALID",
        "manifest invalid",
        400,
        "The manifest is malformed or fails validation.",
    ),
    ErrorCode(
        "MANIFEST_UNKNOWN",
        "manifest unknown to registry",
        404,
        "No manifest with that tag or digest in the repository.",
    ),
    ErrorCode(
        "NAME_INVALID",
        "invalid repository name",
        400,
        "The repository name or tag breaks the grammar.",
    ),
    ErrorCode(
        "NAME_UNKNOWN",
        "repository name not known to registry",
        404,
        "The repository does not exist.",
    ),
    ErrorCode(
        "SIZE_INVALID",
        "provided length did not match content length",
        400,
        "A declared length does not match the content.",
    ),
    ErrorCode(
        "RANGE_INVALID",
        "requested range not satisfiable",
        416,
        "The chunk does not continue the upload, or the range is outside the blob.",
    ),
    ErrorCode("UNAUTHORIZED", "authentication required", 401, "The client must sign in."),
    ErrorCode(
        "DENIED", "requested access to the resource is denied", 403, "The client may not do this."
    ),
    ErrorCode(
        "UNSUPPORTED",
        "the operation is unsupported",
        405,
        "The request is valid but this registry does not do it.",
    ),
    ErrorCode("TOOMANYREQUESTS", "too many requests", 429, "The client sent too many requests."),
    ErrorCode("UNAVAILABLE", "service unavailable", 503, "A backend cannot be reached; try again."),
    ErrorCode(
        "UNKNOWN", "unknown error", 500, "An unexpected error; it is logged with the request id."
    ),
)

CODES: dict[str, ErrorCode] = {c.value: c for c in _CATALOGUE}

# Domain exception → (code, HTTP status when it differs from the code's own); first match wins,
# so a subclass comes before its parent.
_MAPPING: tuple[tuple[type[errors.BerthError], str, int | None], ...] = (
    (errors.InvalidName, "NAME_INVALID", None),
    (errors.InvalidDigest, "DIGEST_INVALID", None),
    (errors.SizeInvalid, "SIZE_INVALID", None),
    (errors.RangeInvalid, "RANGE_INVALID", None),
    (errors.RepositoryNotFound, "NAME_UNKNOWN", None),
    (errors.BlobNotFound, "BLOB_UNKNOWN", None),
    (errors.ManifestNotFound, "MANIFEST_UNKNOWN", None),
    (errors.UploadNotFound, "BLOB_UPLOAD_UNKNOWN", None),
    (errors.ManifestInvalid, "MANIFEST_INVALID", None),
    (errors.ManifestBlobUnknown, "MANIFEST_BLOB_UNKNOWN", None),
    (errors.ManifestTooLarge, "SIZE_INVALID", 413),
    # Management refusals: no OCI code of their own.
    (errors.NotFound, "UNKNOWN", 404),
    (errors.BodyTooLarge, "SIZE_INVALID", 413),
    (errors.UnsupportedMediaType, "UNSUPPORTED", 415),
    (errors.InvalidInput, "UNKNOWN", 400),
    # The spec's answers to a blob DELETE are 202, 404 and 405 ("deletion is not allowed").
    (errors.BlobInUse, "UNSUPPORTED", 405),
    (errors.Conflict, "DENIED", 409),
    (errors.Denied, "DENIED", None),
    (errors.Unsupported, "UNSUPPORTED", None),
    (errors.TooMany, "TOOMANYREQUESTS", None),
    (errors.TooSlow, "BLOB_UPLOAD_INVALID", 408),
    (errors.StorageFull, "UNKNOWN", 507),
    (errors.Unavailable, "UNAVAILABLE", None),
)


def error_for(exc: BaseException) -> tuple[int, ErrorCode, str, object] | None:
    """(status, code, message, detail) for a domain exception; None for an unexpected one."""
    for kind, value, status in _MAPPING:
        if isinstance(exc, kind):
            code = CODES[value]
            return status or code.status, code, exc.message, exc.detail
    return None


def status_for(exc: errors.BerthError) -> int:
    """The HTTP status of a domain error on `/api/v1` and in the console: the table's, or 400
    for a refusal the table does not name (its message says what was wrong)."""
    mapped = error_for(exc)
    return 400 if mapped is None else mapped[0]


def error_body(code: str, message: str | None = None, detail: object = None) -> bytes:
    """The OCI error JSON for one error."""
    entry: dict[str, object] = {"code": code, "message": message or CODES[code].message}
    if detail is not None:
        entry["detail"] = detail
    return json.dumps({"errors": [entry]}).encode()
