"""A real OpenID Connect provider for tests: `oidc-provider` (an OpenID Certified implementation)
from the npm registry, run by Node on loopback.

`install_oidc_provider()` runs `npm install oidc-provider@9` once into `.cache/npm/` of the
checkout (a folder this module owns; nothing is installed by hand, nor globally), guarded by a
lock file so two test processes do not install at once. `start_oidc_provider()` writes a small
ES module into a temporary directory and starts it on a free loopback port with the clients and
users given; readiness is its discovery document answering. The process is stopped by its PID.

The provider's development login and consent pages are on: they accept any user name, so a
browser (or `sign_in_without_browser`, which posts the same forms over HTTP) signs in as any
user of `OIDC_USERS`, whose claims (`preferred_username`, `email`, `name`, `groups`) come from
`findAccount`.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest

from tests.support.servers import REPO_ROOT, free_port, unavailable, wait_http

PACKAGE = "oidc-provider@9"
CACHE = REPO_ROOT / ".cache" / "npm" / "oidc-provider-9"


@dataclass(frozen=True)
class OidcUser:
    """An account of the test provider and the claims it releases."""

    login: str
    email: str
    name: str
    groups: tuple[str, ...] = ()

    def claims(self) -> dict[str, Any]:
        return {
            "sub": self.login,  # the development login makes the login the subject
            "preferred_username": self.login,
            "email": self.email,
            "email_verified": True,
            "name": self.name,
            "groups": list(self.groups),
        }


@dataclass(frozen=True)
class OidcClient:
    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "redirect_uris": list(self.redirect_uris),
            "post_logout_redirect_uris": list(self.post_logout_redirect_uris),
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic",
        }


OIDC_USERS = [
    OidcUser("olivia", "olivia@example.org", "Olivia Oidc", ("registry-devs", "readers")),
    OidcUser("oscar", "oscar@example.org", "Oscar Oidc", ("readers",)),
]

PROVIDER_JS = r"""
import Provider from "oidc-provider";
import fs from "node:fs";

const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const provider = new Provider(config.issuer, {
  clients: config.clients,
  async findAccount(ctx, id) {
    const user = config.users[id];
    if (!user) return undefined;
    return { accountId: id, async claims() { return { ...user }; } };
  },
  claims: {
    openid: ["sub"],
    email: ["email", "email_verified"],
    profile: ["name", "preferred_username"],
    groups: ["groups"],
  },
  scopes: ["openid", "email", "profile", "groups"],
  pkce: { required: () => true },
  cookies: { keys: [config.cookieKey] },
  ttl: { IdToken: config.idTokenTtl, AccessToken: 600, AuthorizationCode: 60, Session: 3600,
         Interaction: 600, Grant: 3600 },
  features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
});
provider.on("server_error", (ctx, err) => console.error("server_error", err));
provider.listen(config.port, "127.0.0.1", () => console.log("oidc-provider listening"));
"""


def install_oidc_provider() -> Path:
    """The folder holding `node_modules/oidc-provider`, installed from the npm registry on
    first use. Skips (fails under CI=true) when Node or npm is missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("node and npm not found: install Debian's nodejs and npm (Node 20+)")
    marker = CACHE / "node_modules" / "oidc-provider" / "package.json"
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE.parent / "oidc-provider.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            (CACHE / "package.json").write_text('{"private": true, "type": "module"}\n')
            result = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", PACKAGE],
                cwd=CACHE,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if result.returncode != 0 or not marker.exists():
                unavailable(f"npm install {PACKAGE} failed:\n{result.stderr[-3000:]}")
    return CACHE


@dataclass
class OidcProvider:
    proc: subprocess.Popen[bytes]
    port: int
    root: Path
    clients: list[OidcClient] = field(default_factory=list)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def discovery_url(self) -> str:
        return self.issuer + "/.well-known/openid-configuration"

    def log(self) -> str:
        path = self.root / "provider.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_oidc_provider(
    tmp: Path, clients: list[OidcClient], users: list[OidcUser], *, id_token_ttl: int = 600
) -> OidcProvider:
    modules = install_oidc_provider()
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "issuer": f"http://127.0.0.1:{port}",
        "port": port,
        "clients": [c.as_json() for c in clients],
        "users": {u.login: u.claims() for u in users},
        "cookieKey": os.urandom(16).hex(),
        "idTokenTtl": id_token_ttl,
    }
    (tmp / "config.json").write_text(json.dumps(config))
    # The script sits next to node_modules so that Node resolves "oidc-provider" from there.
    script = modules / f"provider-{port}.mjs"
    script.write_text(PROVIDER_JS)
    log = (tmp / "provider.log").open("wb")
    node = shutil.which("node")
    assert node is not None
    proc = subprocess.Popen(
        [node, str(script), str(tmp / "config.json")],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp,
        env={**os.environ, "NODE_ENV": "test"},
    )
    log.close()
    server = OidcProvider(proc, port, tmp, list(clients))
    try:
        wait_http(server.discovery_url, timeout=30, ok=(200,))
    except RuntimeError as e:
        server.stop()
        raise RuntimeError(f"oidc-provider did not start: {e}\n{server.log()}") from e
    finally:
        script.unlink(missing_ok=True)
    return server


_FORM = re.compile(r'<form[^>]*action="([^"]+)"[^>]*>(.*?)</form>', re.S)
_INPUT = re.compile(r"<input\b[^>]*>")
_ATTRIBUTE = re.compile(r'\b(name|value)="([^"]*)"')


def _submit_first_form(client: httpx.Client, page: httpx.Response, **fields: str) -> httpx.Response:
    match = _FORM.search(page.text)
    assert match is not None, page.text[:2000]
    action, body = match.groups()
    data = {}
    for tag in _INPUT.findall(body):
        attributes = dict(_ATTRIBUTE.findall(tag))
        if "name" in attributes:
            data[attributes["name"]] = attributes.get("value", "")
    data.update(fields)
    return client.post(urljoin(str(page.url), action), data=data)


def sign_in_without_browser(authorize_url: str, login: str) -> dict[str, str]:
    """Go through the provider's development login and consent pages over plain HTTP and
    return the query of the final redirect to the client (`code`, `state`, or `error`)."""
    with httpx.Client(follow_redirects=False, timeout=20) as client:
        response = client.get(authorize_url)
        for _ in range(12):
            if response.status_code in (301, 302, 303):
                location = urljoin(str(response.url), response.headers["location"])
                if not location.startswith(authorize_url.split("/auth", 1)[0]):
                    query = parse_qs(urlsplit(location).query)
                    return {k: v[0] for k, v in query.items()}
                response = client.get(location)
            elif 'name="login"' in response.text:
                response = _submit_first_form(client, response, login=login, password="x")
            else:
                response = _submit_first_form(client, response)
        raise AssertionError(f"no redirect to the client: {response.status_code} {response.text}")


@pytest.fixture(scope="session")
def oidc_provider_package() -> Path:
    """oidc-provider installed into the checkout's .cache (once)."""
    return install_oidc_provider()


__all__ = [
    "OIDC_USERS",
    "OidcClient",
    "OidcProvider",
    "OidcUser",
    "install_oidc_provider",
    "sign_in_without_browser",
    "start_oidc_provider",
]
