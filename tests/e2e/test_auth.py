"""Sign-in with real clients: docker login with a personal access token and a robot token,
podman login with an LDAP password, skopeo --creds with a local password; anonymous push
refused, wrong passwords refused."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import TARGET
from tests.support.clients import DockerDaemon, Podman, Skopeo, ToolError
from tests.support.images import ImageCache
from tests.support.servers import Server, start_berth
from tests.support.slapd import Slapd

pytestmark = pytest.mark.skipif(TARGET != "berth", reason="Berth's sign-in")
PASSWORD = "e2e-user-password"


def api(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, auth=server.credentials, timeout=30)


@pytest.fixture(scope="module")
def accounts(registry: Server) -> dict[str, tuple[str, str]]:
    """`dev` (developer of namespace `auth`), a PAT of dev, and a robot of `auth`."""
    with api(registry) as admin:
        admin.post("/api/v1/users", json={"name": "dev", "password": PASSWORD}).raise_for_status()
        admin.post("/api/v1/namespaces", json={"name": "auth"}).raise_for_status()
        admin.put(
            "/api/v1/namespaces/auth/members/dev", json={"role": "developer"}
        ).raise_for_status()
        robot = admin.post(
            "/api/v1/namespaces/auth/robots", json={"name": "ci", "role": "developer"}
        )
        robot.raise_for_status()
    with httpx.Client(base_url=registry.url, auth=("dev", PASSWORD), timeout=30) as dev:
        pat = dev.post("/api/v1/tokens", json={"name": "e2e", "scopes": ["write_registry"]})
        pat.raise_for_status()
    return {
        "password": ("dev", PASSWORD),
        "pat": ("dev", pat.json()["token"]),
        "robot": (robot.json()["account"], robot.json()["token"]),
    }


@pytest.mark.parametrize("kind", ["pat", "robot"])
def test_docker_login_with_a_token_pushes_and_pulls(
    registry: Server,
    dockerd: DockerDaemon,
    accounts: dict[str, tuple[str, str]],
    images: ImageCache,
    skopeo: Skopeo,
    tmp_path: Path,
    kind: str,
) -> None:
    client = dockerd.client(tmp_path / "cfg")
    client.login(registry.host, *accounts[kind])
    busybox = images.busybox()
    ref = f"{registry.host}/auth/{kind}:1"
    second = f"{registry.host}/auth/{kind}:2"
    outside = f"{registry.host}/elsewhere/{kind}:1"
    skopeo.push(busybox, f"docker://{ref}")
    try:
        assert client.pull(ref) == busybox.manifest_digest
        client.tag(ref, second)
        assert client.push(second)
        client.tag(ref, outside)
        with pytest.raises(ToolError, match="denied"):  # outside its namespace
            client.push(outside)
    finally:
        # The engine is shared by the session: leave no image behind for the other tests.
        for name in (outside, second, ref):
            if client.has_image(name):
                client.rmi(name)
    client.logout(registry.host)
    with pytest.raises(ToolError):
        client.login(registry.host, accounts[kind][0], "berth_pat_" + "x" * 43)


def test_skopeo_creds_and_anonymous_push_refused(
    registry: Server, accounts: dict[str, tuple[str, str]], images: ImageCache, tmp_path: Path
) -> None:
    fresh = Skopeo(tmp_path / "anon")  # not signed in
    busybox = images.busybox()
    with pytest.raises(ToolError):
        fresh.push(busybox, f"docker://{registry.host}/auth/anonymous:1")
    with pytest.raises(ToolError):
        fresh.push(busybox, f"docker://{registry.host}/auth/wrong:1", creds="dev:not-the-password")
    user, password = accounts["password"]
    digest = fresh.push(
        busybox, f"docker://{registry.host}/auth/skopeo:1", creds=f"{user}:{password}"
    )
    assert digest == busybox.manifest_digest
    assert fresh.list_tags(f"docker://{registry.host}/auth/skopeo", creds=f"{user}:{password}") == [
        "1"
    ]


@pytest.fixture(scope="module")
def ldap_berth(slapd: Slapd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"BERTH_" + k.replace(".", "_").upper(): v for k, v in slapd.settings().items()}
    env["BERTH_LDAP_GROUP_ROLES"] = "pushers=ldapteam:developer"
    alice = slapd.add_user("podman-alice", PASSWORD)
    slapd.set_group("pushers", [alice])
    server = start_berth(tmp_path_factory.mktemp("ldap-berth") / "data", env=env)
    try:
        yield server
    finally:
        assert server.stop() == 0


def test_podman_login_with_an_ldap_password(
    ldap_berth: Server,
    make_podman: Callable[[str], Podman],
    images: ImageCache,
    skopeo: Skopeo,
) -> None:
    podman = make_podman("ldap")
    with pytest.raises(ToolError):
        podman.login(ldap_berth.host, "podman-alice", "wrong-password")
    podman.login(ldap_berth.host, "podman-alice", PASSWORD)
    busybox = images.busybox()
    local = podman.pull(busybox.ref)
    ref = f"{ldap_berth.host}/ldapteam/busybox:1"
    podman.tag(local, ref)
    assert podman.push(local, ref).startswith("sha256:")
    podman.logout(ldap_berth.host)
