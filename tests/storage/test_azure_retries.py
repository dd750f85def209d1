"""How the Azure store meets a misbehaving Azure: Azurite behind a fault-injecting proxy
(tests/support/faultproxy.py). Sleeps are recorded, not slept, so backoff costs nothing.

ServerBusy, 5xx and dropped connections are retried with exponential backoff and full jitter up
to `max_attempts`; refused credentials are not retried; a broken download resumes where it broke;
what is left is Unavailable (503 on the wire).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from appliance.errors import Unavailable
from appliance.storage import layout
from appliance.storage.azure import AzureSettings, AzureStore
from tests.storage.suite import MIB, commit_blob, data_of, read_all
from tests.support.azurite import Azurite
from tests.support.faultproxy import FaultProxy


@pytest.fixture(scope="module")
def container(azurite: Azurite) -> str:
    return azurite.new_container("berth-retries")


@pytest.fixture
def proxy(azurite: Azurite) -> Iterator[FaultProxy]:
    p = FaultProxy(f"http://127.0.0.1:{azurite.port}")
    try:
        yield p
    finally:
        p.close()


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_store(
    azurite: Azurite, container: str, proxy: FaultProxy, sleeps: Sleeps, **more: Any
) -> AzureStore:
    settings = AzureSettings(
        container=container,
        account_name=azurite.account,
        account_key=more.pop("account_key", azurite.key),
        endpoint=f"{proxy.url}/{azurite.account}",
        prefix=f"retries-{uuid.uuid4().hex[:8]}",
        **more,
    )
    return AzureStore(settings, sleep=sleeps, rng=random.Random(7))


async def test_server_busy_and_5xx_are_retried_with_backoff_and_full_jitter(
    azurite: Azurite, container: str, proxy: FaultProxy
) -> None:
    sleeps = Sleeps()
    store = make_store(azurite, container, proxy, sleeps, max_attempts=5)
    proxy.fail(2, 503, "ServerBusy")
    proxy.fail(1, 500, "InternalError")
    upload_id = layout.new_upload_id()
    await store.create_upload(upload_id)
    rng = random.Random(7)
    assert sleeps == [rng.uniform(0, 0.1 * 2**attempt) for attempt in (1, 2, 3)]
    assert await store.upload_size(upload_id) == 0
    await store.delete_upload(upload_id)


async def test_gives_up_after_max_attempts_with_unavailable(
    azurite: Azurite, container: str, proxy: FaultProxy
) -> None:
    sleeps = Sleeps()
    store = make_store(azurite, container, proxy, sleeps, max_attempts=3)
    before = len(proxy.requests)
    proxy.fail(3, 503, "ServerBusy")
    with pytest.raises(Unavailable, match="ServerBusy"):
        await store.upload_size(layout.new_upload_id())
    assert len(proxy.requests) - before == 3
    assert len(sleeps) == 2


async def test_refused_credentials_are_not_retried(
    azurite: Azurite, container: str, proxy: FaultProxy
) -> None:
    sleeps = Sleeps()
    wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ=="
    store = make_store(azurite, container, proxy, sleeps, account_key=wrong)
    with pytest.raises(Unavailable, match=r"refused access.*account_key"):
        await store.check()
    assert sleeps == []


async def test_unreachable_azure_is_unavailable(
    azurite: Azurite, container: str, proxy: FaultProxy
) -> None:
    sleeps = Sleeps()
    store = make_store(azurite, container, proxy, sleeps, max_attempts=2)
    proxy.down = True
    with pytest.raises(Unavailable, match="cannot reach Azure"):
        await store.create_upload(layout.new_upload_id())
    assert len(sleeps) == 1


async def test_dropped_connections_are_retried(
    azurite: Azurite, container: str, proxy: FaultProxy
) -> None:
    sleeps = Sleeps()
    store = make_store(azurite, container, proxy, sleeps, max_attempts=4)
    proxy.drop(2)
    upload_id = layout.new_upload_id()
    await store.create_upload(upload_id)
    assert len(sleeps) == 2
    await store.delete_upload(upload_id)


async def test_a_broken_download_resumes_where_it_broke(
    azurite: Azurite, container: str, proxy: FaultProxy
) -> None:
    sleeps = Sleeps()
    store = make_store(azurite, container, proxy, sleeps, max_attempts=3)
    data = data_of(9 * MIB + 5, seed=4)
    key = await commit_blob(store, data)
    proxy.cut(MIB)  # the next GET breaks after 1 MiB of its 4 MiB
    seen = len(proxy.requests)
    assert await read_all(store, key, 0, len(data)) == data
    ranges = [r for method, _, r in proxy.requests[seen:] if method == "GET"]
    # One GET per 4 MiB; the broken one is asked for again (by the SDK's own read retry or
    # by the store's resume), never the blob from its start once past the first chunk.
    first = f"bytes=0-{4 * MIB - 1}"
    assert ranges[:2] == [first, first]
    assert ranges[2:] == [f"bytes={4 * MIB}-{8 * MIB - 1}", f"bytes={8 * MIB}-{len(data) - 1}"]
    await store.delete(key)
