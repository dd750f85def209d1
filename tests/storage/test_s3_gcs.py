"""What the S3 store does for Google Cloud Storage's S3 interoperability, checked on SeaweedFS
behind a fault-injecting proxy: GCS's XML API has no multi-object delete (DeleteObjects answers
NotImplemented) and answers 404 to a DELETE of a missing object where S3 answers 204.

`storage.s3.batch_delete = false` deletes one object per request from the start; with it on, the
first NotImplemented answer turns it off for good. Both are forced here on SeaweedFS, which does
implement DeleteObjects, so the request log shows which path ran.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from appliance.backup.target import s3_target
from appliance.config import load
from appliance.storage import layout
from appliance.storage.s3 import S3Settings, S3Store
from tests.storage.suite import commit_blob, sha
from tests.support.faultproxy import FaultProxy
from tests.support.seaweedfs import SeaweedFS


@pytest.fixture(scope="module")
def bucket(seaweedfs: SeaweedFS) -> str:
    return seaweedfs.new_bucket("berth-gcs")


@pytest.fixture
def proxy(seaweedfs: SeaweedFS) -> Iterator[FaultProxy]:
    p = FaultProxy(seaweedfs.endpoint)
    try:
        yield p
    finally:
        p.close()


def make_store(seaweedfs: SeaweedFS, bucket: str, proxy: FaultProxy, **more: object) -> S3Store:
    settings = S3Settings(
        bucket=bucket,
        endpoint=proxy.url,
        region=seaweedfs.region,
        prefix=f"gcs-{uuid.uuid4().hex[:8]}/",
        access_key=seaweedfs.access_key,
        secret_key=seaweedfs.secret_key,
        max_attempts=2,
        **more,  # type: ignore[arg-type]
    )
    return S3Store(settings)


def batch_posts(proxy: FaultProxy, since: int) -> list[str]:
    return [
        path for method, path, _ in proxy.requests[since:] if method == "POST" and "delete" in path
    ]


def deletes(proxy: FaultProxy, since: int) -> list[str]:
    return [path for method, path, _ in proxy.requests[since:] if method == "DELETE"]


async def test_batch_delete_off_deletes_one_object_per_request(
    seaweedfs: SeaweedFS, bucket: str, proxy: FaultProxy
) -> None:
    store = make_store(seaweedfs, bucket, proxy, batch_delete=False)
    keys = [await commit_blob(store, f"blob {i}".encode()) for i in range(3)]
    missing = layout.blob_key(sha(b"never stored"))
    seen = len(proxy.requests)
    # A missing object answered 404, as GCS does: still fine.
    await store.delete_many([*keys, missing])
    assert batch_posts(proxy, seen) == []
    assert len(deletes(proxy, seen)) == 4
    assert [o async for o in store.list_objects("blobs/")] == []
    seen = len(proxy.requests)
    proxy.fail(1, 404, "NoSuchKey")
    await store.delete_many([missing, missing])
    assert len(deletes(proxy, seen)) == 2


async def test_not_implemented_turns_batch_delete_off(
    seaweedfs: SeaweedFS, bucket: str, proxy: FaultProxy
) -> None:
    store = make_store(seaweedfs, bucket, proxy)
    keys = [await commit_blob(store, f"more {i}".encode()) for i in range(4)]
    seen = len(proxy.requests)
    proxy.fail(1, 501, "NotImplemented")  # GCS's answer to POST ?delete
    await store.delete_many(keys[:2])
    assert len(batch_posts(proxy, seen)) == 1  # tried once, not retried
    assert len(deletes(proxy, seen)) == 2
    assert sorted([o.key async for o in store.list_objects("blobs/")]) == sorted(keys[2:])
    seen = len(proxy.requests)
    await store.delete_many(keys[2:])
    assert batch_posts(proxy, seen) == []  # remembered
    assert len(deletes(proxy, seen)) == 2
    assert [o async for o in store.list_objects("blobs/")] == []


def test_backup_target_falls_back_too(seaweedfs: SeaweedFS, bucket: str, proxy: FaultProxy) -> None:
    config = load(
        environ={
            "BERTH_STORAGE_S3_ENDPOINT": proxy.url,
            "BERTH_STORAGE_S3_ACCESS_KEY": seaweedfs.access_key,
            "BERTH_STORAGE_S3_SECRET_KEY": seaweedfs.secret_key,
            "BERTH_STORAGE_S3_MAX_ATTEMPTS": "2",
        }
    )
    target = s3_target(config, bucket, f"backups-{uuid.uuid4().hex[:8]}")
    for name in ("a", "b", "c"):
        target.write_all(f"files/{name}", name.encode())
    seen = len(proxy.requests)
    proxy.fail(1, 501, "NotImplemented")
    target.delete(["files/a", "files/b"])
    assert len(batch_posts(proxy, seen)) == 1
    assert len(deletes(proxy, seen)) == 2
    assert sorted(target.files("files/")) == ["files/c"]
    target.delete(["files/c", "files/gone"])
    assert target.files("files/") == {}
