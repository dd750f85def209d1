"""The storage conformance suite over the S3 store on SeaweedFS; the side door is a raw listing
of the whole bucket, objects and multipart uploads in progress alike.

Each test gets a fresh key prefix in one shared bucket (a bucket costs SeaweedFS seven volume
slots), and the side door lists the whole bucket, so nothing may appear outside the prefix
either. Parts are cut at S3's smallest size, 5 MiB, so small tests cross part boundaries.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import trio

from appliance.storage.s3 import S3Settings, S3Store
from tests.storage.suite import PART, SideDoor, StoreSuite
from tests.support.seaweedfs import SeaweedFS


def bucket_listing(client: Any, bucket: str) -> list[str]:
    """Every object and every multipart upload in progress in `bucket`."""
    found = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        found += [o["Key"] for o in page.get("Contents", [])]
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    found += [f"multipart upload in progress: {u['Key']}" for u in uploads]
    return sorted(found)


@pytest.fixture(scope="module")
def suite_bucket(seaweedfs: SeaweedFS) -> str:
    return seaweedfs.new_bucket("berth-suite")


class TestS3Store(StoreSuite):
    @pytest.fixture
    def store(self, seaweedfs: SeaweedFS, suite_bucket: str) -> S3Store:
        settings = S3Settings(
            bucket=suite_bucket,
            endpoint=seaweedfs.endpoint,
            region=seaweedfs.region,
            prefix=f"suite-{uuid.uuid4().hex[:8]}/",
            access_key=seaweedfs.access_key,
            secret_key=seaweedfs.secret_key,
            part_size=PART,
            max_attempts=2,
        )
        return S3Store(settings)

    @pytest.fixture
    def side_door(self, seaweedfs: SeaweedFS, suite_bucket: str) -> SideDoor:
        return lambda: bucket_listing(seaweedfs.client, suite_bucket)


async def test_stores_starting_together_all_find_the_bucket_they_create(
    seaweedfs: SeaweedFS,
) -> None:
    """Every worker of a host checks the store at start, with `create_bucket` on: those that
    lose the race to create the bucket find it made, and start."""
    bucket = f"berth-race-{uuid.uuid4().hex[:10]}"
    stores = [
        S3Store(
            S3Settings(
                bucket=bucket,
                endpoint=seaweedfs.endpoint,
                region=seaweedfs.region,
                access_key=seaweedfs.access_key,
                secret_key=seaweedfs.secret_key,
                create_bucket=True,
                max_attempts=1,
            )
        )
        for _ in range(6)
    ]
    async with trio.open_nursery() as nursery:
        for store in stores:
            nursery.start_soon(store.check)
    seaweedfs.client.head_bucket(Bucket=bucket)
