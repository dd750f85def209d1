"""The single executable (`make dist`): runs with no Python, no venv and an empty environment."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

from tests.packaging.conftest import record
from tests.packaging.helpers import start_command
from tests.support.clients import Skopeo
from tests.support.servers import ADMIN, ADMIN_PASSWORD


def test_version_prints_build_info(berth_exe: Path, tmp_path: Path):
    out = subprocess.run(
        [str(berth_exe), "--version"],
        env={},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("berth ")
    assert any(line.startswith("commit: ") for line in lines)
    assert any(line.startswith("built: ") for line in lines)
    assert any(line.startswith("python: 3.") and "bundled" in line for line in lines)
    assert any(line.startswith("glibc: needs 2.") for line in lines)


def test_serves_push_and_pull_with_an_empty_environment(berth_exe: Path, tmp_path: Path, images):
    """`env -i berth serve` from a directory with no venv: push, pull, SIGTERM exits 0."""
    work = tmp_path / "work"
    work.mkdir()
    data = work / "data"
    cmd = [str(berth_exe), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data)]
    env = {"BERTH_ADMIN_PASSWORD": ADMIN_PASSWORD}  # and nothing else: no PATH, no venv
    skopeo = Skopeo(tmp_path / "skopeo")
    creds = f"{ADMIN}:{ADMIN_PASSWORD}"
    image = images.busybox()

    server, first = start_command(cmd, env=env, cwd=work, log_path=tmp_path / "first.log")
    try:
        digest = skopeo.push(image, f"docker://{server.host}/smoke/busybox:1", creds=creds)
        # The console's templates and static files are inside the executable.
        with urllib.request.urlopen(server.url + "/signin", timeout=10) as r:
            assert r.status == 200
            assert "Sign in to Berth" in r.read().decode()
        with urllib.request.urlopen(server.url + "/static/console.css", timeout=10) as r:
            assert r.status == 200
    finally:
        assert server.stop() == 0, server.log()[-4000:]
    assert "received SIGTERM" in server.log()

    # A restart on the data just written: the start-up an operator sees.
    server, again = start_command(cmd, env=env, cwd=work, log_path=tmp_path / "second.log")
    try:
        pulled = skopeo.pull_to_layout(
            f"docker://{server.host}/smoke/busybox@{digest}", tmp_path / "pulled", "1", creds=creds
        )
        assert (pulled / "index.json").exists()
    finally:
        assert server.stop() == 0, server.log()[-4000:]
    # Start-up time is a target for `make bench` (bench/packaging.py), not a test assertion:
    # on a loaded CI machine it says more about the neighbours than about Berth.
    record(
        f"dist/berth start-up to first answered /v2/: new install {first:.2f} s, "
        f"restart {again:.2f} s"
    )
