"""Who may read a real Berth's data on the host: a new install is closed to other users (data
directory 0700 or 0750, files 0600 or 0640), an install made with looser modes is tightened
at start (logged), `berth ctl doctor` reports what is still open and `--fix` closes it all."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.server.helpers import AUTH, client_for, push_image
from tests.support.servers import berth_command, start_berth, unavailable

OPEN_TO_OTHERS = 0o027  # any access for other users, or writing for the group


def loose_paths(root: Path) -> list[str]:
    """Every path at or below `root` with a mode open to other users."""
    out = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) & OPEN_TO_OTHERS:
            out.append(f"{path.relative_to(root.parent)} {stat.S_IMODE(mode):04o}")
    return out


def test_a_new_install_is_closed_to_other_users(tmp_path: Path) -> None:
    data = tmp_path / "new" / "data"
    # start_berth makes its data directory itself (umask 022: 0755); the last --data-dir wins,
    # so Berth makes this one, as it would on a first start.
    server = start_berth(tmp_path / "helper", env=AUTH, args=["--data-dir", str(data)])
    try:
        with client_for(server) as client:
            push_image(client, "team/app", "v1", b"a private layer")
    finally:
        assert server.stop() == 0, server.log()[-3000:]
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert (data / "berth.db").exists()
    assert any((data / "storage").rglob("*")), "no blob was stored"
    assert loose_paths(data) == []
    assert "tightened" not in server.log()  # nothing was open: nothing to report


def test_an_older_install_is_tightened_at_start_and_by_doctor_fix(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_berth(data, env=AUTH)
    try:
        with client_for(server) as client:
            push_image(client, "team/app", "v1", b"a private layer")
    finally:
        assert server.stop() == 0
    # As an older Berth left it (umask 022): everything readable by any local user.
    for path in [data, *data.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)

    server = start_berth(data, env=AUTH)
    try:
        with client_for(server) as client:
            assert client.get("/v2/team/app/manifests/v1").status_code == 200
    finally:
        assert server.stop() == 0
    log = server.log()
    assert "tightened" in log
    assert f"{data / 'berth.db'}: 0644 -> 0640" in log
    assert f"{data}: 0755 -> 0750" in log
    # What governs access is closed; a blob deep inside is still 0644 but out of reach.
    # (The signing keys are in the database, sealed with the secret: no `keys/` any more.)
    top = [data, data / "berth.db", data / "secret", data / "storage"]
    assert all(not stat.S_IMODE(p.stat().st_mode) & OPEN_TO_OTHERS for p in top)
    assert loose_paths(data) != []

    config = tmp_path / "berth.toml"
    config.write_text(f'[server]\ndata_dir = "{data}"\n')
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    doctor = subprocess.run(
        [*berth_command(), "ctl", "doctor", "--fix", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert "tightened" in doctor.stdout, doctor.stdout + doctor.stderr
    assert "[  ok] privacy:" in doctor.stdout, doctor.stdout
    assert loose_paths(data) == []


def test_doctor_reports_an_open_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "secret").write_bytes(b"x" * 32)
    (data / "secret").chmod(0o644)
    data.chmod(0o755)
    config = tmp_path / "berth.toml"
    config.write_text(f'[server]\ndata_dir = "{data}"\n')
    doctor = subprocess.run(
        [*berth_command(), "ctl", "doctor", "--config", str(config)],
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)},
        check=False,
    )
    assert f"[warn] privacy: {data} is open to other users (0755)" in doctor.stdout
    assert f"[warn] privacy: {data / 'secret'} is open to other users (0644)" in doctor.stdout
    assert "berth ctl doctor --fix" in doctor.stdout
    assert stat.S_IMODE(data.stat().st_mode) == 0o755  # a doctor without --fix changes nothing


def test_tightening_works_where_proc_is_not_mounted(tmp_path: Path) -> None:
    """A chroot or a bare container may have no /proc, through which glibc changes a mode
    without following a link: Python then refuses (NotImplementedError), and `berth serve`
    of an upgraded install in such a root stopped at its first start. Run for real in a mount
    namespace without /proc."""
    if os.geteuid() != 0:
        unavailable("a mount namespace (unshare) needs root")
    loose = tmp_path / "loose"
    loose.write_text("a secret")
    loose.chmod(0o644)
    shared = tmp_path / "shared"
    shared.write_text("another program's file")
    shared.chmod(0o644)
    link = tmp_path / "link"
    link.symlink_to(shared)  # a link is never changed, nor what it points at
    script = (
        "import sys; from pathlib import Path; from appliance.filemodes import tighten; "
        "changed, failed = tighten([Path(p) for p in sys.argv[1:]]); "
        "print(len(changed), len(failed))"
    )
    without_proc = 'umount -l /proc && test ! -e /proc/self && exec "$0" "$@"'
    unshare = ["unshare", "--mount", "--propagation", "private", "--fork", "sh", "-c"]
    run = subprocess.run(
        [*unshare, without_proc, sys.executable, "-c", script, str(loose), str(link)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1", "0"]
    assert stat.S_IMODE(loose.stat().st_mode) == 0o640
    assert stat.S_IMODE(shared.stat().st_mode) == 0o644
