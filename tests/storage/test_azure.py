"""The storage conformance suite over the Azure store on Azurite; the side door lists the whole
container, blobs holding only uncommitted blocks included.

Each test gets a fresh name prefix in one shared container, and the side door lists the whole
container, so nothing may appear outside the prefix either. Blocks are cut at the suite's part
size, so small tests cross block boundaries.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from appliance.config import load
from appliance.errors import ConfigError
from appliance.storage import layout, open_store
from appliance.storage.azure import AzureSettings, AzureStore
from appliance.storage.base import Progress
from tests.storage.suite import (
    MIB,
    PART,
    SideDoor,
    StoreSuite,
    commit_blob,
    data_of,
    feed,
    read_all,
    sha,
    split,
)
from tests.support.azurite import Azurite


@pytest.fixture(scope="module")
def suite_container(azurite: Azurite) -> str:
    return azurite.new_container("berth-suite")


def azure_settings(azurite: Azurite, container: str, **more: object) -> AzureSettings:
    settings = {
        "container": container,
        "account_name": azurite.account,
        "account_key": azurite.key,
        "endpoint": azurite.endpoint,
        "prefix": f"suite-{uuid.uuid4().hex[:8]}/",
        "block_size": PART,
        "max_attempts": 2,
    } | more
    return AzureSettings(**settings)  # type: ignore[arg-type]


class TestAzureStore(StoreSuite):
    @pytest.fixture
    def store(self, azurite: Azurite, suite_container: str) -> Iterator[AzureStore]:
        store = AzureStore(azure_settings(azurite, suite_container))
        yield store
        store.close()  # its pooled connections, not left to the garbage collector

    @pytest.fixture
    def side_door(self, azurite: Azurite, suite_container: str) -> SideDoor:
        return lambda: azurite.listing(suite_container)


# -- Azure's own cases: the block limit, credentials, settings -------------------------------


async def test_an_upload_past_the_block_limit_is_compacted(
    azurite: Azurite, suite_container: str
) -> None:
    """With the block limit lowered to 12 and 1 MiB blocks, a 40 MiB blob pushed in many
    appends needs far more blocks than the limit: the store compacts the upload (server-side)
    whenever it passes half the limit, and the blob is exact, its block list within the
    limit."""
    settings = azure_settings(azurite, suite_container, block_size=MIB)
    store = AzureStore(settings, max_blocks=12)
    data = data_of(40 * MIB + 12345, seed=3)
    upload_id = layout.new_upload_id()
    await store.create_upload(upload_id)
    offset = 0
    cuts = [MIB // 3, 5 * MIB, 7, 3 * MIB + 1, *([MIB // 2] * 14), 9 * MIB]
    most = 0
    for n in [*cuts, len(data) - sum(cuts)]:
        piece = data[offset : offset + n]
        offset = await store.append(upload_id, offset, feed(split(piece)), None, Progress())
        state = await store._load(upload_id)
        most = max(most, len(state.blocks))
    assert offset == len(data)
    assert most > 12 // 2  # it did pass the threshold ...
    assert len(state.blocks) <= 12  # ... and ends within the limit
    assert await store.hash_upload(upload_id, len(data), "sha256") == sha(data)
    key = await store.commit(upload_id, len(data), sha(data))
    assert await read_all(store, key, 0, len(data)) == data
    committed, _ = (
        azurite.container(suite_container)
        .get_blob_client(settings.prefix + key)
        .get_block_list("committed")
    )
    assert 1 < len(committed) <= 12
    await store.delete(key)
    store.close()


async def test_a_large_blob_in_many_blocks(azurite: Azurite, suite_container: str) -> None:
    """One append of 24 MiB at 1 MiB blocks stages 24 blocks, a few at a time; the chunked
    path commits them at the upload's key and copies them block range by block range."""
    settings = azure_settings(azurite, suite_container, block_size=MIB)
    store = AzureStore(settings)
    data = data_of(24 * MIB + 5, seed=4)
    upload_id = layout.new_upload_id()
    await store.create_upload(upload_id)
    assert await store.append(upload_id, 0, feed(split(data)), None, Progress()) == len(data)
    assert len((await store._load(upload_id)).blocks) == 25
    key = await store.commit(upload_id, len(data), sha(data))
    for start, n in [(0, 10), (MIB - 1, 2), (len(data) - 3, 3), (0, len(data))]:
        assert await read_all(store, key, start, n) == data[start : start + n]
    await store.delete(key)
    store.close()


