"""Backup routes of the management API (`/api/v1`), for instance admins.

Registered through `api.manage`'s `route` decorator (same sign-in, error answers and OpenAPI
document). A backup or a verify started here runs in the background (`202`); its result is in
the backup's record. `?wait=true` on verify and prune answers with the result instead.
"""

from __future__ import annotations

from quart import Response, request

from appliance.api import inputs
from appliance.api.manage import RouteDecorator, _error, _json, json_body
from appliance.auth.policy import Principal
from appliance.backup import layout
from appliance.backup.service import BackupService


def _forbidden() -> Response:
    return _error(403, "only instance admins manage backups")


def _wait() -> bool:
    return request.args.get("wait", "").lower() in ("1", "true", "yes")


def register(route: RouteDecorator, backups: BackupService) -> None:
    @route("/backups", "GET", "Backups taken by this installation, newest first (admins)")
    async def list_backups(who: Principal) -> Response:
        if not who.admin:
            return _forbidden()
        found = await backups.recent()
        return _json({**backups.status(), "backups": [r.as_json() for r in found]})

    @route(
        "/backups",
        "POST",
        "Start a backup now, into backup.target (admins); ?wait=true answers when it is done",
    )
    async def create_backup(who: Principal) -> Response:
        if not who.admin:
            return _forbidden()
        if _wait():
            return _json(await backups.backup("api", who.actor), 201)
        backup_id = await backups.start(who.actor)
        return _json({"id": backup_id, "status": "running"}, 202)

    @route("/backups/target", "GET", "Backups found in the target itself (admins)")
    async def target_backups(who: Principal) -> Response:
        if not who.admin:
            return _forbidden()
        return _json({"target": backups.target_url, "backups": await backups.in_target()})

    @route("/backups/{backup_id}", "GET", "One backup's record (admins)")
    async def get_backup(who: Principal, backup_id: str) -> Response:
        if not who.admin:
            return _forbidden()
        layout.check_id(backup_id)
        record = await backups.record(backup_id)
        if record is None:
            return _error(404, f"no backup {backup_id}")
        return _json(record.as_json())

    @route("/backups/{backup_id}/verify", "POST", "Re-hash every file of a backup (admins)")
    async def verify_backup(who: Principal, backup_id: str) -> Response:
        if not who.admin:
            return _forbidden()
        if _wait():
            result = await backups.verify(backup_id, who.actor)
            return _json(result.as_json())
        await backups.start_verify(backup_id, who.actor)
        return _json({"id": backup_id, "verify": "running"}, 202)

    @route(
        "/backups/prune",
        "POST",
        "Apply the retention (backup.keep_*) to the target (admins)",
        {"dry_run": {"type": "boolean"}},
    )
    async def prune_backups(who: Principal) -> Response:
        if not who.admin:
            return _forbidden()
        dry_run = inputs.flag(await json_body(required=False), "dry_run")
        result = await backups.prune(who.actor, dry_run=dry_run)
        return _json(result.as_json())
