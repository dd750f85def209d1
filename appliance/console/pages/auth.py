"""Sign-in and sign-out pages: local accounts and LDAP by name and password, SAML and OpenID
Connect by redirect (pages/saml.py, pages/oidc.py).

The sign-in form is posted before any session exists, so its CSRF token is a double-submit
cookie (`berth_signin_csrf`) that the form must echo. Signing in creates a new session (the
session id is rotated) and ends the one the browser had. Personal access tokens and robot
secrets are for registry clients, never for the console.
"""

from __future__ import annotations

from quart import Response, request

from appliance.api.asgi import client_address
from appliance.auth.ldap import DirectoryUnavailable
from appliance.auth.secrets import looks_like_token
from appliance.auth.service import SignInFailed, SignInLocked
from appliance.console.framework import (
    SESSION_COOKIE,
    SIGNIN_CSRF_COOKIE,
    PageContext,
    _check_csrf,
    cookie_options,
    new_signin_csrf,
    page,
)
from appliance.console.redirects import after_sign_in


async def signin_form(
    ctx: PageContext, error: str | None = None, status: int = 200, username: str = ""
) -> Response:
    token = new_signin_csrf()
    ctx.set_cookie(SIGNIN_CSRF_COOKIE, token, **cookie_options(ctx.services, 3600))
    saml = ctx.services.extras.get("saml")
    oidc = ctx.services.extras.get("oidc") or {}
    return await ctx.render(
        "signin.html",
        status=status,
        title="Sign in",
        signin_csrf=token,
        error=error,
        username=username,
        next=after_sign_in(ctx.arg("next", "/")),
        saml_enabled=saml is not None,
        oidc_providers=list(oidc.values()),
        ldap_enabled=ctx.access.ldap is not None,
    )


async def start_session(ctx: PageContext, user_id: int, via: str, target: str) -> Response:
    """Create a fresh session for `user_id` and send the browser on to `target`."""
    old = request.cookies.get(SESSION_COOKIE) or None
    session_id = await ctx.services.sessions.create(user_id, via, replaces=old)
    lifetime = float(ctx.config["console.session_lifetime"])
    ctx.set_cookie(SESSION_COOKIE, session_id, **cookie_options(ctx.services, lifetime))
    ctx.set_cookie(SIGNIN_CSRF_COOKIE, "")
    return await ctx.redirect(after_sign_in(target))


@page("/signin", methods=("GET", "POST"), public=True, csrf=False)
async def signin(ctx: PageContext) -> Response:
    if request.method == "GET":
        return await signin_form(ctx)  # also when signed in: to switch accounts
    form = await ctx.form()
    if not _check_csrf(request.cookies.get(SIGNIN_CSRF_COOKIE, ""), form.get("csrf_token", "")):
        return await signin_form(ctx, "The form expired; please sign in again.", 403)
    username = form.get("username", "").strip()
    password = form.get("password", "")
    if looks_like_token(password):
        return await signin_form(
            ctx, "Tokens are for registry clients; sign in with your password.", 401, username
        )
    try:
        principal = await ctx.access.authenticate(username, password, client_address(request.scope))
    except SignInFailed:
        return await signin_form(ctx, "Incorrect user name or password.", 401, username)
    except SignInLocked:
        return await signin_form(ctx, "Too many failed sign-ins; try again later.", 429, username)
    except DirectoryUnavailable:
        return await signin_form(
            ctx, "The LDAP directory cannot be reached; try again later.", 503, username
        )
    if principal.user_id is None:
        return await signin_form(ctx, "Incorrect user name or password.", 401, username)
    return await start_session(ctx, principal.user_id, principal.via, form.get("next", "/"))


@page("/signout", methods=("POST",))
async def signout(ctx: PageContext) -> Response:
    cookie = request.cookies.get(SESSION_COOKIE, "")
    via = ctx.session.via if ctx.session is not None else ""
    if cookie:
        await ctx.services.sessions.end(cookie)
    ctx.set_cookie(SESSION_COOKIE, "")
    ctx.session = None
    if via.startswith("oidc:"):  # offer to end the provider's session too
        from appliance.console.pages.oidc import signed_out  # noqa: PLC0415 (imports this)

        page_ = await signed_out(ctx, via)
        if page_ is not None:
            return page_
    return await ctx.redirect("/signin")
