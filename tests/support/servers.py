"""Start real servers for tests and benchmarks: Berth itself and the reference registry.

Every server binds port 0 (or a free port it is told) on loopback, reports its URL, and is
stopped by its PID. Nothing here sleeps for a fixed time: readiness is a line the server prints
or an HTTP answer that is polled for.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

REPO_ROOT = Path(__file__).resolve().parents[2]
# Every Berth started here has sign-in on (it always does) and this first admin.
ADMIN = "admin"
ADMIN_PASSWORD = "admin-test-password"
LISTENING = re.compile(r"listening on (http://[^\s\"]+)")  # text or JSON log lines


def free_port() -> int:
    """A loopback port that was free a moment ago (for servers that cannot bind port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unavailable(message: str) -> NoReturn:
    """A real service or ability a test needs is missing: skip the test on a developer's
    machine, fail it under CI=true (CI installs everything, so a skip there hides a gap)."""
    import pytest  # noqa: PLC0415 - bench/ uses this module without pytest

    under_ci = os.environ.get("CI") == "true"
    (pytest.fail if under_ci else pytest.skip)(message)  # skip only off CI
    raise AssertionError("unreachable")  # both calls raise; this keeps NoReturn honest


def require_binary(name: str, package: str) -> str:
    """Path of `name`; skip the test when it is missing, but fail under CI=true."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} not found: install the Debian package {package!r}")
    return path


@dataclass
class Server:
    """A running server process and where it listens."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path | None = None
    credentials: tuple[str, str] | None = None  # a user that may push anywhere (Berth: admin)
    _pump: threading.Thread | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        """`host:port`, as registry clients want it."""
        return self.url.split("://", 1)[1]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the process and wait for it; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._pump is not None:
            self._pump.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL to the server and every process it started (a supervisor's workers): a
        crash of the whole service, as when systemd kills its control group."""
        tree = descendants(self.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)  # first, so that it replaces no worker
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.stop(signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children of any of its threads, and theirs)."""
    out: list[int] = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children = [int(p) for p in path.read_text().split()]
        except OSError:  # the thread is gone
            continue
        for child in children:
            out += [child, *descendants(child)]
    return out


def berth_command() -> list[str]:
    """How to run Berth from this checkout: the installed console script, or the module."""
    exe = Path(sys.executable).with_name("berth")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "appliance"]


def start_berth(
    data_dir: Path,
    *,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    listen: str = "127.0.0.1:0",
    log_path: Path | None = None,
    timeout: float = 30,
) -> Server:
    """Start `berth serve` on `listen` with its data under `data_dir`; wait until it listens."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_path or data_dir.parent / f"{data_dir.name}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    full_env["BERTH_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    full_env.update(env or {})
    cmd = [*berth_command(), "serve", "--listen", listen, "--data-dir", str(data_dir), *args]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, cwd=data_dir.parent
    )
    found: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        with log_path.open("ab") as log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if not found:
                    m = LISTENING.search(line.decode(errors="replace"))
                    if m:
                        found.append(m.group(1))
                        ready.set()
        ready.set()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    ready.wait(timeout)
    credentials = (ADMIN, full_env["BERTH_ADMIN_PASSWORD"])
    server = Server(found[0] if found else "", proc, log_path, data_dir, credentials, thread)
    if not found:
        server.stop(signal.SIGKILL)
        raise RuntimeError(f"berth did not start: {cmd}\n{server.log()}")
    return server


def wait_http(url: str, timeout: float = 30, ok: Sequence[int] = (200, 401)) -> None:
    """Poll `url` until it answers with one of `ok`."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status in ok:
                    return
        except urllib.error.HTTPError as e:
            if e.code in ok:
                return
            last = e
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer in {timeout}s: {last}")


def start_reference_registry(
    tmp: Path, *, htpasswd: Path | None = None, extra_config: str = "", storage: str = ""
) -> Server:
    """Debian's `docker-registry` (CNCF Distribution 2.8) with filesystem storage in `tmp`.

    `extra_config` is YAML appended to its configuration (e.g. `compatibility:` to accept
    Docker schema 1 pushes); `storage` replaces the filesystem storage section (the lines
    under `storage:`, e.g. an `s3:` driver)."""
    exe = require_binary("docker-registry", "docker-registry")
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    auth = ""
    if htpasswd is not None:
        auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n"
    config = tmp / "config.yml"
    filesystem = f"  filesystem:\n    rootdirectory: {tmp / 'data'}\n"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n{storage or filesystem}"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        f"{auth}{extra_config}"
    )
    log_path = tmp / "registry.log"
    # The registry's AWS SDK cannot take a CA bundle from the environment (it panics at start
    # with its S3 driver); it talks plain HTTP on loopback anyway.
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen([exe, "serve", str(config)], stdout=log, stderr=log, env=env)
    server = Server(f"http://127.0.0.1:{port}", proc, log_path, tmp / "data")
    try:
        wait_http(server.url + "/v2/")
    except RuntimeError:
        server.stop(signal.SIGKILL)
        raise
    return server


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    """Stop `server` when the block ends, whatever happens inside."""
    try:
        yield server
    finally:
        server.stop()