async def test_a_sas_token_instead_of_the_account_key(
    azurite: Azurite, suite_container: str, tmp_path: Path
) -> None:
    """A container SAS token read from a file: uploads, server-side copies (which read their
    source through that token), listing and deletion all work with it."""
    token = generate_container_sas(
        azurite.account,
        suite_container,
        account_key=azurite.key,
        permission=ContainerSasPermissions(
            read=True, add=True, create=True, write=True, delete=True, list=True
        ),
        expiry=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1),
    )
    (tmp_path / "sas").write_text("?" + token + "\n")
    config = load(
        environ={
            "BERTH_STORAGE_BACKEND": "azure",
            "BERTH_STORAGE_AZURE_ACCOUNT_NAME": azurite.account,
            "BERTH_STORAGE_AZURE_SAS_TOKEN_FILE": str(tmp_path / "sas"),
            "BERTH_STORAGE_AZURE_CONTAINER": suite_container,
            "BERTH_STORAGE_AZURE_ENDPOINT": azurite.endpoint,
            "BERTH_STORAGE_AZURE_PREFIX": f"sas-{uuid.uuid4().hex[:6]}",
        }
    )
    store = open_store(config)
    assert isinstance(store, AzureStore)
    await store.check()
    for size in (10, 6 * MIB):
        data = data_of(size, seed=size)
        key = await commit_blob(store, data)
        assert await read_all(store, key, 0, size) == data
        assert [o.key async for o in store.list_objects("blobs/")] == [key]
        await store.delete(key)
    assert await store.download_url("blobs/x") is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"account_key": ""}, "set one of storage.azure.account_key"),
        ({"sas_token": "sv=1"}, "set one of storage.azure.account_key"),
        ({"container": ""}, "storage.azure.container must be set"),
        ({"account_name": ""}, "storage.azure.account_name must be set"),
        ({"block_size": 1000}, "block_size must be between"),
        ({"max_attempts": 0}, "max_attempts must be at least 1"),
        ({"endpoint": "ftp://x"}, "endpoint must be an http"),
        ({"account_key": "", "sas_token": "sv=1", "redirect": True}, "redirect needs"),
    ],
)
def test_settings_are_checked(change: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"container": "c", "account_name": "a", "account_key": "k"}
    with pytest.raises(ConfigError, match=message):
        AzureSettings(**(base | change)).validate()  # type: ignore[arg-type]


def test_key_and_key_file_are_exclusive(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("secret\n")
    env = {
        "BERTH_STORAGE_BACKEND": "azure",
        "BERTH_STORAGE_AZURE_ACCOUNT_NAME": "acct",
        "BERTH_STORAGE_AZURE_CONTAINER": "c",
        "BERTH_STORAGE_AZURE_ACCOUNT_KEY_FILE": str(tmp_path / "key"),
    }
    settings = AzureSettings.from_config(load(environ=env))
    assert settings.account_key == "secret"
    assert settings.account_url == "https://acct.blob.core.windows.net"
    assert "secret" not in repr(settings)
    with pytest.raises(ConfigError, match="not both"):
        AzureSettings.from_config(load(environ=env | {"BERTH_STORAGE_AZURE_ACCOUNT_KEY": "x"}))
    with pytest.raises(ConfigError, match="container must be set"):
        load(environ={"BERTH_STORAGE_BACKEND": "azure", "BERTH_STORAGE_AZURE_ACCOUNT_NAME": "a"})


async def test_redirect_urls_read_one_blob_briefly_over_https_only() -> None:
    """What a download SAS URL lets its holder do: read that one blob (sr=b, sp=r), over HTTPS
    only when the account is reached over HTTPS, for 20 minutes."""
    settings = AzureSettings(
        container="c", account_name="acct", account_key="a2V5a2V5", redirect=True
    )
    url = await AzureStore(settings).download_url("blobs/sha256/ab/abc/1")
    assert url is not None
    base, _, query = url.partition("?")
    assert base == "https://acct.blob.core.windows.net/c/blobs/sha256/ab/abc/1"
    fields = dict(pair.split("=", 1) for pair in query.split("&"))
    assert (fields["sr"], fields["sp"], fields["spr"]) == ("b", "r", "https")
    expiry = datetime.datetime.fromisoformat(fields["se"].replace("%3A", ":"))
    left = expiry - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(minutes=18) < left <= datetime.timedelta(minutes=21)
    off = AzureStore(AzureSettings(container="c", account_name="acct", account_key="a2V5a2V5"))
    assert await off.download_url("blobs/sha256/ab/abc/1") is None


async def test_stores_starting_together_all_find_the_container_they_create(
    azurite: Azurite,
) -> None:
    """Every worker of a host checks the store at start, with `create_container` on: those
    that lose the race to create the container find it made, and start."""
    name = f"berth-race-{uuid.uuid4().hex[:10]}"
    stores = [
        AzureStore(
            AzureSettings(
                container=name,
                account_name=azurite.account,
                account_key=azurite.key,
                endpoint=azurite.endpoint,
                create_container=True,
                max_attempts=1,
            )
        )
        for _ in range(6)
    ]
    try:
        async with trio.open_nursery() as nursery:
            for store in stores:
                nursery.start_soon(store.check)
    finally:
        for store in stores:
            store.close()
    assert azurite.container(name).exists()
