"""The web console: server-rendered pages at `/` of the registry's own port.

`register_console(web, ...)` mounts every page of `PAGE_MODULES` on the Quart app, with the
templates and static files of `web/` (see `assets.py` for where they are found in a checkout,
an installed wheel and the single executable). How to add a page: docs/console.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from appliance.auth.service import AccessControl
from appliance.config import Config
from appliance.console import assets, framework
from appliance.console.framework import ConsoleServices
from appliance.console.pages import (
    auth,
    backups,
    browse,
    citrust,
    manage,
    oidc,
    operations,
    proxy,
    saml,
    scanning,
    storage,
)
from appliance.console.sessions import SessionStore
from appliance.registry import Registry

# Every module holding console pages; add yours here.
PAGE_MODULES = (
    auth,
    browse,
    manage,
    saml,
    oidc,
    citrust,
    proxy,
    operations,
    backups,
    scanning,
    storage,
)


def register_console(
    web: Any,
    registry: Registry,
    access: AccessControl,
    config: Config,
    clock: Callable[[], float] = time.time,
) -> ConsoleServices:
    """Mount the console on the Quart app `web`; returns the services pages share."""
    sessions = SessionStore(
        access.db,
        access.secret,
        clock,
        idle=float(config["console.session_idle"]),
        lifetime=float(config["console.session_lifetime"]),
    )
    services = ConsoleServices(config, access, registry, sessions)
    saml_provider = saml.provider_from_config(config)
    if saml_provider is not None:
        services.extras["saml"] = saml_provider
    from appliance.auth.oidc import providers_from_config  # noqa: PLC0415

    services.extras["oidc"] = providers_from_config(config, clock)
    assets.install(web)
    framework.mount(web, services)
    return services


__all__ = ["PAGE_MODULES", "ConsoleServices", "register_console"]
