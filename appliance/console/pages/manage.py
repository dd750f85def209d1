"""Who may do what: namespaces (members, visibility, robots), personal access tokens, users,
and the audit log. Every change goes through `auth.accounts`, which audits it in its
transaction; rights are those of the management API (`appliance/api/manage/`)."""

from __future__ import annotations

import time
from typing import Any

from quart import Response

from appliance.api.inputs import path_id
from appliance.auth import accounts, credentials
from appliance.auth.policy import ROBOT_ROLES, ROLES, TOKEN_SCOPES, role_rank
from appliance.console.framework import BadRequest, NavEntry, PageContext, PageNotFound, page
from appliance.metadata import audit, identity
from appliance.metadata.db import Tx
from appliance.oci.names import normalize_component

AUDIT_PAGE = 100


def _expiry(days: str) -> float | None:
    """`expires_days` form field: empty for never, else a whole number of days."""
    days = days.strip()
    if not days:
        return None
    if not (days.isascii() and days.isdigit()) or len(days) > 4 or not 0 < int(days) <= 3650:
        raise BadRequest("expiry must be a number of days between 1 and 3650, or empty")
    return time.time() + int(days) * 86400


# -- namespaces ---------------------------------------------------------------------------


@page("/namespaces", methods=("GET", "POST"), nav=NavEntry("Namespaces", "/namespaces", order=30))
async def namespaces(ctx: PageContext) -> Response:
    who = ctx.principal
    if ctx.method == "POST":
        ctx.require_admin()
        form = await ctx.form()
        name = form.get("name", "").strip()
        public = form.get("public") == "on"
        now = ctx.access.clock()
        await ctx.change(
            lambda tx: accounts.create_namespace(
                tx, ctx.actor, name, now, public=public, owner=who.name
            )
        )
        return await ctx.redirect(f"/namespaces/{name}", f"Namespace {name} created.")
    found = await ctx.access.db.read(identity.list_namespaces)
    visible = [n for n in found if who.admin or n.public or n.name in who.roles]
    return await ctx.render(
        "namespaces.html",
        title="Namespaces",
        namespaces=visible,
        roles=dict(who.roles),
    )


@page("/namespaces/<ns>", methods=("GET", "POST"))
async def namespace(ctx: PageContext, ns: str) -> Response:
    who = ctx.principal

    def read(tx: Tx) -> Any:
        record = identity.namespace_by_name(tx, ns)
        if record is None:
            return None
        members = identity.members(tx, ns) if who.admin or ns in who.roles else []
        robots = identity.robots(tx, ns)
        return record, members, robots

    found = await ctx.access.db.read(read)
    if found is None or not (who.admin or found[0].public or ns in who.roles):
        raise PageNotFound(f"no namespace {ns!r}")
    record, members, robots = found
    if ctx.method == "POST":
        return await _namespace_change(ctx, ns)
    role = who.role_in(ns)
    return await ctx.render(
        "namespace.html",
        title=f"Namespace {ns}",
        ns=record,
        members=members,
        robots=robots if role_rank(role) >= role_rank("maintainer") else [],
        role=role,
        is_owner=role_rank(role) >= role_rank("owner"),
        roles=ROLES,
        robot_roles=ROBOT_ROLES,
    )


async def _namespace_change(ctx: PageContext, ns: str) -> Response:
    form = await ctx.form()
    action = form.get("action", "")
    now = ctx.access.clock()
    actor = ctx.actor
    ctx.require_role(ns, "owner")
    if action == "visibility":
        public = form.get("public") == "on"
        await ctx.change(lambda tx: accounts.set_public(tx, actor, ns, public, now))
        return await ctx.redirect(
            f"/namespaces/{ns}", f"{ns} is now {'public' if public else 'private'}."
        )
    if action == "member":
        user = normalize_component(form.get("user", ""))
        role = form.get("role", "")
        await ctx.change(lambda tx: accounts.set_member(tx, actor, ns, user, role, now))
        return await ctx.redirect(f"/namespaces/{ns}", f"{user} is now {role} in {ns}.")
    if action == "remove-member":
        user = form.get("user", "")
        await ctx.change(lambda tx: accounts.remove_member(tx, actor, ns, user, now))
        return await ctx.redirect(f"/namespaces/{ns}", f"{user} removed from {ns}.")
    if action == "robot":
        name = form.get("name", "").strip()
        role = form.get("role", "developer")
        expires = _expiry(form.get("expires_days", ""))
        robot, token = await ctx.change(
            lambda tx: accounts.create_robot(
                tx,
                actor,
                ctx.access.secret,
                ns,
                name,
                role,
                now,
                expires_at=expires,
                description=form.get("description", "")[:200],
            )
        )
        return await ctx.render(
            "secret.html",
            title="Robot created",
            what=f"robot account {robot.account}",
            username=robot.account,
            secret=token,
            back=f"/namespaces/{ns}",
        )
    if action == "delete-robot":
        name = form.get("name", "")
        await ctx.change(lambda tx: accounts.delete_robot(tx, actor, ns, name, now))
        return await ctx.redirect(f"/namespaces/{ns}", f"Robot {ns}+{name} deleted.")
    raise BadRequest(f"unknown action {action!r}")


# -- personal access tokens -----------------------------------------------------------------


