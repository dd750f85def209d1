"""Upload sessions are bounded (issue 21, item 9), written as the attacks: opening sessions
without end (refused past the per-account cap with 429 TOOMANYREQUESTS), and parking bytes in
open uploads beyond the namespace's quota (refused with the quota's DENIED while written; the
bytes are released when the upload is committed, cancelled or expires)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from appliance.app import create_app
from appliance.auth import accounts
from appliance.auth.passwords import hash_password
from appliance.lifecycle.rules import namespace_usage
from appliance.metadata.db import Tx
from appliance.server import Services, open_services
from tests.api.conftest import ADMIN, FakeClock, api_client, make_config
from tests.lifecycle.world import sha

CAP = 3
PASSWORD = "a-long-test-password-1"


@pytest.fixture
async def services(data_dir: Path, clock: FakeClock) -> AsyncIterator[Services]:
    s = await open_services(make_config(data_dir, **{"uploads.max_open_per_account": CAP}), clock)
    try:

        def people(tx: Tx) -> None:
            accounts.create_namespace(tx, "test", "team", clock())
            for name in ("dev", "dev2"):
                accounts.add_user(tx, "test", name, hash_password(PASSWORD), clock())
                accounts.set_member(tx, "test", "team", name, "developer", clock())

        await s.db.write(people)
        yield s
    finally:
        s.close()


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    # Without the lifecycle routes: registering them would add them to the one OpenAPI
    # document for the rest of the session (tests/auth/test_matrix.py lists its routes).
    app = create_app(services.registry, access=services.access)
    async with api_client(app, auth=None) as c:
        yield c


DEV = ("dev", PASSWORD)
DEV2 = ("dev2", PASSWORD)


async def start(client: httpx.AsyncClient, auth: tuple[str, str]) -> httpx.Response:
    return await client.post("/v2/team/app/blobs/uploads/", auth=auth)


def oci_error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["errors"][0]
    assert error["code"] == code
    return str(error["message"])


async def test_open_upload_sessions_are_capped_per_account(
    client: httpx.AsyncClient, services: Services
) -> None:
    opened = [await start(client, DEV) for _ in range(CAP)]
    assert [r.status_code for r in opened] == [202] * CAP
    message = oci_error(await start(client, DEV), 429, "TOOMANYREQUESTS")
    assert f"{CAP} upload sessions open" in message
    data = b"x" * 10
    r = await client.post(f"/v2/team/app/blobs/uploads/?digest={sha(data)}", content=data, auth=DEV)
    oci_error(r, 429, "TOOMANYREQUESTS")  # a monolithic upload opens a session too
    assert (await start(client, DEV2)).status_code == 202, "another account is not affected"
    # Finishing or cancelling one frees a place.
    assert (await client.delete(opened[0].headers["location"], auth=DEV)).status_code == 204
    assert (await start(client, DEV)).status_code == 202
    assert (await start(client, DEV)).status_code == 429
    owners = await services.db.read(
        lambda tx: tx.execute("SELECT owner, COUNT(*) FROM uploads GROUP BY owner ORDER BY owner")
    )
    assert [tuple(r) for r in owners] == [("dev", CAP), ("dev2", 1)]


async def test_expired_sessions_free_their_places(
    client: httpx.AsyncClient, services: Services, clock: FakeClock
) -> None:
    for _ in range(CAP):
        assert (await start(client, DEV)).status_code == 202
    assert (await start(client, DEV)).status_code == 429
    clock.advance(services.registry.upload_expiry + 1)
    assert await services.registry.purge_expired_uploads() == CAP
    assert (await start(client, DEV)).status_code == 202


async def test_a_robot_is_capped_on_its_own(client: httpx.AsyncClient, services: Services) -> None:
    def make(tx: Tx) -> str:
        _, token = accounts.create_robot(
            tx, "test", services.access.secret, "team", "ci", "developer", 0.0
        )
        return token

    robot = ("team+ci", await services.access.change(make))
    for _ in range(CAP):
        assert (await start(client, robot)).status_code == 202
    assert (await start(client, robot)).status_code == 429
    assert (await start(client, DEV)).status_code == 202


async def set_quota(services: Services, limit: int) -> None:
    assert services.lifecycle is not None
    await services.lifecycle.rules.set_quota(ADMIN, "team", limit)


async def patch(
    client: httpx.AsyncClient, location: str, data: bytes, *, stream: bool = False
) -> httpx.Response:
    if stream:

        async def body() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 100):
                yield data[i : i + 100]

        return await client.patch(location, content=body(), auth=DEV)
    return await client.patch(location, content=data, auth=DEV)


async def test_open_uploads_count_against_the_quota_while_written(
    client: httpx.AsyncClient, services: Services
) -> None:
    await set_quota(services, 1000)
    first = (await start(client, DEV)).headers["location"]
    second = (await start(client, DEV)).headers["location"]
    r = await patch(client, first, b"a" * 600)
    assert r.status_code == 202, r.text
    # The bytes parked in the first upload leave no room for 600 more, declared or streamed.
    message = oci_error(await patch(client, second, b"b" * 600), 403, "DENIED")
    assert "quota of namespace team exceeded" in message
    assert "1000 bytes" in message
    r = await patch(client, second, b"b" * 600, stream=True)
    oci_error(r, 403, "DENIED")
    assert (await client.get(second, auth=DEV)).status_code == 204, "the session stays"
    held = await services.db.read(
        lambda tx: tx.scalar(
            "SELECT size FROM uploads WHERE id = :id", {"id": second.rsplit("/", 1)[1]}
        )
    )
    assert held <= 400, "what was written of the refused body fits in the quota"
    # Cancelling the first releases its bytes.
    assert (await client.delete(first, auth=DEV)).status_code == 204
    third = (await start(client, DEV)).headers["location"]
    data = b"c" * 700
    assert (await patch(client, third, data, stream=True)).status_code == 202
    r = await client.put(f"{third}?digest={sha(data)}", auth=DEV)
    assert r.status_code == 201, r.text
    # Committed: counted once, as a blob of the namespace (the upload's share is released).
    usage = await services.db.read(lambda tx: namespace_usage(tx, "team"))
    assert usage.total == 700
    rows = await services.db.read(lambda tx: tx.execute("SELECT id, size, reserved FROM uploads"))
    assert [int(r[1]) for r in rows] == [held]


async def test_an_expired_upload_releases_its_bytes(
    client: httpx.AsyncClient, services: Services, clock: FakeClock
) -> None:
    await set_quota(services, 1000)
    parked = (await start(client, DEV)).headers["location"]
    assert (await patch(client, parked, b"a" * 900)).status_code == 202
    data = b"d" * 500
    r = await client.post(
        f"/v2/team/app/blobs/uploads/?digest={sha(data)}", content=data, auth=DEV2
    )
    oci_error(r, 403, "DENIED")
    clock.advance(services.registry.upload_expiry + 1)
    assert await services.registry.purge_expired_uploads() == 1
    r = await client.post(
        f"/v2/team/app/blobs/uploads/?digest={sha(data)}", content=data, auth=DEV2
    )
    assert r.status_code == 201, r.text


async def test_a_namespace_without_a_quota_reserves_nothing(
    client: httpx.AsyncClient, services: Services
) -> None:
    location = (await start(client, DEV)).headers["location"]
    assert (await patch(client, location, b"z" * 5000, stream=True)).status_code == 202
    reserved = await services.db.read(lambda tx: tx.scalar("SELECT reserved FROM uploads"))
    assert reserved == 0
