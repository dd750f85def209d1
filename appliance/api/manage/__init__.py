"""The JSON management API under `/api/v1` (Quart), with its OpenAPI document.

Authenticated per request by `Authorization: Bearer <personal access token>` (scope `api`) or
HTTP Basic (name and password, or name and token); `routing.py` signs the caller in and turns
domain errors into answers (statuses from `api/codes.py`), `reply.py` writes the answers and
reads bodies, and each route group is a module of its own. Rights: instance admins manage
users and create namespaces; a namespace's owners manage its members, robots and visibility;
everyone signed in manages their own tokens (personal access and refresh tokens), and admins
anyone's. A token or robot created with a token gets at most that token's scopes and expiry,
and is revoked with it (`auth/credentials.py`).
"""

from __future__ import annotations

from quart import Response
from quart_trio import QuartTrio

from appliance.api.manage import (
    about,
    audit,
    backups,
    citrust,
    lifecycle,
    namespaces,
    scanning,
    tokens,
    users,
    webhooks,
)
from appliance.api.manage.reply import json_response
from appliance.api.manage.routing import OPENAPI, install
from appliance.auth.service import AccessControl
from appliance.backup.service import BackupService
from appliance.lifecycle import Lifecycle

__all__ = ["OPENAPI", "register"]


async def openapi() -> Response:
    return json_response(OPENAPI)


def register(
    web: QuartTrio,
    access: AccessControl,
    *,
    lifecycle_service: Lifecycle | None = None,
    backup_service: BackupService | None = None,
    allow_private_webhooks: bool = False,
) -> None:
    """Serve `/api/v1` on `web`: every route group, lifecycle and backups when they run."""
    web.add_url_rule("/api/v1/openapi.json", "openapi", openapi, methods=["GET"])
    for group in (about, users, namespaces, tokens, scanning, citrust):
        install(web, access, group.routes, access)
    if lifecycle_service is not None:
        install(web, access, lifecycle.routes, lifecycle_service)
    if backup_service is not None:
        install(web, access, backups.routes, backup_service)
    install(web, access, audit.routes, access)
    install(web, access, webhooks.routes, webhooks.Webhooks(access.db, allow_private_webhooks))
