"""Run the real registry clients (skopeo, podman, docker, the ORAS SDK) with private state.

Each wrapper is thin: it builds the command line, runs the real tool, and raises `ToolError`
with the tool's stderr when it fails. Nothing a test does leaks into the machine's shared state
or into another test:

- skopeo and podman remember which registry already holds which blob in a "blob info cache"
  (`/var/lib/containers/cache/blob-info-cache-v1.boltdb` when run as root) and use it to mount a
  blob from another repository instead of uploading it. Every skopeo and podman call here runs
  in its own mount namespace (`unshare --mount`) with a private, empty directory bind-mounted
  over `/var/lib/containers/cache`, so each push uploads what the test means it to upload.
  A private `HOME` does not move the cache for root; `test_skopeo.py` proves the isolation.
- podman gets its own `--root`, `--runroot`, `--tmpdir` and auth file.
- docker talks to a private `dockerd` (`start_dockerd`) on its own socket, with its own
  `DOCKER_CONFIG` per client.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import oras.client
import oras.oci

from tests.support.images import (
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    BuiltImage,
    Descriptor,
    canonical_json,
    sha256_bytes,
)
from tests.support.servers import require_binary

BLOB_INFO_CACHE_DIR = Path("/var/lib/containers/cache")
BLOB_INFO_CACHE_FILE = "blob-info-cache-v1.boltdb"
TIMEOUT = 600.0  # seconds for one client command; the large-layer tests stay far below this
DIGEST = r"sha256:[0-9a-f]{64}"


class ToolError(RuntimeError):
    """A client command exited non-zero; `stderr` holds what the tool said."""

    def __init__(self, cmd: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        said = (stderr.strip() or stdout.strip())[-4000:]
        super().__init__(f"{' '.join(self.cmd)} exited {returncode}:\n{said}")


@dataclass(frozen=True)
class Output:
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


def run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    timeout: float = TIMEOUT,
    cwd: Path | None = None,
    shown: Sequence[str] | None = None,
) -> Output:
    """Run `cmd` and return its output; raise `ToolError` with its stderr unless it exits 0.

    `shown` is the command to name in the error, when `cmd` wraps it (as `unshare` does).
    """
    proc = subprocess.run(  # noqa: PLW1510 - the exit code is checked below, with stderr
        list(cmd), input=input, capture_output=True, env=env, timeout=timeout, cwd=cwd
    )
    stderr = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        stdout = proc.stdout.decode(errors="replace")
        raise ToolError(shown or cmd, proc.returncode, stdout, stderr)
    return Output(proc.stdout, stderr)


def with_private_blob_cache(cmd: Sequence[str], cache_dir: Path) -> list[str]:
    """`cmd`, run in a new mount namespace where `cache_dir` is the blob info cache directory."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    script = (
        f'mkdir -p {BLOB_INFO_CACHE_DIR} && mount --bind "$0" {BLOB_INFO_CACHE_DIR} && exec "$@"'
    )
    unshare = require_binary("unshare", "util-linux")
    namespace = [unshare, "--mount", "--propagation", "private"]
    return [*namespace, "sh", "-c", script, str(cache_dir), *cmd]


