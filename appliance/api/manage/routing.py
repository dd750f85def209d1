"""How a management route is declared, documented and served: each route group fills a
`Routes` table with its module-level handlers; `install` adds them to the Quart app behind one
sign-in and one error answer, and writes their OpenAPI entries.

A handler is called as `handler(context, who, **path_parameters)`: `context` is the service
its group was installed with (bound once, at start-up: nothing is looked up per request),
`who` the signed-in caller.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, Generic, TypeVar

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from appliance import __version__
from appliance.api import inputs
from appliance.api.asgi import client_address
from appliance.api.codes import status_for
from appliance.api.guard import parse_basic
from appliance.api.manage.reply import error, has_body
from appliance.auth.ldap import DirectoryUnavailable
from appliance.auth.passwords import WeakPassword
from appliance.auth.policy import Principal
from appliance.auth.service import AccessControl, SignInFailed, SignInLocked
from appliance.errors import BerthError

log = logging.getLogger("berth.api")

Handler = Callable[..., Awaitable[Response]]
H = TypeVar("H", bound=Handler)
C = TypeVar("C")

PREFIX = "/api/v1"
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# JSON schema pieces of the OpenAPI entries.
S = {"type": "string"}
B = {"type": "boolean"}
N = {"type": "number"}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Berth management API", "version": __version__},
    "components": {
        "securitySchemes": {
            "token": {"type": "http", "scheme": "bearer", "description": "PAT with scope api"},
            "basic": {"type": "http", "scheme": "basic"},
        }
    },
    "security": [{"token": []}, {"basic": []}],
    "paths": {},
}


@dataclass(frozen=True, slots=True)
class Route:
    path: str  # below /api/v1, with {parameters}
    method: str
    summary: str
    handler: Handler
    body: dict[str, Any] | None
    returns: dict[str, Any] | None


class Routes(Generic[C]):
    """One route group's table, filled at import by its `@routes(...)` decorators; `C` is
    the context its handlers take first."""

    def __init__(self) -> None:
        self.table: list[Route] = []

    def __call__(
        self,
        path: str,
        method: str,
        summary: str,
        body: dict[str, Any] | None = None,
        returns: dict[str, Any] | None = None,
    ) -> Callable[[H], H]:
        def add(fn: H) -> H:
            self.table.append(Route(path, method, summary, fn, body, returns))
            return fn

        return add


def document(route: Route) -> None:
    """The route's entry in `OPENAPI`."""
    op: dict[str, Any] = {"summary": route.summary, "responses": {"200": {"description": "OK"}}}
    if route.returns is not None:
        op["responses"]["200"]["content"] = {
            "application/json": {"schema": {"type": "object", "properties": route.returns}}
        }
    params = [p.strip("{}") for p in route.path.split("/") if p.startswith("{")]
    if params:
        op["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in params
        ]
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "object", "properties": route.body}}
            },
        }
    OPENAPI["paths"].setdefault(route.path, {})[route.method.lower()] = op


async def caller(access: AccessControl) -> Principal | Response:
    """Who sends the request (a bearer token, or Basic with a password or a token), or the
    answer that refuses them."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    address = client_address(request.scope)
    try:
        if scheme.lower() == "bearer":
            return await access.authenticate("", credentials.strip(), address)
        if scheme.lower() == "basic":
            pair = parse_basic(credentials)
            if pair is None:
                return error(401, "malformed Basic credentials")
            return await access.basic(credentials, pair[0], pair[1], address)
    except SignInFailed as e:
        return error(401, e.message)
    except SignInLocked as e:
        return error(429, e.message)
    except DirectoryUnavailable:
        return error(503, "the LDAP directory cannot be reached")
    return error(401, "authentication required")


def refusal(e: BerthError) -> Response:
    """The answer to a domain error, with its status from `api/codes.py`; a backend failure
    is logged and answered without its details."""
    status = status_for(e)
    if status >= 500:
        log.error("%s %s: %s", request.method, request.path, e.message)  # expected: no traceback
        return error(status, "a backend cannot be reached; try again")
    return error(status, e.message)


def view(access: AccessControl, handler: Handler, context: object) -> Handler:
    """`handler` behind the sign-in, the api scope, the content-type check of unsafe methods
    and the error answers."""

    @wraps(handler)
    async def serve(**kwargs: str) -> Response:
        try:  # signing in reads the database too: its errors answer the same way
            who = await caller(access)
            if isinstance(who, Response):
                return who
            if who.kind != "user" or not who.has_scope("api"):
                return error(403, "robots and tokens without the api scope cannot use this")
            if request.method in _UNSAFE:  # what a cross-site form could send
                inputs.check_content_type(request.headers.get("content-type"), has_body())
            return await handler(context, who, **kwargs)
        except WeakPassword as e:
            return error(400, str(e))  # its own words: what the password lacks
        except BerthError as e:
            return refusal(e)
        except ValueError:
            # Every value a client sends is checked and refused with a message of its own
            # (api/inputs.py); a ValueError still reaching here is a slip in that, and its
            # Python text is no answer to give.
            log.exception("%s %s: unexpected bad value", request.method, request.path)
            return error(400, "a value in the request is not valid")
        except HTTPException:
            raise  # Quart's own answers (a body over MAX_CONTENT_LENGTH, say)
        except Exception:
            log.exception("%s %s: unexpected error", request.method, request.path)
            return error(500, "unexpected error (it is logged)")

    return serve


def install(web: QuartTrio, access: AccessControl, routes: Routes[C], context: C) -> None:
    """Serve and document every route of one group, its handlers given `context`."""
    for route in routes.table:
        document(route)
        rule = PREFIX + route.path.replace("{", "<").replace("}", ">")
        web.add_url_rule(
            rule,
            f"{route.method} {route.path}",
            view(access, route.handler, context),
            methods=[route.method],
        )
