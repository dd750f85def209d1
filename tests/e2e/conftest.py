"""Fixtures for end-to-end tests: a real registry, real clients, and test images built offline.

The registry is Berth (`berth serve`) unless `BERTH_E2E_TARGET=reference`, which runs the same
tests against Debian's CNCF Distribution registry instead: a correct v2 registry, to tell a bug
in a test from a bug in Berth. One registry, one dockerd and one set of images serve the whole
session; each test works in a repository of its own (the `repo` fixture).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.backends import e2e_profiles, profile_env
from tests.support.clients import Docker, DockerDaemon, Oras, Podman, Skopeo, start_dockerd
from tests.support.images import ImageCache
from tests.support.servers import Server, require_binary, start_berth, start_reference_registry

TARGETS = ("berth", "reference")
TARGET = os.environ.get("BERTH_E2E_TARGET", "berth")
if TARGET not in TARGETS:
    raise pytest.UsageError(f"BERTH_E2E_TARGET={TARGET!r}: expected one of {TARGETS}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "berth_only: needs what only Berth implements (Distribution 2.8 predates the OCI 1.1 "
        "referrers API); runs whenever the target is Berth, which it always is in CI",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if TARGET == "berth":
        return
    skip = pytest.mark.skip(reason=f"berth_only: not run against BERTH_E2E_TARGET={TARGET}")
    for item in items:
        if item.get_closest_marker("berth_only"):
            item.add_marker(skip)


@pytest.fixture(scope="session", params=e2e_profiles())
def registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The registry under test, on a free loopback port; with Berth (sign-in always on, the
    clients below sign in as its admin), once per backend profile chosen by
    `BERTH_E2E_BACKENDS` (see tests/support/backends.py). The reference registry is anonymous."""
    tmp = tmp_path_factory.mktemp("registry")
    if TARGET == "reference":
        server = start_reference_registry(tmp)
    else:
        # Berth's own SBOM referrers would join the referrers these tests attach and count;
        # scanning has its own real-server test (tests/scan/test_server.py).
        env = {**profile_env(request, request.param), "BERTH_SCAN_ENABLED": "false"}
        server = start_berth(tmp / "data", env=env)
    try:
        yield server
    finally:
        code = server.stop()
    if TARGET == "berth":
        assert code == 0, f"berth exited {code} on SIGTERM:\n{server.log()[-4000:]}"


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    """A repository name of this test's own, e.g. `e2e/skopeo/round-trip-busybox`."""
    module = request.node.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    name = request.node.name.removeprefix("test_")
    parts = [re.sub(r"[^a-z0-9]+", "-", part.lower()).strip("-") for part in (module, name)]
    return "e2e/" + "/".join(parts)


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> ImageCache:
    """The test images, each built on first use and kept for the session."""
    require_binary("busybox", "busybox-static")
    return ImageCache(tmp_path_factory.mktemp("images"))


# Fixtures that are a Berth under test; the client fixtures sign in to each one a test uses.
SERVER_FIXTURES = ("registry", "backend")


def servers_of(request: pytest.FixtureRequest) -> list[Server]:
    """The registries this test uses that ask for sign-in (Berth always does)."""
    servers = [request.getfixturevalue(n) for n in SERVER_FIXTURES if n in request.fixturenames]
    return [s for s in servers if isinstance(s, Server) and s.credentials is not None]


def sign_in(client: Skopeo | Podman | Docker, servers: list[Server]) -> None:
    for server in servers:
        assert server.credentials is not None
        client.login(server.host, *server.credentials)


@pytest.fixture
def skopeo(tmp_path: Path, request: pytest.FixtureRequest) -> Skopeo:
    """skopeo, signed in (`skopeo login`) to the registries the test uses."""
    client = Skopeo(tmp_path / "skopeo")
    sign_in(client, servers_of(request))
    return client


@pytest.fixture
def make_podman(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[str], Podman]:
    """Podman with an empty storage of its own per name, signed in (`podman login`) to the
    registries the test uses: `make_podman("pusher")`."""
    require_binary("podman", "podman")
    servers = servers_of(request)

    def make(name: str) -> Podman:
        client = Podman(tmp_path / f"podman-{name}")
        sign_in(client, servers)
        return client

    return make


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerDaemon]:
    """One private docker engine for the session (start-up takes seconds, not milliseconds)."""
    require_binary("docker", "docker.io")
    daemon = start_dockerd(tmp_path_factory.mktemp("dockerd"))
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def docker(dockerd: DockerDaemon, tmp_path: Path, request: pytest.FixtureRequest) -> Docker:
    """The docker CLI on the session's engine, with this test's own credentials store, signed
    in (`docker login`) to the registries the test uses."""
    client = dockerd.client(tmp_path / "docker-config")
    sign_in(client, servers_of(request))
    return client


@pytest.fixture
def oras(registry: Server) -> Iterator[Oras]:
    with Oras(registry.host, registry.credentials) as client:
        yield client


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Attach the tail of the registry's log to a failed test's report."""
    report = yield
    server = getattr(item, "funcargs", {}).get("registry")
    if report.failed and isinstance(server, Server):
        tail = "\n".join(server.log().splitlines()[-200:])
        report.sections.append((f"{TARGET} registry log (last 200 lines)", tail))
    return report
