"""Backup routes of the management API, for instance admins.

A backup or a verify started here runs in the background (`202`); its result is in the
backup's record. `?wait=true` on verify and prune answers with the result instead.
"""

from __future__ import annotations

from quart import Response, request

from appliance.api import inputs
from appliance.api.manage.reply import error, forbidden, json_body, json_response
from appliance.api.manage.routing import Routes
from appliance.auth.policy import Principal
from appliance.backup import layout
from appliance.backup.service import BackupService

ADMINS_ONLY = "only instance admins manage backups"

routes: Routes[BackupService] = Routes()


def _wait() -> bool:
    return request.args.get("wait", "").lower() in ("1", "true", "yes")


@routes("/backups", "GET", "Backups taken by this installation, newest first (admins)")
async def list_backups(backups: BackupService, who: Principal) -> Response:
    if not who.admin:
        return forbidden(ADMINS_ONLY)
    found = await backups.recent()
    return json_response({**backups.status(), "backups": [r.as_json() for r in found]})


@routes(
    "/backups",
    "POST",
    "Start a backup now, into backup.target (admins); ?wait=true answers when it is done",
)
async def create_backup(backups: BackupService, who: Principal) -> Response:
    if not who.admin:
        return forbidden(ADMINS_ONLY)
    if _wait():
        return json_response(await backups.backup("api", who.actor), 201)
    backup_id = await backups.start(who.actor)
    return json_response({"id": backup_id, "status": "running"}, 202)


@routes("/backups/target", "GET", "Backups found in the target itself (admins)")
async def target_backups(backups: BackupService, who: Principal) -> Response:
    if not who.admin:
        return forbidden(ADMINS_ONLY)
    return json_response({"target": backups.target_url, "backups": await backups.in_target()})


@routes("/backups/{backup_id}", "GET", "One backup's record (admins)")
async def get_backup(backups: BackupService, who: Principal, backup_id: str) -> Response:
    if not who.admin:
        return forbidden(ADMINS_ONLY)
    layout.check_id(backup_id)
    record = await backups.record(backup_id)
    if record is None:
        return error(404, f"no backup {backup_id}")
    return json_response(record.as_json())


@routes("/backups/{backup_id}/verify", "POST", "Re-hash every file of a backup (admins)")
async def verify_backup(backups: BackupService, who: Principal, backup_id: str) -> Response:
    if not who.admin:
        return forbidden(ADMINS_ONLY)
    if _wait():
        result = await backups.verify(backup_id, who.actor)
        return json_response(result.as_json())
    await backups.start_verify(backup_id, who.actor)
    return json_response({"id": backup_id, "verify": "running"}, 202)


@routes(
    "/backups/prune",
    "POST",
    "Apply the retention (backup.keep_*) to the target (admins)",
    {"dry_run": {"type": "boolean"}},
)
async def prune_backups(backups: BackupService, who: Principal) -> Response:
    if not who.admin:
        return forbidden(ADMINS_ONLY)
    dry_run = inputs.flag(await json_body(required=False), "dry_run")
    result = await backups.prune(who.actor, dry_run=dry_run)
    return json_response(result.as_json())
