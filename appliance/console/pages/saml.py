"""SAML endpoints: our SP metadata, the redirect to the IdP, and the assertion consumer.

The assertion consumer is posted to by the IdP's page (another site), so it carries no CSRF
token and the SameSite=Lax session cookie does not come with it; it is authenticated by the
response's signature and by answering a request this Berth made (`auth/saml.py`).
"""

from __future__ import annotations

import logging

import trio
from quart import Response, request

from appliance.auth import saml as sp
from appliance.auth.saml import RequestInfo, SamlError, SamlProvider, provider_from_config
from appliance.console.framework import PageContext, PageNotFound, page, see_other
from appliance.console.pages.auth import signin_form, start_session
from appliance.console.redirects import after_sign_in
from appliance.metadata.db import Tx

log = logging.getLogger("berth.console")

__all__ = ["provider_from_config"]


def base_url(ctx: PageContext) -> str:
    if ctx.services.public_url:
        return ctx.services.public_url
    return f"{request.scheme}://{request.headers.get('host', 'localhost')}"


def _provider(ctx: PageContext) -> SamlProvider:
    provider = ctx.services.extras.get("saml")
    if not isinstance(provider, SamlProvider):
        raise PageNotFound("SAML sign-in is not configured")
    return provider


async def _info(ctx: PageContext) -> RequestInfo:
    form = await request.form if request.method == "POST" else {}
    base = base_url(ctx)
    scheme, _, rest = base.partition("://")
    return RequestInfo(
        https=scheme == "https",
        host=rest.split("/", 1)[0],
        path=request.path,
        get={k: str(v) for k, v in request.args.items()},
        post={k: str(v) for k, v in form.items()},
    )


@page("/saml/metadata", public=True)
async def metadata(ctx: PageContext) -> Response:
    provider = _provider(ctx)
    xml = provider.metadata(base_url(ctx))
    return Response(xml, content_type="application/samlmetadata+xml")


@page("/saml/login", public=True)
async def login(ctx: PageContext) -> Response:
    provider = _provider(ctx)
    info = await _info(ctx)
    target = after_sign_in(ctx.arg("next", "/"))
    try:
        url, request_id = await trio.to_thread.run_sync(
            provider.login_url, base_url(ctx), info, target
        )
    except SamlError as e:
        log.warning("SAML sign-in could not start: %s", e.message)
        return await signin_form(ctx, "Single sign-on is unavailable right now.", 503)
    now = ctx.access.clock()
    await ctx.access.db.write(lambda tx: sp.remember_request(tx, request_id, now))
    return see_other(url)


@page("/saml/acs", methods=("POST",), public=True, csrf=False)
async def acs(ctx: PageContext) -> Response:
    provider = _provider(ctx)
    info = await _info(ctx)
    try:
        who, answers = await trio.to_thread.run_sync(provider.consume, base_url(ctx), info)
    except SamlError as e:
        log.warning("SAML response refused: %s", e.message)
        return await signin_form(ctx, "Single sign-on failed: " + e.message, 401)
    now = ctx.access.clock()

    def fn(tx: Tx) -> int:
        if not sp.consume_request(tx, answers, now):
            raise SamlError("this SAML response answers no pending sign-in (expired or replayed)")
        return sp.sign_in_user(tx, provider, who, now).id

    try:
        user_id = await ctx.change(fn)
    except SamlError as e:
        log.warning("SAML sign-in refused: %s", e.message)
        return await signin_form(ctx, "Single sign-on failed: " + e.message, 401)
    # The RelayState comes back from the IdP's page: as hostile as any `next` (start_session
    # sends the browser only where `after_sign_in` allows).
    target = info.post.get("RelayState", "/")
    return await start_session(ctx, user_id, "saml", target)
