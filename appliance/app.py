"""Build the ASGI application: the registry API on `/v2`, everything else on Quart.

The `/v2` routes are raw ASGI (hot paths and blob bytes, see DESIGN.md); the Quart app carries
the pages that are not the wire protocol.
"""

from __future__ import annotations

from quart_trio import QuartTrio

from appliance import __version__
from appliance.api.asgi import ASGIApp, Receive, Scope, Send
from appliance.api.guard import Guard
from appliance.api.token import TokenEndpoint
from appliance.api.v2 import RegistryAPI
from appliance.auth.service import AccessControl
from appliance.registry import Registry


def create_web_app() -> QuartTrio:
    web = QuartTrio("berth", static_folder=None)

    @web.get("/")
    async def index() -> tuple[str, int, dict[str, str]]:
        return (
            f"Berth {__version__}: an OCI registry. Push to this host with docker, podman or "
            "skopeo.\n",
            200,
            {"content-type": "text/plain; charset=utf-8"},
        )

    return web


def create_app(registry: Registry, public_url: str = "", *, access: AccessControl) -> ASGIApp:
    """The whole ASGI app for one registry, behind `access`."""
    api = RegistryAPI(registry, public_url, guard=Guard(access, public_url))
    token = TokenEndpoint(access)
    web = create_web_app()
    from appliance.api.manage import register_management_api  # noqa: PLC0415

    register_management_api(web, access)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path == "/v2" or path.startswith("/v2/"):
                await api(scope, receive, send)
                return
            if path == "/token":
                await token(scope, receive, send)
                return
        await web(scope, receive, send)  # type: ignore[arg-type]

    return app
