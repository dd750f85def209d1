"""Advisory imports (OSV directory and zip, the Debian security tracker) and matching: exactly
the expected findings, boundary versions included; incremental, versioned imports; a malformed
file reported without stopping the import."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

from appliance.metadata.db import Database
from appliance.scan import sbom, vulndb
from appliance.scan.layers import read_image
from appliance.scan.service import match
from tests.scan import fixtures as fx

NOW = 1_800_000_000.0


def image_sbom() -> bytes:
    layer = fx.gzip_layer(
        {
            "etc/os-release": fx.OS_RELEASE_DEBIAN,
            "var/lib/dpkg/status": fx.DPKG_STATUS,
            "usr/lib/python3/dist-packages/requests-2.31.0.dist-info/METADATA": fx.PY_METADATA,
            "app/node_modules/lodash/package.json": fx.npm_package("lodash", "4.17.20"),
            "app/server": fx.go_binary(
                "go1.21.3", "example.com/server", [("golang.org/x/net", "v0.17.0")]
            ),
        },
        modes={"app/server": 0o755},
    )
    contents = read_image([("l0", lambda: io.BytesIO(layer))])
    return sbom.build("sha256:" + "b" * 64, "team/app", contents)


def osv_records() -> dict[str, dict[str, object]]:
    go_semver = fx.osv("GO-2024-0001", "Go", "golang.org/x/net", [])
    go_semver["affected"][0]["ranges"] = [  # type: ignore[index]
        {"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": "0.17.0"}]}
    ]
    go_hit = fx.osv("GO-2024-0002", "Go", "golang.org/x/net", [])
    go_hit["affected"][0]["ranges"] = [  # type: ignore[index]
        {"type": "SEMVER", "events": [{"introduced": "0.10.0"}, {"fixed": "0.23.0"}]}
    ]
    return {
        # Fixed in exactly the installed version: not vulnerable.
        "DEBIAN-CVE-2023-0001": fx.osv(
            "DEBIAN-CVE-2023-0001",
            "Debian:12",
            "openssl",
            [{"introduced": "0"}, {"fixed": "3.0.11-1~deb12u2"}],
            severity=fx.CRITICAL,
        ),
        "DEBIAN-CVE-2023-0002": fx.osv(
            "DEBIAN-CVE-2023-0002",
            "Debian:12",
            "openssl",
            [{"introduced": "0"}, {"fixed": "3.0.13-1~deb12u1"}],
            severity=fx.CRITICAL,
        ),
        # Another release of Debian: not this image.
        "DEBIAN-CVE-2023-0003": fx.osv(
            "DEBIAN-CVE-2023-0003",
            "Debian:11",
            "openssl",
            [{"introduced": "0"}, {"fixed": "9.9"}],
        ),
        # last_affected is itself affected.
        "DEBIAN-CVE-2023-0004": fx.osv(
            "DEBIAN-CVE-2023-0004",
            "Debian:12",
            "glibc",
            [{"introduced": "0"}, {"last_affected": "2.36-9+deb12u3"}],
            severity=fx.MEDIUM,
        ),
        # introduced is itself affected; the epoch counts.
        "DEBIAN-CVE-2023-0005": fx.osv(
            "DEBIAN-CVE-2023-0005",
            "Debian:12",
            "zlib",
            [{"introduced": "1:1.2.13.dfsg-1"}, {"fixed": "1:1.2.13.dfsg-2"}],
        ),
        "DEBIAN-CVE-2023-0006": fx.osv(
            "DEBIAN-CVE-2023-0006",
            "Debian:12",
            "zlib",
            [{"introduced": "0"}, {"fixed": "1.2.14-1"}],  # no epoch: older than 1:...
        ),
        "PYSEC-2023-0001": fx.osv(
            "PYSEC-2023-0001", "PyPI", "requests", [{"introduced": "2.3.0"}, {"fixed": "2.31.0"}]
        ),
        "GHSA-9wx4-h78v-vm56": fx.osv(
            "GHSA-9wx4-h78v-vm56",
            "PyPI",
            "Requests",
            [{"introduced": "0"}, {"fixed": "2.32.0"}],
            database_specific={"severity": "MODERATE"},
        ),
        "GHSA-35jh-r3h4-6jhm": fx.osv(
            "GHSA-35jh-r3h4-6jhm",
            "npm",
            "lodash",
            [{"introduced": "0"}, {"fixed": "4.17.21"}],
            database_specific={"severity": "HIGH"},
        ),
        "GO-2024-0001": go_semver,
        "GO-2024-0002": go_hit,
    }


TRACKER = {
    "openssl": {
        "CVE-2024-1111": {
            "description": "openssl overflow",
            "releases": {
                "bookworm": {
                    "status": "resolved",
                    "fixed_version": "3.0.11-1~deb12u3",
                    "urgency": "high",
                },
                "bullseye": {"status": "open", "urgency": "high"},
            },
        },
        "CVE-2024-2222": {
            "releases": {"bookworm": {"status": "resolved", "fixed_version": "0"}},
        },
    },
    "glibc": {
        "CVE-2024-3333": {
            "releases": {"bookworm": {"status": "open", "urgency": "medium"}},
        },
    },
}

EXPECTED = {
    ("DEBIAN-CVE-2023-0002", "libssl3", "3.0.11-1~deb12u2", "3.0.13-1~deb12u1", "critical"),
    ("DEBIAN-CVE-2023-0004", "libc6", "2.36-9+deb12u3", None, "medium"),
    ("DEBIAN-CVE-2023-0005", "zlib1g", "1:1.2.13.dfsg-1", "1:1.2.13.dfsg-2", "unknown"),
    ("GHSA-9wx4-h78v-vm56", "requests", "2.31.0", "2.32.0", "medium"),
    ("GHSA-35jh-r3h4-6jhm", "lodash", "4.17.20", "4.17.21", "high"),
    ("GO-2024-0002", "golang.org/x/net", "v0.17.0", "0.23.0", "unknown"),
}
EXPECTED_TRACKER = {
    ("CVE-2024-1111", "libssl3", "3.0.11-1~deb12u2", "3.0.11-1~deb12u3", "high"),
    ("CVE-2024-3333", "libc6", "2.36-9+deb12u3", None, "medium"),
}


def _write_osv_dir(root: Path, records: dict[str, dict[str, object]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, record in records.items():
        (root / f"{name}.json").write_text(json.dumps(record))
    return root


def _findings(db: Database) -> set[tuple[str, str, str, str | None, str]]:
    index = db.run_sync_read(vulndb.load_index)
    return {
        (f.advisory_id, f.package, f.installed, f.fixed, f.severity)
        for f in match(index, image_sbom())
    }


def test_osv_and_debian_tracker_give_exactly_the_expected_findings(
    db: Database, tmp_path: Path
) -> None:
    folder = _write_osv_dir(tmp_path / "osv", osv_records())
    result = vulndb.import_path(db.run_sync_write, folder, NOW, "test")
    assert (result.added, result.changed, result.errors) == (len(osv_records()), 0, [])
    assert _findings(db) == EXPECTED

    tracker = tmp_path / "debian.json"
    tracker.write_text(json.dumps(TRACKER))
    result = vulndb.import_path(db.run_sync_write, tracker, NOW, "test")
    assert result.added == 2  # CVE-2024-2222 never affected bookworm: nothing to match
    assert _findings(db) == EXPECTED | EXPECTED_TRACKER


def test_imports_are_versioned_and_incremental(db: Database, tmp_path: Path) -> None:
    records = osv_records()
    archive = tmp_path / "osv.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name, record in records.items():
            z.writestr(f"{name}.json", json.dumps(record))
    first = vulndb.import_path(db.run_sync_write, archive, NOW, "test")
    version = db.run_sync_read(vulndb.current_version)
    assert version == first.import_id

    again = vulndb.import_path(db.run_sync_write, archive, NOW + 1, "test")
    assert (again.added, again.changed, again.unchanged) == (0, 0, len(records))
    assert db.run_sync_read(vulndb.current_version) == version  # nothing changed

    # The npm advisory is fixed later than thought; another is withdrawn.
    records["GHSA-35jh-r3h4-6jhm"]["affected"][0]["ranges"][0]["events"][1] = {  # type: ignore[index]
        "fixed": "4.17.22"
    }
    records["GO-2024-0002"]["withdrawn"] = "2024-05-01T00:00:00Z"
    folder = _write_osv_dir(tmp_path / "update", records)
    third = vulndb.import_path(db.run_sync_write, folder, NOW + 2, "test")
    assert (third.added, third.changed, third.removed) == (0, 1, 1)
    assert db.run_sync_read(vulndb.current_version) == third.import_id
    expected = {f for f in EXPECTED if f[0] != "GO-2024-0002"}
    expected = {
        (a, p, i, "4.17.22" if a == "GHSA-35jh-r3h4-6jhm" else f, s) for a, p, i, f, s in expected
    }
    assert _findings(db) == expected
    state = db.run_sync_read(vulndb.status)
    assert state["version"] == third.import_id
    assert state["advisories"] == len(records) - 1
    assert state["by_ecosystem"]["deb"] == 6
    assert [i["import"] for i in state["imports"]] == [
        third.import_id,
        again.import_id,
        first.import_id,
    ]


def test_a_malformed_advisory_file_is_reported_and_the_rest_imported(
    db: Database, tmp_path: Path
) -> None:
    folder = _write_osv_dir(tmp_path / "osv", osv_records())
    (folder / "broken.json").write_text('{"id": "OSV-BROKEN", "affected": [')
    (folder / "wrong.json").write_text(json.dumps({"id": "OSV-WRONG", "affected": "all"}))
    result = vulndb.import_path(db.run_sync_write, folder, NOW, "test")
    assert result.added == len(osv_records())
    assert len(result.errors) == 2
    assert any("broken.json: not JSON" in e for e in result.errors)
    assert any("wrong.json: 'affected' must be a list" in e for e in result.errors)
    assert _findings(db) == EXPECTED
