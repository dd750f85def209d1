"""Fixtures of the scanning tests: the in-process registry of the API tests, and a real
Debian image built offline (the cached debootstrap root of the packaging tests, one layer
made by umoci)."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from appliance.server import Services, open_services
from tests.api.conftest import (  # noqa: F401 (fixtures)
    FakeClock,
    app,
    cheap_password_hashing,
    client,
    clock,
    data_dir,
    make_config,
)
from tests.packaging.conftest import _debootstrap_tarball
from tests.support.servers import require_binary


@pytest.fixture(scope="session")
def debian_layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An OCI layout with one gzip layer holding a Debian 12 minbase root, built by umoci from
    the cached debootstrap root; and the root's dpkg database, unpacked next to it."""
    umoci = require_binary("umoci", "umoci")
    tarball = _debootstrap_tarball()
    work = tmp_path_factory.mktemp("debian-image")
    layout = work / "layout"
    subprocess.run([umoci, "init", "--layout", str(layout)], check=True)
    subprocess.run([umoci, "new", "--image", f"{layout}:bookworm"], check=True)
    subprocess.run(
        [umoci, "raw", "add-layer", "--image", f"{layout}:bookworm", str(tarball)], check=True
    )
    root = work / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "-xf", str(tarball), "./var/lib/dpkg"], check=True)
    return layout, root


@pytest.fixture(params=["sqlite", "postgresql"])
async def services(
    request: pytest.FixtureRequest,
    data_dir: Path,  # noqa: F811 (the fixture imported above)
    clock: FakeClock,  # noqa: F811
) -> AsyncIterator[Services]:
    """The in-process registry on each metadata dialect."""
    overrides: dict[str, str] = {}
    if request.param == "postgresql":
        make: Callable[[], dict[str, str]] = request.getfixturevalue("postgres_metadata")
        overrides["metadata.url"] = make()["BERTH_METADATA_URL"]
    opened = await open_services(make_config(data_dir, **overrides), clock)
    try:
        yield opened
    finally:
        opened.close()
