"""The README's quick start works as written: its skopeo commands, and its docker and podman
commands, taken verbatim from their code blocks, sign in with the first admin's generated
password and push (and pull) an image against a real `berth serve` on a fresh data directory.

Only the address is substituted (the README's `127.0.0.1:5000` becomes the port the server
bound); the data directory is `berth-data` in the working directory, as `make run` has it. The
image `./my-layout` that the README asks for is built offline here (the README's way to get one
reads Docker Hub), and so is the `alpine:latest` the docker and podman lines push."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.support.clients import (
    Podman,
    Skopeo,
    private_env,
    start_dockerd,
    with_private_blob_cache,
)
from tests.support.images import build_busybox, compare_images
from tests.support.servers import require_binary, start_berth

README = Path(__file__).resolve().parents[1] / "README.md"
ADDRESS = "127.0.0.1:5000"


def _block(marker: str) -> list[str]:
    """The lines of the README's first code block that contains `marker`."""
    blocks = re.findall(r"^```\n(.*?)^```$", README.read_text(), re.S | re.M)
    block = next(b for b in blocks if marker in b)
    return [line for line in block.splitlines() if line.strip()]


def quick_start_commands() -> list[str]:
    """The lines of the README's first code block that signs in with skopeo."""
    return _block("skopeo login")


def _shell(
    line: str, cwd: Path, home: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # Each command in a mount namespace of its own with an empty blob info cache, and HOME (so
    # skopeo's auth file) private to the test: nothing is shared with other tests or users.
    cmd = with_private_blob_cache(["bash", "-c", line], home / "cache")
    return subprocess.run(
        cmd,
        cwd=cwd,
        env=env if env is not None else private_env(home),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_quick_start_pushes_and_pulls_as_written(tmp_path: Path) -> None:
    require_binary("skopeo", "skopeo")
    commands = quick_start_commands()
    assert [c.split()[:2] for c in commands] == [
        ["skopeo", "login"],
        ["skopeo", "copy"],
        ["skopeo", "copy"],
    ]
    assert all(ADDRESS in c for c in commands)
    pushed = build_busybox(tmp_path / "my-layout", tag="latest")
    # No BERTH_ADMIN_PASSWORD: the password is generated, as on a newcomer's first start.
    server = start_berth(tmp_path / "berth-data", env={"BERTH_ADMIN_PASSWORD": ""})
    try:
        address = server.url.removeprefix("http://")
        assert (tmp_path / "berth-data" / "initial-admin-password").is_file()
        # Without the sign-in line the push is refused: that line is what makes it work.
        refused = _shell(commands[1].replace(ADDRESS, address), tmp_path, tmp_path / "anon")
        assert refused.returncode != 0
        assert "401" in refused.stderr or "unauthorized" in refused.stderr.lower(), refused.stderr
        for line in commands:
            done = _shell(line.replace(ADDRESS, address), tmp_path, tmp_path / "newcomer")
            assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
    finally:
        server.stop()
    assert compare_images(pushed.layout, "latest", tmp_path / "pulled", "1") == []


def test_the_docker_and_podman_lines_push_as_written(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    require_binary("docker", "docker.io")
    require_binary("skopeo", "skopeo")
    commands = _block("docker login")
    assert [c.split()[:2] for c in commands] == [
        ["docker", "login"],
        ["docker", "tag"],
        ["docker", "push"],
        ["podman", "login"],
        ["podman", "tag"],
        ["podman", "push"],
    ]
    assert all(ADDRESS in c for c in commands)
    # The README's `alpine:latest`, in each engine: the offline busybox image under that name.
    image = build_busybox(tmp_path / "image", tag="latest")
    archive = tmp_path / "alpine.tar"
    skopeo = Skopeo(tmp_path / "skopeo")
    skopeo.copy(image.ref, f"docker-archive:{archive}:alpine:latest", preserve_digests=False)
    podman = Podman(tmp_path / "podman")
    podman.tag(podman.pull(f"oci:{image.layout}:latest"), "alpine:latest")
    # `podman` on the commands' PATH is podman with that private storage (its options need the
    # storage folder as the working directory; the shell has opened the password file by then).
    shims = tmp_path / "bin"
    shims.mkdir()
    shim = shims / "podman"
    real = shlex.join([podman.exe, *podman.global_args])
    shim.write_text(f'#!/bin/sh\ncd {shlex.quote(str(podman.state))} && exec {real} "$@"\n')
    shim.chmod(0o755)
    podman_env = {**podman.env, "PATH": f"{shims}:{podman.env['PATH']}"}
    # A short path: containerd's sockets under it must fit in a unix socket address.
    dockerd = start_dockerd(tmp_path_factory.mktemp("dockerd"))
    server = None
    try:
        docker = dockerd.client(tmp_path / "docker-config")
        assert docker.load(archive) == "alpine:latest"
        server = start_berth(tmp_path / "berth-data", env={"BERTH_ADMIN_PASSWORD": ""})
        address = server.url.removeprefix("http://")

        def run(line: str) -> subprocess.CompletedProcess[str]:
            env = docker.env if line.startswith("docker ") else podman_env
            home = Path(env["HOME"])
            return _shell(line.replace(ADDRESS, address), tmp_path, home, env)

        # Without the sign-in line docker's push is refused: that line is what makes it work.
        assert run(commands[1]).returncode == 0
        refused = run(commands[2])
        assert refused.returncode != 0
        said = (refused.stdout + refused.stderr).lower()
        # (docker fetches an anonymous token, which grants no push: "requested access ... denied")
        assert "requested access to the resource is denied" in said or "unauthorized" in said, said
        for line in commands:
            done = run(line)
            assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        password = (tmp_path / "berth-data" / "initial-admin-password").read_text().strip()
        tags = skopeo.list_tags(f"docker://{address}/team/app", creds=f"admin:{password}")
        assert tags == ["1"]
    finally:
        if server is not None:
            server.stop()
        dockerd.stop()
