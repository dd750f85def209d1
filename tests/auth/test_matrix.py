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

from appliance.auth import accounts
from appliance.metadata.db import Tx
from appliance.scan.records import save_report
from appliance.server import Services
from appliance.webhooks.endpoints import add_endpoint
from tests.api.conftest import api_client
from tests.api.oci import blob_data, digest, image_manifest
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
        "GET",
        "/api/v1/users/developer/tokens?kind=all",
        None,
        (401, 403, 403, 403, 403, 403, 200, 403, 403, 403, 403),
    ),
    (
        "DELETE",
        "/api/v1/users/developer/tokens/999999",
        None,
        (401, 403, 403, 403, 403, 403, 404, 403, 403, 403, 403),
    ),
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
    # A token never grants more than the token that creates it: an api-only PAT may not
    # make a read_registry one (auth/credentials.py, MintLimits).
    (
        "POST",
        "/api/v1/tokens",
        {"name": "t", "scopes": ["read_registry"]},
        (401, 201, 201, 201, 201, 201, 201, 403, 403, 403, 403),
    ),
    # backups (api/manage/backups.py): instance admins only; no backup by that id is a 404
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
    # operations (api/manage/audit.py, webhooks.py): the audit log for admins, webhooks for
    # maintainers
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
    # CI trust rules (api/manage/citrust.py): for maintainers; GitHub's issuer is one they
    # may name (ci_trust.issuers)
    (
        "GET",
        "/api/v1/ci-trust/templates",
        None,
        (401, 200, 200, 200, 200, 200, 200, 403, 403, 403, 200),
    ),
    (
        "GET",
        "/api/v1/namespaces/team/ci-trust",
        None,
        (401, 403, 403, 403, 200, 200, 200, 403, 403, 403, 403),
    ),
    (
        "POST",
        "/api/v1/namespaces/team/ci-trust",
        {
            "template": "github",
            "audience": "https://berth.test",
            "claims": {"repository": "acme/{caller}"},
            "access": "push",
        },
        (401, 403, 403, 403, 201, 201, 201, 403, 403, 403, 403),
    ),
    (
        "DELETE",
        "/api/v1/namespaces/team/ci-trust/999",
        None,
        (401, 403, 403, 403, 404, 404, 404, 403, 403, 403, 403),
    ),
    (
        "POST",
        "/api/v1/namespaces/team/ci-trust/test",
        {"token": "not-a-token"},
        (401, 403, 403, 403, 200, 200, 200, 403, 403, 403, 403),
    ),
    # vulnerability scanning (api/manage/scanning.py): nothing is scanned or set up here, so an
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


