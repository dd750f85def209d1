"""Blobs over 5 GiB on S3 (SeaweedFS), `make test-slow`: S3's limits (5 GiB per part and per
single copy, 10,000 parts) must not show, and memory stays flat.

- a monolithic upload (digest known first: parts go straight to the blob's key);
- a streamed PATCH, a restart that loses the running hash, then the PUT: the upload is
  completed, read back once to verify it, and copied to its key with a multipart copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.slow.test_large_blobs import GIB, _random_file, _rss_kib, _RssSampler
from tests.support.seaweedfs import SeaweedFS
from tests.support.servers import Server, require_binary, start_berth

pytestmark = pytest.mark.slow

SIZE = 5 * GIB + 12345


def _sha256_of_download(server: Server, url: str) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with httpx.stream("GET", url, auth=server.credentials, timeout=300) as r:
        assert r.status_code == 200
        for data in r.iter_bytes(1 << 20):
            h.update(data)
            size += len(data)
    return "sha256:" + h.hexdigest(), size


def _curl(server: Server, *args: str) -> str:
    curl = require_binary("curl", "curl")
    user, password = server.credentials or ("", "")
    out = subprocess.run(
        [curl, "-sS", "-u", f"{user}:{password}", "-H", "Expect:", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A 5 GiB random file, removed afterwards (pytest keeps its last temp dirs)."""
    path = tmp_path_factory.mktemp("s3-large") / "blob"
    try:
        yield path, _random_file(path, SIZE)
    finally:
        path.unlink(missing_ok=True)


def test_monolithic_blob_over_5_gib(
    tmp_path: Path, seaweedfs: SeaweedFS, blob: tuple[Path, str]
) -> None:
    path, digest = blob
    server = start_berth(tmp_path / "data", env=seaweedfs.env(seaweedfs.new_bucket("large")))
    growth = []
    try:
        # No slash before the query: with -T, curl appends the file's name to a URL ending in /.
        url = f"{server.url}/v2/big/s3/blobs/uploads?digest={digest}"
        with _sampled(server, growth):
            code = _curl(
                server, "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-T", str(path), url
            )
        assert code == "201"
        with _sampled(server, growth):
            got = _sha256_of_download(server, f"{server.url}/v2/big/s3/blobs/{digest}")
        assert got == (digest, SIZE)
    finally:
        assert server.stop() == 0
    # Flat: the upload holds a few 16 MiB parts at most, the download one read ahead.
    assert max(growth) < 150 * 1024, growth


@contextlib.contextmanager
def _sampled(server: Server, growth: list[int]) -> Iterator[None]:
    """Record the peak RSS growth (KiB) of `server` over the block into `growth`."""
    idle = _rss_kib(server.proc.pid)
    sampler = _RssSampler(server.proc.pid)
    sampler.start()
    try:
        yield
    finally:
        sampler.done.set()
        sampler.join()
        growth.append(sampler.peak - idle)


def test_chunked_blob_over_5_gib_verified_after_a_restart(
    tmp_path: Path, seaweedfs: SeaweedFS, blob: tuple[Path, str]
) -> None:
    path, digest = blob
    env = seaweedfs.env(seaweedfs.new_bucket("large"))
    data_dir = tmp_path / "data"
    server = start_berth(data_dir, env=env)
    try:
        location = httpx.post(
            f"{server.url}/v2/big/chunked/blobs/uploads/", auth=server.credentials
        ).headers["location"]
        code = _curl(
            server,
            "-o", "/dev/null", "-w", "%{http_code}", "-X", "PATCH", "-T", str(path),
            f"{server.url}{location}",
        )  # fmt: skip
        assert code == "202"
        # A restart: the running hash is gone, so the commit must read the bytes back.
        assert server.stop(signal.SIGTERM) == 0
        server = start_berth(data_dir, env=env)
        growth: list[int] = []
        with _sampled(server, growth):
            r = httpx.put(
                f"{server.url}{location}",
                params={"digest": digest},
                auth=server.credentials,
                timeout=1800,
            )
        assert r.status_code == 201, r.text
        assert growth[0] < 150 * 1024, growth
        got = _sha256_of_download(server, f"{server.url}/v2/big/chunked/blobs/{digest}")
        assert got == (digest, SIZE)
    finally:
        assert server.stop() == 0
