"""A real Berth with real clients: skopeo pushes the offline-built Debian image, the leader's
scan job attaches its SBOM (seen through the referrers API and pulled with the ORAS SDK),
`berth vulndb import` and `berth scan` work on the live data directory, and skopeo's pull is
refused by a namespace policy; with blobs on the filesystem and on Azure Blob Storage."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support.clients import Oras, Skopeo, ToolError
from tests.support.servers import berth_command, require_binary, start_berth

CYCLONEDX = "application/vnd.cyclonedx+json"


def _installed(root: Path) -> dict[str, str]:
    out = subprocess.run(
        [
            require_binary("dpkg-query", "dpkg"),
            f"--admindir={root / 'var/lib/dpkg'}",
            "-W",
            "-f=${db:Status-Abbrev}\t${Package}\t${Version}\n",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {
        line.split("\t")[1]: line.split("\t")[2]
        for line in out.splitlines()
        if line.startswith("ii")
    }


def _osv(adv_id: str, name: str, fixed: str) -> dict[str, object]:
    return {
        "schema_version": "1.6.0",
        "id": adv_id,
        "modified": "2024-01-01T00:00:00Z",
        "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
        "affected": [
            {
                "package": {"ecosystem": "Debian:12", "name": name},
                "ranges": [
                    {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": fixed}]}
                ],
            }
        ],
    }


@pytest.mark.parametrize("storage", ["filesystem", "azure"])
def test_scan_on_a_real_server(
    debian_layout: tuple[Path, Path],
    tmp_path: Path,
    storage: str,
    request: pytest.FixtureRequest,
) -> None:
    """Scanning reads the layers through the blob store and writes the SBOM through it: on the
    filesystem and on Azure Blob Storage (Azurite)."""
    layout, root = debian_layout
    installed = _installed(root)
    data = tmp_path / "data"
    store_env: dict[str, str] = {}
    if storage == "azure":
        azurite = request.getfixturevalue("azurite")
        store_env = azurite.env(azurite.new_container("scan"))
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")} | store_env
    server = start_berth(data, env={"BERTH_SCAN_INTERVAL": "0.2", **store_env})
    creds = server.credentials
    assert creds is not None
    api = httpx.Client(base_url=f"http://{server.host}", auth=creds, timeout=30)
    try:
        assert api.post("/api/v1/namespaces", json={"name": "team"}).status_code == 201
        skopeo = Skopeo(tmp_path / "skopeo")
        target = f"docker://{server.host}/team/debian:12"
        skopeo.copy(f"oci:{layout}:bookworm", target, creds=":".join(creds))
        digest = json.loads(skopeo.inspect_raw(target, creds=":".join(creds)))
        manifest_digest = api.head(
            "/v2/team/debian/manifests/12",
            headers={"accept": "application/vnd.oci.image.manifest.v1+json"},
        ).headers["docker-content-digest"]
        assert digest["layers"]

        # The leader's job scans the pushed image and attaches the SBOM as a referrer.
        with Oras(server.host, creds) as oras:
            deadline = time.monotonic() + 120
            listed: list[dict[str, object]] = []
            while not listed and time.monotonic() < deadline:
                listed = oras.referrers("team/debian", manifest_digest).json()["manifests"]
                if not listed:
                    time.sleep(0.2)
            assert [d["artifactType"] for d in listed] == [CYCLONEDX], server.log()[-3000:]
            files = oras.pull("team/debian", str(listed[0]["digest"]), tmp_path / "sbom")
        document = json.loads(files[0].read_bytes())
        debs = {
            (c["name"], c["version"])
            for c in document["components"]
            if c.get("purl", "").startswith("pkg:deb/")
        }
        assert debs == set(installed.items())

        # Advisories imported with the CLI while Berth runs; `berth scan` reports them.
        osv = tmp_path / "osv"
        osv.mkdir()
        fixed_later = installed["gzip"] + "+berth1"
        (osv / "a.json").write_text(json.dumps(_osv("DEBIAN-CVE-2099-0001", "gzip", fixed_later)))
        (osv / "b.json").write_text(
            json.dumps(_osv("DEBIAN-CVE-2099-0002", "glibc", installed["libc6"]))  # boundary
        )
        env_args = ["--data-dir", str(data)]
        done = subprocess.run(
            [*berth_command(), "vulndb", "import", str(osv), *env_args],
            capture_output=True,
            text=True,
            check=False,
            env=cli_env,
        )
        assert done.returncode == 0, done.stderr
        assert "2 added" in done.stdout
        assert "matched 1 stored image(s)" in done.stdout
        done = subprocess.run(
            [*berth_command(), "scan", "team/debian:12", "--cached", "--json", *env_args],
            capture_output=True,
            text=True,
            check=False,
            env=cli_env,
        )
        assert done.returncode == 0, done.stderr
        (report,) = json.loads(done.stdout)["reports"]
        assert [(f["advisory"], f["package"], f["fixed"]) for f in report["findings"]] == [
            ("DEBIAN-CVE-2099-0001", "gzip", fixed_later)
        ]
        table = subprocess.run(
            [
                *berth_command(),
                "scan",
                "team/debian:12",
                "--cached",
                "--fail-on",
                "high",
                *env_args,
            ],
            capture_output=True,
            text=True,
            check=False,
            env=cli_env,
        )
        assert table.returncode == 3
        assert "DEBIAN-CVE-2099-0001" in table.stdout
        assert "critical" in table.stdout

        # A policy refuses the pull to a real client, naming the finding.
        resp = api.put("/api/v1/namespaces/team/scan-policy", json={"block_severity": "high"})
        assert resp.status_code == 200, resp.text
        # Every worker sees the change before the PUT is answered (change stamps).
        for _ in range(4):
            assert api.get("/v2/team/debian/manifests/12").status_code == 403
        with pytest.raises(ToolError) as refused:
            skopeo.copy(target, f"oci:{tmp_path / 'pulled'}:x", creds=":".join(creds))
        assert "denied" in str(refused.value).lower()
    finally:
        api.close()
        code = server.stop()
    assert code == 0, server.log()[-3000:]
