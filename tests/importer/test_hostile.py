"""Stores no registry would write, or that were tampered with: corrupt and mis-sized blobs, an
index missing a child, oversized links and manifests, names Berth refuses, a data file that is
a link to somewhere else. Each is reported, and nothing of it is stored or visible.

These run the importer in process over a store written by hand, into a real SQLite database
and filesystem store (the same ones `berth import` opens)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from appliance import config as settings
from appliance.errors import Unavailable
from appliance.importer.distribution import DistributionStore
from appliance.importer.report import Report
from appliance.importer.service import Importer, Options
from appliance.importer.target import open_target
from appliance.importer.tree import DirectoryTree
from appliance.oci import mediatypes as mt
from tests.importer.conftest import run_import
from tests.support.servers import unavailable


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class HandStore:
    """A Distribution storage tree written file by file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.v2 = root / "docker" / "registry" / "v2"

    def data(self, digest: str) -> Path:
        hexpart = digest.split(":", 1)[1]
        return self.v2 / "blobs" / "sha256" / hexpart[:2] / hexpart / "data"

    def blob(self, content: bytes, *, digest: str | None = None) -> dict[str, Any]:
        digest = digest or sha(content)
        path = self.data(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return {"mediaType": "application/octet-stream", "digest": digest, "size": len(content)}

    def link(self, path: Path, text: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text)

    def manifest(self, repo: str, doc: dict[str, Any] | bytes, tag: str | None = None) -> str:
        payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        digest = self.blob(payload)["digest"]
        base = self.v2 / "repositories" / repo / "_manifests"
        hexpart = digest.split(":", 1)[1]
        self.link(base / "revisions" / "sha256" / hexpart / "link", digest.encode())
        if tag is not None:
            self.link(base / "tags" / tag / "current" / "link", digest.encode())
        return digest

    def image(self, repo: str, tag: str, layers: list[dict[str, Any]]) -> str:
        config = self.blob(b'{"architecture":"amd64","os":"linux"}')
        config["mediaType"] = "application/vnd.oci.image.config.v1+json"
        for layer in layers:
            layer["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
        doc = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": config, "layers": layers}
        return self.manifest(repo, doc, tag)


async def run(tmp_path: Path, store: HandStore, **options: Any) -> tuple[Report, Any]:
    config = settings.load(None, overrides={"server.data_dir": str(tmp_path / "berth")}, environ={})
    target = await open_target(config)
    try:
        source = await DistributionStore.open(DirectoryTree(store.root), 1 << 20)
        report = await Importer(target.registry, source, Options(**options)).run()
        stored = await target.db.read(
            lambda tx: {
                "manifests": tx.scalar("SELECT COUNT(*) FROM manifests"),
                "blobs": tx.scalar("SELECT COUNT(*) FROM blobs"),
                "uploads": tx.scalar("SELECT COUNT(*) FROM uploads"),
            }
        )
    finally:
        target.db.close()
    return report, stored


def outcomes(report: Report) -> dict[str, tuple[str, str]]:
    return {f"{i.repository}:{i.reference}": (i.outcome, i.reason) for i in report.items}


@pytest.mark.parametrize("link", [True, False], ids=["hard-links", "copies"])
async def test_damaged_images_are_reported_and_nothing_of_them_is_stored(
    tmp_path: Path, link: bool
) -> None:
    store = HandStore(tmp_path / "store")
    # A layer whose bytes are not those of its digest.
    corrupt = store.blob(b"tampered", digest=sha(b"original"))
    corrupt["size"] = len(b"tampered")
    store.image("team/corrupt", "1", [corrupt])
    # A layer whose size is not the one its manifest declares.
    short = store.blob(b"twelve bytes")
    short["size"] = 10
    store.image("team/short", "1", [short])
    # An index listing a manifest the repository does not hold.
    child = store.image("team/elsewhere", "1", [store.blob(b"child layer")])
    index = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [{"mediaType": mt.OCI_MANIFEST, "digest": child, "size": 1}],
    }
    store.manifest("team/index", index, "1")
    # A tag "link" far larger than a digest, and a manifest larger than manifests.max_size.
    store.link(
        store.v2 / "repositories/team/biglink/_manifests/tags/1/current/link", b"sha256:" * 100
    )
    store.manifest("team/huge", b'{"schemaVersion": 2, "pad": "' + b"x" * (1 << 20) + b'"}', "1")
    # A data file that is a symbolic link to a file outside the store.
    outside = tmp_path / "outside"
    outside.write_bytes(b"not the layer")
    pointer = store.blob(b"the real layer")
    store.data(pointer["digest"]).unlink()
    store.data(pointer["digest"]).symlink_to(outside)
    pointer["size"] = len(b"not the layer")
    store.image("team/symlink", "1", [pointer])
    # Names Berth refuses: a repository folder in capitals, a tag no client could push.
    store.image("Team/app", "1", [store.blob(b"layer of a bad name")])
    store.image("team/tags", "-x", [store.blob(b"layer of a bad tag")])

    report, stored = await run(tmp_path, store, link=link)
    found = outcomes(report)
    assert found["team/corrupt:1"][0] == "broken"
    assert "corrupt in the source" in found["team/corrupt:1"][1]
    assert found["team/short:1"] == (
        "broken",
        f"blob {short['digest']} holds 12 bytes, its manifest says 10",
    )
    assert found["team/index:1"][0] == "broken"
    assert f"lists manifest {child}" in found["team/index:1"][1]
    assert found["team/biglink:1"][0] == "broken"
    assert "is not a link" in found["team/biglink:1"][1]
    assert found["team/huge:1"][0] == "broken"
    assert "manifests.max_size" in found["team/huge:1"][1]
    assert found["team/symlink:1"][0] == "broken"
    assert found["Team/app:*"][0] == "skipped"
    assert found["team/tags:-x"][0] == "skipped"
    assert found["team/elsewhere:1"][0] == "imported"  # the one good image
    assert not report.ok
    assert report.blobs.linked == (2 if link else 0)
    assert report.blobs.copied == (0 if link else 2)
    # Only the good image is stored: its manifest, config and layer; no upload is left.
    assert stored == {"manifests": 1, "blobs": 2, "uploads": 0}
    files = [p for p in (tmp_path / "berth" / "storage").rglob("*") if p.is_file()]
    assert len(files) == 2
    assert outside.read_bytes() == b"not the layer"


async def test_not_a_distribution_store(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(Unavailable) as e:
        await DistributionStore.open(DirectoryTree(tmp_path / "empty"), 1 << 20)
    assert "is not a Distribution store" in e.value.message
    # The v2 folder itself is accepted as well as the storage root.
    store = HandStore(tmp_path / "root")
    store.image("a", "1", [store.blob(b"x")])
    for root in (store.root, store.v2):
        found = await DistributionStore.open(DirectoryTree(root), 1 << 20)
        assert await found.repositories() == ["a"]


def test_root_over_a_data_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        unavailable("needs root")
    data = tmp_path / "berth"
    data.mkdir()
    os.chown(data, 65534, 65534)
    store = HandStore(tmp_path / "store")
    store.image("a", "1", [store.blob(b"x")])
    refused = run_import(data, "distribution", str(store.root))
    assert refused.code == 2
    assert "run the import as that user" in refused.stderr
    assert not (data / "berth.db").exists()
