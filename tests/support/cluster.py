"""Several Berth hosts on one PostgreSQL and one S3 bucket, behind nginx, for tests and benches.

Each host is a `berth serve` of its own: its own data directory (change stamps, host-shared
buckets, logs), its own fixed loopback port (a host killed and started again comes back where
nginx expects it), its own `server.host_name`. What they share is what a real deployment
shares: `metadata.url`, the `[storage.s3]` bucket, the server secret file and the public URL
(nginx's). nginx runs the configuration `berth ctl reconfigure` renders with `nginx.upstreams`
set (TLS with a self-signed certificate, passive health checks, no buffering), as root so that
it may read its test directory (TESTBED.md).

Every process is started by this module and stopped by its PID.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from appliance import config as settings
from appliance.omnibus import checks, ctl
from tests.server.helpers import LEADING, push_image
from tests.support.servers import (
    ADMIN,
    ADMIN_PASSWORD,
    Server,
    free_port,
    require_binary,
    start_berth,
)


def basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def until(what: str, check: Callable[[], bool], seconds: float, step: float = 0.02) -> float:
    """Poll `check` until true; the seconds it took. Fails naming `what` after `seconds`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"{what}: not within {seconds} s")
        time.sleep(step)
    return time.monotonic() - started


def path_of(location: str) -> str:
    """A Location's path and query: the hosts name the public URL (the balancer), and these
    requests go to one host directly."""
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def push_small_image(client: httpx.Client, repo: str, tag: str, layer: bytes) -> str:
    """Push a one-layer image (each blob in one POST); returns the manifest's digest."""
    return push_image(client, repo, tag, layer)[0]


@dataclass
class Host:
    """One Berth host of the cluster."""

    name: str
    port: int
    data_dir: Path
    env: dict[str, str]
    workers: int
    server: Server | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        logs = sorted(self.data_dir.parent.glob(f"{self.name}-*.log"))
        return "".join(p.read_text(errors="replace") for p in logs)

    def start(self) -> Server:
        self.starts += 1
        self.server = start_berth(
            self.data_dir,
            env=self.env,
            listen=self.address,
            args=("--workers", str(self.workers)),
            log_path=self.data_dir.parent / f"{self.name}-{self.starts}.log",
            timeout=90,
        )
        return self.server

    @property
    def alive(self) -> bool:
        return self.server is not None and self.server.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL to every process of the host: a crash, as its peers see it."""
        if self.server is not None:
            self.server.kill()

    def stop(self) -> int:
        if self.server is None or self.server.proc.poll() is not None:
            return 0 if self.server is None else int(self.server.proc.returncode)
        return self.server.stop()

    def client(self, auth: Any = (ADMIN, ADMIN_PASSWORD), **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=auth, timeout=60, **kwargs)


@dataclass
class Front:
    """nginx in front of the hosts."""

    url: str  # https://127.0.0.1:PORT
    proc: subprocess.Popen[bytes]
    conf: Path
    log_dir: Path

    @property
    def host(self) -> str:
        return self.url.removeprefix("https://")

    def client(self, auth: Any = (ADMIN, ADMIN_PASSWORD), **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=auth, timeout=120, verify=False, **kwargs)

    def access_log(self) -> str:
        path = self.log_dir / "nginx-access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Cluster:
    """`count` hosts sharing `shared` (database, bucket, ...) behind nginx; see the module
    docstring. `workers`: serving processes of each host, by index (default 1)."""

    root: Path
    shared: Mapping[str, str]
    count: int = 3
    workers: Mapping[int, int] = field(default_factory=dict)
    hosts: list[Host] = field(default_factory=list)
    front: Front | None = None
    secret_file: Path | None = None

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.secret_file = self.root / "shared-secret"
        if not self.secret_file.exists():
            self.secret_file.write_text(os.urandom(32).hex() + "\n")
            self.secret_file.chmod(0o600)
        self.front_port = free_port()
        self.public_url = f"https://127.0.0.1:{self.front_port}"
        for i in range(self.count):
            name = f"host{i}"
            env = {
                **self.shared,
                "BERTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
                "BERTH_SERVER_SECRET_FILE": str(self.secret_file),
                "BERTH_SERVER_PUBLIC_URL": self.public_url,
                "BERTH_SERVER_HOST_NAME": name,
                "BERTH_LOG_FORMAT": "json",
            }
            self.hosts.append(
                Host(name, free_port(), self.root / name / "data", env, self.workers.get(i, 1))
            )

    def start(self) -> Cluster:
        """Start every host (at once) and then nginx."""
        errors: list[BaseException] = []

        def one(host: Host) -> None:
            try:
                host.start()
            except BaseException as e:  # reported below, after every start has ended
                errors.append(e)

        threads = [threading.Thread(target=one, args=(h,)) for h in self.hosts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            self.stop()
            raise errors[0]
        self.front = start_front(self.root / "front", self.hosts, self.public_url, self.front_port)
        return self

    def restart_front(self, hosts: list[Host], name: str) -> Front:
        """nginx again, on the same port, balancing over `hosts` only (benches)."""
        if self.front is not None:
            self.front.stop()
        self.front = start_front(self.root / name, hosts, self.public_url, self.front_port)
        return self.front

    def stop(self) -> dict[str, int]:
        """Stop nginx and every host; returns each host's exit code."""
        if self.front is not None:
            self.front.stop()
        return {h.name: h.stop() for h in self.hosts}

    def host_env(self, i: int) -> dict[str, str]:
        """The `BERTH_*` environment of host `i` (for a command run as that host)."""
        return {**self.hosts[i].env, "BERTH_SERVER_DATA_DIR": str(self.hosts[i].data_dir)}


