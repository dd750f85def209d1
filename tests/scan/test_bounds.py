"""Hostile layers, written as the attacks: a small layer holding a dpkg database of 100,000
packages, a zip bomb, floods of files and whiteouts, an oversized database or tar header, a
layer that takes too long, a worker that hangs. Each is read up to a bound and the report says
what was cut; the serving process (this one: the registry runs in-process) never parses a
layer, so its memory stays flat whatever the layer holds."""

from __future__ import annotations

import io
import re
import sys
import tarfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import trio
from click.testing import CliRunner

from appliance.app import create_app
from appliance.cli import main
from appliance.scan.layers import Limits, read_image
from appliance.server import Services, open_services
from tests.api.conftest import FakeClock, api_client, make_config
from tests.api.oci import assert_error
from tests.console.test_sessions import sign_in
from tests.scan import fixtures as fx
from tests.scan.test_policy import debian_layer, import_advisories, push_layers

MiB = 1 << 20


def _layers(*blobs: bytes) -> list[tuple[str, Callable[[], BinaryIO]]]:
    return [(f"layer{i}", lambda b=b: io.BytesIO(b)) for i, b in enumerate(blobs)]


def peak_rss_reset() -> int:
    """Start measuring this process's peak resident memory afresh; returns the current RSS
    (bytes). Linux: writing 5 to clear_refs resets VmHWM."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") << 10


def peak_rss() -> int:
    """This process's peak resident memory (bytes) since `peak_rss_reset`."""
    return _status_kib("VmHWM") << 10


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert found is not None
    return int(found.group(1))


@asynccontextmanager
async def registry(
    data_dir: Path, clock: FakeClock, **overrides: Any
) -> AsyncIterator[tuple[Services, httpx.AsyncClient]]:
    config = make_config(data_dir, **overrides)
    services = await open_services(config, clock)
    try:
        app = create_app(services.registry, access=services.access, config=config)
        async with api_client(app) as c:
            yield services, c
    finally:
        services.close()


async def push_and_scan(
    services: Services, client: httpx.AsyncClient, repository: str, layers: list[bytes]
) -> tuple[str, int]:
    """Push an image of `layers` and let the scanner handle it; returns the image's digest
    and how much this process's peak memory grew meanwhile (bytes)."""
    digest = await push_layers(client, repository, "1", layers)
    assert services.scanner is not None
    before = peak_rss_reset()
    assert await services.scanner.run_queue() == 1
    return digest, peak_rss() - before


