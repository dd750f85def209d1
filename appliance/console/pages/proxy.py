"""The proxy namespaces' status page: each upstream, the repositories cached from it and when
their tags were last re-validated. Read-only; what a user sees follows who may pull."""

from __future__ import annotations

from quart import Response

from appliance.console.framework import NavEntry, PageContext, page
from appliance.metadata import identity
from appliance.proxy.records import ProxyStore
from appliance.proxy.settings import parse


@page("/proxy", nav=NavEntry("Proxy cache", "/proxy", order=60))
async def proxy_status(ctx: PageContext) -> Response:
    who = ctx.principal
    namespaces = parse(ctx.config)
    public = await ctx.access.db.read(identity.public_namespaces)
    store = ProxyStore(ctx.access.db, ctx.access.clock)
    shown = []
    for name, ns in sorted(namespaces.items()):
        if not (who.admin or name in public or name in who.roles):
            continue
        shown.append(
            {
                "name": name,
                "url": ns.url,
                "library": ns.library,
                "authenticated": ns.username is not None,  # never the credentials themselves
                "public": name in public,
                "repositories": await store.status(name),
            }
        )
    return await ctx.render(
        "proxy.html",
        title="Proxy cache",
        namespaces=shown,
        configured=bool(namespaces),
        tag_ttl=ctx.config["proxy.tag_ttl"],
    )