def front_config(root: Path, hosts: list[Host], public_url: str, port: int) -> settings.Config:
    return settings.load(
        None,
        environ={},
        overrides={
            "server.data_dir": str(root / "data"),
            "server.public_url": public_url,
            "log.dir": str(root / "log"),
            "nginx.enabled": True,
            "nginx.listen": f"127.0.0.1:{port}",
            "nginx.redirect_listen": "",
            "nginx.upstreams": ",".join(h.address for h in hosts),
            "storage.backend": "s3",
            "storage.s3.bucket": "shared",
        },
    )


def start_front(root: Path, hosts: list[Host], public_url: str, port: int) -> Front:
    """nginx with the pool configuration `berth ctl reconfigure` renders, over `hosts`."""
    nginx = require_binary("nginx", "nginx")
    config = front_config(root, hosts, public_url, port)
    cert, key = checks.tls_paths(config)
    ctl.make_self_signed(cert, key, "127.0.0.1")
    prefix = ctl.nginx_prefix(config)
    prefix.mkdir(parents=True, exist_ok=True)
    (root / "log").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(ctl.render_nginx(config, user="root"))
    subprocess.run(
        [nginx, "-t", "-p", str(prefix), "-c", str(conf)], check=True, capture_output=True
    )
    with (root / "nginx.out").open("wb") as out:
        proc = subprocess.Popen(
            [nginx, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
            stdout=out,
            stderr=out,
        )
    front = Front(public_url, proc, conf, root / "log")
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(front.url + "/-/health", verify=False, timeout=2)
            return front
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                front.stop()
                raise
            time.sleep(0.05)


def make_user(cluster: Cluster, name: str, role: str = "reader", ns: str = "team") -> str:
    """A local user with `role` in `ns` (made through the first host); returns their password."""
    password = f"{name}-password-{uuid.uuid4().hex[:6]}"
    with cluster.hosts[0].client() as api:
        made = api.post("/api/v1/users", json={"name": name, "password": password})
        assert made.status_code == 201, made.text
        if api.get(f"/api/v1/namespaces/{ns}").status_code == 404:
            assert api.post("/api/v1/namespaces", json={"name": ns}).status_code == 201
        member = api.put(f"/api/v1/namespaces/{ns}/members/{name}", json={"role": role})
        assert member.status_code == 200, member.text
    return password


def leaders(host: Host) -> list[int]:
    """Generations under which a process of `host` became the jobs leader (all its runs)."""
    return [int(generation) for generation, _ in LEADING.findall(host.log())]


SCALING = Path(__file__).resolve().parents[2] / "docs" / "scaling.md"


@dataclass
class Balancer:
    """HAProxy in front of the hosts, with the manual's example configuration (docs/scaling.md)."""

    url: str
    proc: subprocess.Popen[bytes]
    config: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)  # soft stop: finish what is in flight
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def haproxy_config(hosts: list[Host], port: int, pem: Path) -> str:
    """The HAProxy example of docs/scaling.md, bound to loopback `port`, with `pem` and `hosts`."""
    found = re.search(r"HAProxy, with active checks.*?```\n(.*?)```", SCALING.read_text(), re.S)
    assert found is not None, "docs/scaling.md has no HAProxy example"
    text = found.group(1)
    text = text.replace(
        "bind :443 ssl crt /etc/haproxy/registry.pem", f"bind 127.0.0.1:{port} ssl crt {pem}"
    )
    text = re.sub(r"\n    server host\d+ [^\n]*", "", text)
    servers = "".join(f"\n    server {h.name} {h.address}" for h in hosts)
    return text.rstrip("\n") + servers + "\n"


def start_haproxy(root: Path, hosts: list[Host], port: int) -> Balancer:
    haproxy = require_binary("haproxy", "haproxy")
    root.mkdir(parents=True, exist_ok=True)
    cert, key = root / "cert.pem", root / "key.pem"
    ctl.make_self_signed(cert, key, "127.0.0.1")
    pem = root / "registry.pem"
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    config = root / "haproxy.cfg"
    config.write_text(haproxy_config(hosts, port, pem))
    checked = subprocess.run(
        [haproxy, "-c", "-f", str(config)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with (root / "haproxy.out").open("wb") as out:
        proc = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=out, stderr=out)
    balancer = Balancer(f"https://127.0.0.1:{port}", proc, config)
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(balancer.url + "/-/health", verify=False, timeout=2)
            return balancer
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                balancer.stop()
                raise
            time.sleep(0.05)
