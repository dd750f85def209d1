"""Build the ASGI application: the registry API on `/v2`, everything else on Quart.

The `/v2` routes are raw ASGI (hot paths and blob bytes, see DESIGN.md); the Quart app carries
the pages that are not the wire protocol.
"""

from __future__ import annotations

from quart_trio import QuartTrio

from appliance.api.asgi import ASGIApp, ClientDisconnected, Pace, Receive, Scope, Send
from appliance.api.guard import Guard
from appliance.api.middleware import label_routes
from appliance.api.token import TokenEndpoint
from appliance.api.v2 import RegistryAPI
from appliance.auth.service import AccessControl
from appliance.backup.service import BackupService
from appliance.config import Config
from appliance.config import load as load_config
from appliance.lifecycle import Lifecycle
from appliance.operations import Operations
from appliance.proxy.service import PullThrough
from appliance.registry import Registry


def create_web_app() -> QuartTrio:
    return QuartTrio("berth", static_folder=None, template_folder=None)


def create_app(
    registry: Registry,
    public_url: str = "",
    *,
    access: AccessControl,
    proxy: PullThrough | None = None,
    ops: Operations | None = None,
    config: Config | None = None,
    lifecycle: Lifecycle | None = None,
    backups: BackupService | None = None,
) -> ASGIApp:
    """The whole ASGI app for one registry, behind `access` (with the pull-through cache of
    proxy namespaces, `proxy`, when any are configured). The web console at `/` follows
    `config` (its defaults when None)."""
    if config is None:
        config = load_config(environ={}, overrides={"server.public_url": public_url})
    pace = Pace(config["server.read_timeout"], config["server.min_body_rate"])
    api = RegistryAPI(
        registry,
        public_url,
        guard=Guard(access, public_url),
        proxy=proxy,
        admit=ops.admit if ops is not None else None,
        pace=pace,
    )
    token = TokenEndpoint(access, pace)
    web = create_web_app()
    # Quart's routes (console, /api/v1) take small bodies: the same read timeout, in total.
    web.config["BODY_TIMEOUT"] = config["server.read_timeout"]
    from appliance.api import manage  # noqa: PLC0415 (/api/v1)

    manage.register(
        web,
        access,
        lifecycle_service=lifecycle,
        backup_service=backups,
        allow_private_webhooks=config["webhooks.allow_private_targets"],
    )
    from appliance.console import register_console  # noqa: PLC0415

    console = register_console(web, registry, access, config, access.clock)
    if lifecycle is not None:  # the console's storage pages (appliance/console/pages/storage.py)
        console.extras["lifecycle"] = lifecycle
    if backups is not None:  # the console's backup page (appliance/console/pages/backups.py)
        console.extras["backups"] = backups
    if ops is not None:
        label_routes(web)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path == "/v2" or path.startswith("/v2/"):
                await api(scope, receive, send)
                return
            if path == "/token":
                await token(scope, receive, send)
                return
        try:
            await web(scope, receive, send)  # type: ignore[arg-type]
        except* ClientDisconnected:
            # The client went away in the middle of a console or /api/v1 answer (the server's
            # send raises, as ASGI asks; Quart's nursery wraps it in a group): nothing more can
            # reach it, and it is no error of ours. Anything else in the group still raises.
            pass

    return app if ops is None else ops.wrap(app)
