"""The authorization matrix: every registry and management endpoint, times every kind of caller.

Callers (columns, in this order): anonymous; `other` (signed in, no role in `team`); reader,
developer, maintainer, owner of `team`; the instance admin; a developer robot of `team`; the
developer's personal access tokens with scope read_registry, write_registry and api.
`team` is private, `pub` public. A 404 where the resource does not exist means "allowed".
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.api.conftest import api_client
from tests.api.oci import blob_data, digest
from tests.auth.conftest import Cast

CALLERS = (
    "anonymous",
    "other",
    "reader",
    "developer",
    "maintainer",
    "owner",
    "admin",
    "robot",
    "pat-read",
    "pat-write",
    "pat-api",
)
LAYER = blob_data("matrix", 100)
LAYER_DIGEST = digest(LAYER)
MISSING = "sha256:" + "0" * 64

# (method, path, body) → expected status per caller, in CALLERS order.
#              anon other read  dev  maint owner admin robot p-rd p-wr p-api
MATRIX: list[tuple[str, str, Any, tuple[int, ...]]] = [
    # registry: /v2/ and the catalog need a signed-in caller
    ("GET", "/v2/", None, (401, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200)),
    ("GET", "/v2/_catalog", None, (401, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200)),
    # pull from the private namespace
    (
        "GET",
        "/v2/team/app/tags/list",
        None,
        (401, 403, 200, 200, 200, 200, 200, 200, 200, 200, 403),
    ),
    (
        "HEAD",
        "/v2/team/app/manifests/1",
        None,
        (401, 403, 200, 200, 200, 200, 200, 200, 200, 200, 403),
    ),
    (
        "GET",
        f"/v2/team/app/blobs/{LAYER_DIGEST}",
        None,
        (401, 403, 200, 200, 200, 200, 200, 200, 200, 200, 403),
    ),
    (
        "GET",
        f"/v2/team/app/referrers/{MISSING}",
        None,
        (401, 403, 200, 200, 200, 200, 200, 200, 200, 200, 403),
    ),
    # push to the private namespace
    (
        "POST",
        "/v2/team/app/blobs/uploads/",
        None,
        (401, 403, 403, 202, 202, 202, 202, 202, 403, 202, 403),
    ),
    (
        "PUT",
        "/v2/team/app/manifests/new",
        "manifest",
        (401, 403, 403, 201, 201, 201, 201, 201, 403, 201, 403),
    ),
    # delete in the private namespace (nothing by that digest: 404 means allowed)
    (
        "DELETE",
        f"/v2/team/app/manifests/{MISSING}",
        None,
        (401, 403, 403, 403, 404, 404, 404, 403, 403, 403, 403),
    ),
    (
        "DELETE",
        f"/v2/team/app/blobs/{MISSING}",
        None,
        (401, 403, 403, 403, 404, 404, 404, 403, 403, 403, 403),
    ),
    # the public namespace: anyone pulls, only members push
    ("GET", "/v2/pub/app/tags/list", None, (200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200)),
    (
        "GET",
        "/v2/pub/app/manifests/1",
        None,
        (200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    ),
    (
        "POST",
        "/v2/pub/app/blobs/uploads/",
        None,
        (401, 403, 403, 202, 202, 202, 202, 403, 403, 202, 403),
    ),
    # a namespace nobody was given
    (
        "GET",
        "/v2/elsewhere/app/tags/list",
        None,
        (401, 403, 403, 403, 403, 403, 404, 403, 403, 403, 403),
    ),
    (
        "POST",
        "/v2/elsewhere/app/blobs/uploads/",
        None,
        (401, 403, 403, 403, 403, 403, 202, 403, 403, 403, 403),
    ),
    # management API
    ("GET", "/api/v1/openapi.json", None, (200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200)),
    ("GET", "/api/v1/me", None, (401, 200, 200, 200, 200, 200, 200, 403, 403, 403, 200)),
    ("GET", "/api/v1/version", None, (401, 200, 200, 200, 200, 200, 200, 403, 403, 403, 200)),
    ("GET", "/api/v1/namespaces", None, (401, 200, 200, 200, 200, 200, 200, 403, 403, 403, 200)),
    ("GET", "/api/v1/users", None, (401, 403, 403, 403, 403, 403, 200, 403, 403, 403, 403)),
    (
        "POST",
        "/api/v1/users",
        {"name": "new-{caller}", "password": "long-enough-pw"},
        (401, 403, 403, 403, 403, 403, 201, 403, 403, 403, 403),
    ),
    (
        "PATCH",
        "/api/v1/users/other",
        {"disabled": False},
        (401, 403, 403, 403, 403, 403, 200, 403, 403, 403, 403),
    ),
    (
        "GET",
        "/api/v1/namespaces/team",
        None,
        (401, 404, 200, 200, 200, 200, 200, 403, 403, 403, 200),
    ),
    (
        "POST",
        "/api/v1/namespaces",
        {"name": "ns-{caller}"},
        (401, 403, 403, 403, 403, 403, 201, 403, 403, 403, 403),
    ),
    (
        "PATCH",
        "/api/v1/namespaces/team",
        {"public": False},
        (401, 403, 403, 403, 403, 200, 200, 403, 403, 403, 403),
    ),
    (
        "GET",
        "/api/v1/namespaces/team/members",
        None,
        (401, 403, 200, 200, 200, 200, 200, 403, 403, 403, 200),
    ),
    (
        "PUT",
        "/api/v1/namespaces/team/members/other",
        {"role": "reader"},
        (401, 403, 403, 403, 403, 200, 200, 403, 403, 403, 403),
    ),
    (
        "DELETE",
        "/api/v1/namespaces/team/members/nobody-{caller}",
        None,
        (401, 403, 403, 403, 403, 404, 404, 403, 403, 403, 403),
    ),
    (
        "GET",
        "/api/v1/namespaces/team/robots",
        None,
        (401, 403, 403, 403, 200, 200, 200, 403, 403, 403, 403),
    ),
    (
        "POST",
        "/api/v1/namespaces/team/robots",
        {"name": "bot-{caller}", "role": "reader"},
        (401, 403, 403, 403, 403, 201, 201, 403, 403, 403, 403),
    ),
    ("GET", "/api/v1/tokens", None, (401, 200, 200, 200, 200, 200, 200, 403, 403, 403, 200)),
    (
        "POST",
        "/api/v1/tokens",
        {"name": "t", "scopes": ["read_registry"]},
        (401, 201, 201, 201, 201, 201, 201, 403, 403, 403, 201),
    ),
    # backups (appliance/backup/api.py): instance admins only; no backup by that id is a 404
    ("GET", "/api/v1/backups", None, (401, 403, 403, 403, 403, 403, 200, 403, 403, 403, 403)),
    (
        "POST",
        "/api/v1/backups?wait=true",
        None,
        (401, 403, 403, 403, 403, 403, 201, 403, 403, 403, 403),
    ),
    (
        "GET",
        "/api/v1/backups/target",
        None,
        (401, 403, 403, 403, 403, 403, 200, 403, 403, 403, 403),
    ),
    (
        "GET",
        "/api/v1/backups/20260101T000000Z-abcd",
        None,
        (401, 403, 403, 403, 403, 403, 404, 403, 403, 403, 403),
    ),
    (
        "POST",
        "/api/v1/backups/20260101T000000Z-abcd/verify",
        None,
        (401, 403, 403, 403, 403, 403, 404, 403, 403, 403, 403),
    ),
    (
        "POST",
        "/api/v1/backups/prune",
        {"dry_run": True},
        (401, 403, 403, 403, 403, 403, 200, 403, 403, 403, 403),
    ),
    # operations (appliance/ops/api.py): the audit log for admins, webhooks for maintainers
    ("GET", "/api/v1/audit", None, (401, 403, 403, 403, 403, 403, 200, 403, 403, 403, 403)),
    (
        "GET",
        "/api/v1/webhooks/deliveries",
        None,
        (401, 403, 403, 403, 403, 403, 200, 403, 403, 403, 403),
    ),
    (
        "GET",
        "/api/v1/namespaces/team/webhooks",
        None,
        (401, 403, 403, 403, 200, 200, 200, 403, 403, 403, 403),
    ),
    (
        "POST",
        "/api/v1/namespaces/team/webhooks",
        {"url": "http://93.184.216.34/{caller}", "actions": "push"},
        (401, 403, 403, 403, 201, 201, 201, 403, 403, 403, 403),
    ),
    (
        "DELETE",
        "/api/v1/namespaces/team/webhooks/999",
        None,
        (401, 403, 403, 403, 404, 404, 404, 403, 403, 403, 403),
    ),
    (
        "GET",
        "/api/v1/namespaces/team/webhooks/999/deliveries",
        None,
        (401, 403, 403, 403, 404, 404, 404, 403, 403, 403, 403),
    ),
    # vulnerability scanning (appliance/scan/api.py): nothing is scanned or set up here, so an
    # allowed read of a report or policy is a 404
    ("GET", "/api/v1/vulndb", None, (401, 200, 200, 200, 200, 200, 200, 403, 403, 403, 200)),
    (
        "GET",
        f"/api/v1/scan/reports?repository=team/app&digest={MISSING}",
        None,
        (401, 404, 404, 404, 404, 404, 404, 403, 403, 403, 404),
    ),
    (
        "GET",
        "/api/v1/namespaces/team/scan-policy",
        None,
        (401, 403, 404, 404, 404, 404, 404, 403, 403, 403, 404),
    ),
    (
        "PUT",
        "/api/v1/namespaces/team/scan-policy",
        {"block_severity": "critical"},
        (401, 403, 403, 403, 200, 200, 200, 403, 403, 403, 403),
    ),
    (
        "DELETE",
        "/api/v1/namespaces/team/scan-policy",
        None,
        (401, 403, 403, 403, 404, 404, 404, 403, 403, 403, 403),
    ),
    (
        "PUT",
        "/api/v1/namespaces/team/scan-policy/exceptions/CVE-2024-0001",
        {"expires_at": None},
        (401, 403, 403, 403, 400, 400, 400, 403, 403, 403, 403),  # 400: no policy to except
    ),
    (
        "DELETE",
        "/api/v1/namespaces/team/scan-policy/exceptions/CVE-2024-0001",
        None,
        (401, 403, 403, 403, 404, 404, 404, 403, 403, 403, 403),
    ),
]


async def seed(client: httpx.AsyncClient) -> bytes:
    """As admin: push one image (a layer and a manifest tagged 1) to team/app and pub/app."""
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": LAYER_DIGEST,
                "size": len(LAYER),
            },
            "layers": [],
        }
    ).encode()
    for repo in ("team/app", "pub/app"):
        r = await client.post(
            f"/v2/{repo}/blobs/uploads/", params={"digest": LAYER_DIGEST}, content=LAYER
        )
        assert r.status_code == 201, r.text
        r = await client.put(
            f"/v2/{repo}/manifests/1",
            content=manifest,
            headers={"content-type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert r.status_code == 201, r.text
    return manifest


def _cases() -> list[Any]:
    out = []
    for method, path, body, expected in MATRIX:
        for caller, status in zip(CALLERS, expected, strict=True):
            out.append(
                pytest.param(method, path, body, caller, status, id=f"{method} {path} {caller}")
            )
    return out


@pytest.mark.parametrize(("method", "path", "body", "caller", "status"), _cases())
async def test_matrix(
    app: Any, cast: Cast, method: str, path: str, body: Any, caller: str, status: int
) -> None:
    async with api_client(app) as admin:
        manifest = await seed(admin)
    creds = cast.creds[caller]
    async with api_client(app, auth=creds) as client:
        kwargs: dict[str, Any] = {}
        if body == "manifest":
            kwargs = {
                "content": manifest,
                "headers": {"content-type": "application/vnd.oci.image.manifest.v1+json"},
            }
        elif body is not None:
            kwargs = {"json": json.loads(json.dumps(body).replace("{caller}", caller))}
        r = await client.request(method, path, **kwargs)
    assert r.status_code == status, f"{caller} {method} {path}: {r.status_code} {r.text[:300]}"
    if status == 401 and path.startswith("/v2"):
        challenge = r.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="http://berth.test/token",service="berth"')


async def test_the_matrix_names_every_route() -> None:
    """Each registry route kind and each management route appears in the matrix."""
    from appliance.api.manage import OPENAPI  # noqa: PLC0415

    paths = {p for _, p, _, _ in MATRIX}
    for kind in ("tags/list", "manifests", "blobs/uploads", "/blobs/sha", "referrers", "_catalog"):
        assert any(kind in p for p in paths), kind
    documented = {(m.upper(), "/api/v1" + p) for p, ops in OPENAPI["paths"].items() for m in ops}
    tested = set()
    for method, full_path, _, _ in MATRIX:
        path = full_path.split("?", 1)[0]
        for m, p in documented:
            pattern = p.replace("{", "").replace("}", "")
            if m == method and len(p.split("/")) == len(path.split("/")):
                same = all(
                    a == b or a.startswith("{")
                    for a, b in zip(p.split("/"), path.split("/"), strict=True)
                )
                if same:
                    tested.add((m, p))
            del pattern
    missing = (
        documented
        - tested
        - {
            ("DELETE", "/api/v1/namespaces/{ns}"),
            ("DELETE", "/api/v1/namespaces/{ns}/robots/{name}"),
            ("DELETE", "/api/v1/tokens/{token_id}"),
        }
    )
    assert not missing, f"management routes missing from the matrix: {sorted(missing)}"
