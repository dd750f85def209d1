"""OpenID Connect endpoints of the console: the redirect to a provider and its callback.

`/oidc/<name>/login` remembers a pending sign-in in the database (`auth/oidc.py`) and binds it
to this browser with the `berth_oidc` cookie (HttpOnly, SameSite=Lax: a top-level redirect
back from the provider carries it); `/oidc/<name>/callback` takes the pending sign-in its
`state` names (once), exchanges the code and checks the ID token, then starts a session like
every other sign-in. Neither page needs a session or a CSRF token: the callback is
authenticated by the one-use state, the binding cookie, PKCE and the ID token.
"""

from __future__ import annotations

import logging
import re
import secrets

from quart import Response, request

from appliance.auth import oidc
from appliance.auth.oidc import OidcError, OidcProvider
from appliance.auth.policy import Principal
from appliance.console.framework import PageContext, PageNotFound, cookie_options, page, see_other
from appliance.console.pages.auth import signin_form, start_session
from appliance.console.pages.saml import base_url
from appliance.console.redirects import after_sign_in
from appliance.metadata.db import Tx

log = logging.getLogger("berth.console")
BINDING_COOKIE = "berth_oidc"
_BINDING = re.compile(r"[A-Za-z0-9_-]{32,64}")


def providers(ctx: PageContext) -> dict[str, OidcProvider]:
    found = ctx.services.extras.get("oidc")
    return found if isinstance(found, dict) else {}


def _provider(ctx: PageContext, name: str) -> OidcProvider:
    provider = providers(ctx).get(name)
    if provider is None:
        raise PageNotFound(f"no OpenID Connect provider {name!r}")
    return provider


def redirect_uri(ctx: PageContext, provider: OidcProvider) -> str:
    return f"{base_url(ctx)}/oidc/{provider.name}/callback"


@page("/oidc/<name>/login", public=True)
async def login(ctx: PageContext, name: str) -> Response:
    provider = _provider(ctx, name)
    target = after_sign_in(ctx.arg("next", "/"))
    try:
        url, pending = await provider.begin(redirect_uri(ctx, provider))
    except OidcError as e:
        log.warning("OpenID Connect sign-in with %s could not start: %s", name, e.message)
        return await signin_form(
            ctx, f"Sign-in with {provider.label} is unavailable right now.", 503
        )
    binding = request.cookies.get(BINDING_COOKIE, "")
    if not _BINDING.fullmatch(binding):
        binding = secrets.token_urlsafe(32)
    now = ctx.access.clock()
    await ctx.access.db.write(lambda tx: oidc.remember(tx, name, pending, binding, target, now))
    ctx.set_cookie(BINDING_COOKIE, binding, **cookie_options(ctx.services, oidc.STATE_TTL))
    return see_other(url)


@page("/oidc/<name>/callback", public=True)
async def callback(ctx: PageContext, name: str) -> Response:
    provider = _provider(ctx, name)
    try:
        principal, target = await _complete(ctx, provider)
    except OidcError as e:
        log.warning("OpenID Connect sign-in with %s refused: %s", name, e.message)
        return await signin_form(ctx, "Sign-in failed: " + e.message, 401)
    assert principal.user_id is not None
    return await start_session(ctx, principal.user_id, principal.via, target)


async def _complete(ctx: PageContext, provider: OidcProvider) -> tuple[Principal, str]:
    """(the signed-in user, where to go) from the provider's answer. Raises OidcError."""
    state = ctx.arg("state")
    if not state or len(state) > 200:
        raise OidcError("the answer carries no sign-in state: start again")
    binding = request.cookies.get(BINDING_COOKIE, "")
    now = ctx.access.clock()
    taken = await ctx.access.db.write(lambda tx: oidc.take(tx, state))
    pending, target = oidc.accept(taken, provider.name, binding, now)
    error = ctx.arg("error")
    if error:
        detail = ctx.arg("error_description")[:200]
        raise OidcError(f"{provider.label} did not sign you in: {error[:100]} {detail}".strip())
    code = ctx.arg("code")
    if not code or len(code) > 2000:
        raise OidcError("the answer carries no authorization code")
    who = await provider.finish(redirect_uri(ctx, provider), code, pending, request.args.get("iss"))

    def fn(tx: Tx) -> Principal:
        return oidc.sign_in_user(tx, provider, who, ctx.access.clock())

    principal: Principal = await ctx.change(fn)
    return principal, target


async def signed_out(ctx: PageContext, via: str) -> Response | None:
    """After the console session of a provider's user ends: a page offering to end the
    provider's session too, when the provider can (None otherwise). A page with a link rather
    than a redirect, because the console's Content-Security-Policy lets forms (sign-out is one)
    lead only to the console itself."""
    provider = providers(ctx).get(via.removeprefix("oidc:")) if via.startswith("oidc:") else None
    if provider is None:
        return None
    url = await provider.logout_url(f"{base_url(ctx)}/signin")
    if url is None:
        return None
    return await ctx.render("signed_out.html", title="Signed out", provider=provider, url=url)