# Another private namespace, `secret`, where nobody of the cast has a role: its image, scan
# report, immutable rule, cleanup policy, webhook and robot, and the admin's own token. Each
# row names a repository or namespace the caller may use, with a digest or an id of `secret`'s
# (`{SECRET_...}`, filled in by `seed_secret`): no management endpoint may act on, or show,
# another namespace's record through a name of one's own. Every caller of a row runs, in
# CALLERS order, against one seeded registry (so the rows cost seconds, not minutes); a
# success that changes something happens only where the row expects it.
#              anon other read  dev  maint owner admin robot p-rd p-wr p-api
CROSS_NAMESPACE: list[tuple[str, str, Any, tuple[int, ...]]] = [
    # a scan report, named by a repository of one's own and another namespace's digest
    (
        "GET",
        "/api/v1/scan/reports?repository=team/app&digest={TEAM_DIGEST}",
        None,
        (401, 404, 200, 200, 200, 200, 200, 403, 403, 403, 200),
    ),
    (
        "GET",
        "/api/v1/scan/reports?repository=team/app&digest={SECRET_DIGEST}",
        None,
        (401, 404, 404, 404, 404, 404, 404, 403, 403, 403, 404),
    ),
    (
        "GET",
        "/api/v1/scan/reports?repository=pub/app&digest={SECRET_DIGEST}",
        None,
        (401, 404, 404, 404, 404, 404, 404, 403, 403, 403, 404),
    ),
    (
        "GET",
        "/api/v1/scan/reports?repository=secret/app&digest={SECRET_DIGEST}",
        None,
        (401, 404, 404, 404, 404, 404, 200, 403, 403, 403, 404),
    ),
    # the registry: another namespace's manifest, blob and referrers through one's own name
    (
        "GET",
        "/v2/team/app/manifests/{SECRET_DIGEST}",
        None,
        (401, 403, 404, 404, 404, 404, 404, 404, 404, 404, 403),
    ),
    (
        "GET",
        "/v2/team/app/blobs/{SECRET_LAYER}",
        None,
        (401, 403, 404, 404, 404, 404, 404, 404, 404, 404, 403),
    ),
    (
        "DELETE",
        "/v2/team/app/manifests/{SECRET_DIGEST}",
        None,
        (401, 403, 403, 403, 404, 404, 404, 403, 403, 403, 403),
    ),
    # a mount from a namespace the caller may not pull starts an upload instead (202)
    (
        "POST",
        "/v2/team/app/blobs/uploads/?mount={SECRET_LAYER}&from=secret/app",
        None,
        (401, 403, 403, 202, 202, 202, 201, 202, 403, 202, 403),
    ),
    # lifecycle: usage, quotas, immutable tag rules, cleanup policies, the collector
    ("GET", "/api/v1/usage", None, (401, 200, 200, 200, 200, 200, 200, 403, 403, 403, 200)),
    (
        "GET",
        "/api/v1/namespaces/team/usage",
        None,
        (401, 403, 200, 200, 200, 200, 200, 403, 403, 403, 200),
    ),
    ("GET", "/api/v1/quotas", None, (401, 403, 403, 403, 403, 403, 200, 403, 403, 403, 403)),
    (
        "PUT",
        "/api/v1/namespaces/team/quota",
        {"limit_bytes": 1 << 30},
        (401, 403, 403, 403, 403, 403, 200, 403, 403, 403, 403),
    ),
    (
        "DELETE",
        "/api/v1/namespaces/team/quota",
        None,
        (401, 403, 403, 403, 403, 403, 404, 403, 403, 403, 403),
    ),
    (
        "GET",
        "/api/v1/namespaces/team/immutable-rules",
        None,
        (401, 403, 200, 200, 200, 200, 200, 403, 403, 403, 200),
    ),
    (
        "POST",
        "/api/v1/namespaces/team/immutable-rules",
        {"pattern": "v-{caller}"},
        (401, 403, 403, 403, 201, 201, 201, 403, 403, 403, 403),
    ),
    (
        "DELETE",
        "/api/v1/namespaces/team/immutable-rules/{SECRET_RULE}",
        None,
        (401, 403, 403, 403, 404, 404, 404, 403, 403, 403, 403),
    ),
    (
        "GET",
        "/api/v1/namespaces/team/policies",
        None,
        (401, 403, 200, 200, 200, 200, 200, 403, 403, 403, 200),
    ),
    (
        "POST",
        "/api/v1/namespaces/team/policies",
        {"keep_recent": 5},
        (401, 403, 403, 403, 201, 201, 201, 403, 403, 403, 403),
    ),
    (
        "POST",
        "/api/v1/namespaces/team/policies",
        {"repository": "secret/app", "keep_recent": 5},
        (401, 403, 403, 403, 400, 400, 400, 403, 403, 403, 403),
    ),
    (
        "GET",
        "/api/v1/policies/{SECRET_POLICY}",
        None,
        (401, 404, 404, 404, 404, 404, 200, 403, 403, 403, 404),
    ),
    (
        "PATCH",
        "/api/v1/policies/{SECRET_POLICY}",
        {"keep_recent": 0},
        (401, 404, 404, 404, 404, 404, 200, 403, 403, 403, 404),
    ),
    (
        "POST",
        "/api/v1/policies/{SECRET_POLICY}/preview",
        None,
        (401, 404, 404, 404, 404, 404, 200, 403, 403, 403, 404),
    ),
    (
        "POST",
        "/api/v1/policies/{SECRET_POLICY}/run",
        None,
        (401, 404, 404, 404, 404, 404, 409, 403, 403, 403, 404),
    ),
    (
        "DELETE",
        "/api/v1/policies/{SECRET_POLICY}",
        None,
        (401, 404, 404, 404, 404, 404, 200, 403, 403, 403, 404),
    ),
    ("GET", "/api/v1/gc", None, (401, 403, 403, 403, 403, 403, 200, 403, 403, 403, 403)),
    # webhooks, robots and tokens of others, by id or name
    (
        "DELETE",
        "/api/v1/namespaces/team/webhooks/{SECRET_WEBHOOK}",
        None,
        (401, 403, 403, 403, 404, 404, 404, 403, 403, 403, 403),
    ),
    (
        "GET",
        "/api/v1/namespaces/team/webhooks/{SECRET_WEBHOOK}/deliveries",
        None,
        (401, 403, 403, 403, 404, 404, 404, 403, 403, 403, 403),
    ),
    (
        "DELETE",
        "/api/v1/namespaces/team/robots/spy",
        None,
        (401, 403, 403, 403, 403, 404, 404, 403, 403, 403, 403),
    ),
    (
        "DELETE",
        "/api/v1/tokens/{ADMIN_TOKEN}",
        None,
        (401, 404, 404, 404, 404, 404, 200, 403, 403, 403, 404),
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


SECRET_LAYER = blob_data("secret", 100)


async def seed_secret(services: Services, client: httpx.AsyncClient) -> dict[str, str]:
    """As admin (`client`): everything of namespace `secret` the cross-namespace rows name,
    and a report for team/app's image too; returns the values of the rows' placeholders."""
    now = services.access.clock()
    r = await client.post("/api/v1/namespaces", json={"name": "secret"})
    assert r.status_code == 201, r.text
    for repo, data in (("secret/app", SECRET_LAYER), ("team/app", LAYER)):
        r = await client.post(
            f"/v2/{repo}/blobs/uploads/", params={"digest": digest(data)}, content=data
        )
        assert r.status_code == 201, r.text
    secret_manifest = image_manifest(SECRET_LAYER, [])
    r = await client.put(
        "/v2/secret/app/manifests/1",
        content=secret_manifest,
        headers={"content-type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert r.status_code == 201, r.text
    secret_digest = r.headers["docker-content-digest"]
    team_digest = (await client.head("/v2/team/app/manifests/1")).headers["docker-content-digest"]
    rule = await client.post("/api/v1/namespaces/secret/immutable-rules", json={"pattern": "v1"})
    policy = await client.post("/api/v1/namespaces/secret/policies", json={"keep_recent": 1})
    token = await client.post("/api/v1/tokens", json={"name": "mine", "scopes": ["api"]})
    assert (rule.status_code, policy.status_code, token.status_code) == (201, 201, 201)

    def side_door(tx: Tx) -> int:
        for image in (secret_digest, team_digest):
            save_report(tx, image, "ok", None, '{"components": []}', None, 0, now)
        accounts.create_robot(tx, "test", services.access.secret, "secret", "spy", "reader", now)
        hook, _ = add_endpoint(tx, "test", "secret", "http://93.184.216.34/secret", actions="push")
        return int(hook)

    hook = await services.db.write(side_door)
    return {
        "SECRET_DIGEST": secret_digest,
        "SECRET_LAYER": digest(SECRET_LAYER),
        "TEAM_DIGEST": team_digest,
        "SECRET_RULE": str(rule.json()["id"]),
        "SECRET_POLICY": str(policy.json()["id"]),
        "SECRET_WEBHOOK": str(hook),
        "ADMIN_TOKEN": str(token.json()["id"]),
    }


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [pytest.param(*row, id=f"{row[0]} {row[1]}") for row in CROSS_NAMESPACE],
)
async def test_nothing_leaks_across_namespaces(
    app: Any,
    services: Services,
    cast: Cast,
    method: str,
    path: str,
    body: Any,
    expected: tuple[int, ...],
) -> None:
    async with api_client(app) as admin:
        await seed(admin)
        values = await seed_secret(services, admin)
    for key, value in values.items():
        path = path.replace("{" + key + "}", value)
    got = []
    for caller in CALLERS:
        async with api_client(app, auth=cast.creds[caller]) as client:
            kwargs: dict[str, Any] = {}
            if body is not None:
                kwargs = {"json": json.loads(json.dumps(body).replace("{caller}", caller))}
            r = await client.request(method, path, **kwargs)
        got.append(r.status_code)
        if r.status_code == 200 and "secret" not in path and caller != "admin":
            # What a caller without a role in `secret` sees holds nothing of it.
            assert values["SECRET_DIGEST"] not in r.text, (caller, r.text[:300])
    wrong = [
        f"{caller}: {status} (expected {want})"
        for caller, status, want in zip(CALLERS, got, expected, strict=True)
        if status != want
    ]
    assert not wrong, f"{method} {path}: " + "; ".join(wrong)


async def test_the_matrix_names_every_route(app: Any) -> None:
    """Each registry route kind and each management route appears in the matrix (the `app`
    fixture registers every route, lifecycle and backups included)."""
    from appliance.api.manage import OPENAPI  # noqa: PLC0415

    paths = {p for _, p, _, _ in MATRIX}
    for kind in ("tags/list", "manifests", "blobs/uploads", "/blobs/sha", "referrers", "_catalog"):
        assert any(kind in p for p in paths), kind
    documented = {(m.upper(), "/api/v1" + p) for p, ops in OPENAPI["paths"].items() for m in ops}
    tested = set()
    for method, full_path, _, _ in MATRIX + CROSS_NAMESPACE:
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
