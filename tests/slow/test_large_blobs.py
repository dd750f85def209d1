"""Size and soak tests (`make test-slow`): multi-GiB blobs and many crash rounds."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.servers import require_binary, start_berth

pytestmark = pytest.mark.slow

GIB = 1 << 30


def _random_file(path: Path, size: int) -> str:
    """Write `size` pseudo-random bytes (fast: a repeating 64 MiB random pattern with a counter)
    and return their sha256 digest."""
    block = os.urandom(64 << 20)
    h = hashlib.sha256()
    with path.open("wb") as f:
        written = 0
        i = 0
        while written < size:
            piece = (i.to_bytes(8, "big") + block)[: min(len(block) + 8, size - written)]
            f.write(piece)
            h.update(piece)
            written += len(piece)
            i += 1
    return "sha256:" + h.hexdigest()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class _RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, _rss_kib(self.pid))
            time.sleep(0.05)


def _sha256_of_download(url: str, auth: tuple[str, str] | None) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with httpx.stream("GET", url, timeout=120, auth=auth) as r:
        assert r.status_code == 200
        for data in r.iter_bytes(1 << 20):
            h.update(data)
            size += len(data)
    return "sha256:" + h.hexdigest(), size


def test_multi_gib_blob_round_trip_in_flat_memory(tmp_path):
    curl = require_binary("curl", "curl")
    size = 3 * GIB + 12345
    blob = tmp_path / "blob"
    digest = _random_file(blob, size)
    server = start_berth(tmp_path / "data")
    try:
        idle = _rss_kib(server.proc.pid)
        sampler = _RssSampler(server.proc.pid)
        sampler.start()
        # Monolithic upload in one request, streamed by curl from the file.
        out = subprocess.run(
            [
                curl,
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "POST",
                "-T",
                str(blob),
                "-H",
                "Expect:",
                "-u",
                ":".join(server.credentials or ("", "")),
                f"{server.url}/v2/big/blob/blobs/uploads?digest={digest}",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout == "201"
        got, got_size = _sha256_of_download(
            f"{server.url}/v2/big/blob/blobs/{digest}", server.credentials
        )
        sampler.done.set()
        sampler.join()
        assert (got, got_size) == (digest, size)
        # Memory stays flat whatever the size of the blob.
        assert sampler.peak - idle < 100 * 1024, (idle, sampler.peak)
    finally:
        assert server.stop() == 0


def test_chunked_upload_survives_repeated_kills(tmp_path):
    """Many crash rounds: a chunked upload whose server is killed with SIGKILL after every
    chunk resumes from what the server recorded and commits the exact bytes."""
    size = 256 << 20
    chunk = 16 << 20
    blob = tmp_path / "blob"
    digest = _random_file(blob, size)
    data_dir = tmp_path / "data"
    server = start_berth(data_dir)
    location = httpx.post(
        f"{server.url}/v2/crash/test/blobs/uploads/", auth=server.credentials
    ).headers["location"]
    rounds = 0
    with blob.open("rb") as f:
        while True:
            status = httpx.get(server.url + location, auth=server.credentials)
            assert status.status_code == 204
            offset = int(status.headers["range"].split("-")[1]) + 1 if rounds else 0
            if offset >= size:
                break
            f.seek(offset)
            piece = f.read(chunk)
            r = httpx.patch(
                server.url + location,
                content=piece,
                headers={"content-range": f"{offset}-{offset + len(piece) - 1}"},
                timeout=60,
                auth=server.credentials,
            )
            assert r.status_code == 202, r.text
            server.stop(signal.SIGKILL)
            server = start_berth(data_dir)
            rounds += 1
    try:
        r = httpx.put(
            f"{server.url}{location}?digest={digest}", timeout=120, auth=server.credentials
        )
        assert r.status_code == 201, r.text
        assert rounds == size // chunk
        assert _sha256_of_download(
            f"{server.url}/v2/crash/test/blobs/{digest}", server.credentials
        ) == (digest, size)
    finally:
        assert server.stop() == 0
