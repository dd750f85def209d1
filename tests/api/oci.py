"""Raw OCI Distribution protocol helpers for the API tests: content, pushes and assertions.

Everything here speaks plain HTTP through an `httpx.AsyncClient` (in-process or against a real
server); no registry client tool is involved. Media types are spelled out rather than imported
from `appliance`, so the tests check the wire protocol, not the code against itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from urllib.parse import unquote_to_bytes

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

EMPTY_JSON = b"{}"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

API_VERSION_HEADER = "docker-distribution-api-version"

# Every error code the OCI Distribution spec (and Docker's registry) defines.
ERROR_CODES = frozenset(
    {
        "BLOB_UNKNOWN",
        "BLOB_UPLOAD_INVALID",
        "BLOB_UPLOAD_UNKNOWN",
        "DIGEST_INVALID",
        "MANIFEST_BLOB_UNKNOWN",
        "MANIFEST_INVALID",
        "MANIFEST_UNKNOWN",
        "NAME_INVALID",
        "NAME_UNKNOWN",
        "SIZE_INVALID",
        "UNAUTHORIZED",
        "DENIED",
        "UNSUPPORTED",
        "TOOMANYREQUESTS",
        "RANGE_INVALID",
        "UNAVAILABLE",
        "UNKNOWN",
    }
)


def digest(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def blob_data(seed: str, size: int) -> bytes:
    """`size` deterministic, incompressible-looking bytes, different for each `seed`."""
    out = bytearray()
    block = hashlib.sha512(seed.encode()).digest()
    while len(out) < size:
        out += block
        block = hashlib.sha512(block).digest()
    return bytes(out[:size])


def error_code(resp: httpx.Response) -> str:
    """The first OCI error code of an error response (checking the JSON shape)."""
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert isinstance(body, dict), body
    errors = body["errors"]
    assert isinstance(errors, list), body
    assert errors, body
    for entry in errors:
        assert entry["code"] in ERROR_CODES, entry
        assert isinstance(entry.get("message", ""), str), entry
    return str(errors[0]["code"])


def assert_error(resp: httpx.Response, status: int, code: str | set[str]) -> None:
    """`resp` is an OCI error response with `status` and the error `code` (or one of them)."""
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    assert b"Traceback" not in resp.content
    if resp.request.method == "HEAD":
        assert resp.content == b""
        return
    actual = error_code(resp)
    if isinstance(code, str):
        assert actual == code, resp.text[:500]
    else:
        assert actual in code, resp.text[:500]


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest(data), "size": len(data), **extra}


def manifest_descriptor(media_type: str, payload: bytes, **extra: Any) -> dict[str, Any]:
    return descriptor(media_type, payload, **extra)


def image_manifest(
    config: bytes,
    layers: list[bytes],
    *,
    media_type: str | None = OCI_MANIFEST,
    config_type: str = OCI_CONFIG,
    layer_type: str = OCI_LAYER,
    **fields: Any,
) -> bytes:
    """An image manifest naming `config` and `layers` (by digest and size)."""
    doc: dict[str, Any] = {"schemaVersion": 2}
    if media_type is not None:
        doc["mediaType"] = media_type
    doc["config"] = descriptor(config_type, config)
    doc["layers"] = [descriptor(layer_type, layer) for layer in layers]
    doc.update(fields)
    return json.dumps(doc, indent=2).encode()


def index_manifest(
    children: list[bytes],
    *,
    media_type: str | None = OCI_INDEX,
    child_type: str = OCI_MANIFEST,
    **fields: Any,
) -> bytes:
    """An index (or Docker manifest list) listing the manifests `children`."""
    doc: dict[str, Any] = {"schemaVersion": 2}
    if media_type is not None:
        doc["mediaType"] = media_type
    doc["manifests"] = [
        manifest_descriptor(child_type, child, platform={"architecture": f"arch{i}", "os": "linux"})
        for i, child in enumerate(children)
    ]
    doc.update(fields)
    return json.dumps(doc).encode()


async def push_blob(
    client: httpx.AsyncClient, name: str, data: bytes, algorithm: str = "sha256"
) -> str:
    """Push `data` the way most clients do (POST a session, PUT the bytes); return its digest."""
    d = digest(data, algorithm)
    resp = await client.post(f"/v2/{name}/blobs/uploads/")
    assert resp.status_code == 202, resp.text
    resp = await client.put(
        resp.headers["location"],
        params={"digest": d},
        content=data,
        headers={"content-type": "application/octet-stream"},
    )
    assert resp.status_code == 201, resp.text
    assert resp.headers["docker-content-digest"] == d
    return d


async def put_manifest(
    client: httpx.AsyncClient,
    name: str,
    reference: str,
    payload: bytes,
    content_type: str | None = OCI_MANIFEST,
) -> httpx.Response:
    headers = {"content-type": content_type} if content_type else {}
    return await client.put(f"/v2/{name}/manifests/{reference}", content=payload, headers=headers)


async def push_image(
    client: httpx.AsyncClient,
    name: str,
    reference: str,
    *,
    seed: str = "image",
    layers: int = 2,
    media_type: str = OCI_MANIFEST,
    **fields: Any,
) -> tuple[str, bytes]:
    """Push a config, `layers` layers and a manifest tagged (or addressed) `reference`."""
    docker = media_type == DOCKER_MANIFEST
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    blobs = [blob_data(f"{seed}-layer-{i}", 1000 + 37 * i) for i in range(layers)]
    for data in (config, *blobs):
        await push_blob(client, name, data)
    payload = image_manifest(
        config,
        blobs,
        media_type=media_type,
        config_type=DOCKER_CONFIG if docker else OCI_CONFIG,
        layer_type=DOCKER_LAYER if docker else OCI_LAYER,
        **fields,
    )
    resp = await put_manifest(client, name, reference, payload, media_type)
    assert resp.status_code == 201, resp.text
    assert resp.headers["docker-content-digest"] == digest(payload)
    return digest(payload), payload


async def tags_of(client: httpx.AsyncClient, name: str) -> list[str]:
    resp = await client.get(f"/v2/{name}/tags/list")
    if resp.status_code == 404:
        return []
    assert resp.status_code == 200, resp.text
    return list(resp.json()["tags"] or [])


def _signed_in(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`headers` with the test admin's Basic credentials, unless they carry their own."""
    if any(name.lower() == b"authorization" for name, _ in headers):
        return headers
    from tests.api.conftest import ADMIN, ADMIN_PASSWORD  # noqa: PLC0415

    basic = base64.b64encode(f"{ADMIN}:{ADMIN_PASSWORD}".encode())
    return [(b"authorization", b"Basic " + basic), *headers]


async def call_asgi(
    app: Any,
    method: str,
    raw_path: bytes,
    *,
    query: bytes = b"",
    body: bytes | list[bytes] = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request straight into an ASGI app, with a raw path no HTTP client would normalise
    (`..`, `%2e%2e`, `%2F`, `//`). A list `body` arrives as that many messages, as a body
    without a Content-Length would. Returns status, headers and body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote_to_bytes(raw_path).decode("latin-1"),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"berth.test"), *_signed_in(headers or [])],
        "server": ("berth.test", 80),
        "client": ("127.0.0.1", 1234),
    }
    pending = list(body) if isinstance(body, list) else [body]
    started: dict[str, Any] = {}
    parts: list[bytes] = []

    async def receive() -> dict[str, Any]:
        if not pending:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": pending.pop(0), "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            started.update(message)
        else:
            parts.append(message.get("body", b""))

    await app(scope, receive, send)
    response_headers = {k.decode().lower(): v.decode() for k, v in started["headers"]}
    return int(started["status"]), response_headers, b"".join(parts)
