"""A real upgrade with the packages, in a clean Debian 11 root (glibc 2.31, no systemd running).

The .deb of an earlier commit (EARLIER_COMMIT: the first with today's schema layout, built from
`git archive` by its own package.py, its executable built in the Debian 11 root) is installed
and takes pushes of several images; the current .deb is installed over it, and its
post-install step backs up, migrates and reconfigures; every image then comes back byte for
byte. The pre-upgrade backup exists and verifies. Installing the earlier .deb again (a
downgrade) is refused and changes nothing. Once on SQLite, once on PostgreSQL metadata.

The earlier package declares `libc6 (>= 2.35)`, its build machine's, although its executable
here is built in the Debian 11 root: it is installed with `--force-depends`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.metadata.db import migrations
from tests.packaging.conftest import EARLIER_COMMIT, package, record
from tests.packaging.helpers import start_command
from tests.support.clients import Skopeo
from tests.support.earlier import EARLIEST_SCHEMA
from tests.support.images import BuiltImage, ImageCache, compare_images
from tests.support.servers import ADMIN, ADMIN_PASSWORD, Server, require_binary

pytestmark = pytest.mark.slow

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
CONFIG = "/etc/berth/berth.toml"


def chroot(
    root: Path, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["chroot", str(root), *args],
        capture_output=True,
        text=True,
        env={"PATH": PATH, "LANG": "C.UTF-8", **(env or {})},
        check=False,
    )
    if check:
        assert result.returncode == 0, (
            f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


def serve_in(root: Path, log: Path, env: dict[str, str]) -> Server:
    cmd = ["chroot", "--userspec=berth:berth", str(root), "/usr/bin/berth", "serve"]
    cmd += ["--config", CONFIG]
    full = {
        "BERTH_SERVER_LISTEN": "127.0.0.1:0",
        "BERTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "PATH": PATH,
        **env,
    }
    server, _ = start_command(cmd, env=full, cwd=root.parent, log_path=log)
    return server


@pytest.fixture(scope="module")
def current_deb(portable_exe: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_binary("dpkg-deb", "dpkg")
    return package("deb", portable_exe, tmp_path_factory.mktemp("deb"))


def _images(tmp_path: Path) -> dict[str, BuiltImage]:
    require_binary("busybox", "busybox-static")
    cache = ImageCache(tmp_path / "images")
    return {
        "up/busybox:1": cache.busybox(),
        "up/schema2:1": cache.docker_schema2(),
        "up/multi:1": cache.multi_arch(),
        "up/layers:1": cache.many_layers(20),
    }


def _pull_all(
    skopeo: Skopeo, server: Server, images: dict[str, BuiltImage], into: Path, creds: str
) -> None:
    into.mkdir()
    for ref, image in images.items():
        layout = into / ref.replace("/", "-").replace(":", "-")
        skopeo.copy(
            f"docker://{server.host}/{ref}",
            f"oci:{layout}:{image.tag}",
            all=bool(image.child_manifests),
            creds=creds,
        )
        assert compare_images(image.layout, image.tag, layout, image.tag) == [], ref


def _upgrade(root: Path, earlier: Path, current: Path, tmp_path: Path, env: dict[str, str]) -> None:
    skopeo = Skopeo(tmp_path / "skopeo")
    creds = f"{ADMIN}:{ADMIN_PASSWORD}"
    images = _images(tmp_path)
    shutil.copy2(earlier, root / "tmp" / "earlier.deb")
    shutil.copy2(current, root / "tmp" / "current.deb")

    installed = chroot(root, "dpkg", "-i", "--force-depends", "/tmp/earlier.deb", env=env)
    assert f"schema version {EARLIEST_SCHEMA}" in installed.stdout, installed.stdout
    old = serve_in(root, tmp_path / "earlier.log", env)
    try:
        for ref, image in images.items():
            assert skopeo.push(image, f"docker://{old.host}/{ref}", creds=creds) == (
                image.manifest_digest
            )
    finally:
        assert old.stop() == 0, old.log()[-4000:]

    # The upgrade: the current package's post-install step backs up, then migrates.
    upgraded = chroot(root, "dpkg", "-i", "/tmp/current.deb", env=env)
    out = upgraded.stdout
    latest = migrations("sqlite")[-1].version
    assert f"upgrading schema {EARLIEST_SCHEMA} -> {latest}" in out, out
    assert "pre-upgrade backup " in out, out
    assert f"upgraded the schema from {EARLIEST_SCHEMA} to {latest}" in out, out
    shown = chroot(root, "berth", "--version").stdout
    assert "glibc: needs 2." in shown

    new = serve_in(root, tmp_path / "current.log", env)
    try:
        _pull_all(skopeo, new, images, tmp_path / "after-upgrade", creds)
    finally:
        assert new.stop() == 0, new.log()[-4000:]

    listed = json.loads(chroot(root, "berth", "backup", "list", "--config", CONFIG, "--json",
                               env=env).stdout)  # fmt: skip
    (backup,) = listed["backups"]
    assert backup["schema_version"] == EARLIEST_SCHEMA
    assert backup["blobs"] == len({b for i in images.values() for b in i.blob_digests})
    verified = chroot(root, "berth", "backup", "verify", backup["id"], "--config", CONFIG, env=env)
    assert verified.stdout.startswith(f"backup {backup['id']}: OK, "), verified.stdout
    owner = (root / "var/opt/berth/backups").stat().st_uid
    assert owner == int(chroot(root, "id", "-u", "berth").stdout), "the service owns its backups"
    status = chroot(root, "berth", "migrate", "--status", "--config", CONFIG, env=env).stdout
    version = shown.splitlines()[0].removeprefix("berth ")
    assert f"{latest:04d} " in status
    assert f"by Berth {version}" in status
    assert "up to date" in status

    # A downgrade: the earlier Berth refuses the newer schema; nothing changes.
    downgraded = chroot(
        root, "dpkg", "-i", "--force-depends", "/tmp/earlier.deb", env=env, check=False
    )
    assert downgraded.returncode != 0
    said = downgraded.stdout + downgraded.stderr
    assert f"schema version {latest}, newer than this Berth knows ({EARLIEST_SCHEMA})" in said
    chroot(root, "dpkg", "-i", "/tmp/current.deb", env=env)  # back to the current version
    again = serve_in(root, tmp_path / "again.log", env)
    try:
        _pull_all(skopeo, again, images, tmp_path / "after-downgrade", creds)
    finally:
        assert again.stop() == 0, again.log()[-4000:]


def test_deb_upgrade_on_sqlite(
    earlier_deb: Path, current_deb: Path, bullseye_root: Path, tmp_path: Path
) -> None:
    _upgrade(bullseye_root, earlier_deb, current_deb, tmp_path, {})
    record(f".deb upgrade from {EARLIER_COMMIT} on SQLite: done")


def test_deb_upgrade_on_postgresql(
    earlier_deb: Path,
    current_deb: Path,
    bullseye_root: Path,
    tmp_path: Path,
    postgres_database: Callable[[], str],
) -> None:
    url = postgres_database()  # on loopback: the chroot shares the network
    _upgrade(bullseye_root, earlier_deb, current_deb, tmp_path, {"BERTH_METADATA_URL": url})
    assert not (bullseye_root / "var/opt/berth/berth.db").exists(), "PostgreSQL held it all"
