"""The collector racing real pushes on a real server, with gc.delay 0 and untagged manifests
collected at once: several HTTP pushers (blob HEAD-then-skip like real clients, shared layers,
tag moves, tag and manifest deletes), skopeo pushing and pulling real images, and `berth gc`
run from the command line alongside the server's own collector.

A push may lose a race (MANIFEST_BLOB_UNKNOWN, then it is pushed again, as a client would);
nothing else may fail. Every acknowledged push is pulled back byte for byte while its tag
still points at it; at the end every tag serves exactly what was last acknowledged for it,
and once the collector has run nothing unreferenced is left: no manifest without a tag, no
blob no manifest uses, no access a repository does not need, no file without a row.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio

from appliance.config import SETTINGS
from tests.support.clients import Skopeo, ToolError
from tests.support.images import ImageCache, compare_images
from tests.support.servers import Server, berth_command, require_binary, start_berth

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
RETRYABLE = {"MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN"}
ATTEMPTS = 40  # a push losing the race this often means the collector starves clients


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def server_env() -> dict[str, str]:
    env = {
        "BERTH_GC_DELAY": "0",
        # Often enough to race every push, seldom enough that a client pushing several
        # blobs one after the other (skopeo) gets its manifest in before the next run.
        "BERTH_GC_INTERVAL": "0.5",
        "BERTH_GC_UNTAGGED_AGE": "0",
        "BERTH_GC_BATCH": "20",
        "BERTH_JOBS_LEASE": "3",
    }
    if any(s.key == "scan.enabled" for s in SETTINGS):
        env["BERTH_SCAN_ENABLED"] = "false"  # no SBOM referrers joining the count
    return env


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = start_berth(tmp_path / "data", env=server_env())
    try:
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, srv.log()[-3000:]


@dataclass
class Pushed:
    manifest: bytes
    blobs: dict[str, bytes]


@dataclass
class Ledger:
    """What the registry acknowledged, per (repository, tag), and what must be gone."""

    tags: dict[tuple[str, str], Pushed | None] = field(default_factory=dict)
    lost_races: int = 0
    acknowledged: int = 0


def random_image(rng: random.Random, pool: list[bytes]) -> tuple[bytes, dict[str, bytes]]:
    layers = rng.sample(pool, rng.randint(1, 3))
    if rng.random() < 0.5:
        layers.append(rng.randbytes(rng.randint(10, 3000)))  # a layer of its own
    config = json.dumps({"nonce": rng.random()}).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha(x),
                    "size": len(x),
                }
                for x in layers
            ],
        }
    ).encode()
    return manifest, {sha(b): b for b in [config, *layers]}


def error_code(r: httpx.Response) -> str:
    try:
        return str(r.json()["errors"][0]["code"])
    except (ValueError, KeyError, IndexError):
        return f"HTTP {r.status_code}"


async def push(client: httpx.AsyncClient, repo: str, tag: str, image: Pushed) -> bool:
    """Push like a client: HEAD each blob, upload the missing ones, then the manifest.
    False when the push lost a race with the collector (retry it)."""
    for digest, data in image.blobs.items():
        head = await client.head(f"/v2/{repo}/blobs/{digest}")
        if head.status_code == 200:
            continue
        assert head.status_code == 404, head.status_code
        r = await client.post(f"/v2/{repo}/blobs/uploads/?digest={digest}", content=data)
        assert r.status_code == 201, r.text
    r = await client.put(
        f"/v2/{repo}/manifests/{tag}",
        content=image.manifest,
        headers={"content-type": OCI_MANIFEST},
    )
    if r.status_code == 201:
        assert r.headers["docker-content-digest"] == sha(image.manifest)
        return True
    assert r.status_code == 400, r.text
    assert error_code(r) in RETRYABLE, r.text
    return False


async def pull_check(client: httpx.AsyncClient, repo: str, ref: str, image: Pushed) -> None:
    r = await client.get(f"/v2/{repo}/manifests/{ref}", headers={"accept": OCI_MANIFEST})
    assert r.status_code == 200, (repo, ref, r.text)
    assert r.content == image.manifest
    for digest, data in image.blobs.items():
        b = await client.get(f"/v2/{repo}/blobs/{digest}")
        assert b.status_code == 200, (repo, digest, b.text)
        assert b.content == data


async def http_pusher(
    url: str, auth: tuple[str, str], n: int, rounds: int, pool: list[bytes], ledger: Ledger
) -> None:
    rng = random.Random(n)
    repos = [f"race/http-{n}", "race/shared"]
    tags = [f"p{n}-{i}" for i in range(3)]  # this pusher's own: no other writer moves them
    async with httpx.AsyncClient(base_url=url, auth=auth, timeout=60) as client:
        for _ in range(rounds):
            repo, tag = rng.choice(repos), rng.choice(tags)
            action = rng.random()
            if action < 0.15 and ledger.tags.get((repo, tag)) is not None:
                r = await client.delete(f"/v2/{repo}/manifests/{tag}")
                assert r.status_code == 202, r.text
                ledger.tags[(repo, tag)] = None
                continue
            if action < 0.25 and ledger.tags.get((repo, tag)) is not None:
                pushed = ledger.tags[(repo, tag)]
                assert pushed is not None
                digest = sha(pushed.manifest)
                r = await client.delete(f"/v2/{repo}/manifests/{digest}")
                assert r.status_code in (202, 404), r.text
                for key, value in list(ledger.tags.items()):
                    if key[0] == repo and value is not None and sha(value.manifest) == digest:
                        ledger.tags[key] = None
                continue
            manifest, blobs = random_image(rng, pool)
            image = Pushed(manifest, blobs)
            for _ in range(ATTEMPTS):
                if await push(client, repo, tag, image):
                    break
                ledger.lost_races += 1
            else:
                pytest.fail(f"{repo}:{tag} lost the race {ATTEMPTS} times")
            ledger.acknowledged += 1
            ledger.tags[(repo, tag)] = image
            await pull_check(client, repo, tag, image)


def skopeo_pusher(
    skopeo: Skopeo, server: Server, images: ImageCache, tmp: Path, rounds: int, ledger: Ledger
) -> None:
    creds = "{}:{}".format(*server.credentials or ("", ""))
    built = [images.busybox(), images.docker_schema2()]
    for i in range(rounds):
        image = built[i % len(built)]
        dest = f"docker://{server.host}/race/skopeo:{image.tag}"
        for _ in range(ATTEMPTS):
            try:
                digest = skopeo.push(image, dest, creds=creds)
                break
            except ToolError as e:
                if "blob unknown" not in str(e).lower():
                    raise  # only losing the race with the collector is allowed
                ledger.lost_races += 1
        else:
            pytest.fail(f"skopeo lost the race {ATTEMPTS} times")
        assert digest == image.manifest_digest
        ledger.acknowledged += 1
        pulled = skopeo.pull_to_layout(dest, tmp / f"pulled-{i}", image.tag, creds=creds)
        assert compare_images(image.layout, image.tag, pulled, image.tag) == []


def berth_gc(data_dir: Path) -> dict[str, object]:
    out = subprocess.run(
        [*berth_command(), "gc", "--json", "--data-dir", str(data_dir)],
        check=True,
        capture_output=True,
        env={**__import__("os").environ, **server_env()},
        timeout=120,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def leftovers(data_dir: Path) -> dict[str, list[object]]:
    """What nothing references, through the side door."""
    db = sqlite3.connect(f"file:{data_dir / 'berth.db'}?mode=ro", uri=True)
    try:
        q = {
            "untagged manifests": "SELECT m.digest FROM manifests m WHERE NOT EXISTS (SELECT 1 "
            "FROM tags t WHERE t.manifest_id = m.id) AND NOT EXISTS (SELECT 1 FROM "
            "manifest_references r WHERE r.child_id = m.id)",
            "unused blobs": "SELECT b.digest FROM blobs b WHERE NOT EXISTS (SELECT 1 FROM "
            "manifest_layers ml WHERE ml.digest = b.digest)",
            "unneeded access": "SELECT rb.repository_id, rb.digest FROM repository_blobs rb "
            "WHERE NOT EXISTS (SELECT 1 FROM manifest_layers ml JOIN manifests m ON "
            "m.id = ml.manifest_id WHERE ml.digest = rb.digest AND "
            "m.repository_id = rb.repository_id)",
        }
        found = {name: [tuple(r) for r in db.execute(sql)] for name, sql in q.items()}
        keys = {r[0] for r in db.execute("SELECT storage_key FROM blobs")}
    finally:
        db.close()
    root = data_dir / "storage"
    files = {str(p.relative_to(root)) for p in (root / "blobs").rglob("*") if p.is_file()}
    found["files without a row"] = sorted(files - keys)  # type: ignore[assignment]
    found["rows without a file"] = sorted(keys - files)  # type: ignore[assignment]
    return {k: v for k, v in found.items() if v}


async def run_race(server: Server, tmp_path: Path, rounds: int, pushers: int) -> None:
    require_binary("skopeo", "skopeo")
    assert server.credentials is not None
    assert server.data_dir is not None
    rng = random.Random(7)
    pool = [rng.randbytes(rng.randint(100, 20_000)) for _ in range(8)]
    ledger = Ledger()
    skopeo = Skopeo(tmp_path / "skopeo")
    images = ImageCache(tmp_path / "images")
    images.busybox()
    images.docker_schema2()
    gc_runs: list[dict[str, object]] = []

    async def cli_gc() -> None:
        for _ in range(3):
            gc_runs.append(await trio.to_thread.run_sync(berth_gc, server.data_dir))

    async with trio.open_nursery() as nursery:
        for n in range(pushers):
            nursery.start_soon(http_pusher, server.url, server.credentials, n, rounds, pool, ledger)
        nursery.start_soon(
            trio.to_thread.run_sync,
            skopeo_pusher,
            skopeo,
            server,
            images,
            tmp_path,
            max(2, rounds // 10),
            ledger,
        )
        nursery.start_soon(cli_gc)
    assert ledger.acknowledged >= pushers * rounds // 2
    print(f"race: {ledger.acknowledged} pushes acknowledged, {ledger.lost_races} lost a race")
    assert len(gc_runs) == 3

    # Every tag serves what was last acknowledged for it; deleted ones are gone.
    async with httpx.AsyncClient(
        base_url=server.url, auth=server.credentials, timeout=60
    ) as client:
        for (repo, tag), image in ledger.tags.items():
            if image is None:
                r = await client.get(f"/v2/{repo}/manifests/{tag}")
                assert r.status_code == 404, (repo, tag)
            else:
                await pull_check(client, repo, tag, image)
                await pull_check(client, repo, sha(image.manifest), image)

        # Nothing unreferenced outlives the delay (0): once collected, nothing is left.
        for _ in range(3):  # manifests first, then the blobs they freed
            await trio.to_thread.run_sync(berth_gc, server.data_dir)
        assert leftovers(server.data_dir) == {}
        for (repo, tag), image in ledger.tags.items():
            if image is not None:
                await pull_check(client, repo, tag, image)


async def test_pushers_deleters_and_the_collector_race(server: Server, tmp_path: Path) -> None:
    await run_race(server, tmp_path, rounds=60, pushers=4)


@pytest.mark.slow
async def test_pushers_deleters_and_the_collector_race_long(server: Server, tmp_path: Path) -> None:
    await run_race(server, tmp_path, rounds=400, pushers=6)
