"""The README's quick start works as written: its skopeo commands, taken verbatim from the code
block, sign in with the first admin's generated password and push and pull an image against a
real `berth serve` on a fresh data directory.

Only the address is substituted (the README's `127.0.0.1:5000` becomes the port the server
bound); the data directory is `berth-data` in the working directory, as `make run` has it. The
image `./my-layout` that the README asks for is built offline here (the README's way to get one
reads Docker Hub)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.support.clients import private_env, with_private_blob_cache
from tests.support.images import build_busybox, compare_images
from tests.support.servers import require_binary, start_berth

README = Path(__file__).resolve().parents[1] / "README.md"
ADDRESS = "127.0.0.1:5000"


def quick_start_commands() -> list[str]:
    """The lines of the README's first code block that signs in with skopeo."""
    blocks = re.findall(r"^```\n(.*?)^```$", README.read_text(), re.S | re.M)
    block = next(b for b in blocks if "skopeo login" in b)
    return [line for line in block.splitlines() if line.strip()]


def _shell(line: str, cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    # Each command in a mount namespace of its own with an empty blob info cache, and HOME (so
    # skopeo's auth file) private to the test: nothing is shared with other tests or users.
    cmd = with_private_blob_cache(["bash", "-c", line], home / "cache")
    return subprocess.run(
        cmd,
        cwd=cwd,
        env=private_env(home),
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
