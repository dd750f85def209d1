"""The console's page framework: routes, sign-in check, CSRF, permission checks, rendering.

A page is an async function taking a `PageContext`, registered with `@page(path, ...)` in a
module listed in `appliance.console.PAGE_MODULES`. The framework, for every page:

* finds the session from the cookie (`sessions.py`) and sends a visitor who is not signed in to
  the sign-in page (unless the page is `public=True`);
* refuses a state-changing request (POST, ...) whose `csrf_token` form field (or
  `X-CSRF-Token` header) is not the session's token with 403, before the page runs;
* turns `Forbidden`/`PageNotFound` (and the domain's NotFound/Conflict/InvalidName) into an
  error page with the right status;
* adds the security headers (a Content-Security-Policy without inline script, no framing,
  no caching of pages).

Templates live in `web/templates` and extend `base.html`; Jinja autoescapes every value.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any
from urllib.parse import quote

from quart import Response, render_template, request

from appliance import __version__
from appliance.api.codes import status_for
from appliance.auth import policy
from appliance.auth.policy import Principal
from appliance.auth.service import AccessControl
from appliance.config import Config
from appliance.console.redirects import same_origin_path
from appliance.console.sessions import Session, SessionStore
from appliance.errors import BerthError, Denied, InvalidInput, NotFound
from appliance.metadata.db import Tx
from appliance.oci.names import namespace_of
from appliance.registry import Registry

log = logging.getLogger("berth.console")

SESSION_COOKIE = "berth_session"
SIGNIN_CSRF_COOKIE = "berth_signin_csrf"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


# The console's own refusals are kinds of the domain errors, so `api/codes.py` gives their status.
class Forbidden(Denied):
    """The signed-in user may not see or do this (403)."""


class PageNotFound(NotFound):
    """Nothing here, or nothing this user may see (404)."""


class BadRequest(InvalidInput):
    """A form or query the page cannot use (400)."""


@dataclass(frozen=True)
class NavEntry:
    """A link in the navigation bar. `admin`: shown to instance admins only."""

    label: str
    path: str
    order: int = 50
    admin: bool = False


@dataclass
class ConsoleServices:
    """What pages work with; one per app."""

    config: Config
    access: AccessControl
    registry: Registry
    sessions: SessionStore
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def public_url(self) -> str:
        return str(self.config["server.public_url"]).rstrip("/")


PageFn = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Page:
    path: str
    fn: PageFn
    methods: tuple[str, ...]
    public: bool
    csrf: bool


PAGES: list[Page] = []
NAV: list[NavEntry] = []


def page(
    path: str,
    *,
    methods: tuple[str, ...] = ("GET",),
    nav: NavEntry | None = None,
    public: bool = False,
    csrf: bool = True,
) -> Callable[[PageFn], PageFn]:
    """Register a console page at `path` (Quart rule syntax, e.g. `/r/<path:name>`).

    `public=True`: no sign-in needed. `csrf=False` only for endpoints another site posts to by
    design (the SAML assertion consumer), which must authenticate the post some other way.
    """

    def decorate(fn: PageFn) -> PageFn:
        PAGES.append(Page(path, fn, tuple(m.upper() for m in methods), public, csrf))
        if nav is not None:
            NAV.append(nav)
        return fn

    return decorate


class PageContext:
    """One request to a console page: who is asking, and the tools to answer."""

    def __init__(self, services: ConsoleServices, session: Session | None) -> None:
        self.services = services
        self.session = session
        self.access = services.access
        self.registry = services.registry
        self.config = services.config
        self.new_cookies: list[tuple[str, str, dict[str, Any]]] = []

    @property
    def method(self) -> str:
        return str(request.method)

    # -- who -------------------------------------------------------------------------------

    @property
    def principal(self) -> Principal:
        if self.session is None:
            return policy.ANONYMOUS
        return self.session.principal

    @property
    def actor(self) -> str:
        """How the audit log names the signed-in user."""
        return self.principal.actor

    @property
    def csrf_token(self) -> str:
        return self.session.csrf if self.session is not None else ""

    def require_admin(self) -> None:
        if not self.principal.admin:
            raise Forbidden("only instance admins may do this")

    def require_role(self, namespace: str, role: str) -> None:
        """At least `role` (reader, developer, maintainer, owner) in `namespace`."""
        if not policy.may_manage(self.principal, namespace, role):
            raise Forbidden(f"you need the {role} role in namespace {namespace!r}")

    async def may(self, repository: str, action: str) -> bool:
        """Whether the user may `pull`, `push` or `delete` in `repository`."""
        public = namespace_of(repository) in await self.access.public_namespaces()
        return action in policy.repository_actions(self.principal, repository, public)

    async def require(self, repository: str, action: str) -> None:
        if not await self.may(repository, action):
            if action != "pull" and await self.may(repository, "pull"):
                raise Forbidden(f"you may not {action} in {repository}")
            raise PageNotFound(f"no repository {repository}")

    # -- input and changes -----------------------------------------------------------------

    async def form(self) -> dict[str, str]:
        """The posted form fields (first value of each)."""
        data = await request.form
        return {k: str(v) for k, v in data.items()}

    async def form_list(self, name: str) -> list[str]:
        data = await request.form
        return [str(v) for v in data.getlist(name)]

    def arg(self, name: str, default: str = "") -> str:
        return str(request.args.get(name, default))

    async def change(self, fn: Callable[[Tx], Any]) -> Any:
        """Run a change in one write transaction (call `audit.record(tx, self.actor, ...)`
        inside `fn`); the access caches are cleared after."""
        return await self.access.change(fn)

    # -- answers ---------------------------------------------------------------------------

    async def render(self, template: str, status: int = 200, **values: Any) -> Response:
        """Render `web/templates/<template>` (which extends base.html)."""
        principal = self.principal
        nav = [
            n
            for n in sorted(NAV, key=lambda n: (n.order, n.label))
            if not n.admin or principal.admin
        ]
        body = await render_template(
            template,
            principal=principal,
            signed_in=self.session is not None,
            csrf_token=self.csrf_token,
            notice=self.session.notice if self.session is not None else None,
            nav=nav,
            current_path=request.path,
            version=__version__,
            **values,
        )
        return Response(body, status=status, content_type="text/html; charset=utf-8")

    async def redirect(self, location: str, notice: str | None = None) -> Response:
        """303 to a path of the console (anything else goes to `/`, see
        `redirects.same_origin_path`), with an optional one-line notice for the next page."""
        if notice is not None and self.session is not None:
            await self.services.sessions.set_notice(self.session.id_hash, notice)
        return see_other(same_origin_path(location))

    def set_cookie(self, name: str, value: str, **options: Any) -> None:
        self.new_cookies.append((name, value, options))


def see_other(location: str) -> Response:
    """303 See Other: after a form post, the browser GETs `location`."""
    return Response("", status=303, headers={"location": location})


def is_secure(services: ConsoleServices) -> bool:
    """Whether cookies get `Secure`: the request came over TLS, or Berth is published as
    https (behind a TLS proxy such as the nginx front)."""
    return request.scheme == "https" or services.public_url.startswith("https://")


def cookie_options(services: ConsoleServices, max_age: float | None = None) -> dict[str, Any]:
    options: dict[str, Any] = {
        "httponly": True,
        "samesite": "Lax",
        "secure": is_secure(services),
        "path": "/",
    }
    if max_age is not None:
        options["max_age"] = int(max_age)
    return options


def _check_csrf(expected: str, given: str) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(expected, given)


async def _posted_csrf() -> str:
    header = request.headers.get("x-csrf-token", "")
    if header:
        return header
    form = await request.form
    return str(form.get("csrf_token", ""))


async def _error_page(ctx: PageContext, status: int, message: str) -> Response:
    return await ctx.render("error.html", status=status, title=str(status), message=message)


def signin_redirect() -> Response:
    target = request.full_path.rstrip("?") if request.method == "GET" else "/"
    return see_other("/signin?next=" + quote(target, safe="/"))


def mount(web: Any, services: ConsoleServices) -> None:
    """Add every registered page to the Quart app `web`."""
    for entry in PAGES:
        _add(web, services, entry)


def _add(web: Any, services: ConsoleServices, entry: Page) -> None:
    @wraps(entry.fn)
    async def view(**kwargs: str) -> Response:
        started = time.monotonic()
        cookie = request.cookies.get(SESSION_COOKIE, "")
        try:
            session = await services.sessions.find(cookie) if cookie else None
        except BerthError as e:  # the database the session lives in cannot answer
            session = None
            ctx = PageContext(services, session)
            response = await _failed(ctx, e)
        else:
            ctx = PageContext(services, session)
            response = await _answer(ctx, entry, session, kwargs)
        for name, value, options in ctx.new_cookies:
            if value:
                response.set_cookie(name, value, **options)
            else:
                response.delete_cookie(name, path="/")
        for header, value in SECURITY_HEADERS.items():
            response.headers.setdefault(header, value)
        response.headers["server-timing"] = f"page;dur={(time.monotonic() - started) * 1000:.1f}"
        return response

    endpoint = f"console.{entry.fn.__module__}.{entry.fn.__name__}"
    web.add_url_rule(entry.path, endpoint, view, methods=list(entry.methods))


async def _answer(
    ctx: PageContext, entry: Page, session: Session | None, kwargs: dict[str, str]
) -> Response:
    if session is None and not entry.public:
        return signin_redirect()
    unsafe = entry.csrf and request.method in UNSAFE
    if unsafe and session is not None and not _check_csrf(session.csrf, await _posted_csrf()):
        return await _error_page(ctx, 403, "the form's CSRF token is missing or wrong")
    return await _run(ctx, entry, kwargs)


async def _failed(ctx: PageContext, e: BerthError) -> Response:
    """The error page of a domain error, with the status `api/codes.py` gives it."""
    status = status_for(e)
    if status >= 500:
        log.error("%s %s: %s", request.method, request.path, e.message)
        return await _error_page(ctx, status, "a backend cannot be reached; try again")
    return await _error_page(ctx, status, e.message)


async def _run(ctx: PageContext, entry: Page, kwargs: dict[str, str]) -> Response:
    try:
        result = await entry.fn(ctx, **kwargs)
    except BerthError as e:
        return await _failed(ctx, e)
    except ValueError:
        # Forms are checked with messages of their own; the text of a ValueError that still
        # slips through is Python's, not an answer to give.
        log.exception("%s %s: unexpected bad value", request.method, request.path)
        return await _error_page(ctx, 400, "a value in the form or address is not valid")
    if isinstance(result, Response):
        return result
    return Response(str(result), content_type="text/html; charset=utf-8")


def new_signin_csrf() -> str:
    return secrets.token_urlsafe(24)


__all__ = [
    "BadRequest",
    "ConsoleServices",
    "Forbidden",
    "NavEntry",
    "PageContext",
    "PageNotFound",
    "cookie_options",
    "mount",
    "page",
]
