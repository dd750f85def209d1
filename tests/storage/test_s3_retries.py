"""How the S3 store meets a misbehaving S3: fast unit tests on moto, behind a fault-injecting
proxy (tests/support/faultproxy.py). Sleeps are recorded, not slept, so backoff costs nothing.

SlowDown, 5xx and dropped connections are retried with exponential backoff and full jitter up to
`max_attempts`; other client errors are not retried; a broken download resumes where it broke.
"""

from __future__ import annotations

import hashlib
import random
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import Unavailable
from appliance.omnibus.ctl import make_self_signed
from appliance.storage import layout
from appliance.storage.base import Progress
from appliance.storage.s3 import S3Settings, S3Store
from tests.storage.suite import PART, data_of, feed, read_all, sha, split
from tests.support.faultproxy import FaultProxy
from tests.support.seaweedfs import s3_client
from tests.support.servers import free_port


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    from moto.server import ThreadedMotoServer  # noqa: PLC0415 - slow to import

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def proxy(moto: str) -> Iterator[FaultProxy]:
    p = FaultProxy(moto)
    try:
        yield p
    finally:
        p.close()


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_store(moto: str, proxy: FaultProxy, sleeps: Sleeps, **settings: Any) -> S3Store:
    bucket = f"retries-{uuid.uuid4().hex[:12]}"
    s3_client(moto, "test", "test").create_bucket(Bucket=bucket)
    config = S3Settings(
        bucket=bucket,
        endpoint=proxy.url,
        access_key="test",
        secret_key="test",
        part_size=PART,
        **settings,
    )
    return S3Store(config, sleep=sleeps, rng=random.Random(7))


async def test_slowdown_and_5xx_are_retried_with_backoff_and_full_jitter(
    moto: str, proxy: FaultProxy
) -> None:
    sleeps = Sleeps()
    store = make_store(moto, proxy, sleeps, max_attempts=5)
    proxy.fail(2, 503, "SlowDown")
    proxy.fail(1, 500, "InternalError")
    upload_id = layout.new_upload_id()
    await store.create_upload(upload_id)
    assert await store.upload_size(upload_id) == 0
    # Three failed attempts, then the request went through: three backoffs, each drawn
    # uniformly from [0, 0.1 s * 2^attempt] (full jitter).
    rng = random.Random(7)
    assert sleeps == [rng.uniform(0, 0.1 * 2**attempt) for attempt in (1, 2, 3)]
    assert len(set(sleeps)) == 3
    await store.delete_upload(upload_id)


async def test_gives_up_after_max_attempts(moto: str, proxy: FaultProxy) -> None:
    sleeps = Sleeps()
    store = make_store(moto, proxy, sleeps, max_attempts=3)
    before = len(proxy.requests)
    proxy.fail(3, 503, "ServiceUnavailable")
    with pytest.raises(Unavailable, match="ServiceUnavailable"):
        await store.upload_size(layout.new_upload_id())
    assert len(proxy.requests) - before == 3
    assert len(sleeps) == 2


async def test_client_errors_are_not_retried(moto: str, proxy: FaultProxy) -> None:
    sleeps = Sleeps()
    store = make_store(moto, proxy, sleeps, max_attempts=5)
    proxy.fail(1, 403, "AccessDenied")
    with pytest.raises(Unavailable, match="refused access"):
        await store.create_upload(layout.new_upload_id())
    assert sleeps == []


async def test_dropped_connections_are_retried(moto: str, proxy: FaultProxy) -> None:
    sleeps = Sleeps()
    store = make_store(moto, proxy, sleeps, max_attempts=4)
    proxy.drop(3)
    upload_id = layout.new_upload_id()
    await store.create_upload(upload_id)
    assert len(sleeps) == 3
    await store.delete_upload(upload_id)


async def test_an_upload_goes_through_throttling(moto: str, proxy: FaultProxy) -> None:
    """Throttling in the middle of a multipart upload: parts are sent again, and the blob
    committed afterwards is exact."""
    sleeps = Sleeps()
    store = make_store(moto, proxy, sleeps, max_attempts=4)
    upload_id = layout.new_upload_id()
    await store.create_upload(upload_id)
    data = data_of(2 * PART + 12345, seed=3)
    proxy.fail(2, 503, "SlowDown")
    hasher = hashlib.sha256()
    progress = Progress()
    size = await store.append(upload_id, 0, feed(split(data)), hasher, progress)
    assert size == len(data) == progress.written
    assert progress.hashed
    proxy.fail(1, 500, "InternalError")
    key = await store.commit(upload_id, len(data), sha(data))
    assert await read_all(store, key, 0, len(data)) == data
    assert len(sleeps) == 3
    await store.delete(key)


async def test_a_broken_download_resumes_where_it_broke(moto: str, proxy: FaultProxy) -> None:
    sleeps = Sleeps()
    store = make_store(moto, proxy, sleeps, max_attempts=3)
    upload_id = layout.new_upload_id()
    await store.create_upload(upload_id)
    data = data_of(3 * (1 << 20) + 5, seed=4)
    await store.append(upload_id, 0, feed(split(data)), None, Progress())
    key = await store.commit(upload_id, len(data), sha(data))
    proxy.cut(1 << 20)  # the first GET breaks after 1 MiB
    seen = len(proxy.requests)
    assert await read_all(store, key, 0, len(data)) == data
    ranges = [r for method, _, r in proxy.requests[seen:] if method == "GET"]
    # The whole blob first; after the break only the rest is asked for (a stale pooled
    # connection may cost one more attempt at the same range).
    assert ranges[0] == f"bytes=0-{len(data) - 1}"
    assert set(ranges[1:]) == {f"bytes={1 << 20}-{len(data) - 1}"}, ranges
    assert 1 <= len(sleeps) <= 2
    await store.delete(key)


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (the product's own maker)."""
    cert_path, key_path = tmp_path / "s3.crt", tmp_path / "s3.key"
    make_self_signed(cert_path, key_path, "127.0.0.1")
    return cert_path, key_path


async def test_tls_with_a_custom_ca(moto: str, tmp_path: Path) -> None:
    """An HTTPS endpoint with a private CA: verified with `ca_file`, refused without it (no
    retries: a certificate that fails now fails next time too), accepted unverified only
    when `tls_verify` is off."""
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    proxy = FaultProxy(moto, tls=context)
    try:
        assert proxy.url.startswith("https://")
        for settings, works in (
            ({"ca_file": str(cert)}, True),
            ({}, False),
            ({"tls_verify": False}, True),
        ):
            sleeps = Sleeps()
            store = make_store(moto, proxy, sleeps, **settings)
            if works:
                await store.check()
            else:
                with pytest.raises(Unavailable, match="certificate"):
                    await store.check()
                assert sleeps == []
    finally:
        proxy.close()
