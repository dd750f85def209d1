"""Console pages of vulnerability scanning: an image's report, a namespace's pull policy with
its exceptions, and the advisory data's status."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from quart import Response

from appliance.console.framework import BadRequest, NavEntry, PageContext, PageNotFound, page
from appliance.errors import BerthError, InvalidInput
from appliance.metadata.db import Tx
from appliance.oci import mediatypes as mt
from appliance.oci.digest import is_digest
from appliance.oci.names import validate_name
from appliance.scan import policy as pull_policy
from appliance.scan import records as scan_records
from appliance.scan import vulndb
from appliance.scan.matching import SEVERITIES
from appliance.scan.policy import UNSCANNED, invalidate, load_policies
from appliance.scan.service import read_report


@page("/r/<path:name>/-/vulnerabilities/<digest>")
async def image_vulnerabilities(ctx: PageContext, name: str, digest: str) -> Response:
    try:
        name = validate_name(name)
    except BerthError:
        raise PageNotFound(f"no repository {name}") from None
    await ctx.require(name, "pull")
    if not is_digest(digest):
        raise PageNotFound(f"no manifest {digest}")
    record = await ctx.registry.manifest(name, digest)
    digests = [record.digest]
    if record.media_type in mt.INDEXES:
        digests = [str(m["digest"]) for m in json.loads(record.payload).get("manifests", [])]
    reports = await ctx.access.db.read(lambda tx: [(d, read_report(tx, d)) for d in digests])
    return await ctx.render(
        "vulnerabilities.html",
        title=f"Vulnerabilities of {name}@{digest[:19]}",
        name=name,
        digest=record.digest,
        reports=reports,
    )


def _expiry(text: str, now: float) -> float | None:
    """A form's expiry: empty (never), a number of days, or a date (YYYY-MM-DD, UTC)."""
    text = text.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        if len(text) > 5:
            raise BadRequest("the expiry is at most 99999 days away")
        return now + int(text) * 86400.0
    try:
        day = dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    except ValueError:
        raise BadRequest("the expiry is a number of days or a date (YYYY-MM-DD)") from None
    return day.timestamp()


@page("/namespaces/<ns>/scan-policy", methods=("GET", "POST"))
async def scan_policy(ctx: PageContext, ns: str) -> Response:
    ctx.require_role(ns, "reader")
    db = ctx.access.db
    if ctx.method == "POST":
        ctx.require_role(ns, "maintainer")
        form = await ctx.form()
        action = form.get("action", "")
        now = ctx.access.clock()
        actor = ctx.actor
        notice = ""
        try:
            if action == "set":
                severity = form.get("block_severity", "critical")
                unscanned = form.get("unscanned", "default")

                def set_it(tx: Tx) -> None:
                    pull_policy.set_policy(tx, actor, ns, severity, unscanned, now)

                await ctx.change(set_it)
                notice = "Policy saved."
            elif action == "remove":
                await ctx.change(lambda tx: pull_policy.delete_policy(tx, actor, ns, now))
                notice = "Policy removed."
            elif action == "except":
                advisory = form.get("advisory", "").strip()
                expires = _expiry(form.get("expires", ""), now)
                reason = form.get("reason", "")

                def add(tx: Tx) -> None:
                    pull_policy.set_exception(tx, actor, ns, advisory, expires, reason, now)

                await ctx.change(add)
                notice = f"{advisory} is accepted in {ns}."
            elif action == "unexcept":
                advisory = form.get("advisory", "")
                await ctx.change(
                    lambda tx: pull_policy.delete_exception(tx, actor, ns, advisory, now)
                )
                notice = f"{advisory} is no longer accepted."
            else:
                raise BadRequest("unknown action")
        except InvalidInput as e:
            raise BadRequest(e.message) from None
        invalidate(db)
        return await ctx.redirect(f"/namespaces/{ns}/scan-policy", notice)

    def read(tx: Tx) -> dict[str, Any]:
        policy = load_policies(tx).get(ns)
        rows = scan_records.exceptions_of(tx, ns)
        return {"policy": policy, "exceptions": rows}

    state = await db.read(read)
    return await ctx.render(
        "scan_policy.html",
        title=f"Vulnerability policy of {ns}",
        ns=ns,
        policy=state["policy"],
        exceptions=[
            {"advisory": r[0], "expires_at": r[1], "reason": r[2], "by": r[3]}
            for r in state["exceptions"]
        ],
        severities=SEVERITIES[1:],
        unscanned_modes=UNSCANNED,
        now=ctx.access.clock(),
        may_change=ctx.principal.admin or ctx.principal.roles.get(ns) in ("maintainer", "owner"),
    )


@page("/vulnerabilities", nav=NavEntry("Vulnerabilities", "/vulnerabilities", order=45))
async def vulnerabilities(ctx: PageContext) -> Response:
    def read(tx: Tx) -> dict[str, Any]:
        return {"status": vulndb.status(tx), "policies": load_policies(tx)}

    state = await ctx.access.db.read(read)
    principal = ctx.principal
    policies = [
        p for ns, p in sorted(state["policies"].items()) if principal.admin or ns in principal.roles
    ]
    return await ctx.render(
        "vulndb.html", title="Vulnerabilities", db=state["status"], policies=policies
    )
