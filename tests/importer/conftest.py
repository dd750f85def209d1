"""Fixtures for `berth import`: a store written by the reference registry (Debian's
`docker-registry`, Distribution 2.8.2) through real skopeo pushes, with the damage real stores
carry (a deleted tag, a blob removed by hand, a manifest whose bytes are gone, a schema 1
image, a manifest a later push untagged), and helpers to run the command and read its report.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.clients import Skopeo
from tests.support.images import BuiltImage, ImageCache, compare_images
from tests.support.servers import (
    ADMIN,
    ADMIN_PASSWORD,
    Server,
    berth_command,
    require_binary,
    start_berth,
    start_reference_registry,
)

CREDS = f"{ADMIN}:{ADMIN_PASSWORD}"
SCHEMA1 = "compatibility:\n  schema1:\n    enabled: true\n"


@dataclass
class ReferenceStore:
    """A Distribution storage root and what importing it must give."""

    root: Path
    good: dict[str, BuiltImage] = field(default_factory=dict)  # "repo:tag" → the image
    digests: dict[str, str] = field(default_factory=dict)  # "repo:tag" → manifest digest
    broken: dict[str, str] = field(default_factory=dict)  # "repo:tag" → part of the reason
    skipped: dict[str, str] = field(default_factory=dict)
    untagged: dict[str, str] = field(default_factory=dict)  # repo → untagged digest

    @property
    def good_repositories(self) -> set[str]:
        return {ref.split(":", 1)[0] for ref in self.good}

    def blob_digests(self) -> set[str]:
        """Every config and layer of the good images, each once."""
        return {d for image in self.good.values() for d in image.blob_digests}

    def data_file(self, digest: str) -> Path:
        hexpart = digest.split(":", 1)[1]
        return self.root / f"docker/registry/v2/blobs/sha256/{hexpart[:2]}/{hexpart}/data"


def blob_path(root: Path, digest: str) -> Path:
    hexpart = digest.split(":", 1)[1]
    return root / f"docker/registry/v2/blobs/sha256/{hexpart[:2]}/{hexpart}/data"


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> ImageCache:
    require_binary("busybox", "busybox-static")
    return ImageCache(tmp_path_factory.mktemp("import-images"))


@pytest.fixture(scope="session")
def reference_store(tmp_path_factory: pytest.TempPathFactory, images: ImageCache) -> ReferenceStore:
    """Built once per session; tests only read it (the importer never writes to its source)."""
    tmp = tmp_path_factory.mktemp("reference-store")
    registry = start_reference_registry(tmp / "registry", extra_config=SCHEMA1)
    store = ReferenceStore(registry.data_dir or tmp)
    skopeo = Skopeo(tmp / "skopeo")
    host = registry.host
    try:

        def push(image: BuiltImage, ref: str, **kwargs: Any) -> str:
            digest = skopeo.push(image, f"docker://{host}/{ref}", **kwargs)
            return digest

        good = {
            "team/busybox:1.35": images.busybox(),
            "team/busybox:stable": images.busybox(),
            "team/schema2:v1": images.docker_schema2(),
            "multi:latest": images.multi_arch(),
        }
        # A tag pushed twice: the first image stays in the store, untagged.
        store.untagged["team/app/layers"] = push(images.busybox(), "team/app/layers:1")
        good["team/app/layers:1"] = images.many_layers(20)
        for ref, image in good.items():
            store.digests[ref] = push(image, ref)
            store.good[ref] = image
        # A deleted tag: the manifest's revision link goes with it.
        push(images.large_layer(70_001), "team/gone:1")
        skopeo.delete(f"docker://{host}/team/gone:1")
        # A blob removed by hand.
        broken = images.large_layer(70_002)
        push(broken, "team/broken:1")
        missing_blob = broken.blob_digests[1]
        # A dangling manifest: its revision is linked, its bytes are gone.
        dangling = images.large_layer(70_003)
        dangling_digest = push(dangling, "team/dangling:1")
        # A Docker schema 1 image (the reference converts it on push, and signs it).
        skopeo.copy(
            images.docker_schema2().ref,
            f"docker://{host}/old/schema1:v1",
            preserve_digests=False,
            extra=["--format", "v2s1"],
        )
    finally:
        registry.stop()
    blob_path(store.root, missing_blob).unlink()
    blob_path(store.root, dangling_digest).unlink()
    store.broken = {
        "team/broken:1": f"blob {missing_blob} is missing",
        "team/dangling:1": f"the bytes of manifest {dangling_digest} are missing",
    }
    store.skipped = {"old/schema1:v1": "schema 1"}
    return store


@dataclass
class ImportRun:
    code: int
    report: dict[str, Any]
    stdout: str
    stderr: str

    def items(self, outcome: str | None = None) -> dict[str, dict[str, Any]]:
        """The report's items by `repository:reference` (only `outcome`, when given)."""
        return {
            f"{i['repository']}:{i['reference']}": i
            for i in self.report["items"]
            if outcome is None or i["outcome"] == outcome
        }

    @property
    def blobs(self) -> dict[str, Any]:
        blobs: dict[str, Any] = self.report["blobs"]
        return blobs


