"""The single executable (`make dist`): runs with no Python, no venv and an empty environment."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.packaging.conftest import record
from tests.packaging.helpers import start_command
from tests.support.clients import Skopeo
from tests.support.servers import ADMIN, ADMIN_PASSWORD


def _scan_report(url: str, repository: str, digest: str) -> dict[str, Any]:
    """The image's scan report, once the leader's scan job has written it (up to 60 s)."""
    query = urllib.parse.urlencode({"repository": repository, "digest": digest})
    request = urllib.request.Request(f"{url}/api/v1/scan/reports?{query}")
    token = base64.b64encode(f"{ADMIN}:{ADMIN_PASSWORD}".encode()).decode()
    request.add_header("authorization", f"Basic {token}")
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                report: dict[str, Any] = json.loads(r.read())
                return report
        except urllib.error.HTTPError as e:
            if e.code != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.5)


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
    # And nothing else: no PATH, no venv. Scans run often, to see the scan worker (the
    # executable starting itself) read the pushed image.
    env = {"BERTH_ADMIN_PASSWORD": ADMIN_PASSWORD, "BERTH_SCAN_INTERVAL": "0.5"}
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
        report = _scan_report(server.url, "smoke/busybox", digest)
        assert report["status"] == "ok", report
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
