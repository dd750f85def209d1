"""Azure Blob Storage for tests: Azurite, Microsoft's Azure Storage emulator, from the npm registry.

Azurite is installed on first use (`npm install azurite@VERSION`) into a cache directory that
this module controls, `~/.cache/berth-test/azurite` (`BERTH_AZURITE_DIR` moves it), and reused
afterwards; nobody installs it by hand. Node 20 runs it. One Azurite blob service serves the
test session, on a free loopback port with its data in a temporary directory, and is stopped by
its PID. Tests that stop Azurite on purpose start one of their own (`start_azurite`), and may
restart it on the same port and data directory (`Azurite.restart`).

Fixtures:

- `azurite`: the running session service (`Azurite`: account, key, endpoint, a side-door
  `ContainerClient` per container, `new_container()`).
- `azure_storage`: backend-profile factory (tests/support/backends.py); each call makes a
  fresh container and returns the `BERTH_*` environment that points Berth's Azure store at it.

A missing `node`/`npm` skips the tests that need Azurite (fails them under CI=true).
"""

from __future__ import annotations

import fcntl
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import free_port, unavailable

VERSION = "3.37.0"
# Azurite's one built-in account and its published development key.
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
START_TIMEOUT = 30.0
_seq = itertools.count()


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "berth-test" / "azurite"
    return Path(os.environ.get("BERTH_AZURITE_DIR", default))


def install_azurite() -> Path:
    """The `azurite-blob` launcher, installed from the npm registry on first use (under a
    file lock, so two test processes never install at once)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        unavailable("Azurite needs Node.js and npm: install the Debian packages 'nodejs' 'npm'")
    root = cache_dir() / VERSION
    launcher = root / "node_modules" / ".bin" / "azurite-blob"
    if launcher.exists():
        return launcher
    root.mkdir(parents=True, exist_ok=True)
    with (root.parent / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not launcher.exists():
            (root / "package.json").write_text('{"name": "berth-test-azurite", "private": true}\n')
            result = subprocess.run(
                [
                    "npm",
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                    f"azurite@{VERSION}",
                ],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if result.returncode != 0 or not launcher.exists():
                unavailable(f"npm install azurite@{VERSION} failed:\n{result.stderr[-2000:]}")
    return launcher


def container_client(endpoint: str, container: str) -> Any:
    """A plain SDK client on `container`: the side door tests look through."""
    from azure.storage.blob import ContainerClient  # noqa: PLC0415

    return ContainerClient(
        endpoint,
        container,
        credential={"account_name": ACCOUNT, "account_key": KEY},
        retry_total=0,
    )


@dataclass
class Azurite:
    """A running Azurite blob service."""

    port: int
    data: Path
    proc: subprocess.Popen[bytes]
    launcher: Path
    account: str = ACCOUNT
    key: str = KEY

    @property
    def endpoint(self) -> str:
        """The account's blob endpoint (Azurite addresses accounts by path)."""
        return f"http://127.0.0.1:{self.port}/{self.account}"

    @property
    def log_path(self) -> Path:
        return self.data.parent / f"{self.data.name}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def container(self, name: str) -> Any:
        return container_client(self.endpoint, name)

    def new_container(self, stem: str = "berth-test") -> str:
        """Create a fresh, empty container and return its name."""
        name = f"{stem}-{os.getpid()}-{next(_seq)}-{uuid.uuid4().hex[:6]}"
        self.container(name).create_container()
        return name

    def listing(self, container: str, prefix: str = "") -> list[str]:
        """Every blob in `container`, committed or holding only uncommitted blocks."""
        client = self.container(container)
        return sorted(
            b.name for b in client.list_blobs(name_starts_with=prefix, include=["uncommittedblobs"])
        )

    def env(self, container: str, prefix: str = "") -> dict[str, str]:
        """The `BERTH_*` variables for Berth's Azure store on `container`."""
        return {
            "BERTH_STORAGE_BACKEND": "azure",
            "BERTH_STORAGE_AZURE_ENDPOINT": self.endpoint,
            "BERTH_STORAGE_AZURE_ACCOUNT_NAME": self.account,
            "BERTH_STORAGE_AZURE_ACCOUNT_KEY": self.key,
            "BERTH_STORAGE_AZURE_CONTAINER": container,
            "BERTH_STORAGE_AZURE_PREFIX": prefix,
        }

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Stop it by its PID (SIGTERM lets it write its database; SIGKILL after `timeout`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def restart(self) -> None:
        """Start it again on the same port and data directory (after `stop`)."""
        assert self.proc.poll() is not None, "stop it first"
        self.proc = _launch(self.launcher, self.port, self.data, self.log_path)
        _wait_ready(self)


def _launch(launcher: Path, port: int, data: Path, log_path: Path) -> subprocess.Popen[bytes]:
    cmd = [
        str(launcher),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--location",
        str(data),
        # The SDK speaks a newer API version than this Azurite knows; the calls Berth makes
        # are all older than that.
        "--skipApiVersionCheck",
        "--loose",
        "--disableTelemetry",
    ]
    with log_path.open("ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)


def _wait_ready(server: Azurite) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    url = f"http://127.0.0.1:{server.port}/{server.account}?comp=list"
    while server.proc.poll() is None and time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
        except urllib.error.HTTPError:
            return  # an unsigned request is refused: it answers
        except OSError:
            time.sleep(0.05)
            continue
        return
    raise RuntimeError(f"Azurite did not start on port {server.port}:\n{server.log()[-3000:]}")


def start_azurite(root: Path, *, attempts: int = 3) -> Azurite:
    """Start an Azurite blob service on a free loopback port with its data under `root`."""
    launcher = install_azurite()
    root.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for attempt in range(attempts):
        data = root / f"azurite-{attempt}"
        data.mkdir()
        port = free_port()
        proc = _launch(launcher, port, data, root / f"{data.name}.log")
        server = Azurite(port, data, proc, launcher)
        try:
            _wait_ready(server)
        except RuntimeError as e:  # most likely the port was taken meanwhile
            last = e
            server.stop(timeout=3)
            continue
        return server
    raise RuntimeError(f"Azurite did not start ({attempts} attempts): {last}")


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """One Azurite for the whole test session; its data is removed afterwards."""
    install_azurite()
    root = Path(tempfile.mkdtemp(prefix="berth-azurite-"))
    server = start_azurite(root)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def azure_container(azurite: Azurite) -> Callable[[], str]:
    """A factory: each call makes a fresh, empty container on the session's Azurite."""
    return azurite.new_container


@pytest.fixture(scope="session")
def azure_storage(azurite: Azurite) -> Callable[[], dict[str, str]]:
    """Backend-profile factory: a fresh container per call, as `BERTH_*` variables."""
    return lambda: azurite.env(azurite.new_container("berth-e2e"))