async def report_of(client: httpx.AsyncClient, repository: str, digest: str) -> dict[str, Any]:
    resp = await client.get(
        "/api/v1/scan/reports", params={"repository": repository, "digest": digest}
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def test_a_flood_of_packages_is_cut_and_the_serving_process_stays_small(
    data_dir: Path, clock: FakeClock
) -> None:
    """The layer of the finding: about 500 KiB of gzip holding a 7 MiB dpkg status of
    100,000 packages. It grew the serving process by 320 to 390 MiB for 23 to 57 s."""
    layer = fx.dpkg_flood_layer(100_000)
    assert len(layer) < 600 * 1024
    async with registry(data_dir, clock) as (services, client):
        digest, grown = await push_and_scan(services, client, "team/flood", [layer])
        report = await report_of(client, "team/flood", digest)
    assert report["status"] == "incomplete"
    assert report["error"].startswith("scan incomplete: layer sha256:")
    assert "more than 10000 packages in the image (scan.max_packages)" in report["error"]
    assert report["packages"] == 10_000  # what was read before the bound still counts
    # The serving process only stores and matches the SBOM of the packages kept.
    assert grown < 48 * MiB, f"the serving process grew by {grown / MiB:.0f} MiB"


async def test_a_zip_bomb_layer_is_cut_and_the_layers_above_still_count(
    data_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    """1 MiB of gzip that expands to 1 GiB under a Debian layer: the bomb is read up to the
    bound, the Debian layer whole; its findings count, and the pull policy refuses the image
    for them, and (when it refuses unscanned images) for having been read only in part."""
    bomb = fx.zip_bomb_layer(1024)
    assert len(bomb) < 2 * MiB
    async with registry(data_dir, clock, **{"scan.max_layer_bytes": 64 * MiB}) as (
        services,
        client,
    ):
        await client.post("/api/v1/namespaces", json={"name": "team"})
        digest, grown = await push_and_scan(services, client, "team/bomb", [bomb, debian_layer()])
        report = await report_of(client, "team/bomb", digest)
        assert report["status"] == "incomplete"
        assert "decompresses to more than 64 MiB (scan.max_layer_bytes)" in report["error"]
        assert report["packages"] == 4  # the Debian layer on top was read as usual
        assert grown < 32 * MiB, f"the serving process grew by {grown / MiB:.0f} MiB"
        (referrer,) = (await client.get(f"/v2/team/bomb/referrers/{digest}")).json()["manifests"]
        artifact = (await client.get(f"/v2/team/bomb/manifests/{referrer['digest']}")).json()
        sbom_digest = artifact["layers"][0]["digest"]
        document = (await client.get(f"/v2/team/bomb/blobs/{sbom_digest}")).json()
        assert document["compositions"] == [{"aggregate": "incomplete", "assemblies": [digest]}]

        await import_advisories(services, tmp_path / "osv", clock)
        report = await report_of(client, "team/bomb", digest)
        assert report["status"] == "incomplete"  # matched again, still incomplete
        assert report["findings"][0]["advisory"] == "DEBIAN-CVE-2023-0002"
        policy = {"block_severity": "critical", "unscanned": "allow"}
        await client.put("/api/v1/namespaces/team/scan-policy", json=policy)
        resp = await client.get("/v2/team/bomb/manifests/1")
        assert_error(resp, 403, "DENIED")
        assert "DEBIAN-CVE-2023-0002 (critical)" in resp.json()["errors"][0]["message"]
        # With that finding accepted, what decides is that the image was read only in part.
        resp = await client.put(
            "/api/v1/namespaces/team/scan-policy/exceptions/DEBIAN-CVE-2023-0002",
            json={"reason": "not reachable"},
        )
        assert resp.status_code in (200, 201), resp.text
        assert (await client.get("/v2/team/bomb/manifests/1")).status_code == 200
        policy = {"block_severity": "critical", "unscanned": "deny"}
        await client.put("/api/v1/namespaces/team/scan-policy", json=policy)
        resp = await client.get("/v2/team/bomb/manifests/1")
        assert_error(resp, 403, "DENIED")
        assert "has not been scanned whole (a bound cut it)" in resp.json()["errors"][0]["message"]

        # The console's report says what was cut, above the findings of what was read.
        client.auth = None
        cookie = (await sign_in(client)).cookies["berth_session"]
        page = await client.get(
            f"/r/team/bomb/-/vulnerabilities/{digest}",
            headers={"cookie": f"berth_session={cookie}"},
        )
        assert page.status_code == 200
        assert "scan incomplete: layer sha256:" in page.text
        assert "(scan.max_layer_bytes). The findings below are those of what was read." in page.text
        assert "DEBIAN-CVE-2023-0002" in page.text


async def test_a_scan_past_its_time_is_cut(data_dir: Path, clock: FakeClock) -> None:
    bomb = fx.zip_bomb_layer(4096)  # 4 GiB of zeros: far more than half a second of reading
    async with registry(data_dir, clock, **{"scan.timeout": 0.5}) as (services, client):
        digest = await push_layers(client, "team/slow", "1", [bomb])
        assert services.scanner is not None
        assert await services.scanner.run_queue() == 1
        report = await report_of(client, "team/slow", digest)
    assert report["status"] == "incomplete"
    assert "the scan ran out of time (scan.timeout)" in report["error"]


async def test_a_worker_that_hangs_is_killed(data_dir: Path, clock: FakeClock) -> None:
    async with registry(data_dir, clock, **{"scan.timeout": 0.5}) as (services, client):
        digest = await push_layers(client, "team/hang", "1", [debian_layer()])
        assert services.scanner is not None
        # Stands in for a worker stuck where it does not look at its deadline.
        hung = [sys.executable, "-c", "import time; time.sleep(120)"]
        services.scanner.worker = replace(services.scanner.worker, command=hung, grace=0.5)
        assert await services.scanner.run_queue() == 1
        report = await report_of(client, "team/hang", digest)
    assert report["status"] == "error"
    assert report["error"] == (
        "scan incomplete: the scan worker ran past scan.timeout (0.5 s) and was stopped"
    )


async def test_a_worker_out_of_memory_fails_only_its_scan(data_dir: Path, clock: FakeClock) -> None:
    """With the package bound lifted and the address space small, a flood of 300,000 packages
    exhausts the worker's memory: that image's scan fails (or, when memory ran out inside a
    layer, is cut), naming the memory; the next image is scanned as usual."""
    settings = {"scan.max_packages": 10_000_000, "scan.max_memory": 160 * MiB}
    async with registry(data_dir, clock, **settings) as (services, client):
        flood = await push_layers(client, "team/flood", "1", [fx.dpkg_flood_layer(300_000)])
        good = await push_layers(client, "team/good", "1", [debian_layer()])
        assert services.scanner is not None
        assert await services.scanner.run_queue() == 2
        flooded = await report_of(client, "team/flood", flood)
        fine = await report_of(client, "team/good", good)
    assert flooded["status"] in ("error", "incomplete")  # where memory ran out decides which
    assert "more memory than scan.max_memory" in flooded["error"]
    assert (fine["status"], fine["packages"]) == ("ok", 4)


def test_files_databases_and_headers_are_bounded() -> None:
    many = fx.gzip_layer({f"srv/f{i}": b"x" for i in range(50)})
    contents = read_image(_layers(many, debian_layer()), Limits(layer_files=20))
    assert contents.cuts == ["layer layer0: holds more than 20 files (scan.max_layer_files)"]
    assert len(contents.packages()) == 4

    big_db = fx.gzip_layer({"var/lib/dpkg/status": fx.DPKG_STATUS * 4})
    contents = read_image(_layers(big_db), Limits(db_bytes=1024))
    (cut,) = contents.cuts
    assert cut.startswith("var/lib/dpkg/status is ")
    assert cut.endswith("more than 1 KiB (scan.max_db_bytes): not read")
    assert contents.packages() == []

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("x" * 100)
        info.pax_headers = {"comment": "y" * (2 * MiB)}  # tarfile would read it whole
        tar.addfile(info, io.BytesIO(b""))
    contents = read_image(_layers(out.getvalue()))
    assert contents.cuts == ["layer layer0: a tar header extension of 2.0 MiB (more than 1 MiB)"]


def test_many_whiteouts_cost_one_lookup_each() -> None:
    """A layer of 20,000 whiteouts over a layer of 2,000 npm packages: each whiteout finds
    what it removes through the sorted index, not by a pass over every package."""
    lower = fx.gzip_layer(
        {
            f"app/m{i}/node_modules/p{i}/package.json": fx.npm_package(f"p{i}", "1.0.0")
            for i in range(2000)
        }
    )
    upper = fx.gzip_layer(
        {f"app/m{i}/.wh.node_modules": b"" for i in range(0, 2000, 2)}
        | {f"junk/.wh.f{i}": b"" for i in range(20_000)}
    )
    contents = read_image(_layers(lower, upper))
    assert contents.cuts == []
    assert len(contents.packages()) == 1000
    assert {p.name for p in contents.packages()} == {f"p{i}" for i in range(1, 2000, 2)}


def test_berth_scan_says_what_was_cut(data_dir: Path, clock: FakeClock) -> None:
    async def push() -> None:
        async with registry(data_dir, clock, **{"scan.enabled": False}) as (_services, client):
            await push_layers(client, "team/flood", "1", [fx.dpkg_flood_layer(500)])

    trio.run(push)
    env = {"BERTH_ADMIN_PASSWORD": "x", "BERTH_SCAN_MAX_PACKAGES": "100"}
    result = CliRunner().invoke(
        main, ["scan", "team/flood:1", "--data-dir", str(data_dir)], env=env
    )
    assert result.exit_code == 0, result.output
    first, second = result.stdout.splitlines()[:2]
    assert first.startswith("team/flood@sha256:")
    assert ": scan incomplete: layer sha256:" in first
    assert first.endswith(
        ": lists more than 100 packages in the image (scan.max_packages), the last read from "
        "var/lib/dpkg/status"
    )
    assert second.endswith(": 100 packages, 0 vulnerabilities (none)")