def berth_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env["BERTH_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    env.update(extra)
    return env


def run_import(data: Path, *args: str, env: dict[str, str] | None = None) -> ImportRun:
    """`berth import ARGS --data-dir DATA --json`, its exit code and parsed report."""
    proc = subprocess.run(
        [*berth_command(), "import", *args, "--data-dir", str(data), "--json"],
        capture_output=True,
        text=True,
        env=env or berth_env(),
        timeout=600,
        check=False,
    )
    try:
        report = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except ValueError:
        pytest.fail(f"not a JSON report:\n{proc.stdout}\n{proc.stderr}")
    return ImportRun(proc.returncode, report, proc.stdout, proc.stderr)


def database(data: Path) -> sqlite3.Connection:
    return sqlite3.connect(data / "berth.db")


def tags_in(data: Path) -> dict[str, str]:
    """Every tag Berth holds, `repository:tag` → manifest digest (read through a side door)."""
    with database(data) as db:
        rows = db.execute(
            "SELECT r.name, t.name, m.digest FROM tags t JOIN repositories r ON r.id = "
            "t.repository_id JOIN manifests m ON m.id = t.manifest_id"
        ).fetchall()
    return {f"{r}:{t}": d for r, t, d in rows}


def repositories_with_manifests(data: Path) -> set[str]:
    """The repositories the catalog lists (those holding a manifest)."""
    with database(data) as db:
        rows = db.execute(
            "SELECT name FROM repositories r WHERE EXISTS "
            "(SELECT 1 FROM manifests m WHERE m.repository_id = r.id)"
        ).fetchall()
    return {r[0] for r in rows}


def stored_files(data: Path) -> dict[str, tuple[int, float]]:
    """Every file under Berth's data directory but the database: path → (inode, mtime)."""
    out = {}
    for path in sorted(data.rglob("*")):
        if path.is_file() and not path.name.startswith("berth.db"):
            st = path.stat()
            out[str(path.relative_to(data))] = (st.st_ino, st.st_mtime)
    return out


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    started: list[Server] = []

    def start(data: Path, **env: str) -> Server:
        server = start_berth(data, env={"BERTH_ADMIN_PASSWORD": ADMIN_PASSWORD, **env})
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def pulled_identical(
    skopeo: Skopeo, server: Server, ref: str, image: BuiltImage, tmp: Path
) -> None:
    """`ref` pulls from Berth (digests preserved) as exactly `image`."""
    layout = tmp / f"pulled-{ref.replace('/', '-').replace(':', '-')}"
    shutil.rmtree(layout, ignore_errors=True)
    skopeo.copy(
        f"docker://{server.host}/{ref}",
        f"oci:{layout}:{image.tag}",
        all=bool(image.child_manifests),
        creds=CREDS,
    )
    assert compare_images(image.layout, image.tag, layout, image.tag) == [], ref
