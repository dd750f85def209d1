"""The storage conformance suite over the Azure store on Azurite; the side door lists the whole
container, blobs holding only uncommitted blocks included.

Each test gets a fresh name prefix in one shared container, and the side door lists the whole
container, so nothing may appear outside the prefix either. Blocks are cut at the suite's part
size, so small tests cross block boundaries.
"""

from __future__ import annotations

import uuid

import pytest

from appliance.storage.azure import AzureSettings, AzureStore
from tests.storage.suite import PART, SideDoor, StoreSuite
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
    def store(self, azurite: Azurite, suite_container: str) -> AzureStore:
        return AzureStore(azure_settings(azurite, suite_container))

    @pytest.fixture
    def side_door(self, azurite: Azurite, suite_container: str) -> SideDoor:
        return lambda: azurite.listing(suite_container)