def private_env(home: Path, **extra: str) -> dict[str, str]:
    """The current environment with HOME and the XDG directories moved under `home`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DOCKER_", "REGISTRY_AUTH_FILE", "CONTAINERS_", "XDG_"))
    }
    dirs = {
        "HOME": home,
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_DATA_HOME": home / ".local" / "share",
        "XDG_RUNTIME_DIR": home / "run",
    }
    for key, path in dirs.items():
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        env[key] = str(path)
    env.update(extra)
    return env


def is_registry(ref: str) -> bool:
    return ref.startswith("docker://")


# --- skopeo ---------------------------------------------------------------------------------


@dataclass
class Skopeo:
    """skopeo with TLS verification off towards the registry and a fresh blob info cache per call.

    Each call gets a new numbered cache directory under `state`, so no call remembers what an
    earlier one pushed; pass `cache=` to share one cache between calls on purpose.
    """

    state: Path
    exe: str = field(default_factory=lambda: require_binary("skopeo", "skopeo"))
    _seq: Iterator[int] = field(default_factory=itertools.count, repr=False)

    def __post_init__(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        self.env = private_env(self.state / "home", REGISTRY_AUTH_FILE=str(self.auth_file))

    @property
    def auth_file(self) -> Path:
        return self.state / "auth.json"

    def new_cache(self) -> Path:
        return self.state / f"cache-{next(self._seq):03d}"

    def run(
        self,
        *args: str,
        cache: Path | None = None,
        debug: bool = False,
        input: bytes | None = None,
    ) -> Output:
        cmd = [self.exe, *(["--debug"] if debug else []), *args]
        wrapped = with_private_blob_cache(cmd, cache or self.new_cache())
        return run(wrapped, env=self.env, input=input, shown=cmd)

    def copy(
        self,
        src: str,
        dst: str,
        *,
        all: bool = False,
        preserve_digests: bool = True,
        creds: str | None = None,
        extra: Sequence[str] = (),
        cache: Path | None = None,
        debug: bool = False,
    ) -> Output:
        """`skopeo copy src dst`, TLS verification off on the registry side(s).

        With `preserve_digests` (the default) skopeo refuses to change a manifest on the way:
        a copy that would change a digest fails loudly instead.
        """
        args = ["copy", "--retry-times", "0"]
        if is_registry(src):
            args.append("--src-tls-verify=false")
            if creds:
                args += ["--src-creds", creds]
        if is_registry(dst):
            args.append("--dest-tls-verify=false")
            if creds:
                args += ["--dest-creds", creds]
        if all:
            args.append("--all")
        if preserve_digests:
            args.append("--preserve-digests")
        return self.run(*args, *extra, src, dst, cache=cache, debug=debug)

    def push(self, image: BuiltImage, dst: str, **kwargs: Any) -> str:
        """Copy `image` (with every child, if it is an index) to `dst`; returns the digest."""
        digest_file = self.state / f"digest-{next(self._seq):03d}"
        all_ = bool(image.child_manifests)
        self.copy(image.ref, dst, all=all_, extra=["--digestfile", str(digest_file)], **kwargs)
        return digest_file.read_text().strip()

    def pull_to_layout(self, src: str, layout: Path, tag: str, **kwargs: Any) -> Path:
        """Copy `src` into the OCI layout `layout` under `tag`; returns `layout`."""
        self.copy(src, f"oci:{layout}:{tag}", **kwargs)
        return layout

    def inspect_raw(self, ref: str, *, creds: str | None = None) -> bytes:
        """The manifest (or index) bytes exactly as the registry serves them."""
        creds_args = ["--creds", creds] if creds else []
        return self.run("inspect", "--raw", "--tls-verify=false", *creds_args, ref).stdout

    def list_tags(self, repo_ref: str, *, creds: str | None = None) -> list[str]:
        creds_args = ["--creds", creds] if creds else []
        out = self.run("list-tags", "--tls-verify=false", *creds_args, repo_ref).text
        return list(json.loads(out)["Tags"] or [])

    def delete(self, ref: str, *, creds: str | None = None) -> None:
        creds_args = ["--creds", creds] if creds else []
        self.run("delete", "--tls-verify=false", *creds_args, ref)

    def login(self, registry: str, username: str, password: str) -> None:
        self.run(
            "login",
            "--tls-verify=false",
            "--username",
            username,
            "--password-stdin",
            registry,
            input=password.encode(),
        )

    def logout(self, registry: str) -> None:
        self.run("logout", registry)


# --- podman ---------------------------------------------------------------------------------


@dataclass
class Podman:
    """podman with its own image storage (vfs) under `state`, and a fresh blob info cache per call.

    Only pull, push, save, inspect, login and logout are meant to work: `podman run` does not
    in this sandbox (setrlimit is refused).
    """

    state: Path
    exe: str = field(default_factory=lambda: require_binary("podman", "podman"))
    _seq: Iterator[int] = field(default_factory=itertools.count, repr=False)

    def __post_init__(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        self.env = private_env(self.state / "home", REGISTRY_AUTH_FILE=str(self.auth_file))
        if not self.auth_file.exists():  # podman insists that REGISTRY_AUTH_FILE exists
            self.auth_file.write_text('{"auths": {}}\n')
        self.global_args = [
            "--root",
            str(self.state / "root"),
            # podman refuses a runroot path over 50 characters; this one is relative to `state`.
            "--runroot",
            "runroot",
            "--tmpdir",
            str(self.state / "tmp"),
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ]

    @property
    def auth_file(self) -> Path:
        return self.state / "auth.json"

    def run(self, *args: str, input: bytes | None = None) -> Output:
        cmd = [self.exe, *self.global_args, *args]
        cache = self.state / f"cache-{next(self._seq):03d}"
        wrapped = with_private_blob_cache(cmd, cache)
        return run(wrapped, env=self.env, input=input, cwd=self.state, shown=cmd)

    def pull(self, ref: str) -> str:
        """Pull `ref` (`oci:<layout>:<tag>`, or `host/repo:tag` from a registry); returns the ID."""
        tls = [] if ref.startswith(("oci:", "dir:")) else ["--tls-verify=false"]
        return self.run("pull", "--quiet", *tls, ref).text.strip().splitlines()[-1]

    def tag(self, image: str, name: str) -> None:
        self.run("tag", image, name)

    def push(self, image: str, dest: str) -> str:
        """Push local `image` to `dest` (`host/repo:tag`); returns the manifest digest."""
        digest_file = self.state / f"digest-{next(self._seq):03d}"
        self.run(
            "push", "--quiet", "--tls-verify=false", "--digestfile", str(digest_file), image, dest
        )
        return digest_file.read_text().strip()

    def inspect(self, image: str) -> dict[str, Any]:
        info: list[dict[str, Any]] = json.loads(self.run("image", "inspect", image).stdout)
        return info[0]

    def images(self) -> list[dict[str, Any]]:
        listing: list[dict[str, Any]] = json.loads(self.run("images", "--format", "json").stdout)
        return listing

    def save(self, image: str, dest: Path, fmt: str = "oci-dir") -> Path:
        self.run("save", "--quiet", "--format", fmt, "--output", str(dest), image)
        return dest

    def login(self, registry: str, username: str, password: str) -> None:
        self.run(
            "login",
            "--tls-verify=false",
            "--username",
            username,
            "--password-stdin",
            registry,
            input=password.encode(),
        )

    def logout(self, registry: str) -> None:
        self.run("logout", registry)


# --- docker ---------------------------------------------------------------------------------


def _docker_ping(sock: Path) -> bool:
    """True when the daemon behind `sock` answers `GET /_ping` with 200."""

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(2)
            self.sock.connect(str(sock))

    conn = UnixConnection("docker")
    try:
        conn.request("GET", "/_ping")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


@dataclass
class DockerDaemon:
    """A private `dockerd` (vfs storage, no iptables, no bridge) on its own unix socket."""

    state: Path
    proc: subprocess.Popen[bytes]

    @property
    def socket(self) -> Path:
        return self.state / "d.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log_path(self) -> Path:
        return self.state / "dockerd.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, config_dir: Path) -> Docker:
        """A docker CLI talking to this daemon, with its credentials kept in `config_dir`."""
        return Docker(self, config_dir)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then wait (dockerd stops its own containerd); SIGKILL after `timeout`."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._unmount_leftovers()
        return int(self.proc.returncode)

    def _unmount_leftovers(self) -> None:
        # dockerd bind-mounts its data root onto itself; a killed daemon leaves that behind,
        # and the test's temporary directory could then not be removed.
        root = str(self.state.resolve())
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        targets = [line.split()[1] for line in mounts if len(line.split()) > 1]
        for target in sorted((t for t in targets if t.startswith(root)), reverse=True):
            subprocess.run(["umount", "-l", target], check=False, capture_output=True)


def start_dockerd(state: Path, timeout: float = 60) -> DockerDaemon:
    """Start a private dockerd with everything under `state`; wait until it answers /_ping."""
    exe = require_binary("dockerd", "docker.io")
    state.mkdir(parents=True, exist_ok=True)
    sock = state / "d.sock"
    cmd = [
        exe,
        "--storage-driver=vfs",
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
        f"--data-root={state / 'root'}",
        f"--exec-root={state / 'exec'}",
        f"--pidfile={state / 'd.pid'}",
        f"--host=unix://{sock}",
    ]
    env = private_env(state / "home")
    with (state / "dockerd.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
    daemon = DockerDaemon(state, proc)
    deadline = time.monotonic() + timeout
    while not (sock.exists() and _docker_ping(sock)):
        if proc.poll() is not None or time.monotonic() > deadline:
            daemon.stop()
            raise RuntimeError(f"dockerd did not start:\n{daemon.log()[-4000:]}")
        time.sleep(0.05)
    return daemon


@dataclass
class Docker:
    """The docker CLI against one private daemon, with a private `DOCKER_CONFIG`."""

    daemon: DockerDaemon
    config_dir: Path
    exe: str = field(default_factory=lambda: require_binary("docker", "docker.io"))

    def __post_init__(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.env = private_env(
            self.config_dir / "home",
            DOCKER_HOST=self.daemon.host,
            DOCKER_CONFIG=str(self.config_dir),
        )

    def run(self, *args: str, input: bytes | None = None) -> Output:
        return run([self.exe, *args], env=self.env, input=input)

    def load(self, archive: Path) -> str:
        """`docker load -i archive`; returns the loaded image's name."""
        out = self.run("load", "--input", str(archive)).text
        m = re.search(r"Loaded image(?: ID)?: (\S+)", out)
        if not m:
            raise AssertionError(f"docker load printed no image name:\n{out}")
        return m.group(1)

    def tag(self, image: str, name: str) -> None:
        self.run("tag", image, name)

    def push(self, ref: str) -> str:
        """`docker push ref`; returns the manifest digest the registry was given."""
        out = self.run("push", ref).text
        m = re.search(rf"digest: ({DIGEST}) size: \d+", out)
        if not m:
            raise AssertionError(f"docker push printed no digest:\n{out}")
        return m.group(1)

    def pull(self, ref: str) -> str:
        """`docker pull ref`; returns the manifest digest it pulled."""
        out = self.run("pull", ref).text
        m = re.search(rf"Digest: ({DIGEST})", out)
        if not m:
            raise AssertionError(f"docker pull printed no digest:\n{out}")
        return m.group(1)

    def rmi(self, *refs: str) -> None:
        self.run("rmi", *refs)

    def inspect(self, ref: str) -> dict[str, Any]:
        info: list[dict[str, Any]] = json.loads(self.run("image", "inspect", ref).stdout)
        return info[0]

    def has_image(self, ref: str) -> bool:
        try:
            self.run("image", "inspect", ref)
        except ToolError:
            return False
        return True

    def run_container(self, image: str, *args: str) -> str:
        """`docker run --rm --network none image args...`; returns its stdout."""
        return self.run("run", "--rm", "--network", "none", image, *args).text

    def save(self, ref: str, dest: Path) -> Path:
        self.run("save", "--output", str(dest), ref)
        return dest

    def login(self, registry: str, username: str, password: str) -> None:
        self.run(
            "login", "--username", username, "--password-stdin", registry, input=password.encode()
        )

    def logout(self, registry: str) -> None:
        self.run("logout", registry)