@page("/tokens", methods=("GET", "POST"), nav=NavEntry("Access tokens", "/tokens", order=60))
async def tokens(ctx: PageContext) -> Response:
    """The signed-in user's personal access tokens and refresh tokens (`docker login`
    sessions); an admin sees and revokes anyone's with `?user=NAME`."""
    who = ctx.principal
    assert who.user_id is not None
    form = await ctx.form() if ctx.method == "POST" else {}
    wanted = (form.get("user", "") if ctx.method == "POST" else ctx.arg("user")).strip()
    uid, owner = who.user_id, who.name
    if wanted and wanted != who.name:
        ctx.require_admin()
        user = await ctx.access.db.read(lambda tx: identity.require_user(tx, wanted))
        uid, owner = user.id, user.name
    back = "/tokens" if owner == who.name else f"/tokens?user={owner}"
    if ctx.method == "POST":
        now = ctx.access.clock()
        if form.get("action") == "revoke":
            token_id = form.get("id", "")

            def revoke(tx: Tx) -> bool:
                number = path_id(token_id)
                record = identity.token_by_id(tx, number) if number is not None else None
                if record is None or record.user_id != uid or record.kind not in ("pat", "refresh"):
                    return False
                accounts.revoke_token(tx, ctx.actor, record, now)
                return True

            if not await ctx.change(revoke):
                raise PageNotFound("no such token")
            return await ctx.redirect(back, "Token revoked.")
        if owner != who.name:
            raise BadRequest("tokens are created by their owner")
        scopes = tuple(s for s in await ctx.form_list("scope") if s)
        name = form.get("name", "").strip()[:100]
        if not name:
            raise BadRequest("give the token a name")
        expires = _expiry(form.get("expires_days", ""))
        _, token = await ctx.change(
            lambda tx: accounts.create_pat(
                tx, ctx.actor, ctx.access.secret, who.name, name, scopes, now, expires_at=expires
            )
        )
        return await ctx.render(
            "secret.html",
            title="Token created",
            what=f"personal access token {name!r}",
            username=who.name,
            secret=token,
            back="/tokens",
        )
    now = ctx.access.clock()

    def read(tx: Tx) -> list[tuple[identity.TokenRecord, str, dict[str, object] | None]]:
        rows = []
        for t in identity.tokens_of_user(tx, uid, None):
            rows.append((t, _token_state(tx, t, now), credentials.describe(t.minted_by)))
        return rows

    found = await ctx.access.db.read(read)
    return await ctx.render(
        "tokens.html",
        title="Access tokens",
        tokens=[row for row in found if row[0].kind == "pat"],
        refresh_tokens=[row for row in found if row[0].kind == "refresh"],
        scopes=TOKEN_SCOPES,
        owner=owner,
        own=owner == who.name,
    )


def _token_state(tx: Tx, token: identity.TokenRecord, now: float) -> str:
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    if credentials.resolve_token(tx, token, now) is None:
        return "ended with its credential"
    return "active"


# -- users (admins) -------------------------------------------------------------------------


@page("/users", methods=("GET", "POST"), nav=NavEntry("Users", "/users", order=70, admin=True))
async def users(ctx: PageContext) -> Response:
    ctx.require_admin()
    actor = ctx.actor
    if ctx.method == "POST":
        form = await ctx.form()
        action = form.get("action", "")
        now = ctx.access.clock()
        name = form.get("name", "").strip()
        if action == "create":
            digest = await ctx.access.hash_password(form.get("password", ""))
            admin = form.get("admin") == "on"
            email = form.get("email", "").strip() or None
            await ctx.change(
                lambda tx: accounts.add_user(tx, actor, name, digest, now, admin=admin, email=email)
            )
            return await ctx.redirect("/users", f"User {name} created.")
        if action in ("disable", "enable"):
            if name == ctx.principal.name:
                raise BadRequest("you cannot disable yourself")
            disabled = action == "disable"

            # Disabling ends the user's console sessions in the same transaction.
            await ctx.change(lambda tx: accounts.set_disabled(tx, actor, name, disabled, now))
            return await ctx.redirect("/users", f"User {name} {action}d.")
        if action in ("make-admin", "drop-admin"):
            if name == ctx.principal.name:
                raise BadRequest("you cannot change your own admin right")
            admin = action == "make-admin"
            await ctx.change(lambda tx: accounts.set_admin(tx, actor, name, admin, now))
            return await ctx.redirect("/users", f"User {name} updated.")
        raise BadRequest(f"unknown action {action!r}")
    found = await ctx.access.db.read(identity.list_users)
    return await ctx.render("users.html", title="Users", users=found)


# -- audit log (admins) ---------------------------------------------------------------------


@page("/audit", nav=NavEntry("Audit log", "/audit", order=75, admin=True))
async def audit_log(ctx: PageContext) -> Response:
    ctx.require_admin()
    actor = ctx.arg("actor").strip()[:200]
    action = ctx.arg("action").strip()[:100]
    target = ctx.arg("repository").strip()[:300]
    before_text = ctx.arg("before")
    before = path_id(before_text)

    def fn(tx: Tx) -> list[dict[str, Any]]:
        return audit.query(
            tx,
            actor=actor or None,
            action=action or None,
            target=target or None,
            before_id=before,
            limit=AUDIT_PAGE + 1,
        )

    events = await ctx.access.db.read(fn)
    more = len(events) > AUDIT_PAGE
    events = events[:AUDIT_PAGE]
    return await ctx.render(
        "audit.html",
        title="Audit log",
        events=events,
        actor=actor,
        action=action,
        repository=target,
        next_before=events[-1]["id"] if more and events else None,
    )
