"""LDAP sign-in against a real OpenLDAP slapd: users, groups → roles, re-sync, TLS, failure."""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx
import trio

from appliance import config as settings
from appliance.app import create_app
from appliance.metadata import identity
from appliance.server import open_services
from tests.api.conftest import ADMIN, ADMIN_PASSWORD, FakeClock, api_client
from tests.support.slapd import Slapd

PW = "ldap-user-password"


def ldap_config(data_dir: Any, slapd: Slapd, **extra: str) -> settings.Config:
    overrides: dict[str, Any] = {
        "server.data_dir": str(data_dir),
        "admin.password": ADMIN_PASSWORD,
        "ldap.group_roles": "devs=team:developer; readers=team:reader; ops=*:admin",
        **slapd.settings(),
        **extra,
    }
    return settings.load(None, environ={}, overrides=overrides)


async def token_status(client: httpx.AsyncClient, user: str, password: str) -> httpx.Response:
    return await client.get(
        "/token", params={"scope": "repository:team/app:pull,push"}, auth=(user, password)
    )


async def test_ldap_sign_in_roles_and_resync(data_dir: Any, slapd: Slapd, clock: FakeClock) -> None:
    alice = slapd.add_user("alice", PW, "alice@example.org")
    slapd.add_user("bob", PW)
    slapd.set_group("devs", [alice])
    services = await open_services(ldap_config(data_dir, slapd), clock)
    try:
        app = create_app(services.registry, access=services.access)
        async with api_client(app, auth=None) as client:
            r = await token_status(client, "alice", PW)
            assert r.status_code == 200, r.text
            import jwt  # noqa: PLC0415

            access = jwt.decode(r.json()["token"], options={"verify_signature": False})["access"]
            assert access == [
                {"type": "repository", "name": "team/app", "actions": ["pull", "push"]}
            ]
            user = await services.db.read(lambda tx: identity.require_user(tx, "alice"))
            assert (user.source, user.email, user.display_name) == (
                "ldap",
                "alice@example.org",
                "Alice",
            )
            # bob has no group: signs in, gets nothing in team
            r = await token_status(client, "bob", PW)
            assert r.status_code == 200
            assert (
                jwt.decode(r.json()["token"], options={"verify_signature": False})["access"] == []
            )
            # failing closed: injection, empty password, wrong password, unknown user
            for name, password in (
                ("*)(uid=*", PW),
                ("*", PW),
                ("alice)(|(uid=*", PW),
                ("alice", ""),
                ("alice", "wrong"),
                ("nobody", PW),
            ):
                assert (await token_status(client, name, password)).status_code == 401, name
            # removed from the group: the scheduled re-sync takes the role away
            slapd.set_group("devs", [])
            await services.access.sync_ldap()
            roles = await services.db.read(lambda tx: identity.roles_of(tx, user.id))
            assert "team" not in roles
            # gone from the directory: disabled at the next sync
            slapd.delete("uid=bob,ou=people,dc=example,dc=org")
            await services.access.sync_ldap()
            bob = await services.db.read(lambda tx: identity.require_user(tx, "bob"))
            assert bob.disabled
    finally:
        services.close()


async def test_ldaps_and_start_tls_with_a_ca(data_dir: Any, slapd: Slapd, clock: FakeClock) -> None:
    slapd.add_user("carol", PW)
    for extra in (
        {"ldap.url": slapd.ldaps_url, "ldap.ca_file": str(slapd.ca_file)},
        {"ldap.start_tls": "true", "ldap.ca_file": str(slapd.ca_file)},
    ):
        services = await open_services(
            ldap_config(
                data_dir / str(len(extra)) / extra.get("ldap.url", "tls")[:5], slapd, **extra
            ),
            clock,
        )
        try:
            app = create_app(services.registry, access=services.access)
            async with api_client(app, auth=None) as client:
                assert (await token_status(client, "carol", PW)).status_code == 200, extra
        finally:
            services.close()


async def test_ldap_unreachable_local_accounts_still_work(
    data_dir: Any, slapd: Slapd, clock: FakeClock
) -> None:
    # a port that accepts and never answers: the timeout, not a refusal, ends the wait
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    port = silent.getsockname()[1]
    try:
        cfg = ldap_config(
            data_dir, slapd, **{"ldap.url": f"ldap://127.0.0.1:{port}", "ldap.timeout": "1"}
        )
        services = await open_services(cfg, clock)
        try:
            app = create_app(services.registry, access=services.access)
            async with api_client(app, auth=None) as client:
                assert (await token_status(client, ADMIN, ADMIN_PASSWORD)).status_code == 200
                started = time.monotonic()
                with trio.fail_after(10):
                    r = await token_status(client, "alice", PW)
                assert r.status_code == 503
                assert "LDAP" in r.text
                assert time.monotonic() - started < 5
        finally:
            services.close()
    finally:
        silent.close()