# --- ORAS -----------------------------------------------------------------------------------


def _check(response: Any) -> None:
    """Raise unless a `requests` response from the SDK is a success."""
    if response.status_code not in (200, 201, 202):
        raise ToolError(
            [response.request.method, response.url], response.status_code, "", response.text
        )


class Oras:
    """The ORAS Python SDK against one registry over plain HTTP, plus raw referrers queries."""

    def __init__(self, host: str, credentials: tuple[str, str] | None = None) -> None:
        self.host = host
        if credentials is None:
            self.sdk = oras.client.OrasClient(hostname=host, insecure=True)
        else:
            # Basic on every request: oras-py's token backend keeps the first bearer token it
            # gets and retries with it even when a later request needs a wider scope (it never
            # asks again); Berth takes Basic on /v2 directly.
            self.sdk = oras.client.OrasClient(hostname=host, insecure=True, auth_backend="basic")
            self.sdk.auth.set_basic_auth(*credentials)
        self.http = httpx.Client(base_url=f"http://{host}", timeout=30, auth=credentials)

    def close(self) -> None:
        self.sdk.session.close()
        self.http.close()

    def __enter__(self) -> Oras:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def push(
        self,
        repo: str,
        tag: str,
        files: Sequence[tuple[Path, str]],
        *,
        config_media_type: str,
        subject: Descriptor | None = None,
    ) -> str:
        """The SDK's own `push`: `files` as (path, media type) layers, an empty config of
        `config_media_type`, and `subject` if given. Returns the manifest digest.

        The config file is written next to the first file, as `.oras-config.json`.
        """
        config = files[0][0].parent / ".oras-config.json"
        config.write_bytes(b"{}")
        response = self.sdk.push(
            target=f"{self.host}/{repo}:{tag}",
            files=[f"{path}:{media_type}" for path, media_type in files],
            manifest_config=f"{config}:{config_media_type}",
            subject=(
                oras.oci.Subject(subject.media_type, subject.digest, subject.size)
                if subject
                else None
            ),
            disable_path_validation=True,
            quiet=True,
        )
        return str(response.headers["Docker-Content-Digest"])

    def push_artifact(
        self,
        repo: str,
        tag: str,
        files: Sequence[tuple[Path, str]],
        *,
        artifact_type: str,
        subject: Descriptor,
    ) -> tuple[str, bytes]:
        """An OCI 1.1 artifact: `artifactType` set, the empty config, `subject` attached.

        Blobs go up through the SDK; the manifest is serialised here so its bytes (returned
        with its digest) are known exactly.
        """
        container = self.sdk.get_container(f"{self.host}/{repo}:{tag}")
        empty = files[0][0].parent / ".oras-empty.json"
        empty.write_bytes(b"{}")
        config = Descriptor(OCI_EMPTY, sha256_bytes(b"{}"), 2)
        layers = []
        for path, media_type in files:
            layer = oras.oci.NewLayer(str(path), media_type=media_type)
            layer["annotations"] = {"org.opencontainers.image.title": path.name}
            _check(self.sdk.upload_blob(str(path), container, layer))
            layers.append(layer)
        _check(self.sdk.upload_blob(str(empty), container, config.to_json()))
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": config.to_json(),
            "layers": layers,
            "subject": subject.to_json(),
        }
        body = canonical_json(manifest)
        response = self.http.put(
            f"/v2/{repo}/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST}
        )
        response.raise_for_status()
        digest = sha256_bytes(body)
        if response.headers.get("Docker-Content-Digest", digest) != digest:
            raise AssertionError(f"registry says {response.headers} for a manifest of {digest}")
        return digest, body

    def pull(self, repo: str, ref: str, outdir: Path) -> list[Path]:
        """The SDK's `pull`: every layer saved under its title in `outdir`."""
        sep = "@" if ref.startswith("sha256:") else ":"
        files = self.sdk.pull(target=f"{self.host}/{repo}{sep}{ref}", outdir=str(outdir))
        return [Path(f) for f in files]

    def manifest(self, repo: str, ref: str) -> dict[str, Any]:
        sep = "@" if ref.startswith("sha256:") else ":"
        result: dict[str, Any] = self.sdk.get_manifest(f"{self.host}/{repo}{sep}{ref}")
        return result

    def referrers(self, repo: str, digest: str, artifact_type: str | None = None) -> httpx.Response:
        """`GET /v2/<repo>/referrers/<digest>` as raw HTTP (the SDK has no referrers call)."""
        params = {"artifactType": artifact_type} if artifact_type else None
        return self.http.get(
            f"/v2/{repo}/referrers/{digest}", params=params, headers={"Accept": OCI_INDEX}
        )
