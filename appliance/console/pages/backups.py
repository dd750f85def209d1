"""The backups page (instance admins): where and when backups go, the last result, every
backup with its size, duration and verification, and buttons to back up, verify and prune
now. The work runs in the background (`backup/service.py`); each action is audited there."""

from __future__ import annotations

from quart import Response

from appliance.backup import layout
from appliance.backup.service import BackupService
from appliance.console.framework import NavEntry, PageContext, PageNotFound, page

SHOWN = 50


def _service(ctx: PageContext) -> BackupService:
    service = ctx.services.extras.get("backups")
    if not isinstance(service, BackupService):
        raise PageNotFound("backups are not available in this process")
    return service


@page(
    "/backups", methods=("GET", "POST"), nav=NavEntry("Backups", "/backups", order=77, admin=True)
)
async def backups(ctx: PageContext) -> Response:
    ctx.require_admin()
    service = _service(ctx)
    if ctx.method == "POST":
        form = await ctx.form()
        action = form.get("action", "")
        if action == "backup":
            backup_id = await service.start(ctx.actor)
            return await ctx.redirect("/backups", f"Backup {backup_id} started.")
        if action == "verify":
            backup_id = layout.check_id(form.get("id", ""))
            await service.start_verify(backup_id, ctx.actor)
            return await ctx.redirect("/backups", f"Verifying backup {backup_id}.")
        if action == "prune":
            result = await service.prune(ctx.actor)
            gone = len(result.removed) + len(result.incomplete_removed)
            return await ctx.redirect(
                "/backups", f"Pruned {gone} backup(s) and {result.blobs_removed} blob(s)."
            )
        raise PageNotFound(f"no backup action {action!r}")
    found = await service.recent(SHOWN)
    last_success = next((r for r in found if r.status == "succeeded"), None)
    return await ctx.render(
        "backups.html",
        title="Backups",
        settings=service.status(),
        backups=found,
        last=found[0] if found else None,
        last_success=last_success,
        verifying=service.verifying,
    )
